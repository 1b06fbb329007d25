"""Atomic file writes, so a crash never leaves a half-written report that looks complete."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to a temporary file in the same directory, fsync it, then rename it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def write_text_atomic(path: Path | str, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path | str, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_csv_atomic(path: Path | str, frame: pd.DataFrame) -> Path:
    return write_text_atomic(path, frame.to_csv(index=False))


def write_csv_chunks_atomic(path: Path | str, chunks) -> int:
    """Write an iterable of DataFrames as one CSV (header once), atomically; returns the row count.

    Memory stays at one chunk, so a table of millions of rows can be streamed to disk.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    rows = 0
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            for number, chunk in enumerate(chunks):
                chunk.to_csv(stream, index=False, header=number == 0)
                rows += len(chunk)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return rows


def write_stream_atomic(path: Path | str, writer):
    """Let ``writer(binary_stream)`` fill a temporary file, then rename it into place; returns its result."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            outcome = writer(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return outcome

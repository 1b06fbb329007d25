"""Atomic file writes, so a crash never leaves a half-written report that looks complete."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pyarrow
from pyarrow import csv as arrow_csv

T = TypeVar("T")


def _default_mode() -> int:
    # mkstemp creates 0600 files; published reports get the usual umask-derived mode instead.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_stream_atomic(path: Path | str, writer: Callable[[io.BufferedWriter], T]) -> T:
    """Let ``writer(binary_stream)`` fill a temporary file in the target's folder, fsync it,
    then rename it into place; returns what ``writer`` returned."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            outcome = writer(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, _default_mode())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return outcome


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    write_stream_atomic(path, lambda stream: stream.write(data))
    return Path(path)


def write_text_atomic(path: Path | str, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path | str, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_csv_atomic(path: Path | str, frame: pd.DataFrame) -> Path:
    return write_text_atomic(path, frame.to_csv(index=False))


def write_frame_csv_atomic(path: Path | str, frame: pd.DataFrame) -> int:
    """Write one DataFrame as CSV, atomically, with Arrow's writer (a million rows in a fraction of a
    second, against seconds for pandas'); pandas writes what Arrow cannot type. Returns the rows."""

    def write(stream: io.BufferedWriter) -> int:
        try:
            table = pyarrow.Table.from_pandas(frame, preserve_index=False)
        except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError, pyarrow.ArrowNotImplementedError):
            return write_csv_chunks_to(stream, [frame])
        arrow_csv.write_csv(table, stream, write_options=arrow_csv.WriteOptions(quoting_style="needed"))
        return len(frame)

    return write_stream_atomic(path, write)


def write_csv_chunks_to(stream: io.BufferedWriter, chunks: Iterable[pd.DataFrame]) -> int:
    """Write DataFrames as one CSV (header once) into a binary stream; returns the row count."""
    rows = 0
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="", write_through=True)
    for number, chunk in enumerate(chunks):
        chunk.to_csv(text, index=False, header=number == 0)
        rows += len(chunk)
    text.flush()
    text.detach()  # leave the binary stream open for the fsync
    return rows


def write_csv_chunks_atomic(path: Path | str, chunks: Iterable[pd.DataFrame]) -> int:
    """Write DataFrames as one CSV (header once), atomically; returns the row count.

    Memory stays at one chunk, so a table of millions of rows can be streamed to disk.
    """
    return write_stream_atomic(path, lambda stream: write_csv_chunks_to(stream, chunks))


def staging_folder(target: Path | str) -> Path:
    """A new empty folder beside ``target`` to write a set of files into before :func:`publish`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.parent / f".{target.name}.staging-{uuid.uuid4().hex[:8]}"
    staged.mkdir()
    return staged


def publish(staged: Path, target: Path | str, entries: list[str]) -> None:
    """Move ``entries`` (files or folders) of ``staged`` into ``target`` in order, replacing what is
    there, then remove ``staged``.

    Only local renames happen here, after every file was written: a failure while the files were
    being produced leaves ``target`` exactly as it was. List the entry that vouches for the others
    (a manifest) last.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        source, destination = staged / entry, target / entry
        if source.is_dir():
            old = target / f".{entry}.old-{uuid.uuid4().hex[:8]}"
            if destination.exists():
                os.replace(destination, old)
            os.replace(source, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(source, destination)
    shutil.rmtree(staged, ignore_errors=True)

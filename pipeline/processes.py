"""Which process owns a record (host and pid), and whether that owner still runs; and giving
freed memory back to the system.

Shared by the stale-run sweep (MLflow runs) and the stale-trial sweep (Optuna trials): a record
whose owner is gone will never be closed by it, so the next start closes it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import socket


def this_owner() -> tuple[str, int]:
    """This process: its host name and pid."""
    return socket.gethostname(), os.getpid()


def process_alive(pid: int, started_at: float | None = None) -> bool:
    """Whether ``pid`` on this host is alive and is the process that started at ``started_at``.

    ``started_at`` (epoch seconds) is when the record was opened: a pid reused by a process born
    after it is not the owner.
    """
    import psutil

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    except (OverflowError, ValueError):
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        if started_at is not None and process.create_time() > started_at + 1:
            return False
    except psutil.Error:
        return False
    return True


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_freed_memory() -> None:
    """Hand memory freed by the last fit back to the system (glibc's ``malloc_trim``).

    glibc keeps freed blocks under its mmap threshold (up to 32 MiB) in the process's heap, so a
    fold worker otherwise stays at the high-water mark of the largest fit it ever ran, and two
    such workers beside the stage's own process set the peak on large tables.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)

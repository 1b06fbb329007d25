"""Which process owns a record (host and pid), and whether that owner still runs.

Shared by the stale-run sweep (MLflow runs) and the stale-trial sweep (Optuna trials): a record
whose owner is gone will never be closed by it, so the next start closes it.
"""

from __future__ import annotations

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

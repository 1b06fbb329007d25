"""SIGTERM as an exception, and the one record that a SIGTERM arrived.

The command installs the handler for its lifetime (:func:`handling_sigterm`). A stage run reads
:func:`received` when it closes: a signal landing inside a library's own cleanup can surface as
some other exception, or be swallowed, and the run must still end KILLED and the command with 143.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler.

    A KeyboardInterrupt, so every ``except KeyboardInterrupt`` cleanup (stage runs
    marked KILLED, Optuna trials marked failed) runs as it does for Ctrl-C.
    """

    exit_code = 143


_received = threading.Event()
_deferring = 0  # depth of deferred() blocks on the main thread


def received() -> bool:
    """Whether a SIGTERM arrived since the handler was installed."""
    return _received.is_set()


def raise_if_received() -> None:
    """Raise :class:`Terminated` when a SIGTERM arrived (one deferred, or whose exception was lost)."""
    if received():
        raise Terminated("received SIGTERM")


def note_received() -> None:
    """Record a SIGTERM (the handler does it; tests simulate a signal whose exception was lost)."""
    _received.set()


def reset() -> None:
    _received.clear()


@contextmanager
def deferred() -> Iterator[None]:
    """Record a SIGTERM inside the block instead of raising it there.

    For calls whose effect must be known to be cleaned up: a run created in the store but
    interrupted before its id came back could be marked by no one. The caller checks
    :func:`received` after the block.
    """
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


@contextmanager
def handling_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the ``with`` block, then restore the previous handler.

    Off the main thread (where signals cannot be set) it only resets the record.
    """
    reset()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame) -> None:
        # Once: a second SIGTERM must not interrupt the cleanup that marks the runs.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        note_received()
        if not _deferring:
            raise Terminated("received SIGTERM")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

"""Process ownership and handing freed memory back to the system."""

from __future__ import annotations

import gc
import os

import numpy as np
import psutil
import pytest

from pipeline import processes


def test_this_process_is_alive_and_a_later_start_is_not_its_owner():
    host, pid = processes.this_owner()
    assert pid == os.getpid() and host
    started = psutil.Process().create_time()
    assert processes.process_alive(pid, started)
    assert not processes.process_alive(pid, started - 3600)  # the pid was reused since the record


@pytest.mark.skipif(processes._malloc_trim() is None, reason="no glibc malloc_trim here")
def test_freed_heap_blocks_go_back_to_the_system():
    """Blocks under glibc's mmap threshold stay resident after they are freed, as a fold worker's
    fit leaves them, until trimmed."""
    process = psutil.Process()
    blocks = [np.ones(6_000) for _ in range(8_000)]  # 48 KB each: on the heap, about 380 MiB
    kept = blocks[::50]  # a few survivors spread over the heap, as a fitted model's arrays are
    del blocks
    gc.collect()
    before = process.memory_info().rss
    processes.release_freed_memory()
    released = before - process.memory_info().rss
    assert released > 200 * 2**20, released
    assert len(kept) == 160


def test_without_glibc_there_is_nothing_to_trim(monkeypatch):
    monkeypatch.setattr(processes.ctypes.util, "find_library", lambda name: None)  # musl, say
    processes._malloc_trim.cache_clear()
    try:
        assert processes._malloc_trim() is None
        processes.release_freed_memory()  # a no-op, not an error
    finally:
        processes._malloc_trim.cache_clear()

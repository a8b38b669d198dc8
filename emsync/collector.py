"""The cyclic garbage collector during a run's fetching and writing (issue 18).

A full sync allocates millions of short-lived containers (decoded rows, ``InsightRow``, driver tuples) that
reference counting frees at once; CPython's collector still starts a pass every 700 net allocations and, from
time to time, walks every object the process holds (SQLAlchemy's metadata, the modules, 32 threads' rows).
Measured on the agency full run (500 integrations, 264,128 rows, SQLite): about 1 CPU-second of 8, spent finding
almost nothing (a few thousand cycles, mostly exceptions with their tracebacks).

``fewer_collections`` moves what exists at the start of the run out of the collector's sight (``gc.freeze``)
and raises the first generation's threshold from 700 to 10,000 allocations; both are undone at the end, so a
caller in the same process (the test suite, ``serve``) gets its collector back as it was. Cycles are still
collected, just in fewer, larger passes. Python documents both calls: https://docs.python.org/3/library/gc.html
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

FIRST_GENERATION_THRESHOLD = 10_000

_lock = threading.Lock()
_active = 0
_before: tuple[int, ...] = ()
_froze = False


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Within the block: start-up objects frozen, the first generation collected every 10,000 allocations.
    Blocks may nest or overlap (runs in threads of one process): the first in changes the collector, the last
    out restores it."""
    global _active, _before, _froze
    with _lock:
        _active += 1
        if _active == 1:
            _before = gc.get_threshold()
            _froze = gc.get_freeze_count() == 0  # a process that froze objects itself keeps them as it froze them
            if _froze:
                gc.freeze()
            gc.set_threshold(max(_before[0], FIRST_GENERATION_THRESHOLD), *_before[1:])
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                gc.set_threshold(*_before)
                if _froze:
                    gc.unfreeze()

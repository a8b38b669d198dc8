"""The collector's setting during a run (emsync.collector): changed inside, restored after, also when runs overlap."""

from __future__ import annotations

import gc

from emsync.collector import FIRST_GENERATION_THRESHOLD, fewer_collections


def test_the_collector_is_restored_after_a_run_and_after_an_error():
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        with fewer_collections():
            assert gc.get_threshold()[0] == max(before[0], FIRST_GENERATION_THRESHOLD)
            assert gc.get_threshold()[1:] == before[1:]
            assert gc.get_freeze_count() > frozen
            raise KeyError("a run that fails")
    except KeyError:
        pass
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


def test_overlapping_runs_restore_the_collector_only_when_the_last_ends():
    # Two runs in one process, the first ending while the second is still inside (entered and left by hand: the
    # order is the test, no threads or waits needed).
    before = gc.get_threshold()
    first, second = fewer_collections(), fewer_collections()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold()[0] == max(before[0], FIRST_GENERATION_THRESHOLD), "the second run keeps its setting"
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before

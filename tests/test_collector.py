"""The collector's setting during a run (emsync.collector): changed inside, restored after, also when runs overlap."""

from __future__ import annotations

import gc
import threading

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
    before = gc.get_threshold()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with fewer_collections():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(10)
    with fewer_collections():
        second_in.set()
        first_out.wait(10)
        seen["after the first ended"] = gc.get_threshold()
    thread.join(10)
    assert seen["after the first ended"][0] == max(before[0], FIRST_GENERATION_THRESHOLD)
    assert gc.get_threshold() == before

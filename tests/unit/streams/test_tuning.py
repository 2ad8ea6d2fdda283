"""Thread and log-level settings of the worker (streamrec.streams.tuning)."""

from __future__ import annotations

import asyncio
import gc
import logging

import faiss
import torch

from streamrec.serving.metrics import Metrics
from streamrec.streams.tuning import (
    QUIET_LOGGERS,
    compute_threads,
    freeze_heap,
    quiet_third_party_loggers,
    set_compute_threads,
    watch_gc_pauses,
    watch_loop_lag,
)


def test_compute_threads_default_leaves_one_core_to_the_event_loop(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert compute_threads(0) == 1
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert compute_threads(0) == 7 and compute_threads(3) == 3


def test_set_compute_threads_sets_torch_faiss_and_numpys_blas():
    from threadpoolctl import threadpool_info, threadpool_limits

    def numpy_blas() -> list[int]:  # the BLAS loaded by numpy (its wheel's OpenBLAS)
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    assert numpy_blas(), "numpy's BLAS is not visible to threadpoolctl"
    try:
        set_compute_threads(2)
        assert numpy_blas() == [2]
        set_compute_threads(1)
        assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
        assert numpy_blas() == [1]
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])
        threadpool_limits(limits=before[0], user_api="blas")


def test_hot_path_loggers_stop_debug_records_even_under_a_debug_root():
    root = logging.getLogger()
    saved = root.level, {n: logging.getLogger(n).level for n in QUIET_LOGGERS}
    try:
        root.setLevel(logging.INFO)
        quiet_third_party_loggers()
        root.setLevel(logging.DEBUG)  # what Faust's spinner does to the root
        assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("faust.topics").isEnabledFor(logging.INFO)
        assert logging.getLogger("faust.topics").isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(saved[0])
        for n, level in saved[1].items():
            logging.getLogger(n).setLevel(level)


async def test_loop_lag_probe_sees_a_blocked_loop():
    import time

    m = Metrics()
    task = asyncio.create_task(watch_loop_lag(m, interval=0.01))
    await asyncio.sleep(0.02)
    time.sleep(0.15)  # noqa: ASYNC251 - block the loop on purpose
    await asyncio.sleep(0.03)
    task.cancel()
    assert m.value("streamrec_loop_lag_seconds_count") >= 1
    assert m.value("streamrec_loop_lag_seconds_bucket", le="0.1") < m.value("streamrec_loop_lag_seconds_count")


def test_gc_pauses_are_observed_by_generation():
    m = Metrics()
    cb = watch_gc_pauses(m)
    try:
        gc.collect(1)
        gc.collect(2)
    finally:
        gc.callbacks.remove(cb)
    text = m.render(model_version="v")
    assert 'streamrec_gc_pause_seconds_count{generation="1"}' in text
    assert 'streamrec_gc_pause_seconds_count{generation="2"}' in text


def test_freeze_heap_takes_the_live_objects_out_of_the_collectors_scans():
    class Cycle:
        pass

    live = Cycle()
    live.me = live  # type: ignore[attr-defined]
    try:
        frozen = freeze_heap()
        assert frozen > 1000 and gc.get_freeze_count() == frozen
        # a full collection now scans only objects made after the freeze
        assert not any(o is live for o in gc.get_objects(generation=2))
    finally:
        gc.unfreeze()
    assert any(o is live for o in gc.get_objects())


def test_a_replaced_model_version_is_freed_without_the_cyclic_collector(tiny_checkpoint):
    """With the startup heap frozen (freeze_heap), garbage cycles among frozen objects are never
    collected; a model version replaced by a hot swap must not need the collector to be freed."""
    import weakref

    from streamrec.indexer import ItemIndex
    from streamrec.model.inference import Recommender

    gc.disable()
    try:
        rec = Recommender.load(tiny_checkpoint, device="cpu")
        index = ItemIndex(rec.dim, kind="flat")
        refs = [weakref.ref(rec), weakref.ref(rec.model), weakref.ref(index)]
        del rec, index
        assert [r() is None for r in refs] == [True, True, True]
    finally:
        gc.enable()


def test_the_model_thread_sets_its_own_compute_threads():
    """FAISS's OpenMP thread count is a per-thread setting: a new thread starts from the default
    (all cores) whatever the main thread set, so the model thread sets the worker's own."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from streamrec.streams.pipeline import Pipeline

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    p = Pipeline(
        recommender=object(),
        index=object(),
        top_k=1,
        history_len=1,
        purchased_max=1,
        trigger_types=("view",),
        compute_threads=1,
    )
    try:
        probe = lambda: (faiss.omp_get_max_threads(), torch.get_num_threads())  # noqa: E731
        assert p._executor.submit(probe).result() == (1, 1)
        assert p._swap_executor.submit(probe).result() == (1, 1)
        if (os.cpu_count() or 1) > 1 and "OMP_NUM_THREADS" not in os.environ:
            with ThreadPoolExecutor(1) as plain:  # what the model thread had before
                assert plain.submit(faiss.omp_get_max_threads).result() > 1
    finally:
        p._executor.shutdown()
        p._swap_executor.shutdown()
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])


def test_the_heap_is_frozen_again_once_the_catalog_has_grown():
    """Objects made after the first freeze (a growing catalog's) are frozen again once the
    catalog has grown by ``every`` items since; growth is counted from the last freeze, and from
    the smallest size seen when items are removed."""
    from streamrec.streams.tuning import Refreezer

    r = Refreezer(1000, every=500)
    try:
        freeze_heap()
        made_since = [[k] for k in range(2000)]  # tracked objects made after the freeze

        def in_a_generation(obj: object) -> bool:
            # whether the collector still scans obj (a frozen-object count would be flaky: objects
            # frozen earlier in the test session may be freed by reference counting meanwhile)
            return any(o is obj for g in (0, 1, 2) for o in gc.get_objects(generation=g))

        assert r.maybe(1499) is None and in_a_generation(made_since[0])  # not due: nothing frozen
        frozen = r.maybe(1500)
        assert frozen is not None and r.frozen_at == 1500
        assert not in_a_generation(made_since[0])  # frozen now
        assert r.maybe(1999) is None  # counted from the new freeze
        shrinking = Refreezer(1000, every=500)
        assert shrinking.maybe(200) is None and shrinking.frozen_at == 200
        assert shrinking.maybe(700) is not None
    finally:
        gc.unfreeze()

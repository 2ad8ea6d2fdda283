"""Background rebuild + atomic swap while other threads search and mutate."""

from __future__ import annotations

import threading

import numpy as np

from .conftest import make_index


def test_swap_during_concurrent_searches(data):
    ids, vecs, queries = data
    ix = make_index("hnsw")
    ix.rebuild(ids, vecs, background=False)
    errors: list[BaseException] = []
    searches = [0]
    stop = threading.Event()

    def searcher(seed):
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                batch = queries[rng.integers(0, len(queries), rng.integers(1, 8))]
                for row in ix.search(batch, 10, exclude=[{ids[0]}] * len(batch)):
                    assert len(row) == 10, row
                searches[0] += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        for version in range(4):  # "new model versions": new vectors each time
            scale = 1.0 + version
            fut = ix.rebuild(ids, vecs * scale, background=True)
            ix.upsert([f"live-{version}"], vecs[:1])  # a change while the build runs
            fut.result(timeout=30)
            assert f"live-{version}" in ix
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors[:3]
    assert searches[0] > 0
    ix.close()


def test_changes_during_rebuild_are_replayed(data):
    ids, vecs, queries = data
    ix = make_index("ivf")
    ix.rebuild(ids, vecs, background=False)
    started, release = threading.Event(), threading.Event()
    build = ix._build_state

    def slow_build(*args, **kwargs):
        started.set()
        assert release.wait(10)
        return build(*args, **kwargs)

    ix._build_state = slow_build
    new_vecs = -vecs  # the "new model"
    fut = ix.rebuild(ids, new_vecs)
    assert started.wait(10)
    q = queries[:1]
    ix.upsert(["added"], 100 * q)
    ix.remove([ids[1]])
    ix.set_in_stock([ids[2]], False)
    for i in range(100):  # enough to exercise the off-lock catch-up too
        ix.set_in_stock([ids[3]], i % 2 == 1)
    assert ix.search(q, 1)[0][0][0] == "added"  # the old index answers meanwhile
    release.set()
    fut.result(timeout=30)
    assert "added" in ix and ids[1] not in ix
    assert not ix.is_eligible(ids[2]) and ix.is_eligible(ids[3])
    assert ix.search(q, 1)[0][0][0] == "added"
    top2 = ix.search(q, 2)[0][1][0]  # the new vectors are in use:
    np.testing.assert_allclose(ix.search(q, 2)[0][1][1], float(new_vecs[int(top2.split("-")[1])] @ q[0]), rtol=1e-4)
    assert not ix._logs
    ix.close()


def test_failed_rebuild_keeps_old_index(data):
    ids, vecs, queries = data
    ix = make_index("flat")
    ix.rebuild(ids, vecs, background=False)

    def broken(*a, **k):
        raise RuntimeError("boom")

    ix._build_state = broken
    fut = ix.rebuild(ids[:10], vecs[:10])
    assert isinstance(fut.exception(timeout=10), RuntimeError)
    assert len(ix) == len(ids) and not ix._logs
    assert len(ix.search(queries[:1], 10)[0]) == 10
    ix.close()

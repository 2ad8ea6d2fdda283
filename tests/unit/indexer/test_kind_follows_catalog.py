"""The index kind follows the catalog size: a catalog loaded in small batches starts flat and is
rebuilt into an approximate index in the background once it crosses ``exact_max``; no item
upserted, removed or restocked meanwhile is lost."""

from __future__ import annotations

import threading

import numpy as np

from streamrec.indexer import ItemIndex

DIM = 16
EXACT_MAX = 300
BATCH = 24  # smaller than the limit: the first-upsert choice alone would stay flat for ever


def unit_vecs(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def small_index(**kw) -> ItemIndex:
    return ItemIndex(DIM, device="cpu", exact_max=EXACT_MAX, hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=64, **kw)


def check_contents(index: ItemIndex, expect: dict[str, np.ndarray], out_of_stock: set[str]) -> None:
    st = index._state
    assert set(st.ids) == set(expect) and len(index) == len(expect)
    stored, found = index.vectors(list(expect))
    assert found.all()
    for (item, vec), got in zip(expect.items(), stored):
        np.testing.assert_array_equal(got, vec)
        assert index.is_eligible(item) == (item not in out_of_stock)
    # every in-stock item is found by its own (unit) vector: inner product 1 is the maximum
    names = [i for i in expect if i not in out_of_stock]
    hits = index.search(np.stack([expect[i] for i in names]), k=1)
    found = sum(row[0][0] == item for row, item in zip(hits, names))
    assert found >= 0.97 * len(names), (found, len(names))


def test_kind_switches_to_hnsw_in_small_batches_and_nothing_is_lost():
    index = small_index()
    # Hold the first background build until 10 more batches have been applied, so that changes
    # made during the rebuild are certain to happen (they are replayed before the swap).
    gate, build = threading.Event(), index._build_state
    held = []

    def gated_build(*args, **kwargs):
        if not held:
            held.append(True)
            assert gate.wait(60)
        return build(*args, **kwargs)

    index._build_state = gated_build
    started_at = None
    expect: dict[str, np.ndarray] = {}
    out_of_stock: set[str] = set()
    rng = np.random.default_rng(0)
    futures = []
    kinds = []
    for b in range(40):  # 960 upserts, some removed, some replaced, some out of stock
        ids = [f"sku-{b}-{j}" for j in range(BATCH)]
        vecs = unit_vecs(BATCH, seed=b)
        index.upsert(ids, vecs)
        expect.update(zip(ids, vecs))
        if b % 3 == 2:  # removals and replaced vectors, also while a rebuild is in flight
            gone = list(rng.choice(sorted(expect), 5, replace=False))
            index.remove(gone)
            for i in gone:
                expect.pop(i)
            again = list(rng.choice(sorted(expect), 4, replace=False))
            new_vecs = unit_vecs(4, seed=1000 + b)
            index.upsert(again, new_vecs)
            expect.update(zip(again, new_vecs))
            out_of_stock.difference_update(again)
        if b % 5 == 4:
            off = [str(i) for i in rng.choice(sorted(expect), 3, replace=False)]
            index.set_in_stock(off, False)
            out_of_stock.update(off)
        fut = index.retune(background=True)  # what the pipeline does after each batch
        if fut is not None:
            futures.append(fut)
            started_at = b if started_at is None else started_at
        if started_at is not None and b < started_at + 10:
            assert index.rebuilding() and index.kind == "flat"  # serving flat meanwhile
            assert index.search(unit_vecs(1, seed=b), k=3)[0]
        elif started_at is not None:
            gate.set()
        kinds.append(index.kind)
    gate.set()
    for fut in futures:
        fut.result(timeout=120)  # re-raises a failed build
    assert started_at is not None and (started_at + 1) * BATCH > EXACT_MAX
    assert index.retune(background=False) is None or index.kind == "hnsw"
    assert kinds[0] == "flat" and index.kind == "hnsw"
    assert len(futures) >= 1
    check_contents(index, expect, out_of_stock)
    index.close()


def test_shrinking_catalog_goes_back_to_flat_with_hysteresis():
    index = small_index()
    ids = [f"sku-{i}" for i in range(400)]
    vecs = unit_vecs(400, seed=3)
    for s in range(0, 400, BATCH):
        index.upsert(ids[s : s + BATCH], vecs[s : s + BATCH])
    assert index.kind == "flat"
    index.retune(background=False)
    assert index.kind == "hnsw"
    index.remove(ids[:200])  # 200 left: under the limit, above half of it -> stays HNSW
    assert index.wanted_kind() == "hnsw"
    index.remove(ids[200:260])  # 140 left: under half the limit
    index.retune(background=False)
    assert index.kind == "flat"
    check_contents(index, dict(zip(ids[260:], vecs[260:])), set())


def test_a_fixed_kind_never_switches():
    index = small_index(kind="flat")
    vecs = unit_vecs(400, seed=4)
    for s in range(0, 400, BATCH):
        index.upsert([f"sku-{i}" for i in range(s, min(400, s + BATCH))], vecs[s : s + BATCH])
        assert index.retune() is None
    assert index.kind == "flat"


def test_tombstones_are_compacted():
    index = small_index(kind="hnsw")
    vecs = unit_vecs(300, seed=5)
    ids = [f"sku-{i}" for i in range(300)]
    index.upsert(ids, vecs)
    assert index.retune() is None  # nothing dead yet
    for r in range(20):  # re-embedded items leave dead HNSW slots behind
        index.upsert(ids, unit_vecs(300, seed=100 + r))
    assert index._state.n_slots > 4096
    index.retune(background=False)
    assert index._state.n_slots == 300 and index._state.index.ntotal == 300
    check_contents(index, dict(zip(ids, unit_vecs(300, seed=119))), set())

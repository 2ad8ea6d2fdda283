"""Exact search: FAISS's BLAS switch per batch size, and the torch product (the default)."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.indexer import ItemIndex


def test_flat_search_switches_to_blas_by_batch_size_with_the_same_results():
    """A batch of FLAT_BLAS_MIN_QUERIES or more goes through FAISS's BLAS product, a smaller one
    through its per-query scan; both return the same lists (the exact top-k)."""
    import faiss

    from streamrec.indexer.faiss_index import FLAT_BLAS_MIN_QUERIES, blas_threshold

    assert blas_threshold("flat", FLAT_BLAS_MIN_QUERIES) <= 1
    assert blas_threshold("flat", FLAT_BLAS_MIN_QUERIES - 1) > 1 << 20
    assert blas_threshold("hnsw", 500) == blas_threshold("ivf", 1)  # the library's own default
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((300, 16)).astype(np.float32)
    ix = ItemIndex(16, kind="flat", exact_backend="faiss")
    ix.rebuild([f"i{j}" for j in range(300)], vecs, background=False)
    q = rng.standard_normal((FLAT_BLAS_MIN_QUERIES + 3, 16)).astype(np.float32)
    batched = ix.search(q, 7)
    assert faiss.cvar.distance_compute_blas_threshold == blas_threshold("flat", len(q))
    one_by_one = [ix.search(q[i : i + 1], 7)[0] for i in range(len(q))]
    assert faiss.cvar.distance_compute_blas_threshold == blas_threshold("flat", 1)
    exact = np.argsort(-(q @ vecs.T), axis=1)[:, :7]
    for got, single, want in zip(batched, one_by_one, exact):
        assert [i for i, _ in got] == [i for i, _ in single] == [f"i{j}" for j in want]


def test_the_blas_batch_size_is_an_index_option():
    """``flat_blas_min_queries`` (STREAMREC_FLAT_BLAS_MIN_QUERIES) moves the switch; a bad value is
    refused with its name."""
    import faiss
    import pytest

    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((50, 8)).astype(np.float32)
    ix = ItemIndex(8, kind="flat", flat_blas_min_queries=4, exact_backend="faiss")
    ix.rebuild([f"i{j}" for j in range(50)], vecs, background=False)
    ix.search(rng.standard_normal((4, 8)).astype(np.float32), 3)
    assert faiss.cvar.distance_compute_blas_threshold <= 1  # 4 queries: BLAS here, not by default
    ix.search(rng.standard_normal((3, 8)).astype(np.float32), 3)
    assert faiss.cvar.distance_compute_blas_threshold > 1 << 20
    with pytest.raises(ValueError, match="flat_blas_min_queries"):
        ItemIndex(8, flat_blas_min_queries=0)


def test_the_worker_passes_its_blas_setting_to_the_index():
    from streamrec.config import Settings
    from streamrec.streams.app import new_index

    ix = new_index(Settings(flat_blas_min_queries=40, device="cpu"), 8)
    assert ix.flat_blas_min_queries == 40


@pytest.mark.parametrize("backend", ["torch", "numpy", "auto"])
@pytest.mark.parametrize("chunk", [None, 7])
def test_the_product_exact_search_is_the_exact_top_k_with_stock_and_exclusions(monkeypatch, chunk, backend):
    """The CPU exact search by one matrix product over FAISS's vectors (torch's or numpy's BLAS;
    numpy's one matrix-vector product per query below ``_GEMV_BELOW`` queries), topk per chunk of
    the catalog, merged, returns what FAISS's own search does: the exact top-k of the eligible
    items, out-of-stock, removed and excluded ones left out, whatever the chunking and the batch."""
    from streamrec.indexer import faiss_index

    if chunk is not None:  # many chunks: the merge across them is what is tested
        monkeypatch.setattr(faiss_index, "_TOPK_CELLS", chunk)
        monkeypatch.setattr(faiss_index, "_TOPK_MIN_CHUNK", chunk)
    rng = np.random.default_rng(2)
    vecs = rng.standard_normal((120, 16)).astype(np.float32)
    ids = [f"i{j}" for j in range(120)]
    prod_ix, faiss_ix = (
        ItemIndex(16, kind="flat", exact_backend=backend),
        ItemIndex(16, kind="flat", exact_backend="faiss"),
    )
    assert prod_ix.exact_backend == backend
    for ix in (prod_ix, faiss_ix):
        ix.rebuild(ids, vecs, background=False)
        ix.set_in_stock(["i3", "i40"], False)
        ix.remove(["i7"])
        ix.upsert(["i9"], -vecs[9:10])  # a changed vector: its old slot is dead
    q = rng.standard_normal((20, 16)).astype(np.float32)
    exclude = [{"i1", "i2", "nope"} if r % 2 else set() for r in range(20)]
    vec = vecs.copy()
    vec[9] = -vecs[9]
    assert faiss_index._GEMV_BELOW > 1
    for n in (20, faiss_index._GEMV_BELOW - 1, 1):  # a matrix product, then one product per query
        got = prod_ix.search(q[:n], 10, exclude=exclude[:n])
        want = faiss_ix.search(q[:n], 10, exclude=exclude[:n])
        assert len(got) == n
        for r, (g, w) in enumerate(zip(got, want)):
            assert [i for i, _ in g] == [i for i, _ in w]
            assert np.allclose([s for _, s in g], [s for _, s in w], atol=1e-5)
            allowed = [j for j in range(120) if f"i{j}" not in {"i3", "i40", "i7"} | exclude[r]]
            best = sorted(allowed, key=lambda j: -float(q[r] @ vec[j]))[:10]
            assert [i for i, _ in g] == [f"i{j}" for j in best]
    assert prod_ix.search(q[:1], 500)[0].__len__() == 120 - 3  # k past the catalog: every eligible item
    with pytest.raises(ValueError, match="exact_backend"):
        ItemIndex(8, exact_backend="blas")


def test_auto_takes_the_faster_product_timed_once_per_process(monkeypatch):
    """ "auto" times the two products once (the first exact search in the process), takes the
    faster, and keeps it; an explicit product is used as asked, without timing anything."""
    from streamrec.indexer import faiss_index

    calls: list[int] = []
    timings = {"numpy": 2.0, "torch": 1.0}

    def fake_timings() -> dict[str, float]:
        calls.append(1)
        return dict(timings)

    monkeypatch.setattr(faiss_index, "_AUTO", {})
    monkeypatch.setattr(faiss_index, "time_products", fake_timings)
    assert faiss_index.exact_product("numpy") == "numpy" and faiss_index.exact_product("torch") == "torch"
    assert calls == []
    ix = ItemIndex(8, kind="flat")
    assert ix.exact_backend == "auto" and ix.exact_product == "torch" and len(calls) == 1
    timings.update(numpy=0.5)  # measured once: a later index keeps the first choice
    assert ItemIndex(8, kind="flat").exact_product == "torch" and len(calls) == 1
    assert ItemIndex(8, kind="flat", exact_backend="numpy").exact_product == "numpy"
    assert ItemIndex(8, kind="flat", exact_backend="faiss").exact_product == "torch"  # its exact fallback
    monkeypatch.setattr(faiss_index, "_AUTO", {})
    assert faiss_index.exact_product("auto") == "numpy" and len(calls) == 2
    with pytest.raises(ValueError, match="backend"):
        faiss_index.exact_product("blas")


def test_the_products_time_and_score_alike():
    """The calibration runs both real products; both score a block exactly as numpy's reference
    (one matrix-vector product per query below _GEMV_BELOW, one matrix product from it)."""
    from streamrec.indexer import faiss_index

    secs = faiss_index.time_products(rows=512, dim=16, batches=(1, 8), reps=2)
    assert set(secs) == set(faiss_index.PRODUCTS) and all(0 < v < 10 for v in secs.values())
    rng = np.random.default_rng(3)
    block = rng.standard_normal((300, 16)).astype(np.float32)
    for n in (1, faiss_index._GEMV_BELOW - 1, faiss_index._GEMV_BELOW, 9):
        q = rng.standard_normal((n, 16)).astype(np.float32)
        want = q.astype(np.float64) @ block.T.astype(np.float64)
        for product in faiss_index.PRODUCTS:
            got = faiss_index.product_scores(product, block, q)
            assert tuple(got.shape) == (n, 300) and np.allclose(got.numpy(), want, atol=1e-4)
    with pytest.raises(ValueError, match="product"):
        faiss_index.product_scores("blas", block, q)


def test_the_worker_passes_its_exact_backend_to_the_index():
    from streamrec.config import Settings
    from streamrec.streams.app import new_index

    assert new_index(Settings(device="cpu"), 8).exact_backend == "auto"
    assert ItemIndex(8).exact_backend == "auto"
    assert new_index(Settings(index_exact_backend="numpy", device="cpu"), 8).exact_backend == "numpy"
    assert new_index(Settings(index_exact_backend="torch", device="cpu"), 8).exact_backend == "torch"
    assert new_index(Settings(index_exact_backend="faiss", device="cpu"), 8).exact_backend == "faiss"

"""FAISS exact search: the BLAS switch per batch size."""

from __future__ import annotations

import numpy as np

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
    ix = ItemIndex(16, kind="flat")
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
    ix = ItemIndex(8, kind="flat", flat_blas_min_queries=4)
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

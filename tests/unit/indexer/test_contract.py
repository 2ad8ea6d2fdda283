"""Every index kind through the same checks, against the numpy reference (ExactIndex)."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.indexer import ExactIndex, ItemIndex

from .conftest import DIM, FAISS_KINDS, make_index


def ids_of(rows):
    return [[item for item, _ in row] for row in rows]


def recall_at(got, want, k=10):
    return np.mean([len(set(g[:k]) & set(w[:k])) / k for g, w in zip(got, want)])


def reference(data, stock=None):
    ids, vecs, _ = data
    ref = ExactIndex(DIM)
    ref.upsert(ids, vecs, in_stock=True if stock is None else stock)
    return ref


@pytest.mark.parametrize("kind", FAISS_KINDS)
def test_agrees_with_exact(kind, data):
    ids, vecs, queries = data
    ix = make_index(kind)
    ix.rebuild(ids, vecs, background=False)
    assert ix.kind == kind and ix.device == "cpu" and len(ix) == len(ids)
    got = ix.search(queries, 10)
    want = reference(data).search(queries, 10)
    assert recall_at(ids_of(got), ids_of(want)) >= 0.95
    row = {item: i for i, item in enumerate(ids)}
    for q, res in zip(queries, got):  # scores are the model's inner products, best first
        scores = [s for _, s in res]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, [vecs[row[i]] @ q for i, _ in res], rtol=1e-4, atol=1e-4)
    if kind == "flat":
        assert ids_of(got) == ids_of(want)


def test_upsert_changes_results(any_index, data):
    ix = any_index
    q = data[2][:1]
    ix.upsert(["sku-7"], 10 * q)  # now the best match for q
    assert ids_of(ix.search(q, 5))[0][0] == "sku-7"
    ix.upsert(["sku-7"], -10 * q)  # changed: now the worst
    assert "sku-7" not in ids_of(ix.search(q, 10))[0]
    ix.upsert(["new-1"], 20 * q, in_stock=True)  # a new item
    assert ids_of(ix.search(q, 1)) == [["new-1"]]
    assert len(ix) == 2001 and "new-1" in ix


def test_upsert_repeated_id_keeps_last(any_index, data):
    q = data[2][:1]
    any_index.upsert(["dup", "dup"], np.vstack([-10 * q, 10 * q]))
    assert ids_of(any_index.search(q, 1)) == [["dup"]]
    assert len(any_index) == 2001


def test_remove_is_never_returned(any_index, data):
    ix = any_index
    queries = data[2]
    top = {r[0] for r in ids_of(ix.search(queries, 3))}
    ix.remove([*sorted(top), "never-seen"])
    assert len(ix) == 2000 - len(top)
    assert not any(i in ix for i in top)
    assert not top & {i for r in ids_of(ix.search(queries, 10)) for i in r}
    ix.remove(sorted(top))  # idempotent


def test_stock_flags(any_index, data):
    ix = any_index
    q = data[2][:1]
    best = ids_of(ix.search(q, 1))[0][0]
    ix.set_in_stock([best], False)
    assert best in ix and not ix.is_eligible(best) and len(ix) == 2000
    assert best not in ids_of(ix.search(q, 20))[0]
    ix.set_in_stock([best, "unknown"], True)
    assert ix.is_eligible(best) and ids_of(ix.search(q, 1))[0][0] == best
    ix.upsert([best], 5 * q, in_stock=False)
    assert not ix.is_eligible(best) and best not in ids_of(ix.search(q, 20))[0]
    assert not ix.is_eligible("unknown")


def test_filtered_search_returns_exactly_k(any_index, data):
    ids, _vecs, queries = data
    rng = np.random.default_rng(3)
    stock = rng.random(len(ids)) < 0.1  # 90 % out of stock
    any_index.set_in_stock([i for i, s in zip(ids, stock) if not s], False)
    ref = reference(data, stock)
    want = ref.search(queries, 10)
    exclude = [set(row[:5]) for row in ids_of(want)]  # "already purchased": the best 5
    got = any_index.search(queries, 10, exclude=exclude)
    eligible = {i for i, s in zip(ids, stock) if s}
    for row, ex in zip(ids_of(got), exclude):
        assert len(row) == 10 and len(set(row)) == 10
        assert set(row) <= eligible and not set(row) & ex
    assert recall_at(ids_of(got), ids_of(ref.search(queries, 10, exclude=exclude))) >= 0.9


def test_fewer_eligible_than_k_and_exact_fallback(any_index, data):
    ids, _, queries = data
    keep = ids[::100]  # 20 eligible items among 2000: forces widening and the exact fallback
    any_index.set_in_stock(ids, False)
    any_index.set_in_stock(keep, True)
    ref = reference(data, np.isin(ids, keep))
    got = any_index.search(queries[:5], 15, exclude=[{keep[0]}] * 5)
    assert ids_of(got) == ids_of(ref.search(queries[:5], 15, exclude=[{keep[0]}] * 5))
    assert [len(r) for r in any_index.search(queries[:2], 30, exclude=[{keep[0]}, set()])] == [19, 20]
    any_index.set_in_stock(ids, False)
    assert any_index.search(queries[:2], 5) == [[], []]


def test_batched_equals_single(any_index, data):
    """A batch gets the lists its queries get one by one: the same items in the same order, the
    scores equal up to float32 rounding (a batch and one query may take different BLAS kernels)."""
    queries = data[2][:8]
    batched = any_index.search(queries, 10)
    single = [any_index.search(q, 10)[0] for q in queries]
    assert ids_of(batched) == ids_of(single)
    for b, s in zip(batched, single):
        assert np.allclose([x for _, x in b], [x for _, x in s], rtol=1e-5, atol=1e-5)


def test_empty_index_and_first_upsert():
    for kind in ("exact", *FAISS_KINDS):
        ix = make_index(kind)
        assert len(ix) == 0 and ix.search(np.ones((2, DIM)), 3) == [[], []]
        ix.upsert(["a"], np.ones((1, DIM)))
        assert ids_of(ix.search(np.ones(DIM), 3)) == [["a"]]


def test_auto_kind_by_catalog_size(data):
    ids, vecs, _ = data
    ix = ItemIndex(DIM, exact_max=500, device="cpu", hnsw_m=8, hnsw_ef_construction=20)
    assert ix.kind == "flat"
    ix.rebuild(ids[:400], vecs[:400], background=False)
    assert ix.kind == "flat"
    ix.rebuild(ids, vecs, background=False)
    assert ix.kind == "hnsw" and len(ix) == len(ids)


def test_rebuild_keeps_stock_flags_and_compact_drops_tombstones(data):
    ids, vecs, _queries = data
    ix = make_index("hnsw")
    ix.rebuild(ids, vecs, background=False)
    ix.set_in_stock(ids[:10], False)
    ix.remove(ids[10:20])
    ix.upsert(ids[20:30], vecs[20:30] * 2)
    assert ix._state.index.ntotal == 2010  # removed / replaced vectors are tombstones
    ix.compact()
    assert ix._state.index.ntotal == len(ix) == 1990
    assert not any(ix.is_eligible(i) for i in ids[:10]) and ix.is_eligible(ids[25])
    ix.rebuild(ids, vecs, background=False)  # in_stock=None keeps known flags
    assert not ix.is_eligible(ids[0]) and ix.is_eligible(ids[15])

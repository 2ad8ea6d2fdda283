"""Brute-force retrieval in numpy: the reference every FAISS index is checked against.

It is deliberately plain (a dict of vectors, a matrix product, a sort) so that it is obviously
right; the contract tests compare every FAISS kind against it.

>>> import numpy as np
>>> ix = ExactIndex(2)
>>> ix.upsert(["a", "b", "c"], np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32))
>>> ix.set_in_stock(["c"], False)
>>> ix.search(np.array([[2.0, 1.0]]), k=2)
[[('a', 2.0), ('b', 1.0)]]
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from streamrec.indexer.base import (
    check_exclude,
    check_flags,
    check_ids,
    check_k,
    check_queries,
    check_vectors,
    dedupe_last,
)


def topk_masked(
    vectors: np.ndarray, eligible: np.ndarray, query: np.ndarray, k: int, exclude_rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k rows of ``vectors @ query`` among ``eligible`` rows not in ``exclude_rows``.

    Returns (rows, scores), best first; fewer than k when fewer rows qualify.
    """
    scores = vectors @ query  # (n,)
    scores = np.where(eligible, scores, -np.inf)
    if exclude_rows is not None and exclude_rows.size:
        scores[exclude_rows] = -np.inf
    k = min(k, int(np.count_nonzero(np.isfinite(scores))))
    if k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    top = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
    top = top[np.argsort(-scores[top], kind="stable")]
    return top.astype(np.int64), scores[top].astype(np.float32)


class ExactIndex:
    """The :class:`~streamrec.indexer.base.CandidateIndex` contract in plain numpy (small catalogs)."""

    kind = "exact"
    device = "cpu"

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self._vecs: dict[str, np.ndarray] = {}
        self._stock: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self._vecs)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._vecs

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, *, in_stock: bool | Sequence[bool] = True) -> None:
        ids = check_ids(ids)
        vecs = check_vectors(vectors, n=len(ids), dim=self.dim)
        ids, vecs, flags = dedupe_last(ids, vecs, check_flags(in_stock, len(ids)))
        for item, vec, flag in zip(ids, vecs, flags):
            self._vecs[item] = vec.copy()
            self._stock[item] = bool(flag)

    def remove(self, ids: Sequence[str]) -> None:
        for item in check_ids(ids):
            self._vecs.pop(item, None)
            self._stock.pop(item, None)

    def set_in_stock(self, ids: Sequence[str], in_stock: bool) -> None:
        for item in check_ids(ids):
            if item in self._stock:
                self._stock[item] = bool(in_stock)

    def is_eligible(self, item_id: str) -> bool:
        return self._stock.get(item_id, False)

    def search(
        self, queries: np.ndarray, k: int, *, exclude: Sequence[Collection[str]] | None = None
    ) -> list[list[tuple[str, float]]]:
        q = check_queries(queries, self.dim)
        k = check_k(k)
        exclude = check_exclude(exclude, len(q))
        ids = list(self._vecs)
        if not ids:
            return [[] for _ in range(len(q))]
        mat = np.stack([self._vecs[i] for i in ids])
        eligible = np.array([self._stock[i] for i in ids])
        row = {item: r for r, item in enumerate(ids)}
        out = []
        for qi, vec in enumerate(q):
            ex = None
            if exclude is not None and exclude[qi]:
                ex = np.array([row[i] for i in exclude[qi] if i in row], dtype=np.int64)
            rows, scores = topk_masked(mat, eligible, vec, k, ex)
            out.append([(ids[r], float(s)) for r, s in zip(rows, scores)])
        return out

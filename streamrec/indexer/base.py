"""The retrieval contract shared by every index, plus the input checks and the lock they use.

Every index answers the same question: given user vectors, which K *eligible* items score highest
by inner product (``score = user_vec . item_vec``, the model scorer)? An item is eligible when it is
in the index (upserted, not removed) and in stock; per-query ``exclude`` sets (items the user
already bought) remove more. Implementations: :class:`streamrec.indexer.exact.ExactIndex` (numpy,
the reference) and :class:`streamrec.indexer.faiss_index.ItemIndex` (FAISS flat / HNSW / IVF).

Inputs are bounded here once, so every implementation rejects the same things the same way:

>>> check_ids(["sku-1", "sku-2"])
['sku-1', 'sku-2']
>>> check_vectors([[1, 2], [3, 4]], n=2, dim=2).dtype
dtype('float32')
>>> check_k(0)
Traceback (most recent call last):
...
ValueError: k must be an integer in 1..1000, got 0
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import numpy as np

MAX_ID_LEN = 128  # longest external item id accepted (bytes of text are not counted, characters are)
MAX_K = 1000  # largest K a search may ask for


@runtime_checkable
class CandidateIndex(Protocol):
    """What the stream worker needs from an index of item vectors (see the module docstring)."""

    def __len__(self) -> int: ...  # live items: not removed; out-of-stock items still count
    def __contains__(self, item_id: object) -> bool: ...
    def upsert(self, ids: Sequence[str], vectors: np.ndarray, *, in_stock: bool | Sequence[bool] = True) -> None: ...
    def remove(self, ids: Sequence[str]) -> None: ...
    def set_in_stock(self, ids: Sequence[str], in_stock: bool) -> None: ...
    def is_eligible(self, item_id: str) -> bool: ...
    def search(
        self, queries: np.ndarray, k: int, *, exclude: Sequence[Collection[str]] | None = None
    ) -> list[list[tuple[str, float]]]: ...


def check_ids(ids: Sequence[str], *, unique: bool = False) -> list[str]:
    """Return ``ids`` as a list after checking each is a non-empty str of <= MAX_ID_LEN chars."""
    if isinstance(ids, (str, bytes)):
        raise ValueError("ids must be a sequence of str, not a single string")
    out = list(ids)
    for i in out:
        if not isinstance(i, str) or not 0 < len(i) <= MAX_ID_LEN:
            raise ValueError(f"item id must be a str of 1..{MAX_ID_LEN} characters, got {i!r:.160}")
    if unique and len(set(out)) != len(out):
        raise ValueError("ids contain duplicates; each item id may appear once")
    return out


def check_vectors(vectors: object, *, n: int, dim: int, what: str = "vectors") -> np.ndarray:
    """Return ``vectors`` as a C-contiguous (n, dim) float32 array of finite values."""
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape != (n, dim):
        raise ValueError(f"{what} must have shape ({n}, {dim}), got {arr.shape}")
    if arr.size and not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"{what} must be finite; row {bad} holds NaN or inf")
    return arr


def check_queries(queries: object, dim: int) -> np.ndarray:
    """Queries as (nq, dim) float32; a single 1-D vector counts as one query."""
    arr = np.asarray(queries, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    n = arr.shape[0] if arr.ndim == 2 else -1
    return check_vectors(arr, n=n, dim=dim, what="queries")


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
    return int(k)


def check_flags(in_stock: bool | Sequence[bool], n: int) -> np.ndarray:
    """One bool per item: a single bool is broadcast, a sequence must have length n."""
    if isinstance(in_stock, (bool, np.bool_)):
        return np.full(n, bool(in_stock))
    flags = np.asarray(in_stock)
    if flags.shape != (n,) or flags.dtype != np.bool_:
        raise ValueError(f"in_stock must be a bool or {n} bools, got shape {flags.shape} dtype {flags.dtype}")
    return flags.copy()


def check_exclude(exclude: Sequence[Collection[str]] | None, nq: int) -> Sequence[Collection[str]] | None:
    if exclude is None:
        return None
    if isinstance(exclude, (str, bytes)) or len(exclude) != nq:
        raise ValueError(
            f"exclude must hold one collection of ids per query ({nq}), "
            f"got {type(exclude).__name__} of length "
            f"{len(exclude) if hasattr(exclude, '__len__') else '?'}"
        )
    return exclude


def dedupe_last(ids: list[str], vectors: np.ndarray, flags: np.ndarray):
    """Keep the last occurrence of each id (a batch of catalog events may repeat an item)."""
    if len(set(ids)) == len(ids):
        return ids, vectors, flags
    last = {item: i for i, item in enumerate(ids)}
    keep = np.fromiter(sorted(last.values()), dtype=np.int64, count=len(last))
    return [ids[i] for i in keep], vectors[keep], flags[keep]


class RWLock:
    """Many concurrent readers (searches) or one writer (mutation, swap); writers go first.

    Not reentrant: a thread must not take the lock again while it holds it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()

"""FAISS retrieval of item candidates, keyed by the shop's external item ids.

Design, and why:

* **Slots.** Every vector that enters FAISS gets a fresh int64 *slot* id; the external-id <->
  slot map and the live / in-stock flags live beside the FAISS index in numpy arrays. A changed
  vector gets a new slot and the old slot dies: dead slots are *tombstones* (every kind, as HNSW
  cannot ``remove_ids``), filtered out at search time and dropped when the index is rebuilt or
  compacted (:meth:`ItemIndex.retune` does it once they outnumber the live items).
* **One copy of the vectors.** On CPU the FAISS index holds the only copy of the item vectors
  (flat and HNSW add slots in order, so a slot is the FAISS row and no id map is needed); exact
  fallbacks, rebuilds and :meth:`ItemIndex.vectors` read them back from FAISS. ``hnsw_storage``
  "fp16" / "sq8" stores the HNSW vectors at 2 / 1 bytes per dimension instead of 4 (1M items of
  449-d: 0.9 / 0.45 GB instead of 1.8 GB; the same recall@10, but 2-3x slower searches and 5x
  slower builds with this faiss build: bench/RESULTS.md "Catalog scale"). An upsert
  whose vector equals the stored one within the storage's precision (``_TOLERANCE``) only sets
  the stock flag, so a restart that recomputes every vector leaves a loaded index as it is. GPU
  indexes keep a host copy of the vectors (their FAISS structures cannot always be read back).
* **Filtering.** Search asks FAISS for more than K (scaled by the share of ineligible entries and
  the exclude sets), drops removed / out-of-stock / excluded items, widens (x4) while rows lack
  K, and falls back to an exact scan over the stored vectors if widening reaches
  ``MAX_FETCH``: a row gets exactly ``min(k, eligible - excluded)`` items.
* **Exact search on CPU.** A flat CPU index is searched by one matrix product over FAISS's own
  copy of the vectors (read in place, no copy) and ``torch.topk``, in chunks of the catalog.
  ``exact_backend`` "numpy" takes the product through numpy's BLAS (the OpenBLAS in numpy's
  wheel), with one matrix-vector product per query below ``_GEMV_BELOW`` queries (a matrix
  product packs the whole block of item vectors on every call); "torch" through torch's (MKL in
  its x86 wheels); "auto" (the default) times both once per process on a small and a large batch
  and takes the faster (:func:`exact_product`); "faiss" is FAISS's own search, with the BLAS
  switch below. Which BLAS is fastest depends on the CPU: on one 2-core machine torch's product
  was 2-2.8x faster than FAISS's own search, on another (an AMD EPYC) numpy's was 1.1-2x faster
  than torch's, and torch's slower than FAISS's (``bench/flat_blas.py`` measures all three;
  ``bench/RESULTS.md``, Pipeline). Threads: the worker's ``torch_threads`` for all of them
  (:func:`streamrec.streams.tuning.set_compute_threads`).
* **Kind by size.** ``kind="auto"`` picks exact ``IndexFlatIP`` up to ``exact_max`` items and an
  approximate index above (HNSW on CPU, IVF on GPU). The kind is chosen when the structure is
  built (first upsert into an empty index, :meth:`ItemIndex.rebuild`, :meth:`ItemIndex.compact`),
  not on every upsert. A catalog loaded in small batches therefore starts flat; the owner calls
  :meth:`ItemIndex.retune` after its initial load and after later changes, which rebuilds in the
  background into the kind the size calls for (and drops tombstones once they outnumber live
  items). Back to flat only below ``exact_max / 2``, so a catalog hovering at the limit does not
  flip between kinds.
* **Swap.** :meth:`ItemIndex.rebuild` builds a whole new state off the lock (in a background
  thread by default), replays the upserts / removes / stock changes made since the call, and
  swaps the state reference under the write lock: searches see the old index or the new one,
  never a half-built one, and no change is lost.
* **Locking.** A readers-writer lock: searches run concurrently with each other, mutations and
  the swap are exclusive and short. GPU indexes are not thread-safe even for search, so GPU
  searches also take a plain lock.

>>> import numpy as np
>>> ix = ItemIndex(4, device="cpu")
>>> ix.upsert(["a", "b", "c"], np.eye(3, 4, dtype=np.float32))
>>> ix.set_in_stock(["a"], False)
>>> [[item for item, _ in row] for row in ix.search(np.array([[3, 2, 1, 0]]), k=2)]
[['b', 'c']]
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import faiss
import numpy as np

from streamrec.errors import CheckpointError
from streamrec.indexer.base import (
    RWLock,
    check_exclude,
    check_flags,
    check_ids,
    check_k,
    check_queries,
    check_vectors,
)
from streamrec.indexer.checkpoint import read_manifest, write_checkpoint

log = logging.getLogger(__name__)

KINDS = ("flat", "hnsw", "ivf")
DEVICES = ("auto", "cpu", "cuda")
#: Exact (flat) CPU search of at least this many queries at once goes through one BLAS matrix
#: product; smaller batches scan the vectors query by query. FAISS picks between the two by its
#: process-wide ``distance_compute_blas_threshold``, whose faiss 1.15 default (128,000) never took
#: BLAS for a worker's batches over a 12k catalog: BLAS is 1.6x faster there at 16 queries,
#: 2.4x at 50 and 3.6x at 256, and up to 8x slower for one query (``bench/flat_blas.py``,
#: bench/RESULTS.md, Pipeline). So every CPU search sets the switch for its own batch
#: (:func:`blas_threshold`); it is process-wide, so two threads searching at once may take each
#: other's path: a matter of speed, never of results. Searches restricted by an ``IDSelector``
#: (items out of stock) scan query by query in any case.
FLAT_BLAS_MIN_QUERIES = 12
_FAISS_BLAS_DEFAULT = int(faiss.cvar.distance_compute_blas_threshold)  # the library's own
_BLAS_ALWAYS, _BLAS_NEVER = 1, 1 << 30


def blas_threshold(kind: str | None, n_queries: int, min_queries: int = FLAT_BLAS_MIN_QUERIES) -> int:
    """The ``distance_compute_blas_threshold`` a CPU search of ``n_queries`` on a ``kind`` index
    runs with: BLAS always for flat batches of ``min_queries`` (default
    ``FLAT_BLAS_MIN_QUERIES``) or more, never for smaller ones, and the library's default for the
    other kinds (their coarse quantizers)."""
    if kind != "flat":
        return _FAISS_BLAS_DEFAULT
    return _BLAS_ALWAYS if n_queries >= min_queries else _BLAS_NEVER


MAX_FETCH = 2048  # most candidates asked of FAISS per query before the exact fallback (GPU k cap)
_EXACT = object()  # _params() sentinel: scan exactly instead of asking FAISS
_CATCH_UP_BATCH = 64  # replay logged changes off the lock until fewer than this remain
_IVF_TRAIN_PER_LIST = 64  # k-means training sample: this many vectors per inverted list
HNSW_STORAGES = ("flat", "fp16", "sq8")
#: how a flat CPU index is searched (module docstring): "auto" takes the faster of the two products
#: on this CPU (:func:`exact_product`), "numpy" / "torch" one of them, "faiss" FAISS's own search.
EXACT_BACKENDS = ("auto", "numpy", "torch", "faiss")
PRODUCTS = ("numpy", "torch")  # the matrix products of the exact search (:func:`product_scores`)
_TOPK_CELLS = 1 << 24  # exact search by a product: scores per chunk (64 MiB of float32) ...
_TOPK_MIN_CHUNK = 1024  # ... and at least this many catalog rows per chunk
_SQ = {"fp16": "QT_fp16", "sq8": "QT_8bit"}
#: numpy exact search: fewer queries than this are scored by one matrix-vector product each. A
#: matrix product (GEMM) packs the whole block of item vectors on every call, which at 1-3 queries
#: costs more than one pass over it per query (``bench/flat_blas.py``).
_GEMV_BELOW = 4
_AUTO: dict[str, Any] = {}  # "product" and "seconds": what exact_product("auto") measured, once per process
_AUTO_LOCK = threading.Lock()
_BUILD_CHUNK = 65_536  # vectors read / added per step of a rebuild (bounds its transient memory)
_TRAIN_SAMPLE = 65_536  # vectors a scalar quantiser is trained on
_LAYOUT = 2  # checkpoint layout: 2 = slots are FAISS rows / ids, nothing removed from FAISS


#: an upsert keeps the stored vector when ``max|stored - new| <= tol * (1 + max|new|)``: float32
#: noise of a recomputation (batch-dependent BLAS rounding), or the storage's rounding
_TOLERANCE = {"float32": 1e-5, "fp16": 2e-3, "sq8": 2e-2}


def _gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a GPU (the one capability check)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def select_device(device: str) -> str:
    """Resolve ``"auto" | "cpu" | "cuda"`` to the device used: "cuda" only where a GPU is usable."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return "cpu"
    gpu = _gpu_available()
    if device == "cuda" and not gpu:
        raise ValueError(
            "device='cuda' but this faiss build has no GPU support or sees no GPU "
            "(install faiss-gpu, or use device='auto' / 'cpu')"
        )
    return "cuda" if gpu else "cpu"


def choose_kind(requested: str, n: int, exact_max: int, device: str) -> str:
    """The index kind for ``n`` items: flat up to ``exact_max``, then HNSW (CPU) or IVF (GPU)."""
    if requested != "auto":
        return requested
    if n <= exact_max:
        return "flat"
    return "ivf" if device == "cuda" else "hnsw"


def placement(kind: str, device: str) -> str:
    """Where an index of ``kind`` lives: FAISS has GPU flat and IVF indexes, HNSW stays on CPU."""
    return "cuda" if device == "cuda" and kind in ("flat", "ivf") else "cpu"


_SERIALS = itertools.count()


@dataclass(eq=False)
class _State:
    """Everything one search needs; replaced as a whole by a rebuild (slot = FAISS id = row)."""

    dim: int
    index: Any = None  # faiss index over slots; None while the index is empty
    kind: str | None = None
    device: str = "cpu"
    keep_vecs: bool = False  # hold a host copy of the vectors (GPU indexes); else FAISS has them
    ids: dict[str, int] = field(default_factory=dict)  # external id -> live slot
    ext: np.ndarray = None  # type: ignore[assignment]  # (cap,) object: slot -> id, None if dead
    vecs: np.ndarray | None = None  # (cap, dim) float32 host copy, only with keep_vecs
    live: np.ndarray = None  # type: ignore[assignment]  # (cap,) bool: slot holds a current vector
    stock: np.ndarray = None  # type: ignore[assignment]  # (cap,) bool
    tags: np.ndarray = None  # type: ignore[assignment]  # (cap,) int64: the caller's tag of the slot's vector
    elig: np.ndarray = None  # type: ignore[assignment]  # (cap,) bool: live & stock
    n_slots: int = 0
    n_live: int = 0
    n_elig: int = 0
    version: int = 0  # bumped by every change of ``elig``
    changes: int = 0  # bumped by every change of the contents (vectors, ids, stock flags)
    serial: int = field(default_factory=lambda: next(_SERIALS))  # tells states apart (unsaved())
    _selector: tuple | None = None  # (version, packed bitmap, faiss.IDSelectorBitmap)

    def __post_init__(self) -> None:
        if self.live is None:
            self._resize(0)

    def _resize(self, cap: int) -> None:
        n = self.n_slots
        ext = np.full(cap, None, dtype=object)
        vecs = np.empty((cap, self.dim), np.float32) if self.keep_vecs else None
        tags = np.zeros(cap, np.int64)
        flags = [np.zeros(cap, bool) for _ in range(3)]
        if n:
            ext[:n], tags[:n] = self.ext[:n], self.tags[:n]
            if vecs is not None and self.vecs is not None:
                vecs[:n] = self.vecs[:n]
            for new, old in zip(flags, (self.live, self.stock, self.elig)):
                new[:n] = old[:n]
        self.ext, self.vecs, self.tags = ext, vecs, tags
        self.live, self.stock, self.elig = flags

    def alloc(self, m: int) -> np.ndarray:
        if self.n_slots + m > len(self.live):
            self._resize(max(self.n_slots + m, 2 * len(self.live), 1024))
        slots = np.arange(self.n_slots, self.n_slots + m, dtype=np.int64)
        self.n_slots += m
        return slots

    def recount(self) -> None:
        self.n_live = int(np.count_nonzero(self.live[: self.n_slots]))
        self.n_elig = int(np.count_nonzero(self.elig[: self.n_slots]))
        self.version += 1

    def selector(self) -> Any:
        """An IDSelectorBitmap of the eligible slots, cached until the next change."""
        cached = self._selector
        if cached is None or cached[0] != self.version:
            bits = np.packbits(self.elig[: self.n_slots], bitorder="little")
            cached = (self.version, bits, faiss.IDSelectorBitmap(self.n_slots, faiss.swig_ptr(bits)))
            self._selector = cached  # one attribute store: concurrent readers see old or new
        return cached[2]


def product_scores(product: str, block: np.ndarray, queries: np.ndarray) -> Any:
    """The scores (queries x vectors) of C-contiguous float32 ``queries`` (q, d) against ``block``
    (n, d), as a float32 torch tensor, through numpy's BLAS ("numpy": one matrix-vector product
    per query below ``_GEMV_BELOW`` queries) or torch's ("torch")."""
    import torch

    if product == "numpy":
        if len(queries) < _GEMV_BELOW:
            sc = np.empty((len(queries), len(block)), np.float32)
            for j in range(len(queries)):
                np.matmul(block, queries[j], out=sc[j])
        else:
            sc = queries @ block.T
        return torch.from_numpy(sc)
    if product == "torch":
        return torch.from_numpy(queries) @ torch.from_numpy(block).T
    raise ValueError(f"product must be one of {PRODUCTS}, got {product!r}")


def time_products(
    rows: int = 8192, dim: int = 256, batches: Sequence[int] = (2, 64), reps: int = 3
) -> dict[str, float]:
    """Seconds each product takes to score a small and a large batch (``batches`` queries, as a
    worker's batches at low and high rates) against ``rows`` random vectors: for each batch the
    best of ``reps`` runs, the products interleaved so that a change of load hits both; summed."""
    rng = np.random.default_rng(0)
    block = rng.standard_normal((rows, dim), dtype=np.float32)
    best = {p: [math.inf] * len(batches) for p in PRODUCTS}
    for b, n in enumerate(batches):
        queries = rng.standard_normal((n, dim), dtype=np.float32)
        for _ in range(reps):
            for p in PRODUCTS:
                t0 = time.perf_counter()
                product_scores(p, block, queries)
                best[p][b] = min(best[p][b], time.perf_counter() - t0)
    return {p: float(sum(v)) for p, v in best.items()}


def exact_product(backend: str) -> str:
    """The product an exact search with ``backend`` uses: "numpy" or "torch" as asked; for "auto"
    the faster of the two on this CPU, measured once per process (:func:`time_products`, about
    0.1 s, in the thread of the first search, so with its thread settings) and logged. Which
    is faster depends on the CPU's BLAS support (``bench/RESULTS.md``, Pipeline, twelfth session)."""
    if backend in PRODUCTS:
        return backend
    if backend != "auto":
        raise ValueError(f"backend must be 'auto' or one of {PRODUCTS}, got {backend!r}")
    with _AUTO_LOCK:
        if "product" not in _AUTO:
            secs = time_products()
            _AUTO["seconds"] = secs
            _AUTO["product"] = min(PRODUCTS, key=secs.__getitem__)
            log.info(
                "exact search product: %s (%s)",
                _AUTO["product"],
                ", ".join(f"{p} {s * 1e3:.2f} ms" for p, s in secs.items()),
            )
        return str(_AUTO["product"])


class ItemIndex:
    """Candidate retrieval over the live catalog; see the module docstring for the design.

    Options: ``kind`` "auto" | "flat" | "hnsw" | "ivf"; ``exact_max`` the largest catalog "auto"
    serves exactly; ``hnsw_m`` / ``hnsw_ef_construction`` shape the HNSW graph (build time,
    memory) and ``hnsw_ef_search`` trades q/s for recall; ``ivf_nlist`` inverted lists (capped
    at n/39) and ``ivf_nprobe`` lists scanned per query; ``device`` "auto" | "cpu" | "cuda";
    ``flat_blas_min_queries`` the smallest exact CPU batch searched by one BLAS product
    (:data:`FLAT_BLAS_MIN_QUERIES`).
    Defaults come from ``bench/retrieval.py`` (bench/RESULTS.md): at 1M items, 64-d, HNSW
    M=32, efConstruction=200, efSearch=128 gave recall@10 0.958 at ~30x the exact q/s.
    Search-time options (``hnsw_ef_search``, ``ivf_nprobe``, ``flat_blas_min_queries``) may be
    changed on a live index.
    """

    def __init__(
        self,
        dim: int,
        *,
        kind: str = "auto",
        exact_max: int = 50_000,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 200,
        hnsw_ef_search: int = 128,
        ivf_nlist: int = 1024,
        ivf_nprobe: int = 64,
        device: str = "auto",
        hnsw_storage: str = "flat",
        flat_blas_min_queries: int = FLAT_BLAS_MIN_QUERIES,
        exact_backend: str = "auto",
    ) -> None:
        if exact_backend not in EXACT_BACKENDS:
            raise ValueError(f"exact_backend must be one of {EXACT_BACKENDS}, got {exact_backend!r}")
        if hnsw_storage not in HNSW_STORAGES:
            raise ValueError(f"hnsw_storage must be one of {HNSW_STORAGES}, got {hnsw_storage!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if kind not in ("auto", *KINDS):
            raise ValueError(f"kind must be one of {('auto', *KINDS)}, got {kind!r}")
        for name, value in (
            ("exact_max", exact_max),
            ("hnsw_m", hnsw_m),
            ("hnsw_ef_construction", hnsw_ef_construction),
            ("hnsw_ef_search", hnsw_ef_search),
            ("ivf_nlist", ivf_nlist),
            ("ivf_nprobe", ivf_nprobe),
            ("flat_blas_min_queries", flat_blas_min_queries),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "exact_max" else 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.dim = dim
        self.exact_max, self.hnsw_m = exact_max, hnsw_m
        self.hnsw_ef_construction, self.hnsw_ef_search = hnsw_ef_construction, hnsw_ef_search
        self.ivf_nlist, self.ivf_nprobe = ivf_nlist, ivf_nprobe
        self.flat_blas_min_queries = flat_blas_min_queries
        self.exact_backend = exact_backend
        self._kind_req = kind
        self.hnsw_storage = hnsw_storage
        self._device = select_device(device)
        self._keep_vecs = self._device == "cuda"
        self.saved_meta: dict[str, Any] = {}  # the ``meta`` a loaded checkpoint was saved with
        self._saved: tuple[int, int] | None = None  # (state serial, changes) when last saved / loaded
        self._gpu_res: Any = None
        self._lock = RWLock()
        self._gpu_lock = threading.Lock()
        self._logs: list[list[tuple]] = []  # one change log per rebuild in flight
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._retune_lock = threading.Lock()
        self._state = _State(dim, keep_vecs=self._keep_vecs)
        self.kind: str = choose_kind(kind, 0, exact_max, self._device)
        self.device: str = placement(self.kind, self._device)

    # ---- reads ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._state.n_live

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._state.ids

    @property
    def exact_product(self) -> str:
        """The matrix product ("numpy" or "torch") of this index's exact searches on CPU: the
        flat kind's with ``exact_backend`` "auto", "numpy" or "torch", and every kind's exact
        fallback ("auto"'s choice under "faiss")."""
        return exact_product("auto" if self.exact_backend == "faiss" else self.exact_backend)

    def is_eligible(self, item_id: str) -> bool:
        st = self._state
        slot = st.ids.get(item_id)
        return slot is not None and bool(st.elig[slot])

    def search(
        self, queries: np.ndarray, k: int, *, exclude: Sequence[Collection[str]] | None = None
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` eligible items per query, best first: ``[[(item_id, score), ...], ...]``.

        Each row holds exactly ``min(k, eligible items not in that row's exclude set)`` items.
        """
        q = check_queries(queries, self.dim)
        k = check_k(k)
        exclude = check_exclude(exclude, len(q))
        with self._lock.read():
            return self._search(self._state, q, k, exclude)

    def _search(
        self, st: _State, q: np.ndarray, k: int, exclude: Sequence[Collection[str]] | None
    ) -> list[list[tuple[str, float]]]:
        nq = len(q)
        out: list[list[tuple[str, float]]] = [[] for _ in range(nq)]
        if st.n_elig == 0 or nq == 0:
            return out
        excl: list[np.ndarray | None] = [None] * nq
        target = np.full(nq, min(k, st.n_elig), dtype=np.int64)
        max_ex = 0
        if exclude is not None:
            for i, ex in enumerate(exclude):
                if not ex:
                    continue
                slots = np.fromiter((st.ids[x] for x in ex if x in st.ids), dtype=np.int64)
                slots = slots[st.elig[slots]]
                if slots.size:
                    excl[i] = slots
                    target[i] = min(k, st.n_elig - slots.size)
                    max_ex = max(max_ex, slots.size)
        ntotal = st.index.ntotal
        if st.kind == "flat" and st.device == "cpu" and self.exact_backend != "faiss":
            self._exact(st, q, np.arange(nq), target, excl, out, product=self.exact_product)
            return out
        frac = st.n_elig / ntotal  # share of the FAISS entries that may be returned
        cap = min(ntotal, MAX_FETCH)
        # On CPU, FAISS itself skips ineligible slots (an IDSelector bitmap) and the search
        # effort (HNSW ef, IVF nprobe) grows by 1/frac so filtering does not starve recall.
        # FAISS GPU indexes take no selector: ask them for proportionally more instead.
        select = st.device == "cpu"
        fetch = k + max_ex if select else math.ceil((k + max_ex) / frac * 1.2) + 2
        fetch = min(cap, fetch)
        rows = np.arange(nq)
        while True:
            params = self._params(st, fetch, frac) if select else None
            if params is _EXACT:
                break  # an exact scan is cheaper than this graph search
            D, I = self._faiss_search(st, q[rows], fetch, params)  # noqa: E741 - FAISS's (D, I) naming
            mask = I >= 0
            mask &= st.elig[np.where(mask, I, 0)]
            for r, qi in enumerate(rows):
                ex_slots = excl[qi]
                if ex_slots is not None:
                    mask[r] &= ~np.isin(I[r], ex_slots)
            want = target[rows]
            done = mask.sum(axis=1) >= want
            keep = mask & (np.cumsum(mask, axis=1) <= want[:, None])
            for r in np.flatnonzero(done).tolist():
                sel = np.flatnonzero(keep[r])
                out[rows[r]] = list(zip(st.ext[I[r, sel]].tolist(), D[r, sel].tolist()))
            rows = rows[~done]
            if rows.size == 0:
                return out
            if fetch >= cap:
                break
            fetch = min(cap, fetch * 4)
        log.debug("exact scan for %d of %d queries (k=%d, eligible=%d of %d)", rows.size, nq, k, st.n_elig, ntotal)
        self._exact(st, q, rows, target, excl, out, product=self.exact_product)
        return out

    def _params(self, st: _State, fetch: int, frac: float) -> Any:
        """FAISS search parameters restricted to eligible slots; _EXACT where exact is cheaper."""
        sel = st.selector() if frac < 1.0 else None  # none needed: cheaper, and BLAS for flat
        # faiss's own stubs (1.15) lack SearchParametersHNSW and the keyword __init__ that faiss adds
        # to every SearchParameters class at runtime (it also keeps ``sel`` alive): hence the ignores.
        if st.kind == "hnsw":
            ef = math.ceil(max(self.hnsw_ef_search, fetch) / frac)
            if ef * self.hnsw_m >= st.index.ntotal:  # the graph walk would touch about everything
                return _EXACT
            return faiss.SearchParametersHNSW(sel=sel, efSearch=ef)  # type: ignore[attr-defined]
        if st.kind == "ivf":
            nlist = faiss.extract_index_ivf(st.index).nlist
            nprobe = min(nlist, math.ceil(self.ivf_nprobe / frac))
            return faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)  # type: ignore[call-arg]
        return None if sel is None else faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]

    def _faiss_search(self, st: _State, q: np.ndarray, k: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
        if st.device == "cuda":
            with self._gpu_lock:
                return st.index.search(q, k)
        faiss.cvar.distance_compute_blas_threshold = blas_threshold(st.kind, len(q), self.flat_blas_min_queries)
        return st.index.search(q, k, params=params)

    def vectors(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of ``ids``: ``(len(ids), dim)`` float32 and a bool array, False
        where an id is not indexed (its row is zeros). Read from FAISS on CPU (fp16 / sq8 HNSW
        storage: the stored, rounded values)."""
        with self._lock.read():
            st = self._state
            slots = np.fromiter((st.ids.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
            found = slots >= 0
            out = np.zeros((len(ids), self.dim), np.float32)
            if found.any():
                out[found] = self._read(st, slots[found])
            return out, found

    @staticmethod
    def _read(st: _State, slots: np.ndarray) -> np.ndarray:
        """(len(slots), dim) float32 vectors of ``slots`` (live or dead: FAISS never drops a row)."""
        if st.vecs is not None:
            return st.vecs[slots]
        if st.index is None or slots.size == 0:
            return np.zeros((slots.size, st.dim), np.float32)
        return st.index.reconstruct_batch(np.ascontiguousarray(slots, dtype=np.int64))

    @staticmethod
    def _read_range(st: _State, start: int, end: int) -> np.ndarray:
        """Vectors of slots ``start..end-1`` (dead ones may be zeros or stale)."""
        if st.vecs is not None:
            return st.vecs[start:end]
        if isinstance(st.index, faiss.IndexFlat):  # CPU flat: FAISS's own array, read in place
            n = int(st.index.ntotal)
            return faiss.rev_swig_ptr(st.index.get_xb(), n * st.dim).reshape(n, st.dim)[start:end]
        out = np.zeros((end - start, st.dim), np.float32)
        if st.index is not None and end > start:
            st.index.reconstruct_n(start, end - start, out)
        return out

    @classmethod
    def _exact(
        cls,
        st: _State,
        q: np.ndarray,
        rows: np.ndarray,
        target: np.ndarray,
        excl: list[np.ndarray | None],
        out: list[list[tuple[str, float]]],
        *,
        product: str = "numpy",
    ) -> None:
        """Brute force over the stored vectors for ``rows`` of ``q``: a flat CPU index's search
        (``exact_backend`` "torch" or "numpy") and every kind's guaranteed fallback. One matrix
        product per chunk of slots (``product``: torch's BLAS or numpy's; the score matrix under
        64 MiB; read in place where FAISS allows, so no full copy of the vectors is made),
        ineligible and excluded slots at -inf, ``torch.topk`` per chunk, merged across chunks."""
        import torch

        n = st.n_slots
        kk = int(min(target[rows].max(), n))
        if kk <= 0:
            return
        qn = np.ascontiguousarray(q[rows])
        ineligible = None if st.n_elig == n else torch.from_numpy(~st.elig[:n])
        chunk = max(_TOPK_MIN_CHUNK, min(_BUILD_CHUNK, _TOPK_CELLS // max(1, rows.size)))
        best_s: torch.Tensor | None = None
        best_i: torch.Tensor | None = None
        for start in range(0, n, chunk):
            end = min(n, start + chunk)
            scores = product_scores(product, cls._read_range(st, start, end), qn)  # (rows, end - start)
            if ineligible is not None:
                scores.masked_fill_(ineligible[start:end], -math.inf)
            for j, qi in enumerate(rows):
                ex = excl[qi]
                if ex is not None:
                    ex = ex[(ex >= start) & (ex < end)]
                    if ex.size:
                        scores[j, torch.from_numpy(ex - start)] = -math.inf
            s, i = torch.topk(scores, min(kk, end - start), dim=1)
            i += start
            if best_s is not None and best_i is not None:
                merged = torch.cat([best_s, s], dim=1)
                s, m = torch.topk(merged, min(kk, merged.shape[1]), dim=1)
                i = torch.gather(torch.cat([best_i, i], dim=1), 1, m)
            best_s, best_i = s, i
        assert best_s is not None and best_i is not None
        top_s, top_i = best_s.numpy(), best_i.numpy()
        for j, qi in enumerate(rows):
            t = int(target[qi])
            out[qi] = list(zip(st.ext[top_i[j, :t]].tolist(), top_s[j, :t].tolist()))

    # ---- incremental changes -------------------------------------------------------------
    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        *,
        in_stock: bool | Sequence[bool] = True,
        tags: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Add new items or replace their vectors; ``in_stock`` is set for every id given.

        A repeated id keeps its last vector. An unchanged vector only updates the stock flag
        (and the tag). ``tags``: one int64 per id that the caller keeps with the vector (e.g. a
        fingerprint of what it was computed from; :meth:`tags` reads it back, and it is saved).
        """
        ids = check_ids(ids)
        vecs = check_vectors(vectors, n=len(ids), dim=self.dim)
        tag_arr = np.zeros(len(ids), np.int64) if tags is None else np.asarray(tags, dtype=np.int64)
        if tag_arr.shape != (len(ids),):
            raise ValueError(f"tags must hold one int per id ({len(ids)}), got shape {tag_arr.shape}")
        flags = check_flags(in_stock, len(ids))
        if len(set(ids)) != len(ids):
            last = {item: i for i, item in enumerate(ids)}
            keep = np.fromiter(sorted(last.values()), dtype=np.int64, count=len(last))
            ids, vecs, flags, tag_arr = [ids[i] for i in keep], vecs[keep], flags[keep], tag_arr[keep]
        if ids:
            self._mutate(("upsert", ids, vecs.copy(), flags, tag_arr))

    def tags(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The tags given with the vectors of ``ids`` (see :meth:`upsert`; 0 if none was) and a
        bool array, False where an id is not indexed."""
        st = self._state
        slots = np.fromiter((st.ids.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        found = slots >= 0
        out = np.zeros(len(ids), np.int64)
        out[found] = st.tags[slots[found]]
        return out, found

    def remove(self, ids: Sequence[str]) -> None:
        """Remove items for good (unknown ids are ignored); they are never returned again."""
        ids = check_ids(ids)
        if ids:
            self._mutate(("remove", ids))

    def set_in_stock(self, ids: Sequence[str], in_stock: bool) -> None:
        """Mark items (un)available; out-of-stock items stay indexed but are never returned."""
        ids = check_ids(ids)
        if ids:
            self._mutate(("stock", ids, bool(in_stock)))

    def _mutate(self, op: tuple) -> None:
        with self._lock.write():
            self._apply(self._state, op)
            for change_log in self._logs:
                change_log.append(op)

    def _apply(self, st: _State, op: tuple) -> None:
        if op[0] == "upsert":
            self._upsert(st, *op[1:])
        elif op[0] == "remove":
            slots = np.array([s for s in (st.ids.pop(i, None) for i in op[1]) if s is not None], dtype=np.int64)
            if slots.size:
                self._drop(st, slots)
                st.changes += 1
        else:
            slots = np.array([st.ids[i] for i in op[1] if i in st.ids], dtype=np.int64)
            st.changes += int(np.count_nonzero(st.stock[slots] != op[2]))
            st.stock[slots] = op[2]
            st.elig[slots] = op[2]
        st.recount()

    def _upsert(self, st: _State, ids: list[str], vecs: np.ndarray, flags: np.ndarray, tags: np.ndarray) -> None:
        if st.index is None:
            self._new_structure(st, vecs)
        old = np.array([st.ids.get(i, -1) for i in ids], dtype=np.int64)
        same = np.zeros(len(ids), bool)
        known = np.flatnonzero(old >= 0)
        if known.size:
            stored, new = self._read(st, old[known]), vecs[known]
            tol = _TOLERANCE["float32" if st.vecs is not None or st.kind != "hnsw" else self.hnsw_storage_of(st)]
            same[known] = np.abs(stored - new).max(axis=1) <= tol * (1 + np.abs(new).max(axis=1))
            keep = old[same]
            st.changes += int(np.count_nonzero(st.stock[keep] != flags[same]))
            st.stock[keep] = flags[same]
            st.elig[keep] = flags[same]
            st.tags[keep] = tags[same]
        changed = np.flatnonzero(~same)
        if not changed.size:
            return
        st.changes += 1
        dead = old[changed]
        dead = dead[dead >= 0]
        if dead.size:
            self._drop(st, dead)
        slots = st.alloc(changed.size)
        if st.vecs is not None:
            st.vecs[slots] = vecs[changed]
        st.live[slots] = True
        st.tags[slots] = tags[changed]
        st.stock[slots] = flags[changed]
        st.elig[slots] = flags[changed]
        names = [ids[j] for j in changed]
        st.ext[slots] = np.array(names, dtype=object)
        st.ids.update(zip(names, slots.tolist()))
        self._add(st, np.ascontiguousarray(vecs[changed]), slots)

    @staticmethod
    def hnsw_storage_of(st: _State) -> str:
        """How ``st``'s HNSW index stores its vectors: "float32", "fp16" or "sq8"."""
        if not isinstance(st.index, faiss.IndexHNSW):
            return "float32"
        storage = faiss.downcast_index(st.index.storage)
        if isinstance(storage, faiss.IndexScalarQuantizer):
            return "fp16" if storage.sq.qtype == faiss.ScalarQuantizer.QT_fp16 else "sq8"
        return "float32"

    @staticmethod
    def _add(st: _State, vecs: np.ndarray, slots: np.ndarray) -> None:
        """Add ``vecs`` as ``slots`` (consecutive, from ``ntotal`` on, for the kinds without ids)."""
        if isinstance(st.index, (faiss.IndexFlat, faiss.IndexHNSW)):
            assert slots.size == 0 or int(slots[0]) == st.index.ntotal, "slots must be the next rows"
            st.index.add(vecs)
        else:
            st.index.add_with_ids(vecs, slots)

    @staticmethod
    def _drop(st: _State, slots: np.ndarray) -> None:
        """Kill ``slots``: a tombstone (the FAISS row stays, so a slot is always its row / id)."""
        st.live[slots] = False
        st.elig[slots] = False
        st.ext[slots] = None

    # ---- building FAISS structures -------------------------------------------------------
    def _gpu(self) -> Any:
        if self._gpu_res is None:
            self._gpu_res = faiss.StandardGpuResources()
        return self._gpu_res

    def _new_structure(self, st: _State, train: np.ndarray, kind: str | None = None, n: int | None = None) -> None:
        """Give ``st`` an empty (trained) index; its kind is chosen from ``n`` (default
        ``len(train)``); ``train`` is a sample of the vectors to come."""
        n = len(train) if n is None else n
        kind = kind or choose_kind(self._kind_req, n, self.exact_max, self._device)
        where = placement(kind, self._device)
        index: faiss.Index
        if kind == "flat":
            if where == "cuda":
                index = faiss.IndexIDMap2(faiss.index_cpu_to_gpu(self._gpu(), 0, faiss.IndexFlatIP(self.dim)))
            else:
                index = faiss.IndexFlatIP(self.dim)  # slots are rows: no id map
        elif kind == "hnsw":
            hnsw: faiss.IndexHNSW
            if self.hnsw_storage == "flat":
                hnsw = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            else:
                qtype = getattr(faiss.ScalarQuantizer, _SQ[self.hnsw_storage])
                hnsw = faiss.IndexHNSWSQ(self.dim, qtype, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                hnsw.train(np.ascontiguousarray(train[:_TRAIN_SAMPLE], dtype=np.float32))
            hnsw.hnsw.efConstruction = self.hnsw_ef_construction
            index = hnsw  # slots are rows: no id map
        else:
            nlist = max(1, min(self.ivf_nlist, n // 39))
            quantizer = faiss.IndexFlatIP(self.dim)
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.cp.min_points_per_centroid = 1  # small catalogs: no warning, nlist is capped
            sample = train
            if len(train) > nlist * _IVF_TRAIN_PER_LIST:
                pick = np.random.default_rng(0).choice(len(train), nlist * _IVF_TRAIN_PER_LIST, replace=False)
                sample = train[np.sort(pick)]
            ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
            ivf.nprobe = min(self.ivf_nprobe, nlist)
            if where == "cuda":  # the GPU copy keeps nprobe
                index = faiss.index_cpu_to_gpu(self._gpu(), 0, ivf)
            else:
                # reconstruct by id (vectors(), rebuilds); faiss's stubs (1.15) lack DirectMap
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
                index = ivf
        if where == "cpu":
            self._set_search_params(index, kind)
        st.index, st.kind, st.device = index, kind, where

    def _set_search_params(self, index: Any, kind: str) -> None:
        if kind == "hnsw":
            # downcast_index returns the concrete class; the stubs say Index
            hnsw = cast(faiss.IndexHNSW, faiss.downcast_index(getattr(index, "index", index)))
            hnsw.hnsw.efSearch = self.hnsw_ef_search
        elif kind == "ivf":
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = min(self.ivf_nprobe, ivf.nlist)

    def _build_state(
        self,
        ids: list[str],
        vecs: np.ndarray | Callable[[np.ndarray], np.ndarray],
        flags: np.ndarray,
        kind: str | None = None,
        tags: np.ndarray | None = None,
    ) -> _State:
        """A complete new state over ``ids`` (``tags``: theirs, default 0); ``vecs`` is their (n, dim) array or a reader
        ``positions -> vectors`` (an old state's FAISS rows), read in chunks so that a rebuild
        never holds a second full copy. No lock taken."""
        n = len(ids)
        read = vecs if callable(vecs) else (lambda pos, a=vecs: a[pos])
        st = _State(
            self.dim,
            keep_vecs=self._keep_vecs,
            ids=dict(zip(ids, range(n))),
            ext=np.array([*ids, None], dtype=object)[:n],
            live=np.ones(n, bool),
            stock=flags.copy(),
            elig=flags.copy(),
            tags=np.zeros(n, np.int64) if tags is None else np.asarray(tags, np.int64).copy(),
            n_slots=n,
        )
        st.vecs = np.empty((n, self.dim), np.float32) if self._keep_vecs else None
        if n:
            kind = kind or choose_kind(self._kind_req, n, self.exact_max, self._device)
            sample = np.arange(n)
            want = (
                (0 if self.hnsw_storage == "flat" else _TRAIN_SAMPLE)
                if kind == "hnsw"
                else max(self.ivf_nlist, 1) * _IVF_TRAIN_PER_LIST
                if kind == "ivf"
                else 0
            )
            if n > want:
                sample = np.sort(np.random.default_rng(0).choice(n, want, replace=False))
            self._new_structure(st, read(sample) if want else np.empty((0, self.dim), np.float32), kind, n)
            for start in range(0, n, _BUILD_CHUNK):
                pos = np.arange(start, min(n, start + _BUILD_CHUNK))
                v = np.ascontiguousarray(read(pos), dtype=np.float32)
                if st.vecs is not None:
                    st.vecs[pos] = v
                self._add(st, v, pos.astype(np.int64))
        else:
            st.kind = choose_kind(self._kind_req, 0, self.exact_max, self._device)
            st.device = placement(st.kind, self._device)
        st.recount()
        return st

    def _reader(self, st: _State, slots: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """Read the vectors of ``slots[positions]`` from ``st`` under the read lock (a slot's
        vector never changes and FAISS never drops a row, so chunks may be read apart)."""

        def read(pos: np.ndarray) -> np.ndarray:
            with self._lock.read():
                return self._read(st, slots[pos])

        return read

    # ---- rebuild and swap ----------------------------------------------------------------
    def rebuild(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        *,
        in_stock: Sequence[bool] | None = None,
        background: bool = True,
    ) -> concurrent.futures.Future | None:
        """Replace the whole index (new model version) and swap it in atomically.

        ``in_stock=None`` keeps the current stock flag of known ids (new ids: in stock).
        Changes made after this call are replayed onto the new index before the swap. With
        ``background=True`` returns a Future (its ``result()`` re-raises a failed build);
        otherwise builds in the calling thread and returns None. Rebuilds run one at a time.
        """
        ids = check_ids(ids, unique=True)
        vecs = check_vectors(vectors, n=len(ids), dim=self.dim).copy()
        flags = None if in_stock is None else check_flags(in_stock, len(ids))
        return self._start_rebuild(ids, vecs, flags, None, background)

    def wanted_kind(self) -> str:
        """The kind the current size calls for (``auto``: with hysteresis, see the module doc)."""
        if self._kind_req != "auto":
            return self._kind_req
        n, kind = self._state.n_live, self._state.kind or self.kind
        if kind == "flat":
            return choose_kind("auto", n, self.exact_max, self._device)
        return "flat" if n <= self.exact_max // 2 else kind

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of the index by part, read from the arrays and FAISS structures (the id -> slot
        dict and FAISS's own hash maps are not counted: the bench's RSS covers them)."""
        st = self._state
        arrays = st.live.nbytes + st.stock.nbytes + st.elig.nbytes + st.ext.nbytes + st.tags.nbytes
        arrays += 0 if st.vecs is None else st.vecs.nbytes
        return {"index_arrays": int(arrays), "index_faiss": _faiss_bytes(st.index, self.dim)}

    def unsaved(self) -> bool:
        """True when the contents changed since the last :meth:`save` or :meth:`load` (or were
        never saved)."""
        st = self._state
        return self._saved != (st.serial, st.changes)

    def ids(self) -> list[str]:
        """The ids indexed now (in stock or not)."""
        return list(self._state.ids)

    def stored_as(self) -> str:
        """How the vectors are stored: "float32", or "fp16" / "sq8" (an HNSW over quantised ones)."""
        return self.hnsw_storage_of(self._state)

    def rebuilding(self) -> bool:
        """True while a rebuild is in flight (its change log is open)."""
        return bool(self._logs)

    def retune(self, *, background: bool = True) -> concurrent.futures.Future | None:
        """Rebuild from the live items if the kind should change (catalog crossed the limit) or
        tombstones outnumber live items; None when nothing is due or a rebuild is in flight.
        Searches and changes go on meanwhile; changes are replayed before the swap."""
        with self._retune_lock:  # check-then-start is one step
            with self._lock.read():
                st = self._state
                if self._logs or st.index is None:
                    return None
                want = self.wanted_kind()
                dead = st.n_slots - st.n_live  # tombstones (HNSW, GPU) and dead array rows
                if want == st.kind and dead <= max(st.n_live, 4096):
                    return None
                live = np.flatnonzero(st.live[: st.n_slots])
                ids, flags = st.ext[live].tolist(), st.stock[live]
            log.info(
                "index retune: kind=%s -> %s items=%d dead_slots=%d background=%s",
                st.kind,
                want,
                len(ids),
                dead,
                background,
            )
            return self._start_rebuild(ids, self._reader(st, live), flags, want, background)

    def compact(self, *, background: bool = False) -> concurrent.futures.Future | None:
        """Rebuild from the live items only: drops tombstones and re-picks the kind by size."""
        with self._lock.read():
            st = self._state
            live = np.flatnonzero(st.live[: st.n_slots])
            ids, flags = st.ext[live].tolist(), st.stock[live]
        return self._start_rebuild(ids, self._reader(st, live), flags, None, background)

    def _start_rebuild(
        self,
        ids: list[str],
        vecs: np.ndarray | Callable[[np.ndarray], np.ndarray],
        flags: np.ndarray | None,
        kind: str | None,
        background: bool,
    ) -> concurrent.futures.Future | None:
        change_log: list[tuple] = []
        with self._lock.write():
            self._logs.append(change_log)
        job = partial(self._rebuild_job, ids, vecs, flags, kind, change_log)
        if not background:
            job()
            return None
        with self._pool_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="streamrec-index-rebuild"
                )
            return self._pool.submit(job)

    def _rebuild_job(
        self,
        ids: list[str],
        vecs: np.ndarray | Callable[[np.ndarray], np.ndarray],
        flags: np.ndarray | None,
        kind: str | None,
        change_log: list[tuple],
    ) -> None:
        try:
            if flags is None:
                cur = self._state
                stock = cur.stock
                flags = np.fromiter(
                    (True if (s := cur.ids.get(i)) is None else bool(stock[s]) for i in ids), dtype=bool, count=len(ids)
                )
            cur = self._state
            tags = np.fromiter(
                (0 if (s := cur.ids.get(i)) is None else int(cur.tags[s]) for i in ids), dtype=np.int64, count=len(ids)
            )
            new = self._build_state(ids, vecs, flags, kind, tags)
            done = 0
            while len(change_log) - done >= _CATCH_UP_BATCH:  # catch up off the lock
                end = len(change_log)
                for op in change_log[done:end]:
                    self._apply(new, op)
                done = end
            with self._lock.write():
                for op in change_log[done:]:
                    self._apply(new, op)
                self._state = new
                self.kind = new.kind or self.kind
                self.device = new.device
                self._logs = [c for c in self._logs if c is not change_log]
            log.info(
                "index swapped: kind=%s device=%s items=%d eligible=%d replayed=%d",
                new.kind,
                new.device,
                new.n_live,
                new.n_elig,
                len(change_log),
            )
        except BaseException:
            log.exception("index rebuild failed; the old index stays in use")
            raise
        finally:
            with self._lock.write():
                self._logs = [c for c in self._logs if c is not change_log]

    def close(self) -> None:
        """Wait for rebuilds in flight and stop the background thread."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> ItemIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- persistence ---------------------------------------------------------------------
    def save(self, directory: str | Path, *, meta: dict[str, Any] | None = None) -> None:
        """Write the FAISS index (which holds the vectors), id map and flags with
        a sha256 manifest (no pickle). ``meta`` (JSON) is kept in the manifest and comes back as
        :attr:`saved_meta` of :meth:`load` (the worker stores its model version there).

        Holds the read lock while writing: searches go on, mutations wait. A GPU index is not
        written; its host copy of the vectors is, and :meth:`load` rebuilds from it.
        """
        with self._lock.read():
            st = self._state
            n = st.n_slots
            state = {
                "slots": st.ext[:n].tolist(),
                "in_stock": (st.stock[:n].astype(np.uint8) + ord("0")).tobytes().decode(),
            }
            writers: dict[str, Callable[[Path], object]] = {
                "state.json": lambda p: p.write_text(json.dumps(state), encoding="utf-8"),
                "tags.npy": lambda p: _save_npy(p, st.tags[:n]),
            }
            has_index = st.index is not None and st.device == "cpu"
            if has_index:
                writers["index.faiss"] = lambda p: faiss.write_index(st.index, str(p))
            elif st.vecs is not None:
                host = st.vecs[:n]
                writers["vectors.npy"] = lambda p: _save_npy(p, host)
            write_checkpoint(
                directory,
                writers,
                {
                    "dim": self.dim,
                    "kind": st.kind,
                    "layout": _LAYOUT,
                    "hnsw_storage": self.hnsw_storage,
                    "n_slots": n,
                    "n_live": st.n_live,
                    "index_ntotal": int(st.index.ntotal) if has_index else None,
                    "meta": meta or {},
                },
            )
            self._saved = (st.serial, st.changes)

    @classmethod
    def load(cls, directory: str | Path, **kwargs: Any) -> ItemIndex:
        """Load what :meth:`save` wrote; ``kwargs`` are constructor options (search params,
        device, the kind for future rebuilds). Raises CheckpointError on missing/corrupt files."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        try:
            dim, n, kind = int(manifest["dim"]), int(manifest["n_slots"]), manifest["kind"]
            layout = int(manifest.get("layout", 1))
            meta = manifest.get("meta") or {}
            if not isinstance(meta, dict):
                raise TypeError("meta is not an object")
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"index checkpoint at {directory}: bad manifest: {e}") from e
        if kwargs.setdefault("dim", dim) != dim:
            raise CheckpointError(f"index at {directory} has dim {dim}, not {kwargs['dim']}")
        self = cls(**kwargs)  # bad options raise ValueError here, not CheckpointError
        files = manifest["files"]
        try:
            if "state.json" not in files:
                raise CheckpointError("manifest lacks state.json")
            state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
            slots, stock_s = state["slots"], state["in_stock"]
            if len(slots) != n or len(stock_s) != n:
                raise CheckpointError("slots / flags disagree with the manifest")
            ext = np.array([*slots, None], dtype=object)[:n]
            live = np.array([s is not None for s in slots], dtype=bool)
            stock = np.frombuffer(stock_s.encode(), dtype=np.uint8) == ord("1")
            ids = {s: i for i, s in enumerate(slots) if s is not None}
            if len(ids) != int(live.sum()) or not all(isinstance(s, str) for s in ids):
                raise CheckpointError("the id map repeats an id or holds a non-string")
            if kind is not None and kind not in KINDS:
                raise CheckpointError(f"unknown index kind {kind!r}")
            vecs = None
            if "vectors.npy" in files:
                vecs = np.load(directory / "vectors.npy", allow_pickle=False)
                if vecs.dtype != np.float32 or vecs.shape != (n, dim):
                    raise CheckpointError("vectors.npy disagrees with the manifest")
            index = None
            if layout == _LAYOUT and "index.faiss" in files:
                index = faiss.read_index(str(directory / "index.faiss"))
                if index.d != dim or index.ntotal != n:
                    raise CheckpointError(
                        f"index.faiss holds {index.ntotal} vectors of dim {index.d}; expected {n} of dim {dim}"
                    )
            tags = np.zeros(n, np.int64)
            if "tags.npy" in files:
                tags = np.load(directory / "tags.npy", allow_pickle=False)
                if tags.dtype != np.int64 or tags.shape != (n,):
                    raise CheckpointError("tags.npy disagrees with the manifest")
            if vecs is None and index is None and kind is not None and n:
                raise CheckpointError("the checkpoint holds neither index.faiss nor vectors.npy")
            if kind is None or n == 0:
                st = self._build_state([], np.empty((0, dim), np.float32), np.empty(0, bool))
            elif index is not None and placement(kind, self._device) == "cpu" and vecs is None:
                st = _State(dim, ext=ext, live=live, stock=stock, elig=live & stock, tags=tags, ids=ids, n_slots=n)
                self._set_search_params(index, kind)
                st.index, st.kind, st.device = index, kind, "cpu"
                if self._keep_vecs:
                    st.vecs = index.reconstruct_n(0, n)
            else:  # saved from a GPU, an older layout, or loading onto a GPU: rebuild from vectors
                if vecs is None:
                    assert index is not None
                    vecs = index.reconstruct_n(0, n)
                keep = np.flatnonzero(live)
                st = self._build_state([str(ext[i]) for i in keep], vecs[keep], stock[keep], kind, tags[keep])
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, OSError, AttributeError) as e:
            raise CheckpointError(f"index checkpoint at {directory} is unusable: {e}") from e
        st.recount()
        self._state = st
        self.kind, self.device = st.kind or self.kind, st.device
        self.saved_meta = meta
        self._saved = (st.serial, st.changes)
        return self


def load_saved(directory: str | Path, *, meta: dict[str, Any], **options: Any) -> tuple[ItemIndex | None, str]:
    """The index saved in ``directory`` if it was saved with ``meta`` (e.g. the model version and
    dimension it holds vectors of) and fits ``options`` (constructor options: a forced ``kind``,
    ``hnsw_storage``); else ``(None, reason)``. A missing or corrupt checkpoint is a reason too,
    never an error: the caller builds a fresh index instead."""
    try:
        index = ItemIndex.load(directory, **options)
    except CheckpointError as e:
        return None, str(e)
    saved = index.saved_meta
    for key, want in meta.items():
        if saved.get(key) != want:
            return None, f"saved for {key}={saved.get(key)!r}, not {want!r}"
    kind = options.get("kind", "auto")
    if kind != "auto" and index.kind != kind:
        return None, f"saved as kind={index.kind}, the settings ask for {kind}"
    storage = {"flat": "float32"}.get(options.get("hnsw_storage", "flat"), options.get("hnsw_storage", "flat"))
    if index.kind == "hnsw" and index.stored_as() != storage:
        return None, f"saved with hnsw storage {index.stored_as()}, the settings ask for {storage}"
    return index, "ok"


def _faiss_bytes(index: Any, dim: int) -> int:
    """Vector storage, graph links and id maps held by a FAISS index (CPU kinds; 0 if none)."""
    if index is None:
        return 0
    n = int(index.ntotal)
    total = n * 8  # IndexIDMap2's id map (int64 per entry)
    if not isinstance(index, faiss.IndexIDMap2):
        total = 0  # flat and HNSW on CPU: slots are rows, no id map
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexHNSW):
        h = inner.hnsw
        links = h.neighbors.size() * 4 + h.offsets.size() * 8  # type: ignore[attr-defined]  # SWIG members faiss's stubs omit
        storage = faiss.downcast_index(inner.storage)
        code = storage.code_size if isinstance(storage, faiss.IndexScalarQuantizer) else dim * 4
        total += n * code + links + h.levels.size() * 4
    elif isinstance(inner, faiss.IndexFlat):
        total += n * dim * 4
    else:
        try:
            ivf = faiss.extract_index_ivf(index)
            total += n * (dim * 4 + 8) + ivf.nlist * dim * 4
        except RuntimeError:
            total += n * dim * 4
    return int(total)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def load_or_rebuild(
    directory: str | Path, rebuild_fn: Callable[[], tuple[Sequence[str], np.ndarray]], **kwargs: Any
) -> ItemIndex:
    """Load the index saved in ``directory``; if it is missing or corrupt, rebuild it from
    ``rebuild_fn()`` (the catalog: ``(ids, vectors)`` or ``(ids, vectors, in_stock)``), save it
    back, and return it, so a bad file costs a rebuild rather than a crash."""
    try:
        return ItemIndex.load(directory, **kwargs)
    except CheckpointError as e:
        log.warning("index checkpoint unusable, rebuilding from the catalog: dir=%s reason=%s", directory, e)
    got = rebuild_fn()
    ids, vectors = got[0], np.asarray(got[1], dtype=np.float32)
    in_stock = got[2] if len(got) > 2 else None
    if vectors.ndim != 2:
        raise ValueError(f"rebuild_fn must return (n, dim) vectors, got shape {vectors.shape}")
    kwargs.setdefault("dim", vectors.shape[1])
    index = ItemIndex(**kwargs)
    index.rebuild(ids, vectors, in_stock=in_stock, background=False)
    try:
        index.save(directory)
    except OSError as e:
        log.error("could not save the rebuilt index: dir=%s error=%s", directory, e)
    return index

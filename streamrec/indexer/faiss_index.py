"""FAISS retrieval of item candidates, keyed by the shop's external item ids.

Design, and why:

* **Slots.** Every vector that enters FAISS gets a fresh int64 *slot* id (``add_with_ids``); the
  external-id <-> slot map, the vectors, and the live / in-stock flags live beside the FAISS
  index in numpy arrays. A changed vector gets a new slot and the old slot dies, so HNSW (which
  cannot ``remove_ids``) and GPU indexes use the same path as flat / IVF: dead slots are
  *tombstones*, filtered out at search time and dropped when the index is rebuilt or compacted.
  Flat and IVF on CPU also remove the dead slot from FAISS at once.
* **Filtering.** Search asks FAISS for more than K (scaled by the share of ineligible entries and
  the exclude sets), drops removed / out-of-stock / excluded items, widens (x4) while rows lack
  K, and falls back to an exact numpy scan over the stored vectors if widening reaches
  ``MAX_FETCH``: a row gets exactly ``min(k, eligible - excluded)`` items.
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
import json
import logging
import math
import threading
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
    dedupe_last,
)
from streamrec.indexer.checkpoint import read_manifest, write_checkpoint

log = logging.getLogger(__name__)

KINDS = ("flat", "hnsw", "ivf")
DEVICES = ("auto", "cpu", "cuda")
MAX_FETCH = 2048  # most candidates asked of FAISS per query before the exact fallback (GPU k cap)
_EXACT = object()  # _params() sentinel: scan exactly instead of asking FAISS
_CATCH_UP_BATCH = 64  # replay logged changes off the lock until fewer than this remain
_IVF_TRAIN_PER_LIST = 64  # k-means training sample: this many vectors per inverted list


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


@dataclass(eq=False)
class _State:
    """Everything one search needs; replaced as a whole by a rebuild (slot = FAISS id = row)."""

    dim: int
    index: Any = None  # faiss index over slots; None while the index is empty
    kind: str | None = None
    device: str = "cpu"
    supports_remove: bool = False  # remove dead slots from FAISS at once (else tombstones)
    ids: dict[str, int] = field(default_factory=dict)  # external id -> live slot
    ext: np.ndarray = None  # type: ignore[assignment]  # (cap,) object: slot -> id, None if dead
    vecs: np.ndarray = None  # type: ignore[assignment]  # (cap, dim) float32
    live: np.ndarray = None  # type: ignore[assignment]  # (cap,) bool: slot holds a current vector
    stock: np.ndarray = None  # type: ignore[assignment]  # (cap,) bool
    elig: np.ndarray = None  # type: ignore[assignment]  # (cap,) bool: live & stock
    n_slots: int = 0
    n_live: int = 0
    n_elig: int = 0
    version: int = 0  # bumped by every change of ``elig``
    _selector: tuple | None = None  # (version, packed bitmap, faiss.IDSelectorBitmap)

    def __post_init__(self) -> None:
        if self.vecs is None:
            self._resize(0)

    def _resize(self, cap: int) -> None:
        n = self.n_slots
        ext = np.full(cap, None, dtype=object)
        vecs = np.empty((cap, self.dim), np.float32)
        flags = [np.zeros(cap, bool) for _ in range(3)]
        if n:
            ext[:n], vecs[:n] = self.ext[:n], self.vecs[:n]
            for new, old in zip(flags, (self.live, self.stock, self.elig)):
                new[:n] = old[:n]
        self.ext, self.vecs = ext, vecs
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


class ItemIndex:
    """Candidate retrieval over the live catalog; see the module docstring for the design.

    Options: ``kind`` "auto" | "flat" | "hnsw" | "ivf"; ``exact_max`` the largest catalog "auto"
    serves exactly; ``hnsw_m`` / ``hnsw_ef_construction`` shape the HNSW graph (build time,
    memory) and ``hnsw_ef_search`` trades q/s for recall; ``ivf_nlist`` inverted lists (capped
    at n/39) and ``ivf_nprobe`` lists scanned per query; ``device`` "auto" | "cpu" | "cuda".
    Defaults come from ``bench/retrieval.py`` (bench/RESULTS.md): at 1M items, 64-d, HNSW
    M=32, efConstruction=200, efSearch=128 gave recall@10 0.958 at ~30x the exact q/s.
    Search-time options (``hnsw_ef_search``, ``ivf_nprobe``) may be changed on a live index.
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
    ) -> None:
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
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "exact_max" else 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.dim = dim
        self.exact_max, self.hnsw_m = exact_max, hnsw_m
        self.hnsw_ef_construction, self.hnsw_ef_search = hnsw_ef_construction, hnsw_ef_search
        self.ivf_nlist, self.ivf_nprobe = ivf_nlist, ivf_nprobe
        self._kind_req = kind
        self._device = select_device(device)
        self._gpu_res: Any = None
        self._lock = RWLock()
        self._gpu_lock = threading.Lock()
        self._logs: list[list[tuple]] = []  # one change log per rebuild in flight
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._retune_lock = threading.Lock()
        self._state = _State(dim)
        self.kind: str = choose_kind(kind, 0, exact_max, self._device)
        self.device: str = placement(self.kind, self._device)

    # ---- reads ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._state.n_live

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._state.ids

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
        self._exact(st, q, rows, target, excl, out)
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
        return st.index.search(q, k, params=params)

    @staticmethod
    def _exact(
        st: _State,
        q: np.ndarray,
        rows: np.ndarray,
        target: np.ndarray,
        excl: list[np.ndarray | None],
        out: list[list[tuple[str, float]]],
    ) -> None:
        """Brute force over the stored vectors for ``rows`` of ``q`` (the guaranteed path)."""
        n = st.n_slots
        vecs, elig = st.vecs[:n], st.elig[:n]
        kk = int(min(target[rows].max(), n))
        if kk <= 0:
            return
        chunk = max(1, (1 << 24) // n)  # bound the (chunk, n) score matrix to 64 MiB
        for start in range(0, rows.size, chunk):
            rr = rows[start : start + chunk]
            scores = np.where(elig, q[rr] @ vecs.T, -np.inf)  # (c, n)
            for j, qi in enumerate(rr):
                if excl[qi] is not None:
                    scores[j, excl[qi]] = -np.inf
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            best = np.take_along_axis(scores, top, axis=1)
            order = np.argsort(-best, axis=1, kind="stable")
            top, best = np.take_along_axis(top, order, 1), np.take_along_axis(best, order, 1)
            for j, qi in enumerate(rr):
                t = int(target[qi])
                out[qi] = list(zip(st.ext[top[j, :t]].tolist(), best[j, :t].astype(np.float32).tolist()))

    # ---- incremental changes -------------------------------------------------------------
    def upsert(self, ids: Sequence[str], vectors: np.ndarray, *, in_stock: bool | Sequence[bool] = True) -> None:
        """Add new items or replace their vectors; ``in_stock`` is set for every id given.

        A repeated id keeps its last vector. An unchanged vector only updates the stock flag.
        """
        ids = check_ids(ids)
        vecs = check_vectors(vectors, n=len(ids), dim=self.dim)
        ids, vecs, flags = dedupe_last(ids, vecs, check_flags(in_stock, len(ids)))
        if ids:
            self._mutate(("upsert", ids, vecs.copy(), flags))

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
        else:
            slots = np.array([st.ids[i] for i in op[1] if i in st.ids], dtype=np.int64)
            st.stock[slots] = op[2]
            st.elig[slots] = op[2]
        st.recount()

    def _upsert(self, st: _State, ids: list[str], vecs: np.ndarray, flags: np.ndarray) -> None:
        if st.index is None:
            self._new_structure(st, vecs)
        old = np.array([st.ids.get(i, -1) for i in ids], dtype=np.int64)
        same = np.zeros(len(ids), bool)
        known = np.flatnonzero(old >= 0)
        if known.size:
            same[known] = (st.vecs[old[known]] == vecs[known]).all(axis=1)
            keep = old[same]
            st.stock[keep] = flags[same]
            st.elig[keep] = flags[same]
        changed = np.flatnonzero(~same)
        if not changed.size:
            return
        dead = old[changed]
        dead = dead[dead >= 0]
        if dead.size:
            self._drop(st, dead)
        slots = st.alloc(changed.size)
        st.vecs[slots] = vecs[changed]
        st.live[slots] = True
        st.stock[slots] = flags[changed]
        st.elig[slots] = flags[changed]
        names = [ids[j] for j in changed]
        st.ext[slots] = np.array(names, dtype=object)
        st.ids.update(zip(names, slots.tolist()))
        st.index.add_with_ids(vecs[changed], slots)

    def _drop(self, st: _State, slots: np.ndarray) -> None:
        st.live[slots] = False
        st.elig[slots] = False
        st.ext[slots] = None
        if st.supports_remove:
            if st.kind == "ivf":  # the hashtable direct map needs an IDSelectorArray
                sel = faiss.IDSelectorArray(slots.size, faiss.swig_ptr(slots))
                st.index.remove_ids(sel)
            else:
                st.index.remove_ids(slots)

    # ---- building FAISS structures -------------------------------------------------------
    def _gpu(self) -> Any:
        if self._gpu_res is None:
            self._gpu_res = faiss.StandardGpuResources()
        return self._gpu_res

    def _new_structure(self, st: _State, train: np.ndarray, kind: str | None = None) -> None:
        """Give ``st`` an empty (trained) index; its kind is chosen from ``len(train)``."""
        kind = kind or choose_kind(self._kind_req, len(train), self.exact_max, self._device)
        where = placement(kind, self._device)
        index: faiss.Index
        if kind == "flat":
            inner: faiss.Index = faiss.IndexFlatIP(self.dim)
            if where == "cuda":
                inner = faiss.index_cpu_to_gpu(self._gpu(), 0, inner)
            index = faiss.IndexIDMap2(inner)
        elif kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = self.hnsw_ef_construction
            index = faiss.IndexIDMap2(hnsw)
        else:
            n = len(train)
            nlist = max(1, min(self.ivf_nlist, n // 39))
            quantizer = faiss.IndexFlatIP(self.dim)
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.cp.min_points_per_centroid = 1  # small catalogs: no warning, nlist is capped
            sample = train
            if n > nlist * _IVF_TRAIN_PER_LIST:
                pick = np.random.default_rng(0).choice(n, nlist * _IVF_TRAIN_PER_LIST, replace=False)
                sample = train[np.sort(pick)]
            ivf.train(sample)
            ivf.nprobe = min(self.ivf_nprobe, nlist)
            if where == "cuda":  # the GPU copy keeps nprobe; it has no remove_ids (tombstones)
                index = faiss.index_cpu_to_gpu(self._gpu(), 0, ivf)
            else:
                # O(1) remove_ids; faiss's stubs (1.15) lack DirectMap
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
                index = ivf
        if where == "cpu":
            self._set_search_params(index, kind)
        st.index, st.kind, st.device = index, kind, where
        st.supports_remove = where == "cpu" and kind != "hnsw"

    def _set_search_params(self, index: Any, kind: str) -> None:
        if kind == "hnsw":
            # downcast_index returns the concrete class; the stubs say Index
            hnsw = cast(faiss.IndexHNSW, faiss.downcast_index(index.index))
            hnsw.hnsw.efSearch = self.hnsw_ef_search
        elif kind == "ivf":
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = min(self.ivf_nprobe, ivf.nlist)

    def _build_state(self, ids: list[str], vecs: np.ndarray, flags: np.ndarray, kind: str | None = None) -> _State:
        """A complete new state over ``vecs`` (owned by the caller no more); no lock taken."""
        n = len(ids)
        st = _State(
            self.dim,
            ids=dict(zip(ids, range(n))),
            ext=np.array([*ids, None], dtype=object)[:n],
            vecs=vecs,
            live=np.ones(n, bool),
            stock=flags.copy(),
            elig=flags.copy(),
            n_slots=n,
        )
        if n:
            self._new_structure(st, vecs, kind)
            st.index.add_with_ids(vecs, np.arange(n, dtype=np.int64))
        else:
            st.kind = choose_kind(self._kind_req, 0, self.exact_max, self._device)
            st.device = placement(st.kind, self._device)
        st.recount()
        return st

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
        arrays = st.vecs.nbytes + st.live.nbytes + st.stock.nbytes + st.elig.nbytes + st.ext.nbytes
        return {"index_arrays": int(arrays), "index_faiss": _faiss_bytes(st.index, self.dim)}

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
                ids, vecs, flags = st.ext[live].tolist(), st.vecs[live], st.stock[live]
            log.info(
                "index retune: kind=%s -> %s items=%d dead_slots=%d background=%s",
                st.kind,
                want,
                len(ids),
                dead,
                background,
            )
            return self._start_rebuild(ids, vecs, flags, want, background)

    def compact(self, *, background: bool = False) -> concurrent.futures.Future | None:
        """Rebuild from the live items only: drops tombstones and re-picks the kind by size."""
        with self._lock.read():
            st = self._state
            live = np.flatnonzero(st.live[: st.n_slots])
            ids, vecs, flags = st.ext[live].tolist(), st.vecs[live], st.stock[live]
        return self._start_rebuild(ids, vecs, flags, None, background)

    def _start_rebuild(
        self, ids: list[str], vecs: np.ndarray, flags: np.ndarray | None, kind: str | None, background: bool
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
        self, ids: list[str], vecs: np.ndarray, flags: np.ndarray | None, kind: str | None, change_log: list[tuple]
    ) -> None:
        try:
            if flags is None:
                cur = self._state
                stock = cur.stock
                flags = np.fromiter(
                    (True if (s := cur.ids.get(i)) is None else bool(stock[s]) for i in ids), dtype=bool, count=len(ids)
                )
            new = self._build_state(ids, vecs, flags, kind)
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
    def save(self, directory: str | Path) -> None:
        """Write index, id map, vectors and flags with a sha256 manifest (no pickle).

        Holds the read lock while writing: searches go on, mutations wait. A GPU index is not
        written; :meth:`load` rebuilds it from the saved vectors (fast on a GPU).
        """
        with self._lock.read():
            st = self._state
            n = st.n_slots
            state = {
                "slots": st.ext[:n].tolist(),
                "in_stock": (st.stock[:n].astype(np.uint8) + ord("0")).tobytes().decode(),
            }
            writers: dict[str, Callable[[Path], object]] = {
                "vectors.npy": lambda p: _save_npy(p, st.vecs[:n]),
                "state.json": lambda p: p.write_text(json.dumps(state), encoding="utf-8"),
            }
            has_index = st.index is not None and st.device == "cpu"
            if has_index:
                writers["index.faiss"] = lambda p: faiss.write_index(st.index, str(p))
            write_checkpoint(
                directory,
                writers,
                {
                    "dim": self.dim,
                    "kind": st.kind,
                    "n_slots": n,
                    "n_live": st.n_live,
                    "index_ntotal": int(st.index.ntotal) if has_index else None,
                },
            )

    @classmethod
    def load(cls, directory: str | Path, **kwargs: Any) -> ItemIndex:
        """Load what :meth:`save` wrote; ``kwargs`` are constructor options (search params,
        device, the kind for future rebuilds). Raises CheckpointError on missing/corrupt files."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        try:
            dim, n, kind = int(manifest["dim"]), int(manifest["n_slots"]), manifest["kind"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"index checkpoint at {directory}: bad manifest: {e}") from e
        if kwargs.setdefault("dim", dim) != dim:
            raise CheckpointError(f"index at {directory} has dim {dim}, not {kwargs['dim']}")
        self = cls(**kwargs)  # bad options raise ValueError here, not CheckpointError
        try:
            if "vectors.npy" not in manifest["files"] or "state.json" not in manifest["files"]:
                raise CheckpointError("manifest lacks vectors.npy or state.json")
            vecs = np.load(directory / "vectors.npy", allow_pickle=False)
            state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
            slots, stock_s = state["slots"], state["in_stock"]
            if vecs.dtype != np.float32 or vecs.shape != (n, dim) or len(slots) != n or len(stock_s) != n:
                raise CheckpointError("vectors / slots / flags disagree with the manifest")
            ext = np.array([*slots, None], dtype=object)[:n]
            live = np.array([s is not None for s in slots], dtype=bool)
            stock = np.frombuffer(stock_s.encode(), dtype=np.uint8) == ord("1")
            ids = {s: i for i, s in enumerate(slots) if s is not None}
            if len(ids) != int(live.sum()) or not all(isinstance(s, str) for s in ids):
                raise CheckpointError("the id map repeats an id or holds a non-string")
            st = _State(
                dim,
                ids=ids,
                ext=ext,
                vecs=np.ascontiguousarray(vecs),
                live=live,
                stock=stock,
                elig=live & stock,
                n_slots=n,
            )
            st.recount()
            if kind is not None and kind not in KINDS:
                raise CheckpointError(f"unknown index kind {kind!r}")
            if kind is None or n == 0:
                st = self._build_state([], np.empty((0, dim), np.float32), np.empty(0, bool))
            elif "index.faiss" in manifest["files"] and placement(kind, self._device) == "cpu":
                index = faiss.read_index(str(directory / "index.faiss"))
                expect = n if kind == "hnsw" else st.n_live
                if index.d != dim or index.ntotal != expect:
                    raise CheckpointError(
                        f"index.faiss holds {index.ntotal} vectors of dim {index.d}; expected {expect} of dim {dim}"
                    )
                self._set_search_params(index, kind)
                st.index, st.kind, st.device = index, kind, "cpu"
                st.supports_remove = kind != "hnsw"
            else:  # saved from a GPU, or loading onto one: rebuild the structure from vectors
                keep = np.flatnonzero(live)
                self._new_structure(st, vecs[keep], kind)
                st.index.add_with_ids(vecs[keep], keep.astype(np.int64))
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, OSError, AttributeError) as e:
            raise CheckpointError(f"index checkpoint at {directory} is unusable: {e}") from e
        self._state = st
        self.kind, self.device = st.kind or self.kind, st.device
        return self


def _faiss_bytes(index: Any, dim: int) -> int:
    """Vector storage, graph links and id maps held by a FAISS index (CPU kinds; 0 if none)."""
    if index is None:
        return 0
    n = int(index.ntotal)
    total = n * 8  # IndexIDMap2's id map (int64 per entry)
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if isinstance(inner, faiss.IndexHNSW):
        h = inner.hnsw
        links = h.neighbors.size() * 4 + h.offsets.size() * 8  # type: ignore[attr-defined]  # SWIG members faiss's stubs omit
        total += n * dim * 4 + links + h.levels.size() * 4
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

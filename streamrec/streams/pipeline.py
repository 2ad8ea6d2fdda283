"""Worker runtime state shared by the agents and web views: model, index, catalog, metrics.

Model and index calls run on one dedicated executor thread, so the event loop keeps consuming,
heartbeating and serving HTTP while a batch is scored, and the model is never used by two
threads at once. A new model version is built on a second thread (:meth:`Pipeline.swap_model`)
and swapped in on the model thread between two scoring calls.

Which items exist: the catalog topic is the source of truth. ``Pipeline.catalog`` holds one
small int per item (a hash of its text and the stock flag: enough to tell what changed, and no
parsed item kept; with its key about 130 B per item in ``bench/catalog_scale.py``); every item
in it is in the index and in the model's
vocabulary, and a deleted item leaves all three (its model row is freed). The model's vocabulary
may also hold trained items the catalog never listed (they still encode user histories).

The index kind follows the catalog: after the initial load (:meth:`Pipeline.catalog_loaded`) and
after every later change the index is asked to :meth:`~streamrec.indexer.ItemIndex.retune`, which
rebuilds it in the background (flat -> HNSW on CPU / IVF on GPU past ``index_exact_max``) while
events keep being served and catalog changes keep being applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from streamrec.errors import CheckpointError
from streamrec.schemas import TS_MIN_MS, CatalogItem, Profile, ShopEvent
from streamrec.schemas.contracts import WeightedName
from streamrec.serving.metrics import Metrics
from streamrec.serving.popularity import Popularity
from streamrec.serving.profile import ProfileWeights, ranking_signature
from streamrec.serving.scorer import Explained, Scorer, ServingModel
from streamrec.serving.state import UserState
from streamrec.serving.swap import (
    Built,
    Change,
    SwapStats,
    VersionLoader,
    apply_changes,
    build_serving_model,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Most items a worker accepts into its catalog (a bound on memory for hostile catalog topics).
MAX_CATALOG_ITEMS = 5_000_000
#: While a new version is built, logged catalog changes are replayed onto it off the model thread
#: until fewer than this remain; the rest is replayed on the model thread right before the swap.
SWAP_CATCH_UP = 64
#: Niceness added to the swap thread (Linux: per thread), so that on a busy machine the scoring
#: thread and the event loop win the CPU over a version being built.
SWAP_THREAD_NICE = 10


def _swap_thread_init(threads: int | None = None) -> None:
    """Initializer of the swap thread: lower its priority (best effort; only Linux has per-thread
    nice), and give it the model thread's compute threads."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SWAP_THREAD_NICE)
    _thread_compute(threads)


def _thread_compute(threads: int | None) -> None:
    """Initializer of the model thread: FAISS's OpenMP thread count is a per-thread setting
    (``omp_set_num_threads`` sets it for the calling thread only; a new thread starts from the
    default, all cores), so the worker's ``torch_threads`` must be set in the thread that searches,
    not only in the one that started the worker (``bench/RESULTS.md``, Pipeline, seventh session)."""
    if threads:
        from streamrec.streams.tuning import set_compute_threads

        set_compute_threads(threads)


MEMORY_EVERY_S = 10.0  # catalog batches measure the memory gauges at most this often


def catalog_entry(item: CatalogItem) -> int:
    """What the pipeline remembers of an item: 63 bits of its text's hash and the stock flag."""
    h = int.from_bytes(hashlib.blake2b(item.text().encode("utf-8"), digest_size=8).digest(), "big")
    return (h >> 1) << 1 | int(item.in_stock)


def index_tags(entries: list[int], norms: np.ndarray) -> np.ndarray:
    """The tag the pipeline keeps with each item's vector in the index: 31 bits of its text's
    hash (from :func:`catalog_entry`) and the float32 bits of its title norm, so that a restart
    over a saved index can take an unchanged item back without embedding its title."""
    text = np.fromiter(entries, dtype=np.uint64, count=len(entries)) >> np.uint64(33)
    bits = np.asarray(norms, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((text << np.uint64(32)) | bits).astype(np.int64)


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Pipeline:
    def __init__(
        self,
        *,
        recommender: Any,
        index: Any,
        top_k: int,
        history_len: int,
        purchased_max: int,
        trigger_types: tuple[str, ...],
        profile_weights: ProfileWeights | None = None,
        profile_publish_s: float = 0.0,
        new_index: Callable[[int], Any] | None = None,
        loader: VersionLoader | None = None,
        index_dir: Path | None = None,
        compute_threads: int | None = None,
    ) -> None:
        """``compute_threads``: torch and FAISS threads of the model and swap threads (None: the
        libraries' defaults, as in tests and benchmarks that set them themselves)."""
        self.metrics = Metrics()
        #: where the index is saved after a rebuild and at a clean stop (None: never saved)
        self.index_dir = index_dir
        self._save_lock = threading.Lock()
        self.scorer = Scorer(
            recommender=recommender, index=index, popularity=Popularity(), top_k=top_k, stage=self.metrics.stage
        )
        self.profile_weights = profile_weights or ProfileWeights()
        if not 0.0 <= profile_publish_s <= 7 * 24 * 3600.0:
            raise ValueError(f"profile_publish_s must be in 0..604800, got {profile_publish_s}")
        #: a user's Profile message is re-sent with the same ranking at most this often (0: always)
        self.profile_publish_ms = int(profile_publish_s * 1000)
        self.history_len = history_len
        self.purchased_max = purchased_max
        self.trigger_types = frozenset(trigger_types)
        self.catalog: dict[str, int] = {}  # item id -> catalog_entry(item)
        # item id -> index into _groups: the (category, brand) the interest profile counts. One
        # shared tuple per distinct pair (a catalog has few), so an item costs one dict slot.
        self.item_group: dict[str, int] = {}
        self._groups: list[tuple[str, str]] = []
        self._group_ids: dict[tuple[str, str], int] = {}
        self.catalog_ready = asyncio.Event()
        self._memory_at = 0.0  # monotonic time of the last memory measurement
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="streamrec-model",
            initializer=_thread_compute,
            initargs=(compute_threads,),
        )
        # -- hot swap (see swap_model) --
        self.new_index = new_index  # dim -> an empty index with the worker's settings
        self.loader = loader  # how another version is loaded (None: this pipeline cannot swap)
        #: catalog changes applied while a version is built, in order (appended on the model thread)
        self._swap_logs: list[list[Change]] = []
        #: where a build reads the whole catalog: the worker app reads the compacted catalog topic
        #: (streams.catalog.read_catalog_topic); ``self.catalog`` keeps no texts
        self.catalog_source: Callable[[], Iterable[list[Change]]] | None = None
        self._swap_executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="streamrec-swap",
            initializer=_swap_thread_init,
            initargs=(compute_threads,),
        )
        self._swap_lock = asyncio.Lock()
        self.swap_pending: str | None = None  # the version being built

    @property
    def model(self) -> ServingModel:
        """The model + index now serving: ONE reference (see :class:`~streamrec.serving.scorer.Scorer`).

        A batch takes it once and uses it for scoring and for the version it reports; a hot swap
        replaces ``self.scorer.model`` between two batches.
        """
        return self.scorer.model

    @property
    def model_version(self) -> str:
        return self.scorer.model_version

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.submit(fn, *args)

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)`` on the model thread now (calls run one at a time, in the order
        submitted); await the returned future for its result."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- catalog -----------------------------------------------------------------------------

    def apply_catalog(self, changes: list[tuple[str, CatalogItem | None]]) -> None:
        """Apply catalog upserts/deletions (runs on the model thread): embed new or changed
        items from their text and put them in the index; drop deleted ones everywhere."""
        model = self.scorer.model  # one reference for the whole batch (a swap may replace it)
        index = model.index
        recommender = model.recommender
        latest: dict[str, CatalogItem | None] = {}
        for item_id, item in changes:  # last write per item wins within a batch
            latest[item_id] = item
        # A deletion frees the item everywhere, also a trained item this run never listed (a
        # compacted topic may hold only its tombstone); unknown ids are ignored downstream.
        removed = [i for i, it in latest.items() if it is None]
        if removed:
            index.remove(removed)
            remove_items = getattr(model.recommender, "remove_items", None)
            if remove_items is not None:
                remove_items(removed)
            for i in removed:
                self.catalog.pop(i, None)
                self.item_group.pop(i, None)
        embed: list[CatalogItem] = []
        stock_only: dict[bool, list[str]] = {True: [], False: []}
        for item_id, item in latest.items():
            if item is None:
                continue
            entry = catalog_entry(item)
            old = self.catalog.get(item_id)
            if old is not None and old >> 1 == entry >> 1 and item_id in index:
                if old != entry:
                    stock_only[item.in_stock].append(item_id)
            elif len(self.catalog) < MAX_CATALOG_ITEMS or item_id in self.catalog:
                embed.append(item)
            else:
                log.warning("catalog full (%d items): dropping item=%s", MAX_CATALOG_ITEMS, item_id)
                continue
            self.catalog[item_id] = entry
            pair = (item.category, item.brand)
            gid = self._group_ids.get(pair)
            if gid is None:
                gid = self._group_ids[pair] = len(self._groups)
                self._groups.append(pair)
            self.item_group[item_id] = gid
        for flag, ids in stock_only.items():
            if ids:
                index.set_in_stock(ids, flag)
        if embed:
            embed = self._reuse_indexed(model, embed)
        if embed:
            ids = [it.item_id for it in embed]
            vecs = recommender.add_items([(it.item_id, it.text() or None) for it in embed])
            upsert_kw: dict[str, Any] = {"in_stock": [it.in_stock for it in embed]}
            if hasattr(index, "tags") and hasattr(recommender, "title_norms"):
                upsert_kw["tags"] = index_tags([self.catalog[i] for i in ids], recommender.title_norms(ids))
            index.upsert(ids, vecs, **upsert_kw)
        if self._swap_logs:  # a version being built replays these before its swap
            applied = [(i, it) for i, it in latest.items() if it is None or i in self.catalog]
            for change_log in self._swap_logs:
                change_log.extend(applied)
        self.metrics.catalog_items.set(len(index))
        if self.catalog_ready.is_set():
            self.retune_index(model)
        self._count_titles(model)
        if time.monotonic() - self._memory_at >= MEMORY_EVERY_S:
            self.update_memory()

    def _reuse_indexed(self, model: ServingModel, items: list[CatalogItem]) -> list[CatalogItem]:
        """Items the (loaded) index already holds with the same text, for this model version:
        the recommender takes them back (:meth:`~streamrec.model.inference.Recommender.
        register_items`) without reading their titles or computing vectors, and only their stock
        flags are set. Returns the other items (to embed as usual)."""
        index, rec = model.index, model.recommender
        vocab = getattr(rec, "vocab", None)
        if not hasattr(index, "tags") or not hasattr(rec, "register_items") or vocab is None:
            return items
        cand = [it for it in items if it.item_id not in vocab]
        if not cand:
            return items
        ids = [it.item_id for it in cand]
        tags, found = index.tags(ids)
        text = np.fromiter((self.catalog[i] for i in ids), dtype=np.uint64, count=len(ids)) >> np.uint64(33)
        ok = found & ((tags >> 32).astype(np.uint64) == text)
        if not ok.any():
            return items
        pick = np.flatnonzero(ok)
        reuse = [cand[k] for k in pick]
        norms = (tags[pick] & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
        if not rec.register_items([it.item_id for it in reuse], norms):
            return items
        for flag in (True, False):
            same = [it.item_id for it in reuse if it.in_stock is flag]
            if same:
                index.set_in_stock(same, flag)
        taken = {it.item_id for it in reuse}
        return [it for it in items if it.item_id not in taken]

    def catalog_loaded(self) -> None:
        """The initial catalog is in (runs on the model thread): drop what a loaded index holds
        that the catalog no longer lists, pick the exact search's product, then pick the index kind
        for the catalog's size."""
        index = self.scorer.index
        ids = getattr(index, "ids", None)
        if ids is not None:
            stale = [i for i in ids() if i not in self.catalog]
            if stale:
                index.remove(stale)
                log.info("index: removed items the catalog no longer lists count=%d", len(stale))
        # the exact search's product (timed here, once per process, with "auto"), not at the first batch
        product = getattr(index, "exact_product", "?")
        log.info(
            "catalog loaded items=%d index_kind=%s exact_product=%s",
            len(self.catalog),
            getattr(index, "kind", "?"),
            product,
        )
        self.retune_index()
        self.update_memory()

    def _count_titles(self, model: ServingModel) -> None:
        cache = getattr(model.recommender, "text_cache", None)
        if cache is not None:
            self.metrics.count_titles(embedded=cache.embedded, hits=cache.hits, seconds=cache.embed_seconds)

    def refresh_gauges(self) -> None:
        """Gauges read at scrape time on the event loop (plain attribute reads, no locks)."""
        index = self.scorer.index
        rebuilding = getattr(index, "rebuilding", None)
        self.metrics.set_index(
            kind=str(getattr(index, "kind", "")), rebuilding=bool(rebuilding()) if rebuilding else False
        )
        self.metrics.memory_bytes.labels(part="rss").set(rss_bytes())

    def update_memory(self) -> None:
        """Measure the parts' memory (on the model thread: the structures are not changing)."""
        self._memory_at = time.monotonic()
        for part, n in self.memory_bytes().items():
            self.metrics.memory_bytes.labels(part=part).set(n)

    def retune_index(self, model: ServingModel | None = None) -> None:
        model = model or self.scorer.model
        retune = getattr(model.index, "retune", None)
        if retune is not None:
            future = retune(background=True)  # None unless the kind is due to change
            if future is not None and self.index_dir is not None:
                # saved once rebuilt (on the rebuild thread), so a restart loads it
                future.add_done_callback(lambda f, m=model: f.exception() is None and self.save_index(m))

    def save_index(self, model: ServingModel | None = None) -> bool:
        """Save the serving index with the model version it holds vectors of (see
        :func:`streamrec.streams.app.saved_or_new_index`); False when not saved. A model that is
        no longer serving is not saved (its index is not the one a restart must load)."""
        model = model or self.scorer.model
        save = getattr(model.index, "save", None)
        if self.index_dir is None or save is None or model is not self.scorer.model:
            return False
        unsaved = getattr(model.index, "unsaved", None)
        if unsaved is not None and not unsaved():
            return False  # the saved copy is this one
        meta = {"model_version": str(model.recommender.version), "dim": int(model.recommender.dim)}
        t0 = time.perf_counter()
        try:
            with self._save_lock:
                save(self.index_dir, meta=meta)
        except OSError as exc:
            log.error("could not save the index dir=%s error=%s", self.index_dir, exc)
            return False
        log.info(
            "index saved kind=%s items=%d seconds=%.1f dir=%s",
            getattr(model.index, "kind", "?"),
            len(model.index),
            time.perf_counter() - t0,
            self.index_dir,
        )
        return True

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held per part of the worker, from the structures themselves, plus the RSS."""
        model = self.scorer.model
        out: dict[str, int] = {}
        for part in (model.recommender, model.index):
            fn = getattr(part, "memory_bytes", None)
            if fn is not None:
                out.update(fn())
        cache = getattr(model.recommender, "text_cache", None)
        if cache is not None and hasattr(cache, "disk_bytes"):
            out["text_cache_disk"] = cache.disk_bytes()
        out["catalog_dict"] = catalog_dict_bytes(self.catalog)
        out["rss"] = rss_bytes()
        return out

    # -- hot swap ----------------------------------------------------------------------------

    async def swap_model(self, version: str, path: str | Path) -> SwapStats | None:
        """Build ``version`` (checkpoint dir ``path``) off the hot path and swap it in; None when it
        is refused (logged and counted; the serving version keeps serving).

        1. On the model thread: start logging the catalog changes applied from now on.
        2. On the swap thread (lower priority): load and check the version, read the whole catalog
           (``catalog_source``: the compacted catalog topic from its beginning, as at a start),
           compute every live item's vector (titles already embedded are text-cache hits), build a
           new index with the
           worker's settings, and replay logged changes until few remain.
        3. On the model thread, between two scoring calls: replay the rest and replace
           ``scorer.model``. A batch takes that reference once, so it is scored and labelled by
           one version; events are never touched by a swap, so none is lost or answered twice.
        """
        if self.new_index is None or self.loader is None:
            raise RuntimeError("this pipeline was built without a model loader: it cannot swap")
        async with self._swap_lock:  # one build at a time
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            change_log: list[Change] = []
            self.swap_pending = version
            self.metrics.model_swap_in_progress.set(1)
            log.info("model swap started version=%s path=%s serving=%s", version, path, self.model_version)
            try:
                catalog = await self.run(self._begin_swap, change_log)
                built, done = await loop.run_in_executor(
                    self._swap_executor, self._build, version, Path(path), catalog, change_log
                )
                replayed = await self.run(self._finish_swap, built, change_log, done)
            except Exception as exc:  # any failure refuses the version, loudly
                self.metrics.model_refusals.inc()
                reason = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
                expected = isinstance(exc, (CheckpointError, OSError, ValueError))  # no traceback for these
                log.error(
                    "model version refused version=%s path=%s serving=%s reason=%s",
                    version,
                    path,
                    self.model_version,
                    reason,
                    exc_info=None if expected else exc,
                )
                return None
            finally:
                await self.run(self._end_swap, change_log)
                self.swap_pending = None
                self.metrics.model_swap_in_progress.set(0)
            total = time.perf_counter() - started
            stats = built.stats
            self.metrics.model_swaps.inc()
            self.metrics.model_swap_seconds.observe(total)
            self.metrics.model_swap_titles.labels(source="reused").inc(stats.titles_reused)
            self.metrics.model_swap_titles.labels(source="encoded").inc(stats.titles_encoded)
            log.info(
                "model swapped version=%s items=%d titles_reused=%d titles_encoded=%d replayed=%d "
                "build_s=%.2f total_s=%.2f",
                version,
                stats.items,
                stats.titles_reused,
                stats.titles_encoded,
                replayed,
                stats.build_s,
                total,
            )
            return stats

    def _begin_swap(self, change_log: list[Change]) -> Callable[[], Iterable[list[Change]]]:
        """(model thread) Start logging catalog changes in ``change_log``; returns where the build
        reads the whole catalog."""
        if self.catalog_source is None:
            raise RuntimeError("this pipeline has no catalog source: it cannot build a new version")
        self._swap_logs.append(change_log)
        return self.catalog_source

    def _build(
        self, version: str, path: Path, catalog: Callable[[], Iterable[list[Change]]], change_log: list[Change]
    ) -> tuple[Built, int]:
        """(swap thread) The whole new version, caught up with all but the last few logged
        changes; returns it and how many logged changes it has applied."""
        assert self.loader is not None and self.new_index is not None
        built = build_serving_model(
            loader=self.loader, path=path, version=version, new_index=self.new_index, catalog=catalog()
        )
        done = 0
        while len(change_log) - done >= SWAP_CATCH_UP:  # catch up off the model thread
            end = len(change_log)
            apply_changes(built, change_log[done:end])
            done = end
        return built, done

    def _finish_swap(self, built: Built, change_log: list[Change], done: int) -> int:
        """(model thread) Replay the changes logged since the catch-up, then swap: nothing changes
        the catalog in between, because catalog changes run on this thread too. Returns the
        number of logged changes replayed in all."""
        apply_changes(built, change_log[done:])
        self.scorer.model = built.model  # THE swap: one reference, between two batches
        self.metrics.catalog_items.set(len(built.model.index))
        return len(change_log)

    def _end_swap(self, change_log: list[Change]) -> None:
        """(model thread) Stop logging for this build, whether it was swapped in or refused."""
        self._swap_logs = [c for c in self._swap_logs if c is not change_log]

    # -- events ------------------------------------------------------------------------------

    def apply_event(self, state: UserState, event: ShopEvent) -> bool:
        """Update one user's state; False for a duplicate (redelivered) event."""
        gid = self.item_group.get(event.item_id)
        category, brand = self._groups[gid] if gid is not None else (None, None)
        fresh = state.update(
            event_id=event.event_id,
            item_id=event.item_id,
            type=event.type,
            ts=event.ts,
            session_id=event.session_id,
            history_len=self.history_len,
            purchased_max=self.purchased_max,
            category=category,
            brand=brand,
            profile_weights=self.profile_weights,
        )
        if not fresh:
            self.metrics.duplicates.inc()
        return fresh

    def score(
        self, states: list[UserState], fresh_events: list[ShopEvent], model: ServingModel | None = None
    ) -> list[list[tuple[str, float]]]:
        """Count the batch's new events into popularity, then score with ``model`` (default: the
        current one) on the model thread."""
        for ev in fresh_events:
            self.scorer.popularity.add(ev.item_id, ev.type, ts_ms=ev.ts)
        if not states:
            return []
        return self.scorer.recommend(states, model)

    def score_explained(
        self, states: list[UserState], fresh_events: list[ShopEvent], model: ServingModel | None = None
    ) -> tuple[list[Explained], list[float | None]]:
        """Like :meth:`score`, with a reason per item and each state's purchase intent (both
        from the same ``model``)."""
        for ev in fresh_events:
            self.scorer.popularity.add(ev.item_id, ev.type, ts_ms=ev.ts)
        if not states:
            return [], []
        model = model or self.scorer.model
        return self.scorer.recommend_explained(states, model), self.scorer.intent(states, model)

    def _profile_parts(
        self, state: UserState, now_ms: int
    ) -> tuple[list[tuple[str, float]], list[tuple[str, float]], float | None, int]:
        """What a Profile message says: top categories and brands (decayed to the user's latest
        event), the latest purchase intent, and that event's time."""
        w = self.profile_weights
        prof = state.profile
        at = prof.updated_ms or now_ms

        def entries(kind: str) -> list[tuple[str, float]]:
            return [
                (n, round(v, 6))
                for n, v in prof.top(kind, now_ms=at, n=w.max_entries, weights=w)  # type: ignore[arg-type]
            ]

        intent = (state.latest or {}).get("purchase_intent")
        return entries("categories"), entries("brands"), intent, max(at, TS_MIN_MS)

    def profile_of(self, user_id: str, state: UserState, *, event_id: str, now_ms: int) -> Profile:
        """The Profile message of a user (the web view; ``shop.profiles`` sends the same content
        as :meth:`profile_bytes`)."""
        categories, brands, intent, updated = self._profile_parts(state, now_ms)
        return Profile(
            user_id=user_id,
            categories=[WeightedName(name=n, weight=v) for n, v in categories],
            brands=[WeightedName(name=n, weight=v) for n, v in brands],
            purchase_intent=intent,
            event_id=event_id,
            updated_ts=updated,
            produced_ts=now_ms,
        )

    def profile_bytes(self, user_id: str, state: UserState, *, event_id: str, now_ms: int) -> bytes:
        """:meth:`profile_of`'s wire bytes, encoded without the pydantic objects (the worker's hot
        path; the values are the worker's own, already valid: names come from validated catalog
        items, ids from validated events). ``tests/unit/serving`` checks they parse back to
        :meth:`profile_of`."""
        return self._profile_bytes(user_id, self._profile_parts(state, now_ms), event_id=event_id, now_ms=now_ms)

    @staticmethod
    def _profile_bytes(
        user_id: str,
        parts: tuple[list[tuple[str, float]], list[tuple[str, float]], float | None, int],
        *,
        event_id: str,
        now_ms: int,
    ) -> bytes:
        categories, brands, intent, updated = parts
        msg: dict[str, Any] = {
            "user_id": user_id,
            "categories": [{"name": n, "weight": v} for n, v in categories],
            "brands": [{"name": n, "weight": v} for n, v in brands],
            "event_id": event_id,
            "updated_ts": updated,
            "produced_ts": now_ms,
        }
        if intent is not None:
            msg["purchase_intent"] = intent
        return orjson.dumps(msg)

    def profile_due(self, user_id: str, state: UserState, *, event_id: str, now_ms: int) -> bytes | None:
        """The Profile message to send for a user with new events, or None when none is due.

        A profile without any category or brand is not sent (it says nothing yet). Otherwise one
        is sent when none was sent before, when its ranking (the ordered names) differs from the
        last one sent, or when ``profile_publish_s`` has passed since then (0: every time); so the
        topic always has the current ranking, and its weights are at most that old. Decay alone
        never reorders a profile, so without a newly counted entry the ranking is not recomputed.
        Records what was sent in ``state.profile_sent`` (the caller stores the state)."""
        prof = state.profile
        if prof.is_empty():
            return None
        changed, prof.changed = prof.changed, False
        sent = state.profile_sent
        recent = sent is not None and 0 <= now_ms - sent[0] < self.profile_publish_ms
        if recent and not changed:
            return None
        categories, brands, intent, updated = self._profile_parts(state, now_ms)
        sig = ranking_signature(categories, brands)
        if recent and sent is not None and sig == sent[1]:
            return None
        state.profile_sent = [now_ms, sig]
        return self._profile_bytes(user_id, (categories, brands, intent, updated), event_id=event_id, now_ms=now_ms)

    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)


def catalog_dict_bytes(catalog: dict[str, int], sample: int = 1000) -> int:
    """Size of the catalog dict: its table plus keys and values (measured on a sample of up to
    ``sample`` entries with ``sys.getsizeof`` and scaled; ids are of similar length)."""
    import itertools
    import sys

    n = len(catalog)
    if n == 0:
        return sys.getsizeof(catalog)
    picked = list(itertools.islice(catalog.items(), sample))
    per = sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in picked) / len(picked)
    return sys.getsizeof(catalog) + int(per * n)

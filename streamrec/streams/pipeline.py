"""Worker runtime state shared by the agents and web views: model, index, catalog, metrics.

Model and index calls run on one dedicated executor thread, so the event loop keeps consuming,
heartbeating and serving HTTP while a batch is scored, and the model is never used by two
threads at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from streamrec.schemas import CatalogItem, ShopEvent
from streamrec.serving.metrics import Metrics
from streamrec.serving.popularity import Popularity
from streamrec.serving.scorer import Scorer, ServingModel
from streamrec.serving.state import UserState

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Most items a worker accepts into its catalog (a bound on memory for hostile catalog topics).
MAX_CATALOG_ITEMS = 5_000_000


class Pipeline:
    def __init__(self, *, recommender: Any, index: Any, top_k: int, history_len: int,
                 purchased_max: int, trigger_types: tuple[str, ...]) -> None:
        self.scorer = Scorer(recommender=recommender, index=index, popularity=Popularity(), top_k=top_k)
        self.history_len = history_len
        self.purchased_max = purchased_max
        self.trigger_types = frozenset(trigger_types)
        self.metrics = Metrics()
        self.catalog: dict[str, CatalogItem] = {}
        self.catalog_ready = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamrec-model")

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
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- catalog -----------------------------------------------------------------------------

    def apply_catalog(self, changes: list[tuple[str, CatalogItem | None]]) -> None:
        """Apply catalog upserts/deletions (runs on the model thread): embed new or changed
        items from their text and put them in the index; drop deleted ones."""
        model = self.scorer.model
        index = model.index
        latest: dict[str, CatalogItem | None] = {}
        for item_id, item in changes:  # last write per item wins within a batch
            latest[item_id] = item
        removed = [i for i, it in latest.items() if it is None and i in self.catalog]
        if removed:
            index.remove(removed)
            for i in removed:
                self.catalog.pop(i, None)
        embed: list[CatalogItem] = []
        stock_only: dict[bool, list[str]] = {True: [], False: []}
        for item_id, item in latest.items():
            if item is None:
                continue
            old = self.catalog.get(item_id)
            if old is not None and old.text() == item.text() and item_id in index:
                if old.in_stock != item.in_stock:
                    stock_only[item.in_stock].append(item_id)
            elif len(self.catalog) < MAX_CATALOG_ITEMS or item_id in self.catalog:
                embed.append(item)
            else:
                log.warning("catalog full (%d items): dropping item=%s", MAX_CATALOG_ITEMS, item_id)
                continue
            self.catalog[item_id] = item
        for flag, ids in stock_only.items():
            if ids:
                index.set_in_stock(ids, flag)
        if embed:
            vecs = model.recommender.add_items([(it.item_id, it.text() or None) for it in embed])
            index.upsert([it.item_id for it in embed], vecs, in_stock=[it.in_stock for it in embed])
        self.metrics.catalog_items.set(len(index))

    # -- events ------------------------------------------------------------------------------

    def apply_event(self, state: UserState, event: ShopEvent) -> bool:
        """Update one user's state; False for a duplicate (redelivered) event."""
        fresh = state.update(
            event_id=event.event_id, item_id=event.item_id, type=event.type, ts=event.ts,
            session_id=event.session_id, history_len=self.history_len, purchased_max=self.purchased_max,
        )
        if not fresh:
            self.metrics.duplicates.inc()
        return fresh

    def score(self, states: list[UserState], fresh_events: list[ShopEvent],
              model: ServingModel | None = None) -> list[list[tuple[str, float]]]:
        """Count the batch's new events into popularity, then score with ``model`` (default: the
        current one) on the model thread."""
        for ev in fresh_events:
            self.scorer.popularity.add(ev.item_id, ev.type, ts_ms=ev.ts)
        if not states:
            return []
        return self.scorer.recommend(states, model)

    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)

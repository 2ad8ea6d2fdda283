"""Hot swap of a model version: build a whole new :class:`ServingModel` off the hot path.

"Swap a whole, not parts" (TF Serving's version manager, RCU): the new version's model, the
vectors of every live catalog item and a new index over them are built completely on a thread of
their own, while the serving model keeps scoring; then ONE reference, ``scorer.model``, is
replaced between two batches. The serving model is never mutated by a swap, and a version that
fails anywhere on the way (missing directory, corrupt or incompatible files, non-finite vectors)
is simply never swapped in.

This module holds the pure parts, testable without Kafka:

* :class:`VersionLoader`: how a worker loads another version so that it shares the serving
  one's text cache: a title any version embedded is never run through MiniLM again.
* :func:`build_serving_model`: load, check, compute the catalog's item vectors, build the index.
* :func:`apply_changes`: bring a new model up to date with catalog changes made while it was
  being built (the worker replays the changes it logged meanwhile).

The orchestration (which thread runs what, the change log, the swap itself) is
:meth:`streamrec.streams.pipeline.Pipeline.swap_model`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamrec.errors import CheckpointError
from streamrec.model.text import TEXT_DIM
from streamrec.schemas import EVENT_TYPES, CatalogItem
from streamrec.serving.scorer import ServingModel

log = logging.getLogger(__name__)

#: Catalog items embedded and indexed per call while a new version is built (bounds peak memory).
BUILD_CHUNK = 4096


@dataclass
class VersionLoader:
    """How a worker loads another version: ``load(path, version)`` returns a Recommender (or
    raises) that shares the serving one's text cache; ``counts()`` is (titles answered by the
    cache, titles run through MiniLM) so far, for the swap's statistics."""

    load: Callable[[Any, str], Any]
    counts: Callable[[], tuple[int, int]] = lambda: (0, 0)

    @classmethod
    def with_text_cache(cls, cache: Any, *, device: str = "auto") -> VersionLoader:
        """Versions share ``cache`` (a :class:`streamrec.model.textcache.TextCache`, thread-safe):
        known titles are cache hits, in memory or on disk."""

        def load(path: Any, version: str) -> Any:
            from streamrec.model.inference import Recommender

            return Recommender.load(path, device=device, version=version, text_cache=cache)

        return cls(load=load, counts=lambda: (int(cache.hits), int(cache.embedded)))


@dataclass(frozen=True)
class SwapStats:
    """What building one version took (logged, and counted in the worker's metrics)."""

    version: str
    items: int  # catalog items in the new index
    titles_reused: int  # titles answered by the text cache (not run through MiniLM again)
    titles_encoded: int  # titles run through MiniLM
    build_s: float  # load + vectors + index, on the swap thread


@dataclass
class Built:
    """A version built by :func:`build_serving_model`, not serving yet."""

    model: ServingModel
    stats: SwapStats


def check_compatible(recommender: Any) -> None:
    """CheckpointError unless the worker can serve ``recommender``: it must embed titles with
    this worker's text model and read every event type of the contract. A different vector width
    is fine: the model and its index are swapped together."""
    cfg = recommender.model.config
    if getattr(cfg, "use_text", True) and int(cfg.text_dim) != TEXT_DIM:
        raise CheckpointError(
            f"incompatible model: text_dim {cfg.text_dim}, the worker's title encoder gives {TEXT_DIM}"
        )
    if int(cfg.n_event_types) < len(EVENT_TYPES) + 1:
        raise CheckpointError(
            f"incompatible model: {cfg.n_event_types} event types, the contract has {len(EVENT_TYPES)} (+ padding)"
        )


def _vectors(recommender: Any, items: list[CatalogItem]) -> np.ndarray:
    """Item vectors of ``items`` (learned for known items, from the title for others)."""
    return np.asarray(recommender.add_items([(it.item_id, it.text() or None) for it in items]), dtype=np.float32)


#: Catalog changes in topic order: ``(item_id, item)``, ``item`` None for a deletion; a source of
#: them yields lists (chunks) of these.
Change = tuple[str, "CatalogItem | None"]


def _latest(changes: Iterable[Change]) -> tuple[list[str], list[CatalogItem]]:
    """Last write per item wins: (deleted ids, upserted items), each id once."""
    last: dict[str, CatalogItem | None] = {}
    for item_id, item in changes:
        last.pop(item_id, None)  # keep the order of the latest writes
        last[item_id] = item
    gone = [i for i, it in last.items() if it is None]
    return gone, [it for it in last.values() if it is not None]


def build_serving_model(
    *, loader: VersionLoader, path: Any, version: str, new_index: Callable[[int], Any], catalog: Iterable[list[Change]]
) -> Built:
    """A complete new :class:`ServingModel`: ``version`` loaded from ``path`` by ``loader``,
    checked, with the vectors of every live item of ``catalog`` in a new index from
    ``new_index(dim)``.

    ``catalog`` yields chunks of changes in topic order (the compacted catalog topic read from its
    beginning, as a worker does at start); later writes win. Raises (CheckpointError, ValueError,
    OSError, ...) when the version cannot be served; nothing shared is changed then, apart from
    new titles kept by the text cache.
    """
    t0 = time.perf_counter()
    reused0, encoded0 = loader.counts()
    rec = loader.load(path, version)
    check_compatible(rec)
    index = new_index(rec.dim)
    attach = getattr(rec, "attach_vectors", None)
    if attach is not None and hasattr(index, "vectors"):
        attach(index.vectors)  # one copy: the added items' vectors will live in the index only
    live: dict[str, tuple[int, bool]] = {}  # id -> (row in the vectors so far, in stock)
    parts: list[np.ndarray] = []
    n_rows = 0
    remove_items = getattr(rec, "remove_items", None)
    for chunk in catalog:
        gone, items = _latest(chunk)
        for i in gone:
            live.pop(i, None)
        if gone and remove_items is not None:  # a deleted item leaves the model too
            remove_items(gone)
        for s in range(0, len(items), BUILD_CHUNK):
            part = items[s : s + BUILD_CHUNK]
            parts.append(_vectors(rec, part))
            for k, it in enumerate(part):
                live[it.item_id] = (n_rows + k, it.in_stock)
            n_rows += len(part)
    ids = list(live)
    vecs = np.concatenate(parts) if parts else np.zeros((0, rec.dim), np.float32)
    rows = np.fromiter((live[i][0] for i in ids), dtype=np.int64, count=len(ids))
    # one build over the whole catalog: the kind fits its size; check_vectors inside refuses a
    # model that yields NaN/inf vectors
    index.rebuild(ids, vecs[rows], in_stock=[live[i][1] for i in ids], background=False)
    probe = np.asarray(rec.encode_users([[(ids[0], "view")]] if ids else [[]]), dtype=np.float32)
    if probe.shape != (1, rec.dim) or not np.isfinite(probe).all():
        raise CheckpointError(f"model {rec.version} gives a non-finite or misshaped user vector {probe.shape}")
    reused1, encoded1 = loader.counts()
    stats = SwapStats(
        version=str(rec.version),
        items=len(ids),
        titles_reused=reused1 - reused0,
        titles_encoded=encoded1 - encoded0,
        build_s=time.perf_counter() - t0,
    )
    return Built(ServingModel(recommender=rec, index=index), stats)


def apply_changes(built: Built, changes: Iterable[Change]) -> int:
    """Apply catalog ``changes`` (in order; made while ``built`` was being built) to it. Returns
    the number of items touched.

    Idempotent: replaying a change the build already held, or twice, is harmless.
    """
    gone, present = _latest(changes)
    index, rec = built.model.index, built.model.recommender
    remove_items = getattr(rec, "remove_items", None)
    if gone and remove_items is not None:
        remove_items(gone)
    gone = [i for i in gone if i in index]
    if gone:
        index.remove(gone)
    for s in range(0, len(present), BUILD_CHUNK):
        chunk = present[s : s + BUILD_CHUNK]
        index.upsert([it.item_id for it in chunk], _vectors(rec, chunk), in_stock=[it.in_stock for it in chunk])
    return len(gone) + len(present)

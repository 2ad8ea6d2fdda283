"""Hot swap of a model version: build a whole new :class:`ServingModel` off the hot path.

"Swap a whole, not parts" (TF Serving's version manager, RCU): the new version's model, the
vectors of every live catalog item and a new index over them are built completely on a thread of
their own, while the serving model keeps scoring; then ONE reference, ``scorer.model``, is
replaced between two batches. The serving model is never mutated by a swap, and a version that
fails anywhere on the way (missing directory, corrupt or incompatible files, non-finite vectors)
is simply never swapped in.

This module holds the pure parts, testable without Kafka:

* :class:`TitleEncoder`: the worker's one title encoder, shared by every version it serves. A
  swap seeds it with the title embeddings the serving model already holds, so a known title is
  not run through MiniLM again; only titles no model has embedded yet are.
* :func:`build_serving_model`: load, check, compute the catalog's item vectors, build the index.
* :func:`apply_changes`: bring a new model up to date with catalog changes made while it was
  being built (the worker replays the ids it logged, against its live catalog).

The orchestration (which thread runs what, the change log, the swap itself) is
:meth:`streamrec.streams.pipeline.Pipeline.swap_model`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamrec.errors import CheckpointError
from streamrec.schemas import EVENT_TYPES, CatalogItem
from streamrec.serving.scorer import ServingModel

log = logging.getLogger(__name__)

#: Catalog items embedded and indexed per call while a new version is built (bounds peak memory).
BUILD_CHUNK = 4096
#: Width of MiniLM title embeddings (streamrec.model.text.TEXT_DIM; not imported: no torch here).
TITLE_DIM = 384


def text_key(text: str) -> bytes:
    """A 16-byte digest of a title text: what the worker remembers of the text it embedded.

    >>> len(text_key("red lipstick")), text_key("a") == text_key("a")
    (16, True)
    """
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class TitleEncoder:
    """The worker's title encoder (MiniLM), shared by every model version it serves.

    ``encode`` answers a title from the *seeds* when one is there (embeddings a serving model
    already holds, given by a swap) and runs only the others through the wrapped encoder, under a
    lock: the serving model (model thread) and a version being built (swap thread) may both ask,
    and a Hugging Face fast tokenizer must not be used by two threads at once. ``reused`` and
    ``encoded`` count titles answered each way.

    >>> class Ones:
    ...     def encode(self, texts): return np.ones((len(texts), 2), np.float32)
    >>> enc = TitleEncoder(Ones(), dim=2)
    >>> enc.seed(["known title"], np.zeros((1, 2), np.float32))
    >>> enc.encode(["known title", "new title", ""]).tolist()
    [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    >>> enc.reused, enc.encoded
    (1, 1)
    """

    def __init__(self, encoder: Any, *, dim: int = TITLE_DIM) -> None:
        self._encoder = encoder
        self.dim = dim
        self._lock = threading.Lock()
        self._seeds: dict[bytes, np.ndarray] = {}
        self.reused = 0
        self.encoded = 0

    @classmethod
    def minilm(cls, device: str = "auto") -> TitleEncoder:
        from streamrec.model.text import TEXT_DIM, TextEncoder

        return cls(TextEncoder(device=device), dim=TEXT_DIM)

    def seed(self, texts: Iterable[str], vectors: np.ndarray) -> None:
        """Remember ``vectors`` (one row per text) as the embeddings of ``texts``."""
        with self._lock:
            for t, v in zip(texts, vectors):
                self._seeds[text_key(t)] = np.asarray(v, dtype=np.float32)

    def clear_seeds(self) -> None:
        with self._lock:
            self._seeds.clear()

    def encode(self, texts: list[str | None], batch_size: int = 128) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo: list[int] = []
        with self._lock:
            for i, t in enumerate(texts):
                if t is None or not str(t).strip():
                    continue
                v = self._seeds.get(text_key(str(t)))
                if v is None:
                    todo.append(i)
                else:
                    out[i] = v
                    self.reused += 1
            if todo:
                out[todo] = self._encoder.encode([texts[i] for i in todo])
                self.encoded += len(todo)
        return out


class TitleReuse:
    """Carries title embeddings from the serving version to the next one, for a worker without a
    persistent text cache: its Recommender keeps each title's MiniLM embedding in the model's rows.

    The worker notes which text each row it creates was embedded from (``embedded``: item id ->
    :func:`text_key`); a build seeds :class:`TitleEncoder` with the serving model's rows for items
    the new model holds no title for and whose text is unchanged, so those titles are not run
    through MiniLM again. (With a shared text cache the cache does this, and no TitleReuse is used.)
    """

    def __init__(self, encoder: TitleEncoder) -> None:
        self.encoder = encoder
        self.embedded: dict[str, bytes] = {}  # of the serving model

    def untitled(self, recommender: Any, items: list[CatalogItem]) -> list[CatalogItem]:
        """The ``items`` that adding to ``recommender`` embeds from their current text."""
        return lacking_titles(recommender, items)

    @staticmethod
    def note(embedded: dict[str, bytes], items: list[CatalogItem]) -> None:
        for it in items:
            embedded[it.item_id] = text_key(it.text())

    def seed(self, old: Any, new: Any, items: Iterable[CatalogItem]) -> int:
        return seed_titles(self.encoder, old, new, items, self.embedded)

    def clear(self) -> None:
        self.encoder.clear_seeds()


@dataclass
class VersionLoader:
    """How a worker loads another version so that it shares the serving one's title machinery.

    ``load(path, version)`` returns a Recommender (or raises); ``reuse`` carries titles over where
    no text cache is shared (None otherwise); ``counts()`` is (titles reused, titles embedded) so
    far, for the swap's statistics.
    """

    load: Callable[[Any, str], Any]
    reuse: TitleReuse | None = None
    counts: Callable[[], tuple[int, int]] = lambda: (0, 0)

    @classmethod
    def with_encoder(cls, encoder: TitleEncoder, *, device: str = "auto") -> VersionLoader:
        """Versions share ``encoder`` (the serving Recommender's ``text_encoder``) and reuse titles
        from the serving model's rows."""

        def load(path: Any, version: str) -> Any:
            from streamrec.model.inference import Recommender

            return Recommender.load(path, device=device, version=version, text_encoder=encoder)

        return cls(load=load, reuse=TitleReuse(encoder), counts=lambda: (encoder.reused, encoder.encoded))


@dataclass(frozen=True)
class SwapStats:
    """What building one version took (logged, and counted in the worker's metrics)."""

    version: str
    items: int  # catalog items in the new index
    titles_reused: int  # titles not run through MiniLM again (seeded, or text-cache hits)
    titles_encoded: int  # titles run through MiniLM
    build_s: float  # load + vectors + index, on the swap thread


@dataclass
class Built:
    """A version built by :func:`build_serving_model`, not serving yet."""

    model: ServingModel
    stats: SwapStats
    #: item id -> text_key of the title the new model embedded for it (rows it created; the
    #: TitleReuse's ``embedded`` once the new model serves); empty without a TitleReuse
    embedded: dict[str, bytes]


def check_compatible(recommender: Any) -> None:
    """CheckpointError unless the worker can serve ``recommender``: it must embed titles with
    this worker's text model and read every event type of the contract. A different vector width
    is fine: the model and its index are swapped together."""
    cfg = recommender.model.config
    if getattr(cfg, "use_text", True) and int(cfg.text_dim) != TITLE_DIM:
        raise CheckpointError(f"incompatible model: text_dim {cfg.text_dim}, the worker's title "
                              f"encoder gives {TITLE_DIM}")
    if int(cfg.n_event_types) < len(EVENT_TYPES) + 1:
        raise CheckpointError(f"incompatible model: {cfg.n_event_types} event types, the contract "
                              f"has {len(EVENT_TYPES)} (+ padding)")


def seed_titles(encoder: TitleEncoder, old: Any, new: Any, items: Iterable[CatalogItem],
                embedded: Mapping[str, bytes]) -> int:
    """Seed ``encoder`` with the serving model's (``old``) title embeddings of those ``items`` the
    new model (``new``) holds no title embedding for, where the worker embedded exactly the item's current text
    (``embedded``: item id -> :func:`text_key` of the text it embedded). Returns how many."""
    items = list(items)
    have, _ = new.title_embeddings([it.item_id for it in items])
    has_title = set(have)
    want: dict[str, str] = {}
    for it in items:
        if it.item_id in has_title:
            continue
        text = it.text()
        key = embedded.get(it.item_id)
        if text and key is not None and key == text_key(text):
            want[it.item_id] = text
    if not want:
        return 0
    ids, vecs = old.title_embeddings(list(want))
    encoder.seed([want[i] for i in ids], vecs)
    return len(ids)


def lacking_titles(recommender: Any, items: list[CatalogItem]) -> list[CatalogItem]:
    """The ``items`` with a text that ``recommender`` holds no title embedding for: adding them
    embeds exactly their current text (new items, and known ones that had no title)."""
    have, _ = recommender.title_embeddings([it.item_id for it in items])
    has_title = set(have)
    return [it for it in items if it.item_id not in has_title and it.text()]


def _vectors(recommender: Any, items: list[CatalogItem], reuse: TitleReuse | None,
             embedded: dict[str, bytes]) -> np.ndarray:
    """Item vectors of ``items`` from ``recommender``; with ``reuse``, records in ``embedded`` the
    text of each row the recommender creates now (it holds exactly that text's embedding)."""
    untitled = reuse.untitled(recommender, items) if reuse is not None else []
    vecs = recommender.add_items([(it.item_id, it.text() or None) for it in items])
    TitleReuse.note(embedded, untitled)
    return np.asarray(vecs, dtype=np.float32)


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


def build_serving_model(*, loader: VersionLoader, path: Any, version: str, new_index: Callable[[int], Any],
                        catalog: Iterable[list[Change]], old: ServingModel) -> Built:
    """A complete new :class:`ServingModel`: ``version`` loaded from ``path`` by ``loader``,
    checked, with the vectors of every live item of ``catalog`` in a new index from
    ``new_index(dim)``.

    ``catalog`` yields chunks of changes in topic order (a snapshot of the worker's catalog, or the
    compacted catalog topic read from its beginning); later writes win. ``old`` is the serving
    model (titles are reused from it through ``loader.reuse``). Raises (CheckpointError,
    ValueError, OSError, ...) when the version cannot be served; nothing shared is changed then,
    apart from new titles kept by the encoder or cache.
    """
    t0 = time.perf_counter()
    reused0, encoded0 = loader.counts()
    reuse = loader.reuse
    rec = loader.load(path, version)
    check_compatible(rec)
    new_embedded: dict[str, bytes] = {}
    live: dict[str, tuple[int, bool]] = {}  # id -> (row in the vectors so far, in stock)
    parts: list[np.ndarray] = []
    n_rows = 0
    for chunk in catalog:
        gone, items = _latest(chunk)
        for i in gone:
            live.pop(i, None)
            new_embedded.pop(i, None)
        remove_items = getattr(rec, "remove_items", None)
        if gone and remove_items is not None:  # a deleted item leaves the model too
            remove_items(gone)
        for s in range(0, len(items), BUILD_CHUNK):  # title seeds per chunk: bounded memory
            part = items[s : s + BUILD_CHUNK]
            if reuse is not None:
                reuse.seed(old.recommender, rec, part)
            try:
                parts.append(_vectors(rec, part, reuse, new_embedded))
            finally:
                if reuse is not None:
                    reuse.clear()
            for k, it in enumerate(part):
                live[it.item_id] = (n_rows + k, it.in_stock)
            n_rows += len(part)
    ids = list(live)
    vecs = np.concatenate(parts) if parts else np.zeros((0, rec.dim), np.float32)
    rows = np.fromiter((live[i][0] for i in ids), dtype=np.int64, count=len(ids))
    index = new_index(rec.dim)
    # one build over the whole catalog: the kind fits its size; check_vectors inside refuses a
    # model that yields NaN/inf vectors
    index.rebuild(ids, vecs[rows], in_stock=[live[i][1] for i in ids], background=False)
    probe = np.asarray(rec.encode_users([[(ids[0], "view")]] if ids else [[]]), dtype=np.float32)
    if probe.shape != (1, rec.dim) or not np.isfinite(probe).all():
        raise CheckpointError(f"model {rec.version} gives a non-finite or misshaped user vector {probe.shape}")
    reused1, encoded1 = loader.counts()
    stats = SwapStats(version=str(rec.version), items=len(ids), titles_reused=reused1 - reused0,
                      titles_encoded=encoded1 - encoded0, build_s=time.perf_counter() - t0)
    return Built(ServingModel(recommender=rec, index=index), stats, new_embedded)


def apply_changes(built: Built, changes: Iterable[Change], *, old: ServingModel,
                  reuse: TitleReuse | None) -> int:
    """Apply catalog ``changes`` (in order; made while ``built`` was being built) to it; titles
    the serving model ``old`` embedded meanwhile are reused. Returns the number of items touched.

    Idempotent: replaying a change the build already held, or twice, is harmless.
    """
    gone, present = _latest(changes)
    index, rec = built.model.index, built.model.recommender
    for i in gone:
        built.embedded.pop(i, None)
    remove_items = getattr(rec, "remove_items", None)
    if gone and remove_items is not None:
        remove_items(gone)
    gone = [i for i in gone if i in index]
    if gone:
        index.remove(gone)
    for s in range(0, len(present), BUILD_CHUNK):
        chunk = present[s : s + BUILD_CHUNK]
        if reuse is not None:
            reuse.seed(old.recommender, rec, chunk)
        try:
            vecs = _vectors(rec, chunk, reuse, built.embedded)
        finally:
            if reuse is not None:
                reuse.clear()
        index.upsert([it.item_id for it in chunk], vecs, in_stock=[it.in_stock for it in chunk])
    return len(gone) + len(present)

"""One batched path from user states to recommendation lists: encode, search, filter, fall back.

The worker calls :meth:`Scorer.recommend` once per batch of events (from a single executor
thread), so the model runs one forward pass and FAISS one search per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamrec.serving.popularity import Popularity
from streamrec.serving.state import UserState

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ServingModel:
    """A model and the index of item vectors it produced: always used, and replaced, together.

    ``recommender`` follows :class:`streamrec.model.inference.Recommender` (``encode_users``,
    ``add_items``, ``version``) and ``index`` follows :class:`streamrec.indexer.ItemIndex`
    (``search``, ``is_eligible``, ``__contains__``, ``__len__``, ``upsert``, ``remove``).
    """

    recommender: Any
    index: Any

    @property
    def version(self) -> str:
        return str(self.recommender.version)


class Scorer:
    """Turn user states into top-k ``(item_id, score)`` lists.

    The model and its index are held in ONE reference, :attr:`model` (a :class:`ServingModel`).
    A hot swap builds a whole new ``ServingModel`` off the scoring thread and replaces that
    reference between two batches (``scorer.model = new``); each call takes the reference once,
    so a batch never mixes two versions. Popularity is shared across versions.
    """

    def __init__(self, *, recommender: Any, index: Any, popularity: Popularity, top_k: int) -> None:
        if not 1 <= top_k <= 1000:
            raise ValueError(f"top_k must be in 1..1000, got {top_k}")
        self.model = ServingModel(recommender=recommender, index=index)
        self.popularity = popularity
        self.top_k = top_k
        self._cold_query: tuple[ServingModel, np.ndarray] | None = None

    @property
    def recommender(self) -> Any:
        return self.model.recommender

    @property
    def index(self) -> Any:
        return self.model.index

    @property
    def model_version(self) -> str:
        return self.model.version

    def cold_query(self, model: ServingModel | None = None) -> np.ndarray:
        """The vector of a user with no history (ranks items by the model's prior)."""
        model = model or self.model
        if self._cold_query is None or self._cold_query[0] is not model:
            self._cold_query = (model, np.asarray(model.recommender.encode_users([[]]), dtype=np.float32))
        return self._cold_query[1]

    def recommend(self, states: Sequence[UserState], model: ServingModel | None = None) -> list[list[tuple[str, float]]]:
        """Top-k lists for ``states``, all made by ``model`` (default: the current one)."""
        model = model or self.model
        index = model.index
        k = self.top_k
        results: list[list[tuple[str, float]]] = [[] for _ in states]
        warm = [i for i, s in enumerate(states) if any(item in index for item, _ in s.history_pairs())]
        if warm and len(index) > 0:
            vecs = model.recommender.encode_users([states[i].history_pairs() for i in warm])
            found = index.search(
                np.asarray(vecs, dtype=np.float32), k, exclude=[states[i].purchased for i in warm]
            )
            for i, items in zip(warm, found):
                results[i] = [(item, float(score)) for item, score in items]
        for i, state in enumerate(states):
            if len(results[i]) < k:
                results[i] = self._fill(model, results[i], state.purchased, k)
        return results

    def _fill(self, model: ServingModel, have: list[tuple[str, float]], purchased: set[str],
              k: int) -> list[tuple[str, float]]:
        """Top up a short list with popular items, then with the model's cold-start ranking.

        Fill-ins rank below the model's results; their scores only keep the order.
        """
        index = model.index
        out = list(have)
        taken = {item for item, _ in out} | purchased
        fill = self.popularity.top(k - len(out), exclude=taken, eligible=index.is_eligible)
        taken.update(fill)
        if len(out) + len(fill) < k and len(index) > 0:
            extra = index.search(self.cold_query(model), k, exclude=[taken])[0]
            fill += [item for item, _ in extra[: k - len(out) - len(fill)]]
        floor = out[-1][1] if out else 0.0
        out += [(item, floor - 1.0 - rank * 1e-3) for rank, item in enumerate(fill)]
        return out

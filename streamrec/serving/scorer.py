"""One batched path from user states to recommendation lists: encode, search, filter, fall back.

The worker calls :meth:`Scorer.recommend_explained` once per batch of events (from a single
executor thread), so the model runs one forward pass and FAISS one search per batch.

Reasons (:meth:`Scorer.recommend_explained`): an item found by the model for a user with a
history is ``("similar_to", h)`` where ``h`` is the history item whose vector has the largest
inner product with the item's vector (the item itself excluded, unless it is the only one), or
``("new_item", None)`` when the model never learned the item in training (a catalog item scored
from its text alone); popularity fill-ins are ``("popular", None)``, and the cold-start fill
(the model's ranking for an empty history) is ``("new_item", None)`` for zero-shot items and
``("popular", None)`` otherwise. All item vectors of a batch come from one lookup and the
inner products from one batched product.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamrec.serving.popularity import Popularity
from streamrec.serving.state import UserState

log = logging.getLogger(__name__)

#: ``(kind, item_id or None)``: kind in similar_to / popular / new_item (the Reason contract).
Reason = tuple[str, "str | None"]
Explained = list[tuple[str, float, Reason]]
POPULAR: Reason = ("popular", None)
NEW_ITEM: Reason = ("new_item", None)
NO_REASON: Reason = ("", None)  # what :meth:`Scorer.recommend` carries before dropping it


@dataclass(frozen=True, eq=False)
class ServingModel:
    """A model and the index of item vectors it produced: always used, and replaced, together.

    ``recommender`` follows :class:`streamrec.model.inference.Recommender` (``encode_users``,
    ``add_items``, ``version``) and ``index`` follows :class:`streamrec.indexer.ItemIndex`
    (``search``, ``is_eligible``, ``__contains__``, ``__len__``, ``upsert``, ``remove``).
    """

    recommender: Any
    index: Any

    def __post_init__(self) -> None:
        # one copy of the item vectors: the recommender reads its added items' vectors from the
        # index (Recommender.attach_vectors) instead of keeping its own
        attach = getattr(self.recommender, "attach_vectors", None)
        vectors = getattr(self.index, "vectors", None)
        if attach is not None and vectors is not None:
            attach(vectors)

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

    def __init__(
        self,
        *,
        recommender: Any,
        index: Any,
        popularity: Popularity,
        top_k: int,
        stage: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        if not 1 <= top_k <= 1000:
            raise ValueError(f"top_k must be in 1..1000, got {top_k}")
        #: times the ``model`` / ``index`` / ``filter`` stages (``Metrics.stage`` in the worker)
        self.stage = stage or (lambda name: contextlib.nullcontext())
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

    def recommend(
        self, states: Sequence[UserState], model: ServingModel | None = None
    ) -> list[list[tuple[str, float]]]:
        """Top-k lists for ``states``, all made by ``model`` (default: the current one); no
        reasons, so nothing extra is computed."""
        return [[(i, s) for i, s, _ in rows] for rows in self._recommend(states, model or self.model, explain=False)]

    def recommend_explained(self, states: Sequence[UserState], model: ServingModel | None = None) -> list[Explained]:
        """Top-k ``(item_id, score, reason)`` per state (see the module docstring for reasons)."""
        return self._recommend(states, model or self.model, explain=True)

    def _recommend(self, states: Sequence[UserState], model: ServingModel, *, explain: bool) -> list[Explained]:
        index = model.index
        k = self.top_k
        stage = self.stage
        results: list[Explained] = [[] for _ in states]
        with stage("model"):
            pairs = [s.history_pairs() for s in states]
            warm = [i for i, h in enumerate(pairs) if any(item in index for item, _ in h)]
            vecs = None
            if warm and len(index) > 0:
                vecs = model.recommender.encode_users([pairs[i] for i in warm])
        if vecs is not None:
            with stage("index"):
                bought = [states[i].purchased for i in warm]
                found = index.search(np.asarray(vecs, dtype=np.float32), k, exclude=bought)
                if model.recommender.transitions is not None:
                    found = self._with_transitions(model, vecs, [pairs[i] for i in warm], found, bought, k)
        with stage("filter"):
            if vecs is not None:
                if explain:
                    why = self._similar_reasons(model, [states[i] for i in warm], found)
                    for i, items, reasons in zip(warm, found, why):
                        results[i] = [(item, float(score), r) for (item, score), r in zip(items, reasons)]
                else:
                    for i, items in zip(warm, found):
                        results[i] = [(item, float(score), NO_REASON) for item, score in items]
            for i, state in enumerate(states):
                if len(results[i]) < k:
                    results[i] = self._fill(model, results[i], state.purchased, k, explain=explain)
        return results

    @staticmethod
    def _with_transitions(
        model: ServingModel,
        vecs: np.ndarray,
        histories: Sequence[Sequence[tuple[str, str]]],
        found: list[list[tuple[str, float]]],
        bought: Sequence[set[str]],
        k: int,
    ) -> list[list[tuple[str, float]]]:
        """Add the model's transition terms (:mod:`streamrec.model.transitions`) to the index's
        results, and score the items its table names that the index did not return (eligible, not
        purchased) where their term can lift them into the top ``k``: the top ``k`` of the summed
        score is then what a full ranking gives (exactly, for an exact index), since a term only
        ever raises an item above its inner product."""
        rec, index = model.recommender, model.index
        c_rows, names, terms, cut = rec.transition_terms(histories)
        if len(c_rows) == 0:
            return found
        B = len(found)
        f_len = np.fromiter(map(len, found), np.int64, B)
        f_ids = [item for items in found for item, _ in items]
        f_score = np.fromiter((s for items in found for _, s in items), np.float64, len(f_ids))
        f_user = np.repeat(np.arange(B), f_len)
        c_user = np.repeat(np.arange(B), np.diff(cut))
        base = np.int64(1 << 40)  # (user, row) as one key
        f_key = f_user * base + rec.rows_of(f_ids)
        c_key = c_user * base + c_rows
        # the index's results, each with its term (if the table names it)
        by_key = np.argsort(c_key)
        at = np.minimum(np.searchsorted(c_key[by_key], f_key), len(c_key) - 1)
        hit = c_key[by_key][at] == f_key
        f_total = f_score + np.where(hit, terms[by_key][at], 0.0)
        # the items the index did not return: with k results, such an item's inner product is at
        # most the k-th result's (an exact index), so it can enter only when its term lifts it
        # above the lowest summed score of the results; others are never scored (their vectors
        # are never read). With fewer than k results every one is scored.
        ends = np.cumsum(f_len)
        full = f_len >= k
        floor = np.full(B, -np.inf)
        if full.any():
            lowest = np.minimum.reduceat(f_total, np.maximum(ends - f_len, 0)[f_len > 0])  # per user with results
            low = np.full(B, np.inf)
            low[f_len > 0] = lowest
            floor[full] = low[full] - f_score[ends[full] - 1]
        keep = ~np.isin(c_key, f_key) & (terms > floor[c_user])
        e_user, e_rows = c_user[keep], c_rows[keep]
        e_score = rec.row_scores(vecs, e_user, e_rows) + terms[keep]
        e_names = [names[j] for j in np.flatnonzero(keep).tolist()]
        # merge, best first per user; purchased or ineligible items are skipped (only the
        # table's items need the check: the index's results passed it) until k are taken
        every_user = np.concatenate([f_user, e_user])
        every_score = np.concatenate([f_total, e_score.astype(np.float64)])
        every_name = f_ids + e_names
        n_found = len(f_ids)
        order = np.lexsort((-every_score, every_user))
        starts = np.searchsorted(every_user[order], np.arange(B + 1)).tolist()
        order_l, score_l = order.tolist(), every_score.tolist()
        out: list[list[tuple[str, float]]] = []
        for u in range(B):
            picked: list[tuple[str, float]] = []
            skip = bought[u]
            for j in order_l[starts[u] : starts[u + 1]]:
                name = every_name[j]
                if j >= n_found and (name in skip or not index.is_eligible(name)):
                    continue
                picked.append((name, score_l[j]))
                if len(picked) == k:
                    break
            out.append(picked)
        return out

    def _similar_reasons(
        self, model: ServingModel, states: Sequence[UserState], found: Sequence[Sequence[tuple[str, float]]]
    ) -> list[list[Reason]]:
        """For each found item: ``new_item`` if zero-shot, else ``similar_to`` the history item
        with the largest inner product. One vector lookup and one batched product per batch
        (each user's found items against that user's history); Python touches each id once (to
        number it), the rest is numpy, and each reason is one shared tuple per batch."""
        h_ids = [h[0] for s in states for h in s.history]
        h_len = np.fromiter((len(s.history) for s in states), np.int64, len(states))
        r_ids = [item for items in found for item, _ in items]
        r_len = np.fromiter((len(items) for items in found), np.int64, len(found))
        uniq = list(dict.fromkeys(h_ids + r_ids))  # each id once, numbered below (C-level maps)
        if not uniq:
            return [[] for _ in states]
        pos = dict(zip(uniq, range(len(uniq))))
        h_flat = list(map(pos.__getitem__, h_ids))
        r_flat = list(map(pos.__getitem__, r_ids))
        vecs, kind = model.recommender.lookup(uniq)  # (U, d), (U,)
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        B, H, K = len(states), max(1, int(h_len.max(initial=0))), max(1, int(r_len.max(initial=0)))

        def pad(flat: list[int], lens: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
            rows = np.repeat(np.arange(B), lens)
            cols = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
            idx = np.zeros((B, width), np.int64)
            ok = np.zeros((B, width), bool)
            idx[rows, cols] = flat
            ok[rows, cols] = True
            return idx, ok

        h_idx, h_ok = pad(h_flat, h_len, H)  # (B, H) history items (repeats are harmless)
        r_idx, r_ok = pad(r_flat, r_len, K)  # (B, K) found items
        h_ok &= kind[h_idx] != 2  # items unknown to the model have no meaningful vector
        sims = np.matmul(vecs[r_idx], vecs[h_idx].transpose(0, 2, 1))  # (B, K, H): one batched product
        valid = h_ok[:, None, :] & (h_idx[:, None, :] != r_idx[:, :, None])  # (B, K, H), not itself
        # the item itself only when nothing else is there
        valid |= (~valid.any(-1, keepdims=True)) & h_ok[:, None, :]
        best = np.take_along_axis(h_idx, np.where(valid, sims, -np.inf).argmax(-1), axis=1)  # (B, K)
        U = len(uniq)
        # one object per reason: similar_to each used history item, new_item, popular
        pick = np.where(kind[r_idx] != 0, U, np.where(valid.any(-1), best, U + 1))  # (B, K)
        table = np.empty(U + 2, dtype=object)
        for h in np.unique(pick[r_ok & (pick < U)]).tolist():
            table[h] = ("similar_to", uniq[h])
        table[U], table[U + 1] = NEW_ITEM, POPULAR
        rows = table[pick].tolist()
        return [row[:n] for row, n in zip(rows, r_len.tolist())]

    def _fill(self, model: ServingModel, have: Explained, purchased: set[str], k: int, *, explain: bool) -> Explained:
        """Top up a short list with popular items, then with the model's cold-start ranking.

        Fill-ins rank below the model's results; their scores only keep the order.
        """
        index = model.index
        out = list(have)
        taken = {item for item, _, _ in out} | purchased
        fill = self.popularity.top(k - len(out), exclude=taken, eligible=index.is_eligible)
        reasons: list[Reason] = [POPULAR] * len(fill)
        taken.update(fill)
        if len(out) + len(fill) < k and len(index) > 0:
            extra = [item for item, _ in index.search(self.cold_query(model), k, exclude=[taken])[0]]
            extra = extra[: k - len(out) - len(fill)]
            if explain and extra:
                kinds = model.recommender.lookup(extra)[1]
                reasons += [NEW_ITEM if kd != 0 else POPULAR for kd in kinds]
            else:
                reasons += [POPULAR] * len(extra)
            fill += extra
        floor = out[-1][1] if out else 0.0
        out += [(item, floor - 1.0 - rank * 1e-3, reasons[rank]) for rank, item in enumerate(fill)]
        return out

    def intent(self, states: Sequence[UserState], model: ServingModel | None = None) -> list[float | None]:
        """P(a purchase later in the session) per state, or None when the model has no intent
        model. Features come from each state's session counters (one batched prediction)."""
        intent_model = getattr((model or self.model).recommender, "intent", None)
        if intent_model is None or not states:
            return [None] * len(states)
        from streamrec.serving.session import columns, features

        try:
            cols = columns(tuple(intent_model.cfg.feature_names))
        except ValueError:
            if not getattr(self, "_intent_warned", False):
                log.warning(
                    "intent model wants features this worker does not compute: %s", intent_model.cfg.feature_names
                )
                self._intent_warned = True
            return [None] * len(states)
        p = intent_model.predict(features([s.session for s in states])[:, cols])
        return np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0).tolist()

"""Offline evaluation: leave-one-out, full ranking over all items, HR@K / NDCG@K / coverage.

Protocol (as in S3-Rec's published full-ranking code, which the Beauty figures come from): each
user's target is ranked against EVERY item of the catalog (no sampled negatives), and the items
already in the user's input history are excluded from the ranking (S3-Rec zeroes their scores
from the train matrix; we set them to -inf, which is what that intends). ``exclude_seen=False``
ranks them too. A target that is itself in the history therefore counts as a miss when excluded.

HR@K equals Recall@K with one target per user; NDCG@K = 1 / log2(rank + 2) when rank < K.
Catalog coverage@10 = share of the catalog that appears in at least one user's top 10.

>>> import numpy as np
>>> m = metrics_from_ranks(np.array([0, 1, 10]), ks=(1, 5))
>>> round(m["hr@5"], 4), round(m["ndcg@5"], 4)
(0.6667, 0.5436)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from streamrec.model.data import Encoded, history_batch
from streamrec.model.sasrec import PAD_ID, SASRec
from streamrec.model.transitions import WEIGHTS as TRANSITION_WEIGHTS
from streamrec.model.transitions import Transitions

KS = (5, 10, 20)
ScoreFn = Callable[[list[list[int]], list[list[int]]], torch.Tensor]  # -> (B, N+1)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """``ranks``: 0-based rank of each user's target."""
    ranks = np.asarray(ranks)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()) if len(ranks) else 0.0
    return out


def _exclude(scores: torch.Tensor, items: Sequence[Sequence[int]], *, outside: torch.Tensor | None, seen: bool) -> None:
    """Set (in place) to -inf what can never be ranked: the padding row, rows ``outside`` the
    catalog and, with ``seen``, each history's own items. ``scores`` (B, N+1), row b for ``items[b]``."""
    scores[:, PAD_ID] = float("-inf")
    if outside is not None:
        scores[:, outside] = float("-inf")
    if seen:
        rows = torch.as_tensor(np.repeat(np.arange(len(items)), [len(h) for h in items]))
        cols = torch.as_tensor([i for h in items for i in h], dtype=torch.long)
        scores[rows, cols] = float("-inf")


def _target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target (B,) among its row of ``scores`` (B, N+1); an excluded target
    (-inf: seen, or outside the catalog) gets a rank past any cutoff, a miss."""
    tgt = scores.gather(1, targets[:, None])  # (B, 1)
    r = (scores > tgt).sum(1)
    r[torch.isneginf(tgt[:, 0])] = 1 << 40
    return r


@torch.inference_mode()
def rank_all(
    score_fn: ScoreFn,
    inputs: Encoded,
    targets: np.ndarray,
    n_items: int,
    *,
    exclude_seen: bool = True,
    batch_size: int = 512,
    ks: Sequence[int] = KS,
    catalog_rows: np.ndarray | None = None,
) -> dict[str, float]:
    """Metrics of ``score_fn`` on (history, target) pairs, ranking against all rows 1..n_items,
    or only against ``catalog_rows`` when given (the live catalog a worker's index holds: rows
    outside it can never be recommended). A target outside ``catalog_rows`` counts as a miss."""
    ranks = np.empty(len(targets), dtype=np.int64)
    seen_top = np.zeros(n_items + 1, dtype=bool)
    outside: torch.Tensor | None = None
    if catalog_rows is not None:
        rows_ = np.asarray(catalog_rows, dtype=np.int64)
        if len(rows_) and (rows_.min() < 1 or rows_.max() > n_items):
            raise ValueError(f"catalog_rows must lie in 1..{n_items}")
        outside = torch.ones(n_items + 1, dtype=torch.bool)
        outside[torch.as_tensor(rows_)] = False
    # Users in order of history length: a batch is padded only to its own longest history.
    order = np.argsort([len(h) for h in inputs.items], kind="stable")
    for s in range(0, len(targets), batch_size):
        idx = order[s : s + batch_size]
        items = [inputs.items[i] for i in idx]
        types = [inputs.types[i] for i in idx]
        y = torch.as_tensor(targets[idx], dtype=torch.long)
        scores = score_fn(items, types).float().cpu()  # (B, N+1)
        _exclude(scores, items, outside=outside, seen=exclude_seen)
        ranks[idx] = _target_ranks(scores, y).numpy()
        top = scores.topk(min(10, n_items), dim=1)
        seen_top[top.indices[torch.isfinite(top.values)].numpy()] = True
    out = metrics_from_ranks(ranks, ks)
    n_cat = n_items if catalog_rows is None else len(catalog_rows)
    out["coverage@10"] = float(seen_top[1:].sum() / max(n_cat, 1))
    out["users"] = len(targets)
    return out


def model_score_fn(
    model: SASRec, *, device: torch.device | str = "cpu", text_channel: bool = True, transitions: bool = True
) -> ScoreFn:
    """Scores of all rows for a batch of histories: the served user vector . the served item
    vectors (with hybrid scoring both carry the gated text-similarity channel), plus the model's
    transitions term when it has one with a weight (``model.transitions``,
    :mod:`streamrec.model.transitions`; ``transitions=False``: the inner product alone)."""
    table_t = model.transitions if transitions else None
    if table_t is not None and not table_t.served:
        table_t = None
    model.eval()
    with torch.inference_mode():
        table = model.item_table()  # (N+1, d), once per evaluation
        out = model.output_table(table) if text_channel else table  # (N+1, D) as in the index

    @torch.inference_mode()
    def fn(items: list[list[int]], types: list[list[int]]) -> torch.Tensor:
        x, t = history_batch(items, types, model.config.max_len)
        if text_channel:
            u = model.user_vectors(x.to(device), t.to(device), table)  # (B, D) as encode_users
        else:
            u = model.encode(x.to(device), t.to(device), table, last_only=True)[:, -1]  # (B, d) model part only
        s = u @ out.T  # (B, N+1)
        if table_t is not None:
            s = s + table_t.weight * table_t.dense(items, s.shape[1]).to(s.device)
        return s

    return fn


@torch.inference_mode()
def fit_transition_weight(
    model: SASRec,
    table: Transitions,
    inputs: Encoded,
    targets: np.ndarray,
    *,
    weights: Sequence[float] = TRANSITION_WEIGHTS,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
) -> tuple[float, dict[str, float]]:
    """The weight of ``table``'s term (:mod:`streamrec.model.transitions`) with the best NDCG@10
    on these (held-out) pairs, history excluded as in :func:`rank_all`, and NDCG@10 per weight.
    One pass: the model's scores are computed once per batch. Ties go to the smaller weight."""
    base = model_score_fn(model, device=device, transitions=False)
    ranks = {w: np.empty(len(targets), dtype=np.int64) for w in weights}
    for s in range(0, len(targets), batch_size):
        idx = np.arange(s, min(s + batch_size, len(targets)))
        items = [inputs.items[i] for i in idx]
        types = [inputs.types[i] for i in idx]
        m = base(items, types).float().cpu()
        _exclude(m, items, outside=None, seen=True)
        term = table.dense(items, m.shape[1])
        y = torch.as_tensor(targets[idx], dtype=torch.long)
        for w in weights:
            ranks[w][idx] = _target_ranks(m + w * term, y).numpy()
    ndcg = {str(w): metrics_from_ranks(r, (10,))["ndcg@10"] for w, r in ranks.items()}
    best = max(weights, key=lambda w: (ndcg[str(w)], -w))
    return float(best), ndcg


def evaluate_model(
    model: SASRec,
    inputs: Encoded,
    targets: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    exclude_seen: bool = True,
    batch_size: int = 512,
    catalog_rows: np.ndarray | None = None,
    text_channel: bool = True,
    transitions: bool = True,
) -> dict[str, float]:
    was_training = model.training
    try:
        return rank_all(
            model_score_fn(model, device=device, text_channel=text_channel, transitions=transitions),
            inputs,
            targets,
            model.config.n_items,
            exclude_seen=exclude_seen,
            batch_size=batch_size,
            catalog_rows=catalog_rows,
        )
    finally:
        model.train(was_training)


# -- baselines ------------------------------------------------------------------------------------


def popularity_score_fn(train: Encoded, n_items: int) -> ScoreFn:
    """Everybody gets the most interacted items (counted in ``train``)."""
    counts = np.zeros(n_items + 1, dtype=np.float32)
    for s in train.items:
        np.add.at(counts, np.asarray(s, dtype=np.int64), 1.0)
    pop = torch.from_numpy(counts)

    def fn(items: list[list[int]], types: list[list[int]]) -> torch.Tensor:
        return pop.expand(len(items), -1).clone()

    return fn


def cooccurrence_score_fn(train: Encoded, n_items: int, *, window: int = 3, recent: int = 3) -> ScoreFn:
    """Item-to-item: j scores by how often it followed the user's last ``recent`` items within
    ``window`` steps in ``train`` (newer history items weigh more), popularity breaking ties."""
    follow: defaultdict[int, defaultdict[int, float]] = defaultdict(lambda: defaultdict(float))
    counts = np.zeros(n_items + 1, dtype=np.float32)
    for s in train.items:
        np.add.at(counts, np.asarray(s, dtype=np.int64), 1.0)
        for a in range(len(s)):
            for b in range(a + 1, min(len(s), a + 1 + window)):
                follow[s[a]][s[b]] += 1.0 / (b - a)
    tie = torch.from_numpy(counts / (counts.max() + 1.0) * 1e-3)

    def fn(items: list[list[int]], types: list[list[int]]) -> torch.Tensor:
        out = tie.expand(len(items), -1).clone()
        for r, h in enumerate(items):
            for age, i in enumerate(reversed(h[-recent:])):
                w = 0.5**age
                nb = follow.get(i)
                if nb:
                    cols = torch.as_tensor(list(nb.keys()), dtype=torch.long)
                    vals = torch.as_tensor(list(nb.values()), dtype=torch.float32)
                    out[r].index_add_(0, cols, vals * w)
        return out

    return fn


def text_similarity_score_fn(text_emb: torch.Tensor, *, decay: float = 0.7) -> ScoreFn:
    """Plain text similarity, no training: the user vector is the recency-weighted mean of the
    history's title vectors (weight ``exp(-decay * age)``, the newest item age 0; 0 = a plain
    mean), an item scores by
    the cosine between it and its title vector. ``text_emb`` (N+1, D): one row per item row,
    zeros for items without text (they score 0)."""
    if not 0.0 <= decay <= 20.0:
        raise ValueError(f"decay must be in [0, 20], got {decay}")
    emb = text_emb.detach().float().cpu()
    unit = torch.nn.functional.normalize(emb, dim=-1)  # zero rows stay zero

    def fn(items: list[list[int]], types: list[list[int]]) -> torch.Tensor:
        q = torch.zeros(len(items), emb.shape[1])
        for r, h in enumerate(items):
            if h:
                w = torch.exp(-decay * torch.arange(len(h) - 1, -1, -1, dtype=torch.float32))  # (L,)
                q[r] = (w[:, None] * emb[torch.as_tensor(h, dtype=torch.long)]).sum(0) / w.sum()
        return torch.nn.functional.normalize(q, dim=-1) @ unit.T  # (B, N+1)

    return fn


def lift(model: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """Relative lift of ``model`` over ``base`` per metric (0.25 = +25 %)."""
    return {
        k: (model[k] / base[k] - 1.0) if base.get(k) else float("nan") for k in model if k.startswith(("hr@", "ndcg@"))
    }

"""Purchase intent: P(a purchase happens later in this session | the session so far, the user).

A light model over the session and user counters of :mod:`streamrec.serving.session`
(optionally with the SASRec user vector appended): standardised inputs, then a logistic
regression (``hidden=0``) or one small hidden layer. Chosen over a head on the sequence encoder
by ``bench/intent.py`` (see ``bench/RESULTS.md``, "User insights").

Saved beside the recommender's checkpoint as ``intent.safetensors`` (weights, mean, std) plus
``intent.json`` (feature names, shape, metrics): nothing is pickled. Inference is one matrix
product per batch in numpy-sized tensors.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(200, 3)).astype("float32"); y = (x[:, 0] > 0)
>>> m = fit_intent(x, y.astype("float32"), feature_names=("a", "b", "c"), steps=200)
>>> bool(m.predict(x[y]).mean() > m.predict(x[~y]).mean())
True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from streamrec.errors import CheckpointError
from streamrec.fsutil import atomic_write, atomic_write_text

INTENT_WEIGHTS = "intent.safetensors"
INTENT_CONFIG = "intent.json"


@dataclass
class IntentConfig:
    feature_names: list[str]  # input columns, in order (session/user features, then user vector)
    hidden: int = 0  # 0: logistic regression; >0: one hidden ReLU layer of this width
    metrics: dict[str, Any] = field(default_factory=dict)  # what training measured


class IntentModel(nn.Module):
    """Standardise -> (Linear | Linear-ReLU-Linear) -> logit. ``forward`` returns (B,) logits."""

    mean: torch.Tensor  # buffers (register_buffer below)
    std: torch.Tensor

    def __init__(self, cfg: IntentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = len(cfg.feature_names)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        if cfg.hidden > 0:
            self.net: nn.Module = nn.Sequential(nn.Linear(n, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))
        else:
            self.net = nn.Linear(n, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std  # (B, F)
        return self.net(z).squeeze(-1)  # (B,)

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """(B,) probabilities in [0, 1] for a (B, F) float array."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.cfg.feature_names):
            raise ValueError(f"intent inputs must have shape (B, {len(self.cfg.feature_names)}), got {x.shape}")
        if x.shape[0] == 0:
            return np.zeros(0, np.float32)
        self.eval()
        with torch.inference_mode():
            return torch.sigmoid(self(torch.from_numpy(x))).numpy().astype(np.float32)

    # -- persistence --------------------------------------------------------------------------

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(out / INTENT_WEIGHTS, lambda tmp: save_file(state, str(tmp)))
        atomic_write_text(out / INTENT_CONFIG, json.dumps(asdict(self.cfg), indent=2, sort_keys=True, default=float))

    @classmethod
    def load(cls, path: str | Path) -> IntentModel | None:
        """The intent model of a checkpoint dir, or None when it has none (older checkpoints)."""
        p = Path(path)
        if not (p / INTENT_CONFIG).is_file() and not (p / INTENT_WEIGHTS).is_file():
            return None
        try:
            raw = json.loads((p / INTENT_CONFIG).read_text(encoding="utf-8"))
            cfg = IntentConfig(
                feature_names=[str(x) for x in raw["feature_names"]],
                hidden=int(raw.get("hidden", 0)),
                metrics=dict(raw.get("metrics") or {}),
            )
            if not 1 <= len(cfg.feature_names) <= 4096 or not 0 <= cfg.hidden <= 4096:
                raise ValueError("feature count or hidden width out of range")
            state = load_file(str(p / INTENT_WEIGHTS))
            model = cls(cfg)
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # noqa: BLE001  # missing file, bad JSON, bad shapes, corrupt safetensors
            raise CheckpointError(f"checkpoint {str(p)!r}: unusable intent model: {exc}") from None
        return model.eval()


def fit_intent(
    x: np.ndarray,
    y: np.ndarray,
    *,
    feature_names: Sequence[str],
    hidden: int = 0,
    steps: int = 400,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> IntentModel:
    """Full-batch Adam on the binary cross-entropy; inputs standardised with the training stats."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[1] != len(feature_names):
        raise ValueError(f"x {x.shape} / y {y.shape} / {len(feature_names)} feature names do not agree")
    if x.shape[0] == 0 or y.min() == y.max():
        raise ValueError("intent training needs both positive and negative examples")
    torch.manual_seed(seed)
    model = IntentModel(IntentConfig(feature_names=list(feature_names), hidden=hidden))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.mean.copy_(xt.mean(0))
    std = xt.std(0)
    # a column constant in training (e.g. favourites where the data has none) stays unscaled,
    # so that a value it never showed in training cannot blow up at serving time
    model.std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))
    # Start at the base rate: the bias alone then already gives the base-rate log loss.
    last = model.net[-1] if isinstance(model.net, nn.Sequential) else model.net
    assert isinstance(last, nn.Linear)
    p = float(y.mean())
    with torch.no_grad():
        last.bias.fill_(float(np.log(p / (1 - p))))
        if hidden == 0:
            last.weight.zero_()  # convex: start from the base rate, untouched columns stay 0
    opt = torch.optim.Adam(model.parameters(), lr=lr if hidden == 0 else lr / 5, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model(xt), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@dataclass
class IntentExamples:
    """One row per non-purchase event: features, label, and where it comes from."""

    x: np.ndarray  # (N, F) float32, columns FEATURE_NAMES
    y: np.ndarray  # (N,) float32: 1 if a purchase follows later in the same session
    session_start_ms: np.ndarray  # (N,) int64
    session_end_ms: np.ndarray  # (N,) int64
    user: list[str]
    ts_ms: np.ndarray  # (N,) int64, the scored event's time

    def split_by_time(self, holdout: float) -> tuple[IntentExamples, IntentExamples] | None:
        """(earlier, latest): the latest ``holdout`` share of the sessions (by start) and the
        sessions that ended before them; None when either part lacks positives or negatives."""
        cut = float(np.quantile(np.unique(self.session_start_ms), 1.0 - holdout))
        tr, te = self.select(self.session_end_ms < cut), self.select(self.session_start_ms >= cut)
        if len(tr.y) and len(te.y) and 0 < tr.y.mean() < 1 and 0 < te.y.mean() < 1:
            return tr, te
        return None

    def select(self, mask: np.ndarray) -> IntentExamples:
        idx = np.flatnonzero(mask)
        return IntentExamples(
            self.x[idx],
            self.y[idx],
            self.session_start_ms[idx],
            self.session_end_ms[idx],
            [self.user[i] for i in idx],
            self.ts_ms[idx],
        )


def intent_examples(users: dict[str, list[Any]], *, favorites: bool = False) -> IntentExamples:
    """Replay every user's events (``TypedEvent``s, time-ordered) through one
    :class:`~streamrec.serving.session.SessionStats` and emit a row at every event that is not a
    purchase.

    How the purchase is masked: the row at event j is computed from events 0..j only (the
    tracker has not seen anything later), purchase events themselves are never scored, and the
    label is "some event after j in this session is a purchase". A purchase earlier in the
    session is visible (it did happen, the worker sees it too) but says nothing about the label
    beyond what the live system would also know.

    ``favorites=False`` counts a Taobao favourite as the ``view`` it becomes on the wire (what a
    worker sees, so what a shipped model must be trained on); True keeps it apart.
    """
    from streamrec.serving.session import SessionStats
    from streamrec.typed_events import sessions

    rows: list[list[float]] = []
    ys: list[float] = []
    starts: list[int] = []
    ends: list[int] = []
    who: list[str] = []
    ts: list[int] = []
    for user, seq in users.items():
        stats = SessionStats()
        for sess in sessions(seq):
            buy_after = [False] * len(sess)
            later = False
            for j in range(len(sess) - 1, -1, -1):
                buy_after[j] = later
                later = later or sess[j].type == "purchase"
            for j, e in enumerate(sess):
                stats.update(e.item_id, e.raw if favorites else e.type, e.ts_ms)
                if e.type == "purchase":
                    continue
                rows.append(stats.row())
                ys.append(float(buy_after[j]))
                starts.append(sess[0].ts_ms)
                ends.append(sess[-1].ts_ms)
                who.append(user)
                ts.append(e.ts_ms)
    from streamrec.serving.session import FEATURE_NAMES

    return IntentExamples(
        np.asarray(rows, np.float32).reshape(-1, len(FEATURE_NAMES)),
        np.asarray(ys, np.float32),
        np.asarray(starts, np.int64),
        np.asarray(ends, np.int64),
        who,
        np.asarray(ts, np.int64),
    )


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half)."""
    y = np.asarray(y) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(p), return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based first rank of each distinct value
    ranks = (first + (counts + 1) / 2.0)[inverse]  # average 1-based rank over ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step-wise)."""
    y = np.asarray(y) > 0.5
    if not y.any():
        return float("nan")
    order = np.argsort(-np.asarray(p), kind="mergesort")
    hits = y[order]
    prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(prec[hits].sum() / hits.sum())


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    y = np.asarray(y, np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def train_intent(
    users: dict[str, list[Any]], *, holdout: float = 0.2, seed: int = 0, steps: int = 400
) -> tuple[IntentModel | None, dict[str, Any]]:
    """Fit the shipped intent model on typed, timestamped events (``{user: [TypedEvent]}``).

    The latest ``holdout`` share of the sessions (by start time) is held out once to measure
    the model against the counts-only baseline and the base rate (kept in ``intent.json``);
    then the model is refitted on every session. Returns (None, reason) when the data cannot
    train one (no purchases, or nothing but purchases).
    """
    from streamrec.serving.session import BASELINE_FEATURES, FEATURE_NAMES, columns

    ex = intent_examples(users)
    if len(ex.y) == 0 or ex.y.min() == ex.y.max():
        return None, {"skipped": "the events need sessions with and without a later purchase"}
    split = ex.split_by_time(holdout)
    metrics: dict[str, Any] = {"examples": len(ex.y), "positive_rate": round(float(ex.y.mean()), 4)}
    if split is not None:
        tr, te = split
        cols = columns(BASELINE_FEATURES)
        m = fit_intent(tr.x, tr.y, feature_names=FEATURE_NAMES, steps=steps, seed=seed)
        b = fit_intent(tr.x[:, cols], tr.y, feature_names=BASELINE_FEATURES, steps=steps, seed=seed)
        pm, pb = m.predict(te.x), b.predict(te.x[:, cols])
        metrics["holdout"] = {
            "examples": len(te.y),
            "model_roc_auc": round(roc_auc(te.y, pm), 4),
            "model_log_loss": round(log_loss(te.y, pm), 4),
            "baseline_roc_auc": round(roc_auc(te.y, pb), 4),
            "baseline_log_loss": round(log_loss(te.y, pb), 4),
            "base_rate_log_loss": round(log_loss(te.y, np.full(len(te.y), tr.y.mean())), 4),
        }
    model = fit_intent(ex.x, ex.y, feature_names=FEATURE_NAMES, steps=steps, seed=seed)
    model.cfg.metrics = metrics
    return model, metrics

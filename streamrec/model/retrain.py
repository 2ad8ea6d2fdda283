"""One retraining round: training window, candidate, gate, registry (pure: no Kafka).

The trainer (``streamrec.streams.trainer``) calls :func:`retrain` with a snapshot of its
training log; this module decides everything else:

1. **Sequences.** Events become per-user item sequences, oldest first: views, carts and
   purchases (a ``remove_from_cart`` is not interest), consecutive events on the same item
   collapsed into one token carrying the latest type (view -> cart -> purchase of one item is one
   step, not three "next items" that repeat the last).
2. **Hold-out (time-based).** The ``holdout_users`` users whose latest interaction is newest
   each give their latest interaction as a target, the rest of their sequence as the history.
   The targets are removed from the training data, so neither the candidate nor (by the same
   rule in the round that trained it) the current version ever trained on them.
3. **Window.** A fine-tune trains on the users active within ``window_s`` of the newest event
   plus a replay sample of older users (``replay_ratio`` per recent user), so that one step on
   fresh data does not forget the rest. A full retrain uses every user in the log.
4. **Candidate.** :func:`streamrec.model.train.finetune` warm-starts from the current version
   (``train`` from scratch for a full retrain, with the current version's shape), stopping at
   ``time_budget_s``. Every catalog item (from ``shop.catalog``) and every item of the log joins
   the vocabulary; unseen ones start as their text projection.
5. **Gate.** Candidate and current are ranked against the same item set (the union of both
   vocabularies, the log and the catalog; items a model lacks are added from their text, as a
   worker would) on the same hold-out, full ranking, NDCG@10 and HR@10
   (:func:`streamrec.model.evaluate.evaluate_model`). The candidate is promoted unless it is
   worse than the current version by more than ``tolerance`` (absolute) on either metric.
6. **Registry.** A promoted candidate is registered with its metrics (the gate's decision and
   both metric sets under ``"gate"``) and made current; old versions beyond ``keep`` are pruned.
   Its purchase-intent model is refitted on the log's sessions when that is better on the log's
   latest sessions than the one it replaces, else carried over (:func:`refresh_intent`).
   A rejected candidate is not registered: its decision is returned (and appended to the
   trainer's ``decisions.jsonl``).

Before the first round, a version that barely knows the catalog (a model moved from another
shop) is adapted to it by :func:`adapt_current`: its text channel fitted to the catalog's titles.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa

from streamrec.model.data import Encoded, Interactions, ItemVocab, encode
from streamrec.model.sasrec import SASRec

log = logging.getLogger(__name__)

INTEREST_TYPES = frozenset({"view", "add_to_cart", "purchase"})
GATE_METRICS = ("ndcg@10", "hr@10")


@dataclass(frozen=True)
class RetrainConfig:
    """How one round runs (the trainer builds it from ``STREAMREC_RETRAIN_*`` settings)."""

    time_budget_s: float = 120.0  # training stops after this many seconds
    window_s: float = 86400.0  # recent users: latest event within this of the newest event
    replay_ratio: float = 1.0  # older users sampled per recent user (fine-tune only)
    holdout_users: int = 1000  # most recently active users held out for the gate
    tolerance: float = 0.005  # allowed absolute drop of NDCG@10 / HR@10 versus current
    device: str = "auto"  # torch device for training and the gate
    seed: int = 0  # window sampling and training seed
    max_epochs: int = 20  # fit's hard stop (the time budget usually stops it first)
    patience: int = 3  # epochs without validation gain before early stopping
    val_users: int = 256  # users whose second-last item drives fit's early stopping
    text_cache: str | None = None  # text-cache dir (RocksDB) shared with the worker, train, evaluate
    keep: int | None = 20  # registry versions kept after a promotion (None: all)


@dataclass
class Decision:
    """What one round did. ``candidate``/``current``: hold-out metrics (current None when the
    registry had no version)."""

    promoted: bool
    reason: str
    mode: str  # "finetune" | "full"
    candidate: dict[str, float]
    current: dict[str, float] | None
    tolerance: float
    holdout_users: int
    train_users: int
    train_events: int
    added_items: int
    train_seconds: float
    base_version: str | None  # the version fine-tuned from (None: from scratch)
    version: str | None = None  # the registered version when promoted
    decided_ts: float = field(default_factory=time.time)
    intent: str = ""  # what a promoted version's purchase-intent model is (see refresh_intent)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat_metrics(self) -> dict[str, float]:
        """Numbers only (the ``ModelUpdate.metrics`` map): ``holdout_ndcg@10``,
        ``holdout_hr@10``, ``current_ndcg@10``, ``current_hr@10`` (absent without a current
        version), ``holdout_users``, ``train_events``, ``train_seconds``, ``added_items``,
        ``full`` (1.0 for a retrain from scratch)."""
        out = {f"holdout_{k}": float(v) for k, v in self.candidate.items() if k in GATE_METRICS}
        if self.current is not None:
            out |= {f"current_{k}": float(v) for k, v in self.current.items() if k in GATE_METRICS}
        out |= {
            "holdout_users": float(self.holdout_users),
            "train_events": float(self.train_events),
            "train_seconds": float(self.train_seconds),
            "added_items": float(self.added_items),
            "full": 1.0 if self.mode == "full" else 0.0,
        }
        return out


# -- data -----------------------------------------------------------------------------------------


Step = tuple[str, str, int]  # (item_id, event type, ts ms)


def _log_rows(table: pa.Table) -> Iterator[tuple[str, str, str, int]]:
    """(user, item, type, ts) of each log row, in the table's order."""
    # Every row was a validated ShopEvent: these columns hold no nulls (Arrow types them optional).
    users = cast("list[str]", table.column("user_id").to_pylist())
    items = cast("list[str]", table.column("item_id").to_pylist())
    types = cast("list[str]", table.column("type").to_pylist())
    ts = cast("list[int]", table.column("ts").to_pylist())
    return zip(users, items, types, ts)


def sequences_from_log(table: pa.Table) -> dict[str, list[Step]]:
    """Per-user interest sequences from log rows (ordered by ts, as :meth:`TrainLog.read` gives).

    >>> t = pa.table({"user_id": ["u", "u", "u", "u"], "item_id": ["a", "a", "b", "b"],
    ...               "type": ["view", "add_to_cart", "view", "remove_from_cart"], "ts": [1, 2, 3, 4]})
    >>> sequences_from_log(t)
    {'u': [('a', 'add_to_cart', 2), ('b', 'view', 3)]}
    """
    out: dict[str, list[Step]] = {}
    for u, i, t, when in _log_rows(table):
        if t not in INTEREST_TYPES:
            continue
        seq = out.setdefault(u, [])
        if seq and seq[-1][0] == i:
            seq[-1] = (i, t, when)
        else:
            seq.append((i, t, when))
    return out


@dataclass
class HoldOut:
    users: list[str]
    histories: list[list[Step]]  # everything before the target, oldest first
    targets: list[str]  # each user's latest item


def split_holdout(seqs: dict[str, list[Step]], n_users: int) -> tuple[dict[str, list[Step]], HoldOut]:
    """Hold out the latest interaction of the ``n_users`` most recently active users (with a
    history of at least one item before it). Returns (training sequences, hold-out)."""
    eligible = [u for u, s in seqs.items() if len(s) >= 2]
    eligible.sort(key=lambda u: (seqs[u][-1][2], u), reverse=True)
    held = eligible[:n_users]
    train = dict(seqs)
    ho = HoldOut([], [], [])
    for u in held:
        s = seqs[u]
        ho.users.append(u)
        ho.histories.append(s[:-1])
        ho.targets.append(s[-1][0])
        train[u] = s[:-1]
    return train, ho


def training_window(
    seqs: dict[str, list[Step]], *, window_s: float, replay_ratio: float, rng: np.random.Generator, full: bool = False
) -> Interactions:
    """The users to train on: recent ones plus a replay sample of older ones (all when ``full``).
    "Recent" is relative to the newest event in ``seqs`` (event time, not the wall clock)."""
    users = [u for u, s in seqs.items() if len(s) >= 1]
    if not users:
        return Interactions()
    if not full:
        newest = max(seqs[u][-1][2] for u in users)
        horizon = newest - int(window_s * 1000)
        recent = [u for u in users if seqs[u][-1][2] >= horizon]
        older = [u for u in users if seqs[u][-1][2] < horizon]
        k = min(len(older), round(replay_ratio * len(recent)))
        replay = [older[j] for j in sorted(rng.choice(len(older), size=k, replace=False))] if k else []
        users = recent + replay
    out = Interactions()
    for u in users:
        out.users.append(u)
        out.items.append([s[0] for s in seqs[u]])
        out.types.append([s[1] for s in seqs[u]])
    return out


# -- the gate -------------------------------------------------------------------------------------


def gate(candidate: dict[str, float], current: dict[str, float] | None, tolerance: float) -> tuple[bool, str]:
    """Promote unless the candidate is worse than current by more than ``tolerance`` on NDCG@10
    or HR@10 (absolute). No current version: promote.

    >>> gate({"ndcg@10": 0.10, "hr@10": 0.2}, {"ndcg@10": 0.104, "hr@10": 0.2}, 0.005)
    (True, 'not worse than current by more than 0.005: ndcg@10 0.1000 vs 0.1040, hr@10 0.2000 vs 0.2000')
    >>> gate({"ndcg@10": 0.09, "hr@10": 0.2}, {"ndcg@10": 0.10, "hr@10": 0.2}, 0.005)[0]
    False
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if current is None:
        return True, "no current version"
    parts = ", ".join(f"{k} {candidate[k]:.4f} vs {current[k]:.4f}" for k in GATE_METRICS)
    worse = [k for k in GATE_METRICS if candidate[k] < current[k] - tolerance]
    if worse:
        return False, f"worse than current by more than {tolerance} on {'/'.join(worse)}: {parts}"
    return True, f"not worse than current by more than {tolerance}: {parts}"


def add_catalog(
    model: SASRec,
    vocab: ItemVocab,
    ids: list[str],
    item_text: dict[str, str | None],
    *,
    cache_file: str | None,
    device: str,
) -> int:
    """Add the ``ids`` the model lacks, embedded from their text. Returns how many were added."""
    from streamrec.model.train import add_items

    return len(add_items(model, vocab, ids, item_text, cache_file=cache_file, device=device))


def evaluate_holdout(model: SASRec, vocab: ItemVocab, holdout: HoldOut, *, device: str = "cpu") -> dict[str, float]:
    """Full-ranking metrics of ``model`` on the hold-out (items in the history excluded)."""
    from streamrec.model.evaluate import evaluate_model
    from streamrec.model.text import resolve_device

    data = Interactions(
        list(holdout.users),
        [[s[0] for s in h] for h in holdout.histories],
        [[s[1] for s in h] for h in holdout.histories],
    )
    enc = encode(data, vocab)
    keep = [k for k, (h, t) in enumerate(zip(enc.items, holdout.targets)) if h and t in vocab]
    if not keep:
        raise ValueError("the hold-out has no user with a known history and target")
    inputs = Encoded([enc.items[k] for k in keep], [enc.types[k] for k in keep])
    targets = np.array([vocab.row(holdout.targets[k]) for k in keep], dtype=np.int64)
    dev = resolve_device(device)
    model.to(dev)
    return evaluate_model(model, inputs, targets, device=dev)


# -- one round ------------------------------------------------------------------------------------


def carry_intent(base_dir: Path | None, out_dir: Path) -> bool:
    """Copy the base version's purchase-intent model (``intent.*``) into a new checkpoint: it
    reads session counters, not item ids, so it stays valid when the recommender is retrained
    (:func:`refresh_intent` carries it when a refit on the log is not better). True when there
    was one to copy."""
    from streamrec.model.intent import INTENT_CONFIG, INTENT_WEIGHTS

    if base_dir is None or not (Path(base_dir) / INTENT_CONFIG).is_file():
        return False
    for name in (INTENT_WEIGHTS, INTENT_CONFIG):
        shutil.copyfile(Path(base_dir) / name, out_dir / name)
    return True


def intent_sessions_from_log(table: pa.Table) -> dict[str, list[Any]]:
    """Every logged event as a :class:`~streamrec.typed_events.TypedEvent` per user, oldest
    first (all types: the intent features count carts, removals and purchases too)."""
    from streamrec.typed_events import TypedEvent

    out: dict[str, list[Any]] = {}
    for u, i, t, when in _log_rows(table):
        out.setdefault(u, []).append(TypedEvent(u, i, "", t, when, t))
    for seq in out.values():
        seq.sort(key=lambda e: e.ts_ms)  # stable: the log's order among equal times
    return out


def refresh_intent(
    table: pa.Table, base_dir: Path | None, out_dir: Path, *, holdout: float = 0.2, seed: int = 0, steps: int = 400
) -> str:
    """Give the version in ``out_dir`` a purchase-intent model, and say which (``Decision.intent``).

    The log's sessions become intent examples (:func:`streamrec.model.intent.intent_examples`:
    each row sees only its session so far); the latest ``holdout`` share of the sessions (by
    start) is held out. A model fitted on the rest replaces the base version's when its hold-out
    log loss is no worse than the base model's on the same rows (or there is no base model); it
    is then refitted on every session and saved. Otherwise, or when the log cannot train one (no
    session with a later purchase, or none without), the base version's model is carried over."""
    from streamrec.errors import CheckpointError
    from streamrec.model.intent import INTENT_CONFIG, IntentModel, fit_intent, intent_examples, log_loss
    from streamrec.serving.session import FEATURE_NAMES, columns

    base: IntentModel | None = None
    if base_dir is not None and (Path(base_dir) / INTENT_CONFIG).is_file():
        try:
            base = IntentModel.load(base_dir)
        except CheckpointError as exc:  # never carried over: refitted if the log allows
            log.warning("base version's intent model unusable, not carried: %s", exc)
            base_dir = None

    def carry(why: str) -> str:
        return f"carried ({why})" if carry_intent(base_dir, out_dir) else f"none ({why})"

    ex = intent_examples(intent_sessions_from_log(table))
    if len(ex.y) == 0 or ex.y.min() == ex.y.max():
        return carry("the log has no sessions both with and without a later purchase")
    split = ex.split_by_time(holdout)
    if split is None:
        return carry("too few sessions to hold some out")
    tr, te = split
    fitted = log_loss(te.y, fit_intent(tr.x, tr.y, feature_names=FEATURE_NAMES, steps=steps, seed=seed).predict(te.x))
    old = None
    if base is not None:
        try:  # a model on a subset of today's features is served (and so compared) on that subset
            old = log_loss(te.y, base.predict(te.x[:, columns(tuple(base.cfg.feature_names))]))
        except ValueError:  # features this version no longer computes: the worker cannot serve it
            old = None
    if old is not None and fitted > old:
        return carry(f"hold-out log loss {old:.4f}, refitted {fitted:.4f}")
    model = fit_intent(ex.x, ex.y, feature_names=FEATURE_NAMES, steps=steps, seed=seed)
    model.cfg.metrics = {
        "examples": len(ex.y),
        "positive_rate": round(float(ex.y.mean()), 4),
        "holdout": {"examples": len(te.y), "model_log_loss": round(fitted, 4), "replaced_log_loss": old},
    }
    model.save(out_dir)
    was = "no model before" if old is None else f"{old:.4f} before"
    return f"retrained (hold-out log loss {fitted:.4f}, {was}; {len(ex.y)} examples)"


def retrain(
    table: pa.Table,
    registry: Any,
    item_text: dict[str, str | None],
    cfg: RetrainConfig,
    *,
    full: bool = False,
    transform: Callable[[Interactions, np.random.Generator], Interactions] | None = None,
) -> Decision:
    """Train a candidate on the logged events in ``table``, gate it against the registry's
    current version, and register + promote it when it passes (see the module docstring).

    ``registry`` is a :class:`~streamrec.model.registry.ModelRegistry`; without a current
    version the round is a full retrain and the candidate is promoted. ``transform`` rewrites
    the training data before training (tests use it to build a deliberately worse candidate).
    Raises ValueError when the log holds too little to train and evaluate.
    """
    import torch

    from streamrec.model.checkpoint import load_checkpoint, save_checkpoint
    from streamrec.model.text import resolve_device
    from streamrec.model.train import TrainSettings, finetune, train

    t0 = time.monotonic()
    cut_ms = int(time.time() * 1000)  # the caller read ``table`` just before: the data's cut
    rng = np.random.default_rng(cfg.seed)
    dev = str(resolve_device(cfg.device))
    seqs = sequences_from_log(table)
    train_seqs, holdout = split_holdout(seqs, cfg.holdout_users)
    if len(holdout.users) < 1:
        raise ValueError(f"cannot retrain: no user in the log has 2+ interactions ({len(seqs)} users)")
    base_dir = registry.current_path()
    base_version = registry.current_version()
    full = full or base_dir is None
    data = training_window(train_seqs, window_s=cfg.window_s, replay_ratio=cfg.replay_ratio, rng=rng, full=full)
    if transform is not None:
        data = transform(data, rng)
    if sum(len(s) >= 2 for s in data.items) == 0:
        raise ValueError(f"cannot retrain: no training sequence of 2+ items among {len(data)} users")
    current = None
    if base_dir is not None:
        current = load_checkpoint(base_dir, device=dev)
    settings = TrainSettings(
        time_budget=cfg.time_budget_s,
        max_epochs=cfg.max_epochs,
        patience=cfg.patience,
        seed=cfg.seed,
        device=dev,
        progress=False,
        text_cache=cfg.text_cache,
        val_users=cfg.val_users,
        train_on_last=True,
        # a version that serves item-to-item transitions keeps them: the round counts its own
        # table on its training data and chooses the weight again on its validation users
        transitions=current is not None and current[0].transitions is not None,
    )
    if full:
        config = None
        if current is not None:
            config = {
                k: v
                for k, v in current[0].config.to_dict().items()
                if k
                in (
                    "max_len",
                    "d_model",
                    "n_layers",
                    "n_heads",
                    "d_ff",
                    "dropout",
                    "emb_dropout",
                    "id_dropout",
                    "use_text",
                    "loss",
                    "n_negatives",
                    # the same served vectors (hybrid text channel or not, its size)
                    "hybrid",
                    "text_sim_dim",
                    "text_decay",
                    "trust_known_share",
                    "new_item_boost",
                )
            }
        res = train(data, item_text=item_text, config=config, settings=settings)
    else:
        model, vocab = load_checkpoint(base_dir, device=dev)  # a second copy: fit trains in place
        res = finetune(model, vocab, data, item_text=item_text, settings=settings)
    train_seconds = time.monotonic() - t0
    # Same item set for both: the union of the vocabularies, the log and the catalog.
    universe = list(
        dict.fromkeys(
            # (a vocabulary's freed rows hold None: not an item)
            [
                *(i for i in (current[1].ids if current is not None else []) if i is not None),
                *(i for i in res.vocab.ids if i is not None),
                *(i for s in seqs.values() for i, _, _ in s),
                *item_text,
            ]
        )
    )
    added = add_catalog(res.model, res.vocab, universe, item_text, cache_file=cfg.text_cache, device=dev)
    with torch.inference_mode():
        cand_m = evaluate_holdout(res.model, res.vocab, holdout, device=dev)
        cur_m = None
        if current is not None:
            add_catalog(current[0], current[1], universe, item_text, cache_file=cfg.text_cache, device=dev)
            cur_m = evaluate_holdout(current[0], current[1], holdout, device=dev)
    ok, reason = gate(cand_m, cur_m, cfg.tolerance)
    decision = Decision(
        promoted=ok,
        reason=reason,
        mode="full" if full else "finetune",
        candidate=cand_m,
        current=cur_m,
        tolerance=cfg.tolerance,
        holdout_users=int(cand_m.get("users", 0)),
        train_users=len(data),
        train_events=sum(len(s) for s in data.items),
        added_items=int(res.metrics.get("added_items", 0)) + added,
        train_seconds=round(train_seconds, 1),
        base_version=None if full else base_version,
    )
    if ok:
        import pyarrow.compute as pc

        newest = pc.max(table.column("ts")).as_py() if table.num_rows else None
        # Which deletions this version predates (registry.versions_trained_before).
        metrics = dict(res.metrics) | {
            "gate": decision.to_dict(),
            "data_cut_ts": cut_ms,
            "trained_until_ts": None if newest is None else int(newest),
        }
        registry.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=registry.root))
        try:
            save_checkpoint(res.model.cpu(), res.vocab, tmp, metrics=metrics, train_settings=res.settings)
            decision.intent = refresh_intent(table, base_dir, tmp, seed=cfg.seed)
            decision.version = registry.register(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        registry.promote(decision.version)
        if cfg.keep is not None:
            registry.prune(cfg.keep)
    log.info(
        "retrain decision=%s mode=%s version=%s base=%s candidate_ndcg@10=%.4f candidate_hr@10=%.4f "
        "current_ndcg@10=%s current_hr@10=%s holdout_users=%d train_users=%d seconds=%.1f reason=%s intent=%s",
        "promoted" if ok else "rejected",
        decision.mode,
        decision.version,
        base_version,
        cand_m["ndcg@10"],
        cand_m["hr@10"],
        None if cur_m is None else round(cur_m["ndcg@10"], 4),
        None if cur_m is None else round(cur_m["hr@10"], 4),
        decision.holdout_users,
        decision.train_users,
        train_seconds,
        reason,
        decision.intent or "-",
    )
    return decision


def append_decision(path: str | Path, decision: Decision, *, max_bytes: int = 16 << 20) -> None:
    """Append one JSON line per decision; the file is rotated to ``.1`` beyond ``max_bytes``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_file() and p.stat().st_size > max_bytes:
        p.replace(p.with_name(p.name + ".1"))
    with p.open("a", encoding="utf-8") as f:
        f.write(json.dumps(decision.to_dict(), sort_keys=True) + "\n")


# -- a new shop's catalog, before its first round ----------------------------------------------


def catalog_known_share(vocab: ItemVocab, item_text: dict[str, str | None]) -> tuple[float, int]:
    """The share of the catalog's titled items that ``vocab`` holds, and how many are titled."""
    titled = [i for i, t in item_text.items() if t]
    if not titled:
        return 0.0, 0
    return sum(1 for i in titled if i in vocab) / len(titled), len(titled)


def _base_cut_ms(base_dir: Path) -> int | None:
    """When the weights in ``base_dir`` last saw training data (epoch ms): its ``data_cut_ts``,
    else its registration time (the registry's ``.created``), else None."""
    from streamrec.model.checkpoint import read_metrics

    cut = read_metrics(base_dir).get("data_cut_ts")
    if isinstance(cut, (int, float)) and not isinstance(cut, bool):
        return int(cut)
    try:
        return int(float((base_dir / ".created").read_text().strip()) * 1000)
    except (OSError, ValueError):
        return None


def adapt_checkpoint(
    base_dir: str | Path,
    item_text: dict[str, str | None],
    *,
    text_cache: str | Path | None,
    device: str = "auto",
) -> tuple[SASRec, ItemVocab, dict[str, Any]]:
    """The model in ``base_dir`` with its text channel's centre and directions fitted to the
    titles of ``item_text`` (the catalog a version will serve; no training), and the metrics to
    save with it. ValueError when the catalog has no title or the model no text channel.

    The metrics carry the base's ``data_cut_ts`` (or its registration time): the weights are the
    base's, so a user deletion that predates the base also predates this version
    (:meth:`~streamrec.model.registry.ModelRegistry.versions_trained_before`)."""
    from streamrec.model.checkpoint import load_checkpoint
    from streamrec.model.train import fit_catalog_basis

    base = Path(base_dir)
    model, vocab = load_checkpoint(base)
    known, n_titled = catalog_known_share(vocab, item_text)
    if n_titled == 0:
        raise ValueError("the catalog has no item with a title")
    if not model.config.hybrid:
        raise ValueError(f"model {str(base)!r} has no text channel to fit (trained with --no-hybrid or --no-text)")
    titled = [i for i, t in item_text.items() if t]
    n = fit_catalog_basis(model, vocab, item_text, titled, cache_file=text_cache, device=device)
    metrics: dict[str, Any] = {"adapted_from": base.name, "catalog_titles": n, "catalog_known_share": round(known, 4)}
    cut = _base_cut_ms(base)
    if cut is not None:
        metrics["data_cut_ts"] = cut
    return model, vocab, metrics


def adapt_current(
    registry: Any,
    item_text: dict[str, str | None],
    *,
    below: float,
    text_cache: str | Path | None,
    device: str = "auto",
) -> str | None:
    """Adapt the registry's current version to a catalog it barely knows, before any round.

    A model trained on another shop ranks this shop's new items in its old shop's title
    directions until its first fine-tune (which refits them). When the current version holds less
    than ``below`` of the catalog's titled items, and is neither adapted already nor the output of
    a retraining round (both fitted to a catalog), its channel is fitted to ``item_text``
    (:func:`adapt_checkpoint`); the result is registered (with the base's purchase-intent model)
    and promoted. Returns the new version, or None when nothing was done."""
    from streamrec.model.checkpoint import ITEM_MAP, read_metrics, save_checkpoint

    version = registry.current_version()
    if version is None:
        return None
    base_dir = registry.version_path(version)
    stored = read_metrics(base_dir)
    if "adapted_from" in stored or "gate" in stored:
        return None
    try:
        known, n_titled = catalog_known_share(ItemVocab.load(base_dir / ITEM_MAP), item_text)
    except (OSError, ValueError, TypeError, KeyError):
        return None  # an unreadable version: loading it reports why, elsewhere
    if n_titled < 2 or known >= below:
        log.info("adapt not needed version=%s catalog_titles=%d known_share=%.3f", version, n_titled, known)
        return None
    model, vocab, metrics = adapt_checkpoint(base_dir, item_text, text_cache=text_cache, device=device)
    registry.root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=registry.root))
    try:
        save_checkpoint(model.cpu(), vocab, tmp, metrics=metrics)
        carry_intent(base_dir, tmp)
        new = registry.register(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    registry.promote(new)
    log.info(
        "adapted version=%s base=%s catalog_titles=%d known_share=%.3f",
        new,
        version,
        metrics["catalog_titles"],
        known,
    )
    return new

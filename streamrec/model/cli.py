"""``streamrec train | finetune | adapt | evaluate | models`` subcommands.

The top-level ``streamrec/cli.py`` calls :func:`add_commands`, builds the settings and calls
``args.func(args, settings)``; it prints any ``StreamrecError`` / ``ValueError`` as one line with
exit code 2, so the handlers raise those with messages that name the bad value.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from streamrec.argtypes import (
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from streamrec.config import Settings
from streamrec.model.sasrec import FREQ_KERNELS, SASRecConfig

log = logging.getLogger(__name__)


def _data_args(p: argparse.ArgumentParser, *, events: bool = False) -> None:
    p.add_argument("--sequences", required=not events, type=Path, default=None, help="'user item item ...' per line")
    p.add_argument("--item-text", type=Path, default=None, help="TSV item_id<TAB>title with header")
    if events:
        p.add_argument(
            "--events",
            type=Path,
            default=None,
            help="typed events CSV (user_id,item_id,category_id,behavior,ts; the Taobao layout): "
            "trains the purchase-intent model too, and the recommender when "
            "--sequences is not given",
        )


def _augment_ops(text: str) -> str:
    from streamrec.model.augment import parse_ops

    try:
        return ",".join(parse_ops(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _train_args(p: argparse.ArgumentParser, *, model_flags: bool) -> None:
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the checkpoint here (default: register a new version in the registry)",
    )
    p.add_argument(
        "--time-budget",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="stop training after this many seconds",
    )
    p.add_argument(
        "--max-epochs",
        type=positive_int,
        default=40,
        help="hard stop, and the length of the cosine learning-rate schedule",
    )
    p.add_argument(
        "--patience",
        type=positive_int,
        default=10,
        help="epochs without validation NDCG@10 gain before stopping (with --time-budget the cosine schedule "
        "anneals at the budget's end: a patience shorter than the run can stop it first)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=positive_float, default=None)
    p.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default=None,
        help="cosine: anneal the learning rate over the time budget (or max epochs)",
    )
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument(
        "--val-users",
        type=positive_int,
        default=None,
        help="hold out only N random users' second-last item for validation; the "
        "others train on it too (default: every user's, the classic split)",
    )
    p.add_argument(
        "--text-cache",
        type=Path,
        default=None,
        help="text-cache directory of MiniLM title vectors, shared with the worker "
        "(default: STREAMREC_TEXT_CACHE_DIR, else DATA_DIR/text-cache)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--hybrid-fit",
        choices=("post", "joint"),
        default=None,
        help="post (default): train the model part, then fit the text channel's "
        "gates; joint: the channel in the loss from the start (slower)",
    )
    a = p.add_argument_group("data augmentation and contrastive term (CL4SRec; off by default)")
    a.add_argument(
        "--augment",
        type=_augment_ops,
        default="",
        metavar="OPS",
        help="comma list of crop, mask, reorder: each training sequence is augmented with "
        "prob. --augment-prob by one of them, drawn uniformly ('' = off)",
    )
    a.add_argument("--augment-prob", type=fraction, default=0.5, help="share of the sequences augmented")
    a.add_argument(
        "--augment-crop", type=fraction, default=0.6, metavar="ETA", help="crop keeps this share of the sequence"
    )
    a.add_argument(
        "--augment-mask", type=fraction, default=0.3, metavar="GAMMA", help="mask hides this share of the inputs"
    )
    a.add_argument(
        "--augment-reorder",
        type=fraction,
        default=0.6,
        metavar="BETA",
        help="reorder shuffles a contiguous share of the sequence this long",
    )
    a.add_argument(
        "--contrastive",
        type=_non_negative_float,
        default=0.0,
        metavar="LAMBDA",
        help="weight of a CL4SRec contrastive term between two augmented views of each user "
        "(views by --augment's operators, all three if none); 0 = off",
    )
    a.add_argument("--contrastive-temp", type=positive_float, default=1.0, help="its temperature")
    p.add_argument(
        "--samples",
        choices=("positions", "prefixes"),
        default="positions",
        help="positions: every position of a sequence predicts its next item (SASRec's); prefixes: "
        "one (prefix, next item) pair per row (BSARec's; --freq-kernel window needs it)",
    )
    p.add_argument(
        "--ema",
        type=probability,
        default=0.0,
        metavar="DECAY",
        help="validate and keep an exponential moving average of the weights with this decay "
        "per step (0 = off, the last weights)",
    )
    p.add_argument(
        "--transitions",
        action="store_true",
        help="add an item-to-item transitions term to the served score: what followed each item in "
        "the training part, its weight chosen on validation (+6.9 %% test NDCG@10 on Beauty; it ranks "
        "known followers above new catalog items, so it is off by default)",
    )
    if not model_flags:
        return
    d = SASRecConfig()
    g = p.add_argument_group("model")
    g.add_argument("--d-model", type=positive_int, default=d.d_model)
    g.add_argument("--n-layers", type=positive_int, default=d.n_layers)
    g.add_argument("--n-heads", type=positive_int, default=d.n_heads)
    g.add_argument("--d-ff", type=positive_int, default=d.d_ff)
    g.add_argument("--max-len", type=positive_int, default=d.max_len)
    g.add_argument("--dropout", type=probability, default=d.dropout)
    g.add_argument("--emb-dropout", type=probability, default=d.emb_dropout)
    g.add_argument("--id-dropout", type=probability, default=d.id_dropout)
    g.add_argument("--loss", choices=("full", "sampled"), default=d.loss)
    g.add_argument("--n-negatives", type=positive_int, default=d.n_negatives)
    g.add_argument("--no-text", action="store_true", help="id embeddings only (ignore item text)")
    g.add_argument("--no-hybrid", action="store_true", help="no gated text-similarity channel in the scored vectors")
    g.add_argument(
        "--text-sim-dim",
        type=int,
        default=d.text_sim_dim,
        help="dims of the text-similarity channel (0 = the full 384-d title vector)",
    )
    g.add_argument(
        "--shop-dropout",
        type=probability,
        default=d.shop_dropout,
        help="prob. per training batch of dropping every id (trains the new-shop case)",
    )
    g.add_argument(
        "--freq-mix",
        type=fraction,
        default=d.freq_mix,
        help="share of each block's update from a causal low/high-pass filter of the sequence "
        "(BSARec's frequency branch) instead of attention; 0 = attention only",
    )
    g.add_argument(
        "--freq-decay",
        type=_non_negative_float,
        default=d.freq_decay,
        help="the filter's low pass: recency-weighted mean of the positions so far, weight exp(-DECAY * age)",
    )
    g.add_argument(
        "--freq-kernel",
        choices=FREQ_KERNELS,
        default=d.freq_kernel,
        help="the low pass: exp (above), fft (BSARec's FFT low pass as its newest position sees it, "
        "causal) or window (BSARec's filter as it is: every position sees the whole window; needs "
        "--samples prefixes)",
    )
    g.add_argument(
        "--freq-beta", type=_non_negative_float, default=d.freq_beta, help="initial scale of the high-pass part"
    )
    g.add_argument(
        "--pos-mode",
        choices=["right", "left", "relative"],
        default=d.pos_mode,
        help="positions: embedding by distance from the newest item (SASRec's), from the oldest, or a "
        "relative attention bias (the last two read every training prefix as served; no gain on "
        "Beauty's validation split: bench/RESULTS.md)",
    )
    g.add_argument(
        "--cosine-scale",
        type=_non_negative_float,
        default=d.cosine_scale,
        help="score = SCALE * cosine of unit user and item vectors (a softmax temperature of 1/SCALE); "
        "0 = plain inner products (bench/RESULTS.md, fourteenth session: cosine scores)",
    )
    g.add_argument(
        "--label-smoothing",
        type=probability,
        default=d.label_smoothing,
        help="label smoothing of the softmax cross-entropy (0 = none)",
    )
    g.add_argument(
        "--new-item-boost",
        type=float,
        default=d.new_item_boost,
        help="served score offset for items without a trained id (exploration; bench/zero_shot.py "
        "picks it on validation: 1.5 put Beauty's new items and all users above text similarity)",
    )


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a new model (leave-one-out early stopping)")
    _data_args(p, events=True)
    _train_args(p, model_flags=True)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("finetune", help="warm-start a model on new data")
    p.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: the registry's current model)")
    _data_args(p)
    _train_args(p, model_flags=False)
    p.set_defaults(func=cmd_finetune)

    p = subparsers.add_parser(
        "adapt",
        help="fit a model's text channel to a new shop's catalog (no training): serve a new shop "
        "from its titles before its first event",
    )
    p.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: the registry's current model)")
    p.add_argument("--item-text", type=Path, required=True, help="the shop's catalog: 'item_id<TAB>title' per line")
    p.add_argument(
        "--text-cache",
        type=Path,
        default=None,
        help="text-cache directory of MiniLM title vectors "
        "(default: STREAMREC_TEXT_CACHE_DIR, else DATA_DIR/text-cache)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the checkpoint here (default: register a version)")
    p.set_defaults(func=cmd_adapt)

    p = subparsers.add_parser("evaluate", help="leave-one-out full-ranking HR/NDCG@5/10/20")
    p.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: the registry's current model)")
    _data_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--baselines",
        action="store_true",
        help="add popularity, item-to-item co-occurrence and text similarity (MiniLM "
        "titles, recency-weighted history), with the model's lift",
    )
    p.add_argument(
        "--candidates",
        choices=("data", "all"),
        default=None,
        help="data: rank among the items of the evaluation data's catalog (its "
        "--item-text items and the items in --sequences), as a worker's index "
        "holds only the live catalog; all: among every item the model knows plus "
        "those. Default: data when the data brings items the model has never "
        "seen, else all",
    )
    p.add_argument(
        "--keep-seen", action="store_true", help="rank items already in the history too (default: excluded, as S3-Rec)"
    )
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("models", help="list or promote registered model versions")
    sub = p.add_subparsers(dest="models_command", required=True)
    q = sub.add_parser("list", help="registered versions, newest last")
    q.add_argument("--json", action="store_true")
    q.add_argument(
        "--trained-before",
        type=non_negative_int,
        default=None,
        metavar="TS_MS",
        help="only versions whose training data was cut at or before TS_MS (epoch ms), "
        "e.g. a user deletion's purge time: they may embed that user's past behaviour",
    )
    q.set_defaults(func=cmd_models_list)
    q = sub.add_parser("promote", help="make VERSION the current model")
    q.add_argument("version")
    q.set_defaults(func=cmd_models_promote)


# -- handlers -------------------------------------------------------------------------------------


def _load_data(args: argparse.Namespace):
    from streamrec.model.data import read_item_text, read_sequences

    return read_sequences(args.sequences), read_item_text(args.item_text)


def _settings(args: argparse.Namespace, settings: Settings):
    from streamrec.model.train import TrainSettings

    kw: dict[str, Any] = dict(
        batch_size=args.batch_size,
        max_epochs=args.max_epochs,
        patience=args.patience,
        time_budget=args.time_budget,
        seed=args.seed,
        device=settings.device,
        progress=not args.no_progress,
        weight_decay=args.weight_decay,
        text_cache=str(args.text_cache or settings.text_cache_path),
        val_users=args.val_users,
        augment=args.augment,
        augment_prob=args.augment_prob,
        augment_crop=args.augment_crop,
        augment_mask=args.augment_mask,
        augment_reorder=args.augment_reorder,
        contrastive=args.contrastive,
        contrastive_temp=args.contrastive_temp,
        ema=args.ema,
        samples=args.samples,
        transitions=args.transitions,
    )
    if args.lr is not None:
        kw["lr"] = args.lr
    if args.lr_schedule is not None:
        kw["lr_schedule"] = args.lr_schedule
    if args.hybrid_fit is not None:
        kw["hybrid_fit"] = args.hybrid_fit
    return TrainSettings(**kw)


def _model_dir(args: argparse.Namespace, settings: Settings) -> Path:
    if args.model is not None:
        return args.model
    from streamrec.model.registry import ModelRegistry

    return ModelRegistry(settings.registry_dir).require_current()


def _publish(res, args: argparse.Namespace, settings: Settings) -> str:
    """Save to --out, or register in the registry (current if none is). Returns where."""
    from streamrec.model.checkpoint import save_checkpoint
    from streamrec.model.registry import ModelRegistry

    intent = getattr(res, "intent", None)
    if args.out is not None:
        save_checkpoint(res.model, res.vocab, args.out, metrics=res.metrics, train_settings=res.settings)
        if intent is not None:
            intent.save(args.out)
        return str(args.out)
    reg = ModelRegistry(settings.registry_dir)
    settings.registry_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=settings.registry_dir))
    try:
        save_checkpoint(res.model, res.vocab, tmp, metrics=res.metrics, train_settings=res.settings)
        if intent is not None:
            intent.save(tmp)
        version = reg.register(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    promoted = reg.current_version() is None
    if promoted:
        reg.promote(version)
    return f"registry version {version}" + (" (now current)" if promoted else "")


def _summary(res, where: str) -> None:
    m = res.metrics
    print(f"saved: {where}")
    print(
        f"epochs: {m.get('epochs')} (best {m.get('best_epoch')}, stop: {m.get('stop_reason')}), "
        f"seconds: {m.get('train_seconds')}"
    )
    for split in ("val", "test"):
        if split in m:
            s = m[split]
            print(
                f"{split}: HR@10 {s['hr@10']:.4f}  NDCG@10 {s['ndcg@10']:.4f}  "
                f"HR@20 {s['hr@20']:.4f}  NDCG@20 {s['ndcg@20']:.4f}"
            )


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.model.data import Interactions, read_item_text, read_sequences
    from streamrec.model.train import train

    if args.sequences is None and args.events is None:
        raise ValueError("give --sequences FILE or --events FILE (or both)")
    users = None
    if args.events is not None:
        from streamrec.typed_events import by_user, read_events, to_interactions_lists

        users = by_user(read_events(args.events))
    data = (
        read_sequences(args.sequences)
        if args.sequences is not None
        # users is set here: --events is given whenever --sequences is not (checked above)
        else Interactions(*to_interactions_lists(users))  # type: ignore[arg-type]
    )
    text = read_item_text(args.item_text)
    cfg = dict(
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        d_ff=args.d_ff,
        max_len=args.max_len,
        dropout=args.dropout,
        emb_dropout=args.emb_dropout,
        id_dropout=args.id_dropout,
        loss=args.loss,
        n_negatives=args.n_negatives,
        use_text=not args.no_text,
        hybrid=not (args.no_hybrid or args.no_text),
        text_sim_dim=args.text_sim_dim,
        shop_dropout=args.shop_dropout,
        new_item_boost=args.new_item_boost,
        freq_mix=args.freq_mix,
        freq_decay=args.freq_decay,
        freq_kernel=args.freq_kernel,
        freq_beta=args.freq_beta,
        pos_mode=args.pos_mode,
        cosine_scale=args.cosine_scale,
        label_smoothing=args.label_smoothing,
    )
    if args.cosine_scale > 100:
        raise ValueError(f"--cosine-scale {args.cosine_scale}: must be in 0..100")
    if not -10.0 <= args.new_item_boost <= 10.0:
        raise ValueError(f"--new-item-boost {args.new_item_boost}: must be in -10..10")
    if not 0 <= args.text_sim_dim <= 384:
        raise ValueError(f"--text-sim-dim {args.text_sim_dim}: must be in 0..384")
    if cfg["d_model"] % cfg["n_heads"]:
        raise ValueError(f"--d-model {args.d_model} must be divisible by --n-heads {args.n_heads}")
    res = train(data, item_text=text, config=cfg, settings=_settings(args, settings))
    res.intent = None  # type: ignore[attr-defined]
    if users is not None:
        from streamrec.model.intent import train_intent

        res.intent, info = train_intent(users, seed=args.seed)  # type: ignore[attr-defined]
        res.metrics["intent"] = info
    elif any(t != "view" for ts in data.types for t in ts):
        log.info(
            "typed sequences without timestamps: no purchase-intent model (sessions need time; pass --events FILE)"
        )
    _summary(res, _publish(res, args, settings))
    if "intent" in res.metrics:
        print(f"purchase intent: {json.dumps(res.metrics['intent'])}")
    return 0


def cmd_finetune(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.model.checkpoint import load_checkpoint
    from streamrec.model.train import finetune

    model, vocab = load_checkpoint(_model_dir(args, settings))
    data, text = _load_data(args)
    res = finetune(model, vocab, data, item_text=text, settings=_settings(args, settings))
    _summary(res, _publish(res, args, settings))
    print(f"items added to the vocabulary: {res.metrics.get('added_items', 0)}")
    return 0


def cmd_adapt(args: argparse.Namespace, settings: Settings) -> int:
    """The text channel's centre and directions fitted to the titles of ``--item-text`` (the
    catalog a version will serve), everything else as it was; published like a fine-tune. A model
    trained on one shop otherwise ranks a new shop's items in its old shop's title directions until
    its first fine-tune (bench/RESULTS.md, "Hybrid scoring", fourth session). The trainer does the
    same on its own before its first round (:func:`streamrec.model.retrain.adapt_current`)."""
    from streamrec.model.data import read_item_text
    from streamrec.model.intent import INTENT_CONFIG, IntentModel
    from streamrec.model.retrain import adapt_checkpoint
    from streamrec.model.train import TrainResult

    source = _model_dir(args, settings)
    text = read_item_text(args.item_text)
    if not any(text.values()):
        raise ValueError(f"--item-text {args.item_text}: no item with a title")
    cache = args.text_cache or settings.text_cache_path
    # loads the checkpoint once, and refuses a model without a text channel (naming it) before any title is embedded
    model, vocab, metrics = adapt_checkpoint(source, text, text_cache=cache, device=settings.device)
    res = TrainResult(model, vocab, metrics=metrics | {"adapted_from": str(source)}, settings={})
    # the purchase-intent model reads session counters, not items: it goes with the weights
    res.intent = IntentModel.load(source) if (source / INTENT_CONFIG).is_file() else None  # type: ignore[attr-defined]
    print(f"saved: {_publish(res, args, settings)}")
    print(f"text channel fitted to {metrics['catalog_titles']} catalog titles of {args.item_text}")
    return 0


def evaluate_dir(
    model_dir: Path,
    data,
    text: dict[str, str | None],
    *,
    device: str = "auto",
    baselines: bool = False,
    exclude_seen: bool = True,
    candidates: str | None = None,
    text_cache: Path | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on ``data``: per user the last item is the target, the rest the
    history. Items unknown to the model are embedded from their text (zero-shot).

    ``candidates``: ``"data"`` ranks among the evaluation data's catalog only (the items of
    ``text`` and of ``data``: what a worker's index would hold for that shop), ``"all"`` among
    every item the model knows plus those; None picks ``"data"`` when the data brings items the
    model has never seen, else ``"all"``."""
    import numpy as np
    import torch

    from streamrec.model.checkpoint import load_checkpoint
    from streamrec.model.data import Encoded, encode
    from streamrec.model.evaluate import (
        cooccurrence_score_fn,
        evaluate_model,
        lift,
        popularity_score_fn,
        rank_all,
        text_similarity_score_fn,
    )
    from streamrec.model.text import resolve_device
    from streamrec.model.train import add_items

    if candidates not in (None, "data", "all"):
        raise ValueError(f"candidates {candidates!r}: use 'data' or 'all'")
    dev = resolve_device(device)
    model, vocab = load_checkpoint(model_dir, device=dev)
    catalog = list(dict.fromkeys([*text, *(i for seq in data.items for i in seq)]))
    unknown = [i for i in catalog if i not in vocab]
    if candidates is None:
        candidates = "data" if unknown else "all"
    added = add_items(model, vocab, unknown, text, device=str(dev), cache_file=text_cache)
    model.to(dev).eval()
    enc = encode(data, vocab)
    keep = [k for k, s in enumerate(enc.items) if len(s) >= 2]
    inputs = Encoded([enc.items[k][:-1] for k in keep], [enc.types[k][:-1] for k in keep])
    targets = np.array([enc.items[k][-1] for k in keep], dtype=np.int64)
    if len(targets) == 0:
        raise ValueError("no user in the sequences file has 2 or more interactions to evaluate")
    rows = np.array([vocab.row(i) for i in catalog], dtype=np.int64) if candidates == "data" else None
    if rows is not None:
        # as served to that shop: the text channel fitted to its catalog (finetune and the
        # trainer's rounds fit it so before a version serves; streamrec.model.train.fit_catalog_basis)
        model.set_text_basis(torch.from_numpy(rows).to(model.text_emb.device))
    report: dict[str, Any] = {
        "model": str(model_dir),
        "users": len(targets),
        "items": int(model.config.n_items),
        "items_added_from_text": len(added),
        "exclude_seen": exclude_seen,
        "candidates": candidates,
        "candidate_items": int(model.config.n_items if rows is None else len(rows)),
        # the item-to-item transitions term in the scores (0: the inner product alone)
        "transitions_weight": float(model.transitions.weight) if model.transitions is not None else 0.0,
    }
    report["model_metrics"] = evaluate_model(
        model, inputs, targets, device=dev, exclude_seen=exclude_seen, catalog_rows=rows
    )
    if baselines:
        n = model.config.n_items
        fns = [("popularity", popularity_score_fn(inputs, n)), ("cooccurrence", cooccurrence_score_fn(inputs, n))]
        if model.config.use_text and bool(model.text_emb.any()):
            fns.append(("text_similarity", text_similarity_score_fn(model.text_emb)))
        for name, fn in fns:
            m = rank_all(fn, inputs, targets, n, exclude_seen=exclude_seen, catalog_rows=rows)
            report[name] = m
            report[f"lift_over_{name}"] = lift(report["model_metrics"], m)
    return report


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    model_dir = _model_dir(args, settings)
    data, text = _load_data(args)
    rep = evaluate_dir(
        model_dir,
        data,
        text,
        device=settings.device,
        baselines=args.baselines,
        exclude_seen=not args.keep_seen,
        candidates=args.candidates,
        text_cache=settings.text_cache_path,
    )
    if args.json:
        print(json.dumps(rep, sort_keys=True))
        return 0
    print(
        f"model {rep['model']}  users {rep['users']}  items {rep['items']} "
        f"(+{rep['items_added_from_text']} from text)  history excluded: {rep['exclude_seen']}  "
        f"candidates: {rep['candidates']} ({rep['candidate_items']} items)"
    )
    cols = ["hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "coverage@10"]
    print(f"{'':16s}" + "".join(f"{c:>12s}" for c in cols))
    for name in ("model_metrics", "popularity", "cooccurrence", "text_similarity"):
        if name in rep:
            label = "model" if name == "model_metrics" else name
            print(f"{label:16s}" + "".join(f"{rep[name][c]:12.4f}" for c in cols))
    for name in ("popularity", "cooccurrence", "text_similarity"):
        if f"lift_over_{name}" in rep:
            lf = rep[f"lift_over_{name}"]
            print(f"lift vs {name}: NDCG@10 {lf['ndcg@10']:+.1%}  HR@10 {lf['hr@10']:+.1%}")
    return 0


def cmd_models_list(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.model.registry import ModelRegistry, data_cut_ms

    reg = ModelRegistry(settings.registry_dir)
    before = getattr(args, "trained_before", None)
    versions = reg.list() if before is None else reg.versions_trained_before(before)
    if getattr(args, "json", False):
        print(
            json.dumps(
                [
                    {
                        "version": v.version,
                        "path": str(v.path),
                        "created_ts": v.created_ts,
                        "is_current": v.is_current,
                        "data_cut_ts": data_cut_ms(v),
                        "trained_until_ts": v.metrics.get("trained_until_ts"),
                        "test_ndcg@10": v.metrics.get("test", {}).get("ndcg@10"),
                        # versions promoted by the trainer's gate: its fresh hold-out
                        "holdout_ndcg@10": (v.metrics.get("gate") or {}).get("candidate", {}).get("ndcg@10"),
                    }
                    for v in versions
                ]
            )
        )
        return 0
    if not versions:
        if before is not None:
            print(f"no version in {settings.registry_dir} was trained on data cut at or before {before}")
            return 0
        print(f"no models in {settings.registry_dir}: train one with `streamrec train --sequences FILE`")
        return 0
    for v in versions:
        gate = (v.metrics.get("gate") or {}).get("candidate") or {}
        label, ndcg = ("holdout", gate.get("ndcg@10")) if gate else ("test", v.metrics.get("test", {}).get("ndcg@10"))
        print(
            f"{'*' if v.is_current else ' '} {v.version}  {label} NDCG@10 "
            f"{'-' if ndcg is None else f'{ndcg:.4f}'}  data_cut_ts={data_cut_ms(v)}  {v.path}"
        )
    return 0


def cmd_models_promote(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.model.registry import ModelRegistry

    ModelRegistry(settings.registry_dir).promote(args.version)
    print(f"current model: {args.version}")
    return 0

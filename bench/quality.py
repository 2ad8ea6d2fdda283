"""Model quality on Amazon Beauty: the standard leave-one-out full-ranking protocol.

Usage (from the repo root; the headline model trains in < 30 min on 2 CPU cores, about 23 min here)::

    .venv/bin/python bench/quality.py [--time-budget 1500] [--zero-shot-budget 300]

Data: ``$STREAMREC_BENCH_DATA`` or ``../shared/data/beauty`` (relative to the repo root).

The headline model is ``streamrec train --d-model 128 --cosine-scale 0 --max-epochs 30 --patience 30
--transitions`` (``HEADLINE`` below; the library's default model is 64 wide with cosine scores and no
transitions term, and the zero-shot report uses it). ``--save DIR`` also writes the trained model.

Prints (1) HR@10 / NDCG@10 of our model next to the published full-ranking figures and the
popularity and co-occurrence baselines measured in the same run, training time and inference
throughput of ``Recommender.encode_users`` at batch 1 / 64 / 256; (2) a zero-shot report: 10 % of
the items are hidden from training (all their interactions), and users whose test target is a
hidden item are ranked with the hidden items embedded from their title only, against popularity
and a text-similarity baseline (mean MiniLM vector of the history). Early stopping and every
choice made here use the validation split only; test is measured once at the end.
The last line of output is one JSON object with the headline numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamrec.model.checkpoint import save_checkpoint  # noqa: E402
from streamrec.model.data import (  # noqa: E402
    Encoded,
    Interactions,
    encode,
    leave_one_out,
    read_item_text,
    read_sequences,
)
from streamrec.model.evaluate import (  # noqa: E402
    cooccurrence_score_fn,
    evaluate_model,
    popularity_score_fn,
    rank_all,
    text_similarity_score_fn,
)
from streamrec.model.inference import Recommender  # noqa: E402
from streamrec.model.train import TrainSettings, add_items, item_text_matrix, train  # noqa: E402

PUBLISHED = [  # (model, HR@10, NDCG@10, source) — same split, full ranking
    ("popularity", 0.0152, 0.0068, "S3-Rec (CIKM 2020)"),
    ("SASRec", 0.0605, 0.0318, "S3-Rec (CIKM 2020)"),
    ("SASRec + sampled softmax", 0.0921, 0.0531, "eSASRec (arXiv 2508.06450)"),
    ("eSASRec", 0.0928, 0.0523, "eSASRec (arXiv 2508.06450)"),
    ("BSARec", 0.1008, 0.0611, "BSARec (AAAI 2024), its repo's BSARec_Beauty_best.log"),
]

# The configuration chosen on the VALIDATION split (see bench/RESULTS.md).
MODEL_CONFIG = dict(
    d_model=64,
    n_layers=1,
    n_heads=1,
    d_ff=256,
    max_len=50,
    dropout=0.2,
    emb_dropout=0.5,
    id_dropout=0.1,
    use_text=True,
    loss="full",
)
TRAIN = dict(
    lr=1e-3,
    batch_size=128,
    max_epochs=30,
    patience=30,
    weight_decay=0.0,
    lr_schedule="cosine",
    val_users=None,
)  # classic split: nothing of validation trains. No early stop: the cosine schedule anneals over
# the 30 epochs (or over the 1500 s budget, whichever ends first), and the best validation epoch is
# kept (bench/RESULTS.md, eleventh and seventeenth sessions)
# The headline's model part: 128 wide with plain inner products (validation NDCG@10 0.0796 with the
# transitions term, against 0.0778 for the library's default, 64 wide with cosine scores; bench/RESULTS.md,
# seventeenth session). The library keeps the narrower default, which a worker searches 1.24-1.37x faster
# and which generalised better on the simulator's shop; the zero-shot report below uses it.
HEADLINE = dict(d_model=128, cosine_scale=0.0)


def data_dir() -> Path:
    return Path(os.environ.get("STREAMREC_BENCH_DATA", REPO.parent / "shared" / "data" / "beauty"))


def data_missing(d: Path) -> bool:
    """True (after saying so) when ``d`` holds no Beauty-format ``sequences.txt``."""
    if (d / "sequences.txt").is_file():
        return False
    print(f"data not found: {d / 'sequences.txt'} (set STREAMREC_BENCH_DATA)")
    return True


def read_data(d: Path) -> tuple[Interactions, dict[str, str | None]]:
    """A Beauty-format directory: its sequences and item titles (none when it has no titles)."""
    data = read_sequences(d / "sequences.txt")
    text = read_item_text(d / "item_text.tsv") if (d / "item_text.tsv").is_file() else {}
    return data, text


def simulated_shop(
    *, seed: int, n_items: int, n_users: int, n_events: int, prefix: str
) -> tuple[Interactions, dict[str, str | None]]:
    """The simulator's shop as a dataset (titles with brand and category), read back as a file
    dataset is: the benches' whole-new-shop domain."""
    from streamrec.devtools.simulator import ShopSimulator, write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        sim = ShopSimulator(seed=seed, n_items=n_items, n_users=n_users, id_prefix=prefix)
        seq_p, text_p = write_dataset(sim, tmp, n_events=n_events)
        return read_sequences(seq_p), read_item_text(text_p)


def row(name: str, hr: float, ndcg: float, note: str = "") -> str:
    return f"| {name:38s} | {hr:7.4f} | {ndcg:7.4f} | {note} |"


def throughput(
    rec: Recommender,
    histories: list[list[tuple[str, str]]],
    batch: int,
    seconds: float = 3.0,
    fn: Callable[[list[list[tuple[str, str]]]], object] | None = None,
) -> float:
    """Histories per second through ``fn`` (default ``rec.encode_users``), ``batch`` at a time."""
    fn = fn or rec.encode_users
    fn(histories[:batch])  # warm-up
    n, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        chunk = histories[i : i + batch]
        if len(chunk) < batch:
            i, chunk = 0, histories[:batch]
        fn(chunk)
        n += len(chunk)
        i += batch
    return n / (time.perf_counter() - t0)


def hide_items(data: Interactions, hidden: set[str]) -> Interactions:
    out = Interactions()
    for u, s, t in zip(data.users, data.items, data.types):
        keep = [(i, e) for i, e in zip(s, t) if i not in hidden]
        if len(keep) >= 1:
            out.users.append(u)
            out.items.append([i for i, _ in keep])
            out.types.append([e for _, e in keep])
    return out


def hidden_items(data: Interactions, seed: int) -> set[str]:
    """The 10 % of the items that the zero-shot reports hide from training (fixed by ``seed``)."""
    rng = np.random.default_rng(seed + 1)
    all_items = sorted({i for s in data.items for i in s})
    return set(rng.choice(all_items, size=len(all_items) // 10, replace=False).tolist())


def zero_shot(data: Interactions, text: dict, args, cfg: dict, tr: dict) -> dict:
    hidden = hidden_items(data, args.seed)
    # Users whose test target (their last item) is hidden; history = everything before it.
    cases = [k for k, s in enumerate(data.items) if s[-1] in hidden and len(s) >= 2]
    res = train(
        hide_items(data, hidden),
        item_text=text,
        config=cfg,
        settings=TrainSettings(
            time_budget=args.zero_shot_budget,
            seed=args.seed,
            device="auto",
            progress=False,
            text_cache=args.text_cache,
            **tr,
        ),
    )
    model, vocab = res.model, res.vocab
    # The hidden items are added from their titles (id embedding zero), as train.add_items /
    # finetune do; the serving path (Recommender.add_items) gives them the same vectors (borrowing
    # ids from similar titles is off by default) but keeps them in the index, not in the torch
    # table, so it is not evaluated here (bench/zero_shot.py covers the served scores).
    hidden_ids = sorted(hidden)
    add_items(model, vocab, hidden_ids, text, cache_file=args.text_cache)
    model.eval()
    sub = data.subset(cases)
    enc = encode(sub, vocab)
    inputs = Encoded([s[:-1] for s in enc.items], [t[:-1] for t in enc.types])
    targets = np.array([s[-1] for s in enc.items], dtype=np.int64)
    out = {"hidden_items": len(hidden), "users": len(cases), "train_seconds": res.metrics["train_seconds"]}
    out["model"] = evaluate_model(model, inputs, targets)
    train_enc = encode(hide_items(data, hidden), vocab)
    out["popularity"] = rank_all(popularity_score_fn(train_enc, len(vocab)), inputs, targets, len(vocab))
    # Text similarity: cosine between the recency-weighted (exp(-0.7 age)) mean title vector of the
    # history and every title.
    T = torch.cat([torch.zeros(1, 384), item_text_matrix(vocab, text, cache_file=args.text_cache)])
    out["text_similarity"] = rank_all(text_similarity_score_fn(T), inputs, targets, len(vocab))
    return out


def print_zero_shot(z: dict) -> None:
    print(
        f"\n## Zero-shot: {z['hidden_items']} items (10%) hidden from training; "
        f"{z['users']} users whose test target is hidden; hidden items scored from title only\n"
    )
    print(f"| {'method':38s} | HR@10   | NDCG@10 | HR@20   |")
    print(f"|{'-' * 40}|---------|---------|---------|")
    for k, label in (
        ("model", "streamrec (hybrid, titles only)"),
        ("popularity", "popularity"),
        ("text_similarity", "text similarity (MiniLM, exp(-0.7 age))"),
    ):
        print(f"| {label:38s} | {z[k]['hr@10']:7.4f} | {z[k]['ndcg@10']:7.4f} | {z[k]['hr@20']:7.4f} |")
    print(f"zero-shot model trained {z['train_seconds']:.0f}s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--time-budget",
        type=float,
        default=1500.0,
        help="seconds to train the main model (the cosine schedule follows it; 100 epochs rarely end first)",
    )
    ap.add_argument("--zero-shot-budget", type=float, default=300.0, help="seconds for the zero-shot model")
    ap.add_argument("--skip-zero-shot", action="store_true")
    ap.add_argument("--only-zero-shot", action="store_true", help="run only the zero-shot report")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", type=json.loads, default={}, help="JSON overrides of MODEL_CONFIG")
    ap.add_argument("--train", type=json.loads, default={}, help="JSON overrides of TRAIN")
    ap.add_argument("--text-cache", default=str(REPO / ".cache" / "streamrec" / "text-cache"))
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--save", default=None, help="also write the trained model (a checkpoint directory) here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    cfg, tr = MODEL_CONFIG | HEADLINE | args.config, TRAIN | args.train
    zero_shot_cfg = MODEL_CONFIG | args.config  # the library's default model
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    d = data_dir()
    if data_missing(d):
        return 2
    data, text = read_data(d)
    print(
        f"data {d}: {len(data)} users, {sum(map(len, data.items))} interactions; "
        f"torch threads {torch.get_num_threads()}; device auto"
    )
    print(f"config {json.dumps(cfg)} train {json.dumps(tr)} budget {args.time_budget:.0f}s")

    if args.only_zero_shot:
        print_zero_shot(zero_shot(data, text, args, zero_shot_cfg, tr))
        return 0
    t0 = time.monotonic()
    res = train(
        data,
        item_text=text,
        config=cfg,
        settings=TrainSettings(
            time_budget=args.time_budget,
            seed=args.seed,
            device="auto",
            progress=args.progress,
            text_cache=args.text_cache,
            # the headline serves the item-to-item transitions term (off in the library's default:
            # it ranks known followers above new catalog items; bench/RESULTS.md, sixteenth
            # session); its weight is chosen on validation. --train '{"transitions": false}' drops it
            **({"transitions": True} | tr),
        ),
    )
    wall = time.monotonic() - t0
    if args.save:
        save_checkpoint(res.model, res.vocab, args.save, metrics=res.metrics)
    m, val = res.metrics["test"], res.metrics["val"]
    split = leave_one_out(encode(data, res.vocab))
    n = len(res.vocab)
    pop = rank_all(popularity_score_fn(split.test_inputs, n), split.test_inputs, split.test_targets, n)
    co = rank_all(cooccurrence_score_fn(split.test_inputs, n), split.test_inputs, split.test_targets, n)
    # The same baseline counted only on the model's training part (no validation items): the
    # row above also learns from every user's second-last item, which the model never trains on.
    co_train = rank_all(cooccurrence_score_fn(split.train, n), split.test_inputs, split.test_targets, n)
    # Text similarity, no training: MiniLM titles, the user vector the recency-weighted mean
    # (weight exp(-0.7 age)) of the history's title vectors; same split, same exclusion.
    ts = rank_all(text_similarity_score_fn(res.model.text_emb), split.test_inputs, split.test_targets, n)

    print("\n## Beauty, leave-one-out, full ranking over all items (history excluded)\n")
    print(f"| {'model':38s} | HR@10   | NDCG@10 | note |")
    print(f"|{'-' * 40}|---------|---------|------|")
    for name, hr, nd, src in PUBLISHED:
        print(row(name, hr, nd, f"published, {src}"))
    print(row("popularity (this run)", pop["hr@10"], pop["ndcg@10"], "measured"))
    print(
        row(
            "item-to-item co-occurrence (this run)",
            co["hr@10"],
            co["ndcg@10"],
            "measured; counts test histories, incl. validation items",
        )
    )
    print(
        row(
            "co-occurrence, training part only",
            co_train["hr@10"],
            co_train["ndcg@10"],
            "measured; counts what the model trains on",
        )
    )
    print(
        row(
            "text similarity (this run)",
            ts["hr@10"],
            ts["ndcg@10"],
            "measured; MiniLM titles, recency-weighted history (exp(-0.7 age)), no training",
        )
    )
    plain = evaluate_model(res.model, split.test_inputs, split.test_targets, transitions=False)
    tr_fit = res.metrics.get("transitions", {})
    print(
        row(
            "streamrec, inner product alone",
            plain["hr@10"],
            plain["ndcg@10"],
            "test; the same model without its transitions term",
        )
    )
    print(
        row(
            "streamrec SASRec+text + transitions",
            m["hr@10"],
            m["ndcg@10"],
            f"test; val NDCG@10 {val['ndcg@10']:.4f}; transitions weight {tr_fit.get('weight', 0)}",
        )
    )
    print(
        f"\nHR@5 {m['hr@5']:.4f} NDCG@5 {m['ndcg@5']:.4f} HR@20 {m['hr@20']:.4f} "
        f"NDCG@20 {m['ndcg@20']:.4f} coverage@10 {m['coverage@10']:.4f}"
    )
    print(
        f"training: {res.metrics['train_seconds']:.0f}s (incl. validation each epoch), "
        f"{res.metrics['epochs']} epochs, best epoch {res.metrics['best_epoch']}, "
        f"stop: {res.metrics['stop_reason']}; wall incl. text encoding {wall:.0f}s; "
        f"params {res.model.num_params}"
    )
    print("val NDCG@10 per epoch: " + " ".join(f"{h.get('val_ndcg@10', 0):.4f}" for h in res.metrics["history"]))
    if tr_fit:
        print(
            f"transitions: {tr_fit['pairs']} item pairs; val NDCG@10 by weight (chosen on validation): "
            + ", ".join(f"{w}: {v:.4f}" for w, v in tr_fit["val_ndcg@10_by_weight"].items())
        )

    # Inference throughput through the public API (save, load, encode_users).
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(res.model, res.vocab, Path(tmp) / "ckpt")
        rec = Recommender.load(Path(tmp) / "ckpt", device="auto")
    hist = [[(i, "view") for i in s[:-1]] for s in data.items]
    tput = {b: throughput(rec, hist, b) for b in (1, 64, 256)}
    print(
        f"inference (encode_users, device {rec.device}): "
        + ", ".join(f"batch {b}: {v:,.0f} seq/s" for b, v in tput.items())
    )
    terms = throughput(rec, hist, 256, fn=rec.transition_terms)
    both = 1.0 / (1.0 / tput[256] + 1.0 / terms)
    print(
        f"transition terms (Recommender.transition_terms, batch 256): {terms:,.0f} seq/s; "
        f"with encode_users: {both:,.0f} seq/s ({tput[256] / both:.2f}x the cost of encode_users alone)"
    )

    if not args.skip_zero_shot:
        print_zero_shot(zero_shot(data, text, args, zero_shot_cfg, tr))

    print(
        json.dumps(
            {
                "hr_at_10": round(m["hr@10"], 4),
                "ndcg_at_10": round(m["ndcg@10"], 4),
                "train_seconds": round(res.metrics["train_seconds"], 1),
                "seq_per_s_batch_256": round(tput[256], 1),
                "seq_per_s_batch_256_with_transitions": round(both, 1),
                "ndcg_at_10_without_transitions": round(plain["ndcg@10"], 4),
                "transitions_weight": tr_fit.get("weight", 0),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

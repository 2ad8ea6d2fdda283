"""Data augmentation ablation on Beauty's VALIDATION split (issue #13).

Usage (from the repo root)::

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/augment.py --epochs 12 [--threads 1]
        [--variants none,crop,mask,reorder,crop+mask+reorder] [--prob 0.5]
        [--variants contrastive --contrastive-weight 0.1]

Data: ``$STREAMREC_BENCH_DATA`` or ``../shared/data/beauty`` (relative to the repo root).

Every variant trains the default model (``bench/quality.py``'s MODEL_CONFIG / TRAIN) for the same
fixed number of epochs, with the cosine schedule over exactly those epochs and no early stopping
(patience = epochs), same seed. A variant is a ``TrainSettings.augment`` list: each training
sequence is augmented with probability ``--prob`` by one operator drawn uniformly from the list
(crop eta 0.6, mask gamma 0.3, reorder beta 0.6: CL4SRec's defaults; see
``streamrec.model.augment``). Reported per variant, all on the validation split (every user's
second-last item, full ranking, history excluded): the best epoch's NDCG@10 / HR@10 of the model
part (what early stopping selects on), the served (hybrid, gates fitted) NDCG@10 / HR@10 of the
kept model, the best epoch and the training seconds. The test split is not reported: this is a
model-selection experiment. The "none" row is the baseline measured in the same run. The variant
``contrastive`` adds CL4SRec's term instead (``TrainSettings.contrastive``: NT-Xent between the
user states of two views of each sequence, each view by one of crop/mask/reorder; the next-item
loss on the plain sequences). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from quality import MODEL_CONFIG, TRAIN, data_dir, data_missing, read_data  # noqa: E402

from streamrec.model.augment import parse_ops  # noqa: E402
from streamrec.model.train import TrainSettings, train  # noqa: E402

VARIANTS = ("none", "crop", "mask", "reorder", "crop+mask+reorder")


def variant_settings(name: str) -> tuple[str, bool]:
    """A variant -> (TrainSettings.augment, contrastive on?); ValueError names a bad one."""
    if name == "contrastive":
        return "", True
    ops = "" if name == "none" else ",".join(name.split("+"))
    return ",".join(parse_ops(ops)), False


def run_variant(name: str, data, text, args) -> dict:
    ops, cl = variant_settings(name)
    tr = TRAIN | dict(max_epochs=args.epochs, patience=args.epochs, lr_schedule="cosine")
    t0 = time.monotonic()
    res = train(
        data,
        item_text=text,
        config=dict(MODEL_CONFIG),
        settings=TrainSettings(
            seed=args.seed,
            device="auto",
            progress=args.progress,
            text_cache=args.text_cache,
            augment=ops,
            augment_prob=args.prob,
            contrastive=args.contrastive_weight if cl else 0.0,
            **tr,
        ),
    )
    m = res.metrics
    best = max(m["history"], key=lambda h: h["val_ndcg@10"])
    return {
        "variant": name,
        "augment": ops,
        "augment_prob": args.prob if ops else 0.0,
        "contrastive": args.contrastive_weight if cl else 0.0,
        "best_epoch": m["best_epoch"],
        "val_ndcg@10": round(best["val_ndcg@10"], 4),
        "val_hr@10": round(best["val_hr@10"], 4),
        "served_val_ndcg@10": round(m["val"]["ndcg@10"], 4),
        "served_val_hr@10": round(m["val"]["hr@10"], 4),
        "train_seconds": m["train_seconds"],
        "wall_seconds": round(time.monotonic() - t0, 1),
        "val_ndcg_per_epoch": [round(h["val_ndcg@10"], 4) for h in m["history"]],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=12, help="epochs per variant (the cosine schedule's length)")
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma list of: " + ", ".join(VARIANTS) + " (any '+' list of crop, mask, reorder), or contrastive",
    )
    ap.add_argument("--prob", type=float, default=0.5, help="share of the training sequences augmented")
    ap.add_argument(
        "--contrastive-weight",
        type=float,
        default=0.1,
        help="lambda of the variant 'contrastive' (CL4SRec: NT-Xent between two views made by "
        "crop/mask/reorder, temperature 1, next-item loss on the plain sequences)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--text-cache", default=str(REPO / ".cache" / "streamrec" / "text-cache"))
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        try:
            variant_settings(v)
        except ValueError as e:
            ap.error(f"--variants: {e}")
    if args.epochs < 1:
        ap.error(f"--epochs {args.epochs}: must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    d = data_dir()
    if data_missing(d):
        return 2
    data, text = read_data(d)
    print(
        f"data {d}: {len(data)} users; torch threads {torch.get_num_threads()}; {args.epochs} epochs per "
        f"variant, cosine over them; augment prob {args.prob} per sequence (one operator drawn from the list)"
    )
    print(f"config {json.dumps(MODEL_CONFIG)} train {json.dumps(TRAIN)}")
    rows = []
    for v in variants:
        r = run_variant(v, data, text, args)
        rows.append(r)
        print(f"done {v}: {json.dumps(r)}", flush=True)
    base = next((r for r in rows if r["variant"] == "none"), None)
    print("\n## Data augmentation, Beauty validation split (full ranking, history excluded)\n")
    print(
        "| variant            | val NDCG@10 | val HR@10 | vs none | served NDCG@10 | served HR@10 "
        "| best epoch | seconds |"
    )
    print(f"|{'-' * 20}|{'-' * 13}|{'-' * 11}|{'-' * 9}|{'-' * 16}|{'-' * 14}|{'-' * 12}|{'-' * 9}|")
    for r in rows:
        rel = f"{r['val_ndcg@10'] / base['val_ndcg@10'] - 1:+.1%}" if base else "-"
        print(
            f"| {r['variant']:18s} | {r['val_ndcg@10']:11.4f} | {r['val_hr@10']:9.4f} | {rel:>7s} | "
            f"{r['served_val_ndcg@10']:14.4f} | {r['served_val_hr@10']:12.4f} | "
            f"{r['best_epoch']:>4d} / {args.epochs:<3d} | {r['train_seconds']:7.0f} |"
        )
    print(
        json.dumps(
            {
                "epochs": args.epochs,
                "augment_prob": args.prob,
                "val_ndcg_at_10": {r["variant"]: r["val_ndcg@10"] for r in rows},
                "served_val_ndcg_at_10": {r["variant"]: r["served_val_ndcg@10"] for r in rows},
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One training option against the default, on Beauty's VALIDATION split only (no test figure).

Usage (from the repo root; one torch thread, so that two runs side by side share 2 cores fairly)::

    .venv/bin/python bench/ablation.py NAME [--config JSON] [--train JSON] [--epochs 30]

Trains ``bench/quality.py``'s model (``MODEL_CONFIG`` and ``TRAIN`` plus the overrides) for a fixed
number of epochs (cosine schedule over them, no early stop: the machine's load cannot tilt a
comparison), on the standard split, and prints validation NDCG@10 after every epoch. Compare a run
with its baseline (``NAME`` base, no overrides) at the same epoch. Last line: one JSON object.
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

from streamrec.model.checkpoint import save_checkpoint  # noqa: E402
from streamrec.model.train import TrainSettings, train  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name")
    ap.add_argument("--config", type=json.loads, default={}, help="JSON overrides of MODEL_CONFIG")
    ap.add_argument("--train", type=json.loads, default={}, help="JSON overrides of TRAIN")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=None, help="also write the trained model (a checkpoint directory) here")
    ap.add_argument("--text-cache", default=str(REPO / ".cache" / "streamrec" / "text-cache"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    d = data_dir()
    if data_missing(d):
        return 2
    data, text = read_data(d)
    cfg = MODEL_CONFIG | args.config
    tr = TRAIN | {"max_epochs": args.epochs, "patience": args.epochs} | args.train
    s = TrainSettings(seed=args.seed, progress=False, text_cache=args.text_cache, device="cpu", **tr)
    t0 = time.monotonic()
    res = train(data, item_text=text, config=cfg, settings=s)
    val = [round(e["val_ndcg@10"], 4) for e in res.metrics["history"]]
    if args.save:
        save_checkpoint(res.model, res.vocab, args.save, metrics=res.metrics)
    print("| epoch | " + " | ".join(str(k + 1) for k in range(len(val))) + " |")
    print("|---|" + "---:|" * len(val))
    print(f"| {args.name} | " + " | ".join(f"{v:.4f}" for v in val) + " |")
    print(
        json.dumps(
            {
                "name": args.name,
                "config": args.config,
                "train": args.train,
                "val_ndcg_at_10_by_epoch": val,
                "best_val_ndcg_at_10": max(val),
                "best_epoch": res.metrics["best_epoch"],
                # the served score's validation NDCG@10 by transitions weight (fitted after training)
                "transitions": res.metrics.get("transitions"),
                "seconds": round(time.monotonic() - t0),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

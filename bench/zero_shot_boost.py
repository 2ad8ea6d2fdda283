"""Zero-shot diagnostic: how well the text path ranks NEW items, and what a score offset for new
items (an exploration boost) buys and costs.

Usage (from the repo root; ~8 min on 2 CPU cores)::

    .venv/bin/python bench/zero_shot_boost.py [--budget 300] [--boosts 0,0.5,1,1.5,2,3,4,6]

Setup as in ``bench/quality.py``'s zero-shot report: 10 % of the Beauty items hidden from training
(same seed, same items), a model with ``bench/quality.py``'s configuration trained for ``--budget``
seconds on the rest, then the hidden items added from their titles only (id embedding zero).
Every user is then ranked (full ranking, history excluded) with ``score + boost`` for the new
items, for each boost in the grid: on the validation split (second-last item) to choose the
boost (and, for contrast, on the validation users whose target is a new item), on the test split
(last item) once for boost 0 and once for the chosen one. Rows: all
users (the mixed population a shop has), users whose target is a known item, users whose target
is a new item, and the new-target users ranked among the new items only (is the text path any
good before it competes with learned items?). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from quality import MODEL_CONFIG, TRAIN, data_dir, data_missing, hidden_items, hide_items  # noqa: E402

from streamrec.model.data import Encoded, encode, read_item_text, read_sequences  # noqa: E402
from streamrec.model.evaluate import model_score_fn, rank_all  # noqa: E402
from streamrec.model.train import TrainSettings, add_items, train  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=300.0, help="training seconds")
    ap.add_argument("--boosts", default="0,0.5,1,1.5,2,3,4,6")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-cache", default=str(REPO / ".cache" / "streamrec" / "text-cache"))
    args = ap.parse_args()
    boosts = [float(b) for b in args.boosts.split(",")]
    d = data_dir()
    if data_missing(d):
        return 2
    t0 = time.monotonic()
    data = read_sequences(d / "sequences.txt")
    text = read_item_text(d / "item_text.tsv")
    hidden = hidden_items(data, args.seed)  # the hidden items of bench/quality.py
    res = train(
        hide_items(data, hidden),
        item_text=text,
        config=MODEL_CONFIG,
        settings=TrainSettings(
            time_budget=args.budget, seed=args.seed, progress=False, text_cache=args.text_cache, **TRAIN
        ),
    )
    model, vocab = res.model, res.vocab
    n_known = len(vocab)
    add_items(model, vocab, sorted(hidden), text, cache_file=args.text_cache)
    model.eval()
    n = len(vocab)
    base = model_score_fn(model)

    def boosted(b: float, new_only: bool = False):
        def fn(items, types):
            s = base(items, types).clone()
            s[:, n_known + 1 :] += b
            if new_only:
                s[:, 1 : n_known + 1] = float("-inf")
            return s

        return fn

    enc = encode(data, vocab)

    def split(drop: int, want: str) -> tuple[Encoded, np.ndarray]:
        idx = [
            k
            for k, s in enumerate(enc.items)
            if len(s) > drop and (want == "all" or (s[-drop] > n_known) == (want == "new"))
        ]
        return (
            Encoded([enc.items[k][:-drop] for k in idx], [enc.types[k][:-drop] for k in idx]),
            np.array([enc.items[k][-drop] for k in idx], dtype=np.int64),
        )

    val, val_new = split(2, "all"), split(2, "new")
    val_ndcg = {b: rank_all(boosted(b), *val, n)["ndcg@10"] for b in boosts}
    val_new_ndcg = {b: rank_all(boosted(b), *val_new, n)["ndcg@10"] for b in boosts}
    best = max(val_ndcg, key=val_ndcg.get)
    print(f"trained {res.metrics['train_seconds']:.0f}s; {len(hidden)} new items\n")
    print("| boost | validation NDCG@10, all users | validation NDCG@10, new-item targets only |")
    print("|---:|---:|---:|")
    for b in boosts:
        print(f"| {b:g} | {val_ndcg[b]:.4f} | {val_new_ndcg[b]:.4f} |")
    print(f"\n| test users (count) | boost 0 NDCG@10 | boost {best:g} (chosen on validation) NDCG@10 |")
    print("|---|---:|---:|")
    out: dict = {
        "boost": best,
        "new_items": len(hidden),
        "val_new_only_best_boost": max(val_new_ndcg, key=val_new_ndcg.get),
        "val_new_only_best_ndcg": round(max(val_new_ndcg.values()), 4),
    }
    for want in ("all", "known", "new"):
        inp, tgt = split(1, want)
        r0, rb = (rank_all(boosted(b), inp, tgt, n)["ndcg@10"] for b in (0.0, best))
        print(f"| target {want} ({len(tgt)}) | {r0:.4f} | {rb:.4f} |")
        out[f"test_{want}_boost0"], out[f"test_{want}_best"] = round(r0, 4), round(rb, 4)
    inp, tgt = split(1, "new")
    among = rank_all(boosted(0.0, new_only=True), inp, tgt, n)["ndcg@10"]
    print(f"| target new, ranked among the new items only | {among:.4f} | - |")
    out["test_new_among_new"] = round(among, 4)
    out["wall_s"] = round(time.monotonic() - t0)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

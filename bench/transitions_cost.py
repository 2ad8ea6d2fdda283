"""What the item-to-item transitions term costs the worker's scoring call, beside the same call
without it, in one run.

Usage (from the repo root)::

    STREAMREC_BENCH_DATA=../shared/data/beauty .venv/bin/python bench/transitions_cost.py --model CKPT

``CKPT`` is a checkpoint with a transitions table (any model ``streamrec train`` writes since the
sixteenth session). The bench builds the worker's :class:`~streamrec.serving.scorer.Scorer` (the
model, a flat index of its items, top 10) and times ``recommend_explained`` (what the worker
calls per batch: encode, search, transitions, reasons) on batches of the data's users (their
newest 50 items, as views), with the table served and with its weight at 0 (not served),
alternated round by round. Prints the median microseconds per user and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from quality import data_dir, data_missing, read_data  # noqa: E402

from streamrec.indexer import ItemIndex  # noqa: E402
from streamrec.model.inference import Recommender  # noqa: E402
from streamrec.serving.popularity import Popularity  # noqa: E402
from streamrec.serving.scorer import Scorer  # noqa: E402
from streamrec.serving.state import UserState  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.5, help="per batch size, table and round")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d = data_dir()
    if data_missing(d):
        return 2
    data, _ = read_data(d)
    rec = Recommender.load(args.model, device="cpu")
    table = rec.model.transitions
    if table is None or table.weight <= 0:
        print(f"{args.model}: no transitions table with a weight; nothing to compare")
        return 2
    weight = table.weight
    index = ItemIndex(rec.dim, kind="flat")
    ids, vecs = rec.item_vectors()
    index.upsert(ids, vecs)
    scorer = Scorer(recommender=rec, index=index, popularity=Popularity(), top_k=10)
    states = []
    for u, seq in enumerate(data.items):
        st = UserState()
        st.history = [[i, "view", k, f"{u}-{k}"] for k, i in enumerate(seq[-50:])]
        states.append(st)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(states))

    def per_user_us(batch: int) -> float:
        n, t0, i = 0, time.perf_counter(), 0
        while time.perf_counter() - t0 < args.seconds:
            idx = order[i : i + batch] if i + batch <= len(order) else order[:batch]
            scorer.recommend_explained([states[j] for j in idx])
            n += len(idx)
            i = (i + batch) % max(1, len(order) - batch)
        return (time.perf_counter() - t0) / n * 1e6

    sizes = [int(b) for b in args.batches.split(",")]
    res: dict[tuple[int, bool], list[float]] = {(b, on): [] for b in sizes for on in (False, True)}
    for _ in range(args.rounds):
        for b in sizes:
            for on in (False, True):
                table.weight = weight if on else 0.0
                res[(b, on)].append(per_user_us(b))
    table.weight = weight
    print(f"\nmodel {args.model} (transitions weight {weight}, {len(table.cols)} item pairs), {len(states)} users")
    print(f"Scorer.recommend_explained, top 10, flat index of {len(index)} items, {args.threads} thread(s)\n")
    print("| batch | without transitions, µs/user | with, µs/user | ratio |")
    print("|---:|---:|---:|---:|")
    for b in sizes:
        off, on = statistics.median(res[(b, False)]), statistics.median(res[(b, True)])
        print(f"| {b} | {off:,.0f} | {on:,.0f} | {on / off:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What feeding event types (view / add_to_cart / purchase) into the model changes, on shop data.

Usage (from the repo root; ~10 min on one loaded CPU thread with the defaults)::

    .venv/bin/python bench/event_types.py [--seeds 0,1,2] [--epochs 10]

Data: one :class:`~streamrec.devtools.simulator.ShopSimulator` dataset written with
``write_dataset(..., with_types=True)`` (tokens ``item``, ``item:add_to_cart``, ``item:purchase``)
into a temporary directory. The model is trained twice per seed on the SAME item sequences, same
seed, same config, same fixed number of epochs (no time budget, so a loaded machine cannot tilt
the comparison): (A) with the event types as read from the file, (B) with every type replaced by
``view`` (items untouched). As in :func:`~streamrec.model.train.train`, the weights of the best
validation epoch are kept. Both models are ranked on the test split (each user's last item,
full ranking over all items) twice: ``exclude_seen=True`` (the published protocol: items already
in the history are not ranked, so a re-purchase of a carted item is always a miss) and
``exclude_seen=False`` (in a shop the carted item may well be the next purchase). Model A is also
ranked with its input types stripped (does it use them?), and test users are broken down by the
type of their target. Popularity and item-to-item co-occurrence baselines give the scale.

The last line of output is one JSON object with the headline numbers (means over seeds).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamrec.devtools.simulator import ShopSimulator, write_dataset  # noqa: E402
from streamrec.model.data import (  # noqa: E402
    Encoded,
    Interactions,
    encode,
    leave_one_out,
    read_item_text,
    read_sequences,
    vocab_from,
)
from streamrec.model.evaluate import (  # noqa: E402
    cooccurrence_score_fn,
    evaluate_model,
    popularity_score_fn,
    rank_all,
)
from streamrec.model.sasrec import DEFAULT_EVENT_TYPE, EVENT_TYPE_IDS  # noqa: E402
from streamrec.model.train import TrainSettings, train  # noqa: E402

MODEL_CONFIG = dict(
    d_model=64,
    n_layers=1,
    n_heads=1,
    d_ff=256,
    max_len=50,
    dropout=0.2,
    emb_dropout=0.2,
    id_dropout=0.1,
    use_text=True,
    loss="full",
)
PROTOCOLS = (("excl", True), ("incl", False))  # (key, exclude_seen)


def strip_types(data: Interactions) -> Interactions:
    """Same users and items, every event a ``view``."""
    return Interactions(
        list(data.users), [list(s) for s in data.items], [[DEFAULT_EVENT_TYPE] * len(s) for s in data.items]
    )


def as_views(enc: Encoded) -> Encoded:
    view = EVENT_TYPE_IDS[DEFAULT_EVENT_TYPE]
    return Encoded(enc.items, [[view] * len(t) for t in enc.types])


def subset(enc: Encoded, idx: np.ndarray) -> Encoded:
    return Encoded([enc.items[i] for i in idx], [enc.types[i] for i in idx])


def ms(xs: list[float]) -> str:
    return f"{np.mean(xs):.4f} ± {np.std(xs, ddof=1) if len(xs) > 1 else 0.0:.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-items", type=int, default=2000)
    ap.add_argument("--n-users", type=int, default=8000)
    ap.add_argument("--n-events", type=int, default=500_000)
    ap.add_argument("--sim-seed", type=int, default=0, help="seed of the simulated dataset")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--epochs", type=int, default=10, help="fixed number of epochs per run")
    ap.add_argument("--config", type=json.loads, default={}, help="JSON overrides of MODEL_CONFIG")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--data-dir", default=None, help="write the dataset here (default: a temp dir)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    cfg = MODEL_CONFIG | args.config
    t_all = time.monotonic()

    tmp = tempfile.TemporaryDirectory(prefix="streamrec-event-types-")
    d = Path(args.data_dir or tmp.name)
    sim = ShopSimulator(seed=args.sim_seed, n_items=args.n_items, n_users=args.n_users)
    write_dataset(sim, d, n_events=args.n_events, with_types=True)
    typed = read_sequences(d / "sequences.txt")
    text = read_item_text(d / "item_text.tsv")
    plain = strip_types(typed)
    assert plain.items == typed.items and plain.users == typed.users

    vocab = vocab_from(typed)  # what train() builds; identical for both variants
    split = leave_one_out(encode(typed, vocab))
    test_typed, targets = split.test_inputs, split.test_targets
    test_plain = as_views(test_typed)
    n = len(vocab)
    target_type = np.array([t[-1] for t, s in zip(typed.types, typed.items) if len(s) >= 3])
    in_hist = np.array([s[-1] in s[:-1] for s in typed.items if len(s) >= 3])
    assert len(target_type) == len(targets)
    n_inter = sum(map(len, typed.items))
    share = {t: sum(x == t for ts in typed.types for x in ts) / n_inter for t in ("view", "add_to_cart", "purchase")}
    print(
        f"data: ShopSimulator(seed={args.sim_seed}, n_items={args.n_items}, n_users={args.n_users}), "
        f"{args.n_events} events -> {len(typed)} users, {n} items, {n_inter} interactions "
        f"(median length {np.median([len(s) for s in typed.items]):.0f}); types "
        + ", ".join(f"{k} {v:.1%}" for k, v in share.items())
    )
    print(
        f"test: {len(targets)} users; target type "
        + ", ".join(f"{t} {np.mean(target_type == t):.1%}" for t in ("view", "add_to_cart", "purchase"))
        + f"; target already in history {in_hist.mean():.1%} (always a miss with exclude_seen)"
    )
    print(f"config {json.dumps(cfg)}; {args.epochs} epochs, seeds {seeds}, torch threads {torch.get_num_threads()}")

    base = {}
    for key, excl in PROTOCOLS:
        base[("popularity", key)] = rank_all(
            popularity_score_fn(test_typed, n), test_typed, targets, n, exclude_seen=excl
        )
        base[("co-occurrence", key)] = rank_all(
            cooccurrence_score_fn(test_typed, n), test_typed, targets, n, exclude_seen=excl
        )

    # results[variant][protocol] -> list over seeds of metric dicts
    variants = ("A: with types", "A, types stripped at test", "B: types stripped")
    res: dict[str, dict[str, list[dict]]] = {v: {k: [] for k, _ in PROTOCOLS} for v in variants}
    by_type: dict[str, dict[str, list[float]]] = {v: {} for v in variants}  # incl. protocol, ndcg@10
    runs = []
    text_cache = str(d / "text-cache")
    for seed in seeds:
        for name, data in (("A", typed), ("B", plain)):
            t0 = time.monotonic()
            r = train(
                data,
                item_text=text,
                config=cfg,
                settings=TrainSettings(
                    max_epochs=args.epochs,
                    patience=args.epochs,
                    seed=seed,
                    progress=False,
                    device="cpu",
                    val_users=None,
                    lr_schedule="constant",
                    text_cache=text_cache,
                ),
            )
            assert r.vocab.ids == vocab.ids
            runs.append(
                dict(
                    variant=name,
                    seed=seed,
                    seconds=round(time.monotonic() - t0, 1),
                    best_epoch=r.metrics["best_epoch"],
                    val_ndcg10=round(r.metrics["val"]["ndcg@10"], 4),
                )
            )
            evals = (
                [("A: with types", test_typed), ("A, types stripped at test", test_plain)]
                if name == "A"
                else [("B: types stripped", test_plain)]
            )
            for label, inputs in evals:
                for key, excl in PROTOCOLS:
                    res[label][key].append(evaluate_model(r.model, inputs, targets, exclude_seen=excl))
                for t in ("view", "add_to_cart", "purchase"):
                    idx = np.flatnonzero(target_type == t)
                    m = evaluate_model(r.model, subset(inputs, idx), targets[idx], exclude_seen=False)
                    by_type[label].setdefault(t, []).append(m["ndcg@10"])
            print(
                f"  seed {seed} {name}: {runs[-1]['seconds']:.0f}s, best epoch {runs[-1]['best_epoch']}, "
                f"val NDCG@10 {runs[-1]['val_ndcg10']:.4f}",
                flush=True,
            )

    def col(label: str, key: str, metric: str) -> list[float]:
        return [m[metric] for m in res[label][key]]

    print("\n## Test split, full ranking over all items; mean ± std over seeds\n")
    print(
        "| method                        | NDCG@10 excl. seen | HR@10 excl. seen | "
        "NDCG@10 incl. seen | HR@10 incl. seen |"
    )
    print(
        "|-------------------------------|--------------------|------------------|"
        "--------------------|------------------|"
    )
    for b in ("popularity", "co-occurrence"):
        print(
            f"| {b:29s} | {base[(b, 'excl')]['ndcg@10']:18.4f} | {base[(b, 'excl')]['hr@10']:16.4f} | "
            f"{base[(b, 'incl')]['ndcg@10']:18.4f} | {base[(b, 'incl')]['hr@10']:16.4f} |"
        )
    for v in variants:
        print(
            f"| {v:29s} | {ms(col(v, 'excl', 'ndcg@10')):>18s} | {ms(col(v, 'excl', 'hr@10')):>16s} | "
            f"{ms(col(v, 'incl', 'ndcg@10')):>18s} | {ms(col(v, 'incl', 'hr@10')):>16s} |"
        )

    diff = {
        key: np.array(col("A: with types", key, "ndcg@10")) - np.array(col("B: types stripped", key, "ndcg@10"))
        for key, _ in PROTOCOLS
    }
    print("\n## NDCG@10 per seed (A = with types, B = types stripped; A−B is paired by seed)\n")
    print("| seed | A excl. | B excl. | A−B excl. | A incl. | B incl. | A−B incl. |")
    print("|-----:|--------:|--------:|----------:|--------:|--------:|----------:|")
    for k, seed in enumerate(seeds):
        a_e, b_e = res["A: with types"]["excl"][k]["ndcg@10"], res["B: types stripped"]["excl"][k]["ndcg@10"]
        a_i, b_i = res["A: with types"]["incl"][k]["ndcg@10"], res["B: types stripped"]["incl"][k]["ndcg@10"]
        print(
            f"| {seed:4d} | {a_e:7.4f} | {b_e:7.4f} | {a_e - b_e:+9.4f} | {a_i:7.4f} | {b_i:7.4f} | {a_i - b_i:+9.4f} |"
        )
    for key, label in (("excl", "excl. seen"), ("incl", "incl. seen")):
        sd = np.std(diff[key], ddof=1) if len(seeds) > 1 else 0.0
        sd_b = np.std(col("B: types stripped", key, "ndcg@10"), ddof=1) if len(seeds) > 1 else 0.0
        print(
            f"A−B {label}: mean {diff[key].mean():+.4f}, std over seeds {sd:.4f}; "
            f"seed-to-seed std of B alone {sd_b:.4f}"
        )

    print("\n## NDCG@10 by type of the test target (incl. seen), mean over seeds\n")
    counts = {t: int(np.sum(target_type == t)) for t in ("view", "add_to_cart", "purchase")}
    print("| method                        | " + " | ".join(f"{t} (n={c})" for t, c in counts.items()) + " |")
    print(
        "|-------------------------------|" + "|".join("-" * (len(f"{t} (n={c})") + 2) for t, c in counts.items()) + "|"
    )
    for v in variants:
        print(
            f"| {v:29s} | "
            + " | ".join(f"{np.mean(by_type[v][t]):>{len(f'{t} (n={c})')}.4f}" for t, c in counts.items())
            + " |"
        )

    wall = time.monotonic() - t_all
    print(
        "\ntraining runs: "
        + ", ".join(f"{r['variant']}{r['seed']} {r['seconds']:.0f}s (best ep {r['best_epoch']})" for r in runs)
    )
    print(f"wall {wall:.0f}s")
    mean = lambda label, key: round(float(np.mean(col(label, key, "ndcg@10"))), 4)  # noqa: E731
    print(
        json.dumps(
            {
                "ndcg10_types_excl_seen": mean("A: with types", "excl"),
                "ndcg10_no_types_excl_seen": mean("B: types stripped", "excl"),
                "ndcg10_types_incl_seen": mean("A: with types", "incl"),
                "ndcg10_no_types_incl_seen": mean("B: types stripped", "incl"),
                "diff_excl_seen_std": round(float(np.std(diff["excl"], ddof=1)), 4) if len(seeds) > 1 else None,
                "diff_incl_seen_std": round(float(np.std(diff["incl"], ddof=1)), 4) if len(seeds) > 1 else None,
                "ndcg10_popularity_excl_seen": round(base[("popularity", "excl")]["ndcg@10"], 4),
                "ndcg10_cooccurrence_excl_seen": round(base[("co-occurrence", "excl")]["ndcg@10"], 4),
                "ndcg10_cooccurrence_incl_seen": round(base[("co-occurrence", "incl")]["ndcg@10"], 4),
                "seeds": seeds,
                "epochs": args.epochs,
                "wall_s": round(wall, 1),
            }
        )
    )
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

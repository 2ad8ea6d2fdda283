"""Few-shot: fine-tune a model trained on one shop on a small share of a shop it has never seen,
against training from scratch on the same share (issue #13).

Usage (from the repo root; one torch thread; with the defaults ~8 min for the two source models
and ~38 min for the cells on 2 loaded CPU cores, see bench/RESULTS.md)::

    nice -n 19 .venv/bin/python bench/few_shot.py [--source-dir DIR] [--shares 0.01,0.05,0.2]
    .venv/bin/python bench/few_shot.py --render LOG [LOG ...]   # the tables of earlier (partial) runs

Domains (item ids prefixed ``beauty:`` / ``sim:`` so that the two catalogs never share an id):

- ``beauty``: Amazon Beauty (``$STREAMREC_BENCH_DATA``: ``sequences.txt`` + ``item_text.tsv``).
- ``sim``: the simulator's shop (``ShopSimulator`` + ``write_dataset``, as in
  ``bench/zero_shot.py``'s whole-new-shop case: brand + category titles, a different generator).

Protocol, for each direction (source -> target) in ``sim->beauty`` and ``beauty->sim``:

1. Source model: ``bench/quality.py``'s MODEL_CONFIG / TRAIN (hybrid text channel on), trained on
   every user of the source domain for ``--source-epochs`` FIXED epochs (cosine schedule over
   them, best epoch on the validation split), saved as a safetensors checkpoint in
   ``--source-dir/<domain>``; a rerun with the same ``--source-dir`` (and the same data and
   settings, checked) loads it instead of training again.
2. Shares: the target's users are shuffled once (``--seed``); share p = the first p of them
   (nested: the 1 % users are inside the 5 % ones). The evaluation users are a seeded sample of
   at most ``--eval-users`` users taken from those outside the LARGEST share, so every share
   and every method is measured on the same users, none of whom any model trained on.
3. Per share, on the share's users only, with the standard leave-one-out split (last item
   held out, second-last validates, the rest trains; best epoch and the text channel's gates
   on validation):
   (a) ``finetune``: the source checkpoint warm-started as ``streamrec finetune`` does (target
       items of the share are appended to the vocabulary from their titles);
   (b) scratch: a new model with the same config.
   Both get the same FIXED number of epochs (``--epochs``; cosine over them, no early stop,
   best epoch kept): same data, same passes, fair whatever the machine's load.
4. Evaluation (as ``streamrec evaluate --candidates data``): every target item a model has not
   trained on is added from its title (``train.add_items``); per evaluation user the last item
   is the target, the earlier items the history (excluded from the ranking), full ranking among
   the TARGET domain's catalog only. Reference rows on the same users: text similarity (MiniLM
   titles, recency-weighted history exp(-0.7 age), no training) and popularity (counted on the
   evaluation users' histories, as ``evaluate --baselines``). Share 0 % is the source model
   zero-shot (no fine-tuning: the whole target catalog comes from titles), its text channel
   fitted to the target's titles as ``streamrec adapt`` does (and, in the row's ``unadapted``
   field, as served without that: the source shop's directions).

Prints one table (NDCG@10 / HR@10 per method, users and items trained, seconds) and a final JSON
line. Only the test items of the held-out users are read for the report; nothing is chosen on
them.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from quality import MODEL_CONFIG, TRAIN, data_dir, read_data, simulated_shop  # noqa: E402

from streamrec.model.checkpoint import load_checkpoint, read_metrics, save_checkpoint  # noqa: E402
from streamrec.model.data import (  # noqa: E402
    Encoded,
    Interactions,
    ItemVocab,
    encode,
)
from streamrec.model.evaluate import (  # noqa: E402
    evaluate_model,
    popularity_score_fn,
    rank_all,
    text_similarity_score_fn,
)
from streamrec.model.sasrec import SASRec  # noqa: E402
from streamrec.model.train import (  # noqa: E402
    TrainSettings,
    add_items,
    finetune,
    fit_catalog_basis,
    item_text_matrix,
    train,
)

log = logging.getLogger("few_shot")


class Domain:
    """One shop: its users' sequences and its catalog (every item with a title or an event)."""

    def __init__(self, name: str, data: Interactions, text: dict[str, str | None]) -> None:
        p = f"{name}:"
        self.name = name
        self.data = Interactions(data.users, [[p + i for i in s] for s in data.items], data.types)
        self.text = {p + i: t for i, t in text.items()}
        self.catalog = sorted(set(self.text) | {i for s in self.data.items for i in s})

    def signature(self) -> dict[str, int]:
        return {
            "users": len(self.data),
            "items": len(self.catalog),
            "interactions": sum(map(len, self.data.items)),
        }


def load_beauty() -> Domain:
    d = data_dir()
    if not (d / "sequences.txt").is_file():
        raise SystemExit(f"data not found: {d / 'sequences.txt'} (set STREAMREC_BENCH_DATA)")
    return Domain("beauty", *read_data(d))


def load_sim(args: argparse.Namespace) -> Domain:
    shop = simulated_shop(
        seed=args.sim_seed, n_items=args.sim_items, n_users=args.sim_users, n_events=args.sim_events, prefix="fewshot"
    )
    return Domain("sim", *shop)


def settings(args: argparse.Namespace, epochs: int) -> TrainSettings:
    tr = TRAIN | {"max_epochs": epochs, "patience": epochs} | args.train
    return TrainSettings(seed=args.seed, device="cpu", progress=False, text_cache=args.text_cache, **tr)


def source_model(dom: Domain, args: argparse.Namespace, cfg: dict) -> tuple[SASRec, ItemVocab, dict]:
    """The source domain's model: loaded from ``--source-dir/<domain>`` when a previous run of this
    script saved it with the same data and settings, else trained and saved there."""
    path = Path(args.source_dir) / dom.name
    want = {"domain": dom.signature(), "config": cfg, "epochs": args.source_epochs, "seed": args.seed} | (
        {"train": args.train} if args.train else {}
    )
    meta = path / "few_shot_source.json"
    if meta.is_file() and json.loads(meta.read_text(encoding="utf-8")) == json.loads(json.dumps(want)):
        model, vocab = load_checkpoint(path)
        m = read_metrics(path)
        log.info("source=%s loaded from %s", dom.name, path)
        return model, vocab, m | {"loaded": True}
    res = train(dom.data, item_text=dom.text, config=dict(cfg), settings=settings(args, args.source_epochs))
    save_checkpoint(res.model, res.vocab, path, metrics=res.metrics, train_settings=res.settings)
    meta.write_text(json.dumps(want, sort_keys=True), encoding="utf-8")
    return res.model, res.vocab, res.metrics | {"loaded": False}


def share_split(
    n_users: int, shares: list[float], eval_users: int, seed: int
) -> tuple[dict[float, list[int]], list[int]]:
    """Nested user shares (share p = the first round(p * n) of one seeded permutation) and the
    evaluation users: at most ``eval_users`` of those outside the largest share."""
    perm = np.random.default_rng(seed).permutation(n_users)
    out = {p: sorted(perm[: max(1, round(p * n_users))].tolist()) for p in shares}
    rest = perm[max(len(v) for v in out.values()) :]
    return out, sorted(rest[:eval_users].tolist())


def eval_cases(dom: Domain, users: list[int]) -> Interactions:
    return dom.data.subset(k for k in users if len(dom.data.items[k]) >= 2)


def encoded_cases(cases: Interactions, vocab: ItemVocab) -> tuple[Encoded, np.ndarray]:
    enc = encode(cases, vocab)
    inputs = Encoded([s[:-1] for s in enc.items], [t[:-1] for t in enc.types])
    return inputs, np.array([s[-1] for s in enc.items], dtype=np.int64)


def by_target(cases: Interactions, trained: set[str]) -> dict[str, Interactions]:
    """All cases, and those whose target item has / has not a trained id (``trained``)."""
    seen = [k for k, s in enumerate(cases.items) if s[-1] in trained]
    new = [k for k, s in enumerate(cases.items) if s[-1] not in trained]
    return {"all": cases, "target trained": cases.subset(seen), "target from title": cases.subset(new)}


def evaluate_on(
    model: SASRec, vocab: ItemVocab, dom: Domain, parts: dict[str, Interactions], args
) -> tuple[dict[str, dict], int]:
    """Add the target items the model has no row for (from titles), rank each case's last item
    among the target catalog (history excluded), for each group of cases in ``parts``. Returns
    the metrics per group and the number of items added from titles."""
    model, vocab = copy.deepcopy(model), copy.deepcopy(vocab)
    added = add_items(model, vocab, dom.catalog, dom.text, cache_file=args.text_cache, device="cpu")
    model.eval()
    rows = np.array([vocab.row(i) for i in dom.catalog], dtype=np.int64)
    out = {
        name: evaluate_model(model, *encoded_cases(c, vocab), catalog_rows=rows) for name, c in parts.items() if len(c)
    }
    if model.config.hybrid:  # the fitted item gates over the target catalog: new rows vs trained rows
        with torch.no_grad():
            beta, b = model.item_gates(serving=False)
        new = model.item_new()[torch.as_tensor(rows)]
        r = torch.as_tensor(rows)
        for flag, label in ((new, "new"), (~new, "trained")):
            if flag.any():
                out[f"gate_b_{label}"] = round(float(b[r[flag]].mean()), 3)
                out[f"gate_beta_{label}"] = round(float(beta[r[flag]].mean()), 3)
    return out, len(added)


def baselines(dom: Domain, parts: dict[str, Interactions], args) -> dict[str, dict[str, dict]]:
    """Text similarity and popularity (counted on the histories of ``parts["all"]``, as
    ``evaluate --baselines``) per group of cases, ranked among the target catalog."""
    vocab = ItemVocab(dom.catalog)
    n = len(vocab)
    T = torch.cat([torch.zeros(1, 384), item_text_matrix(vocab, dom.text, cache_file=args.text_cache, device="cpu")])
    ts, pop = text_similarity_score_fn(T), popularity_score_fn(encoded_cases(parts["all"], vocab)[0], n)
    out: dict[str, dict[str, dict]] = {"text_similarity": {}, "popularity": {}}
    for name, c in parts.items():
        if len(c):
            inputs, targets = encoded_cases(c, vocab)
            out["text_similarity"][name] = rank_all(ts, inputs, targets, n)
            out["popularity"][name] = rank_all(pop, inputs, targets, n)
    return out


def trained_ids(share: Interactions) -> set[str]:
    """Items in the share's training part (leave-one-out: users with >= 3 items train on all but
    their last two, shorter ones on everything): the target items that get a trained id."""
    return {i for s in share.items for i in (s[:-2] if len(s) >= 3 else s)}


def short(m: dict) -> dict[str, float]:
    return {"ndcg@10": round(m["ndcg@10"], 4), "hr@10": round(m["hr@10"], 4)}


def cell(r: dict, method: str, group: str, metric: str) -> str:
    m = (r[method] or {}).get(group)
    return f"{m[metric]:.4f}" if m else "-"


def print_tables(rows: list[dict[str, Any]], epochs: int) -> None:
    print(
        f"\n## Few-shot, {epochs} fixed epochs for fine-tune and scratch; held-out users' last item "
        "ranked among the target catalog (history excluded)\n"
    )
    print(
        "| direction | share | users trained | target items trained / catalog | finetune NDCG@10 | "
        "finetune HR@10 | scratch NDCG@10 | scratch HR@10 | text sim. NDCG@10 | text sim. HR@10 | "
        "popularity NDCG@10 | popularity HR@10 | finetune s | scratch s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['direction']} | {r['share']:.0%}{zero_shot_label(r)} | {r['users']} | "
            f"{r['items_trained']} / {r['catalog']} | "
            + " | ".join(
                cell(r, meth, "all", k)
                for meth in ("finetune", "scratch", "text_similarity", "popularity")
                for k in ("ndcg@10", "hr@10")
            )
            + f" | {r['finetune_s']:.0f} | "
            + (f"{r['scratch_s']:.0f} |" if r["scratch_s"] is not None else "- |")
        )
        if r.get("unadapted"):  # the zero-shot row: the source model after `streamrec adapt`; and without
            print(
                f"| {r['direction']} | 0% (zero-shot, not adapted: the source shop's text directions) | 0 | "
                f"0 / {r['catalog']} | "
                + " | ".join(cell(r, "unadapted", "all", k) for k in ("ndcg@10", "hr@10"))
                + " | - | - |"
                + " - | - | - | - |"
                + " 0 | - |"
            )
    print(
        "\n## NDCG@10 by evaluation target: an item the share trained (it has an id) or one known only from its title\n"
    )
    print(
        "| direction | share | eval users, target trained | finetune, trained | scratch, trained | "
        "text sim., trained | finetune, from title | scratch, from title | text sim., from title |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['direction']} | {r['share']:.0%} | {r['eval_target_trained']} / {r['eval_users']} | "
            + " | ".join(
                cell(r, meth, g, "ndcg@10")
                for g in ("target trained", "target from title")
                for meth in ("finetune", "scratch", "text_similarity")
            )
            + " |"
        )


def zero_shot_label(r: dict[str, Any]) -> str:
    if r["share"]:
        return ""
    return " (zero-shot, adapted)" if r.get("unadapted") else " (zero-shot)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shares", type=lambda v: [float(x) for x in v.split(",")], default=[0.01, 0.05, 0.2])
    ap.add_argument(
        "--directions",
        type=lambda v: v.split(","),
        default=["sim->beauty", "beauty->sim"],
        help="comma-separated source->target pairs of beauty / sim",
    )
    ap.add_argument("--epochs", type=int, default=30, help="fixed epochs for fine-tuning AND scratch")
    ap.add_argument("--source-epochs", type=int, default=8, help="fixed epochs for each source model")
    ap.add_argument("--eval-users", type=int, default=5000, help="seeded sample of held-out users evaluated")
    ap.add_argument("--source-dir", default=str(Path(tempfile.gettempdir()) / "streamrec-few-shot-sources"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--config", type=json.loads, default={}, help="JSON overrides of MODEL_CONFIG")
    ap.add_argument("--train", type=json.loads, default={}, help="JSON overrides of TRAIN")
    ap.add_argument("--sim-users", type=int, default=6000)
    ap.add_argument("--sim-items", type=int, default=2000)
    ap.add_argument("--sim-events", type=int, default=150_000)
    ap.add_argument("--sim-seed", type=int, default=11)
    ap.add_argument("--text-cache", default=str(REPO / ".cache" / "streamrec" / "text-cache"))
    ap.add_argument(
        "--render",
        nargs="+",
        type=Path,
        default=None,
        metavar="LOG",
        help="train nothing: print the tables from the 'row {...}' lines of earlier runs' output (a run "
        "cut short keeps the cells it finished; a later cell of the same direction and share wins)",
    )
    args = ap.parse_args()
    if args.render:
        cells: dict[tuple[str, float], dict] = {}
        for log_path in args.render:
            for line in log_path.read_text(encoding="utf-8").splitlines():
                if line.startswith("row {"):
                    r = json.loads(line[4:])
                    cells[(r["direction"], r["share"])] = r
        rows = [cells[k] for k in sorted(cells, key=lambda k: (k[0] != "sim->beauty", k[1]))]
        print_tables(rows, rows[0].get("epochs", args.epochs) if rows else args.epochs)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    for d in args.directions:
        if d not in ("sim->beauty", "beauty->sim"):
            raise SystemExit(f"--directions: {d!r} is not sim->beauty or beauty->sim")
    if not args.shares or not all(0.0 < p < 1.0 for p in args.shares):
        raise SystemExit(f"--shares {args.shares}: each must be in (0, 1)")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    t_all = time.monotonic()
    cfg = MODEL_CONFIG | args.config
    doms = {"beauty": load_beauty(), "sim": load_sim(args)}
    print(
        f"config {json.dumps(cfg)} train {json.dumps(TRAIN | args.train)}; fine-tune/scratch "
        f"{args.epochs} fixed epochs, sources {args.source_epochs} fixed epochs; torch threads "
        f"{torch.get_num_threads()}; device cpu; load average {os.getloadavg()[0]:.1f}"
    )
    for d in doms.values():
        s = d.signature()
        print(f"domain {d.name}: {s['users']} users, {s['items']} items, {s['interactions']} interactions")

    sources: dict[str, tuple[SASRec, ItemVocab, dict]] = {}
    for name in dict.fromkeys(d.split("->")[0] for d in args.directions):
        t0 = time.monotonic()
        sources[name] = source_model(doms[name], args, cfg)
        m = sources[name][2]
        print(
            f"source {name}: {'loaded from' if m['loaded'] else 'trained, saved to'} "
            f"{Path(args.source_dir) / name}; {m.get('epochs')} epochs, best {m.get('best_epoch')}, "
            f"{m.get('train_seconds')}s training; val NDCG@10 {m.get('val', {}).get('ndcg@10', float('nan')):.4f}, "
            f"own test NDCG@10 {m.get('test', {}).get('ndcg@10', float('nan')):.4f} "
            f"(wall {time.monotonic() - t0:.0f}s)"
        )

    rows: list[dict[str, Any]] = []
    for direction in args.directions:
        src, tgt = direction.split("->")
        dom = doms[tgt]
        shares, eval_users = share_split(len(dom.data), args.shares, args.eval_users, args.seed)
        cases = eval_cases(dom, eval_users)
        print(f"\n{direction}: {len(cases)} evaluation users (outside every share), {len(dom.catalog)} candidate items")
        s_model, s_vocab, _ = sources[src]
        for p in [0.0, *sorted(args.shares)]:
            share = dom.data.subset(shares[p]) if p else Interactions()
            trained = trained_ids(share)
            parts = by_target(cases, trained)
            base = baselines(dom, parts, args)
            row: dict[str, Any] = {
                "direction": direction,
                "share": p,
                "epochs": args.epochs,
                "users": len(share),
                "items_trained": len(trained),
                "catalog": len(dom.catalog),
                "eval_users": len(cases),
                "eval_target_trained": len(parts["target trained"]),
                # validation targets of the share without a trained id (they are in the share's
                # vocabulary, with count 0: the gate fit sees them as "new" items)
                "share_val_targets_untrained": sum(len(x) >= 3 and x[-2] not in trained for x in share.items),
                "text_similarity": {k: short(v) for k, v in base["text_similarity"].items()},
                "popularity": {k: short(v) for k, v in base["popularity"].items()},
                "scratch": None,
                "scratch_s": None,
            }
            if not p:  # the source model zero-shot: every target item from its title
                # as served after `streamrec adapt --item-text <target catalog>`: the text channel's
                # centre and directions fitted to the target's titles (nothing else changes)
                adapted = copy.deepcopy(s_model)
                titled = [i for i in dom.catalog if dom.text.get(i)]
                fit_catalog_basis(adapted, s_vocab, dom.text, titled, cache_file=args.text_cache, device="cpu")
                m, row["finetune_from_titles"] = evaluate_on(adapted, s_vocab, dom, parts, args)
                row["finetune"] = {k: short(v) for k, v in m.items() if isinstance(v, dict)}
                row["finetune_gates"] = {k: v for k, v in m.items() if not isinstance(v, dict)}
                row["finetune_s"] = 0.0
                # and as served without it: the source shop's directions
                m0, _ = evaluate_on(s_model, s_vocab, dom, parts, args)
                row["unadapted"] = {k: short(v) for k, v in m0.items() if isinstance(v, dict)}
                rows.append(row)
                print("row " + json.dumps(row), flush=True)
                print(
                    f"  zero-shot source model: NDCG@10 {m['all']['ndcg@10']:.4f} after `streamrec adapt`, "
                    f"{m0['all']['ndcg@10']:.4f} without",
                    flush=True,
                )
                continue
            for name in ("finetune", "scratch"):
                t0 = time.monotonic()
                if name == "finetune":  # (a) the source checkpoint (a fresh copy), as `streamrec finetune`
                    res = finetune(
                        copy.deepcopy(s_model),
                        copy.deepcopy(s_vocab),
                        share,
                        item_text=dom.text,
                        settings=settings(args, args.epochs),
                    )
                else:  # (b) from scratch: same config, same share, same epochs
                    res = train(share, item_text=dom.text, config=dict(cfg), settings=settings(args, args.epochs))
                row[f"{name}_s"] = round(time.monotonic() - t0, 1)
                m, row[f"{name}_from_titles"] = evaluate_on(res.model, res.vocab, dom, parts, args)
                row[name] = {k: short(v) for k, v in m.items() if isinstance(v, dict)}
                row[f"{name}_gates"] = {k: v for k, v in m.items() if not isinstance(v, dict)}
                row[f"{name}_best_epoch"] = res.metrics["best_epoch"]
                row[f"{name}_val_ndcg@10"] = round(res.metrics.get("val", {}).get("ndcg@10", float("nan")), 4)
            rows.append(row)
            print("row " + json.dumps(row), flush=True)  # each cell as it completes (a partial run keeps them)
            print(
                f"  share {p:.0%} ({len(share)} users, {len(trained)} of {len(dom.catalog)} target items "
                f"trained): finetune NDCG@10 {row['finetune']['all']['ndcg@10']:.4f} (share val "
                f"{row['finetune_val_ndcg@10']}, best epoch {row['finetune_best_epoch']}, {row['finetune_s']}s), "
                f"scratch {row['scratch']['all']['ndcg@10']:.4f} (share val {row['scratch_val_ndcg@10']}, "
                f"best epoch {row['scratch_best_epoch']}, {row['scratch_s']}s); share val targets without a "
                f"trained id {row['share_val_targets_untrained']}; gates finetune {row['finetune_gates']} "
                f"scratch {row['scratch_gates']}",
                flush=True,
            )

    print_tables(rows, args.epochs)
    print(f"\nwall {time.monotonic() - t_all:.0f}s; load average now {os.getloadavg()[0]:.1f}")
    print(
        json.dumps(
            {
                "epochs": args.epochs,
                "source_epochs": args.source_epochs,
                "rows": rows,
                "wall_s": round(time.monotonic() - t_all),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

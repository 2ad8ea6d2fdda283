"""Text similarity alone (no training), and what reducing the title vectors costs it.

Usage (from the repo root; ~3 min on 2 CPU cores once the title cache exists)::

    .venv/bin/python bench/text_similarity.py [--dims 0,32,64,128]

The ranker: MiniLM title vectors, the user vector the recency-weighted mean (weight exp(-0.7 age)) of the
history's title vectors, cosine to every item, history excluded (``evaluate --baselines``'s
text-similarity row). Rows: Beauty's validation split (second-last item; all users, and the
users whose target is one of ``bench/quality.py``'s hidden items) in the full catalog, and the
simulator's shop (last item, ranked among its own catalog). ``dims`` 0 is the full 384-d
vector; r > 0 projects every title on the top r principal directions first, as
``SASRecConfig.text_sim_dim`` does, which shrinks the hybrid model's vectors (and the FAISS
search): either those of Beauty's known (non-hidden) titles for every catalog (the channel before
the fourth session), or, as the served channel now is (``SASRec.set_text_basis``), the centre and
directions of the ranked catalog's own titles. ``--small-shops`` adds shops with fewer titles than
the channel's directions (Beauty's most clicked hidden items, and simulator shops): the channel as
fitted before the tenth session (no fit: MiniLM's first r raw dimensions) against now (centred, the
shop's own directions first). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from quality import data_dir, data_missing, hidden_items, read_data, simulated_shop  # noqa: E402

from streamrec.model.data import (  # noqa: E402
    Encoded,
    encode,
    vocab_from,
)
from streamrec.model.evaluate import rank_all, text_similarity_score_fn  # noqa: E402
from streamrec.model.sasrec import SASRec, text_basis  # noqa: E402
from streamrec.model.train import item_text_matrix  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", default="0,64,128,192")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shop-seeds", default="0,1,2", help="hidden-item seeds of the Beauty shops ('' = none)")
    ap.add_argument(
        "--small-shops",
        default="40,100,150",
        help="catalog sizes of the small shops, each under the channel's directions ('' = none)",
    )
    ap.add_argument("--channel-dim", type=int, default=192, help="the channel's directions (text_sim_dim)")
    ap.add_argument("--text-cache", default=str(REPO / ".cache" / "streamrec" / "text-cache"))
    args = ap.parse_args()
    d = data_dir()
    if data_missing(d):
        return 2
    cache = Path(args.text_cache)
    data, text = read_data(d)
    vocab = vocab_from(data)
    T = torch.cat([torch.zeros(1, 384), item_text_matrix(vocab, text, cache_file=cache)])
    hidden = {vocab.row(i) for i in hidden_items(data, args.seed)}
    enc = encode(data, vocab)

    def val(want: str) -> tuple[Encoded, np.ndarray]:
        idx = [k for k, s in enumerate(enc.items) if want == "all" or s[-2] in hidden]
        return (
            Encoded([enc.items[k][:-2] for k in idx], [enc.types[k][:-2] for k in idx]),
            np.array([enc.items[k][-2] for k in idx], dtype=np.int64),
        )

    def fitted(E: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre (d,) and top r principal directions (d, r) of the title vectors E, float32: the
        served channel's own fit (``streamrec.model.sasrec.text_basis``)."""
        mean, basis = text_basis(E, r, max_rows=SASRec.BASIS_FIT_ROWS)
        return mean.float(), basis.float()

    known = np.array([r for r in range(1, len(T)) if r not in hidden and bool(T[r].any())])
    shop, shop_text = simulated_shop(seed=7, n_items=2000, n_users=3000, n_events=100_000, prefix="ts")
    sv = vocab_from(shop)
    sv.add(list(shop_text))
    ST = torch.cat([torch.zeros(1, 384), item_text_matrix(sv, shop_text, cache_file=cache)])
    senc = encode(shop, sv)
    s_in = Encoded([s[:-1] for s in senc.items], [t[:-1] for t in senc.types])
    s_y = np.array([s[-1] for s in senc.items], dtype=np.int64)
    v_all, v_hid = val("all"), val("hidden")
    print(
        f"\n| title vector | Beauty val, all users ({len(v_all[1])}) | Beauty val, hidden-item "
        f"targets ({len(v_hid[1])}) | simulator shop ({len(s_y)} users) |\n|---|---:|---:|---:|"
    )
    out: dict[str, list[float]] = {}
    for r in (int(x) for x in args.dims.split(",")):
        k = max(r, 1)  # r 0 reads only the centres
        own_beauty, own_shop, beauty_known = fitted(T[1:], k), fitted(ST[1:], k), fitted(T[known], k)
        # (name, key, centre, directions) for Beauty's rows and for the simulator shop's rows;
        # "own": fitted on the ranked catalog's own titles, as the served channel is
        # (SASRec.set_text_basis: centred, then the top r directions)
        rows = (
            [
                ("full 384-d (the text-similarity baseline)", "0", (None, None), (None, None)),
                ("full 384-d, centred on the ranked catalog", "0_centred", (own_beauty[0], None), (own_shop[0], None)),
            ]
            if r == 0
            else [
                (
                    f"PCA {r} of Beauty's known titles, uncentred (the channel before)",
                    str(r),
                    (None, beauty_known[1]),
                    (None, beauty_known[1]),
                ),
                (
                    f"PCA {r} of the ranked catalog's titles, uncentred",
                    f"{r}_own",
                    (None, own_beauty[1]),
                    (None, own_shop[1]),
                ),
                (
                    f"PCA {r} of the ranked catalog's titles, centred (the channel now)",
                    f"{r}_own_centred",
                    (own_beauty[0], own_beauty[1]),
                    (own_shop[0], own_shop[1]),
                ),
            ]
        )
        for name, key, fb, fs in rows:

            def f(X: torch.Tensor, fit: tuple[torch.Tensor | None, torch.Tensor | None]) -> torch.Tensor:
                mean, P = fit
                has = (X.abs().sum(1, keepdim=True) > 0).to(X.dtype)  # untitled rows stay zero
                Y = X if mean is None else (X - mean) * has
                return Y if P is None else Y @ P

            row = [
                rank_all(text_similarity_score_fn(f(T, fb)), *v_all, len(T) - 1)["ndcg@10"],
                rank_all(text_similarity_score_fn(f(T, fb)), *v_hid, len(T) - 1)["ndcg@10"],
                rank_all(text_similarity_score_fn(f(ST, fs)), s_in, s_y, len(ST) - 1)["ndcg@10"],
            ]
            print(f"| {name} | " + " | ".join(f"{x:.4f}" for x in row) + " |")
            out[key] = [round(x, 4) for x in row]
    # Whole new shops made of Beauty's items: for each hidden-item seed, the users' histories
    # restricted to the hidden items (users with >= 2 of them), the last one ranked among the
    # 1,210 hidden items only (bench/zero_shot.py's "Beauty's hidden items as a shop")
    seeds = [int(x) for x in args.shop_seeds.split(",") if x]
    shops = []
    for seed in seeds:
        rows_h = np.array(sorted({vocab.row(i) for i in hidden_items(data, seed)}), dtype=np.int64)
        keep = set(rows_h.tolist())
        seqs = [q for q in ([i for i in s if i in keep] for s in enc.items) if len(q) >= 2]
        shops.append(
            (
                seed,
                rows_h,
                Encoded([q[:-1] for q in seqs], [[1] * (len(q) - 1) for q in seqs]),
                np.array([q[-1] for q in seqs], dtype=np.int64),
            )
        )
    if shops:
        print(
            "\n| title vector | "
            + " | ".join(f"Beauty hidden shop, seed {sd} ({len(y)} users, {len(rw)} items)" for sd, rw, _, y in shops)
            + " |\n|---|"
            + "---:|" * len(shops)
        )
    shop_out: dict[str, list[float]] = {}
    for r in [0, *(int(x) for x in args.dims.split(",") if int(x))] if shops else []:
        for centred in (False, True) if r == 0 else (True,):
            row = []
            for _sd, rows_h, inp, y in shops:
                mean, basis = fitted(T[rows_h], max(r, 1))
                has = (T.abs().sum(1, keepdim=True) > 0).to(T.dtype)
                X = (T - mean) * has if centred else T
                X = X if r == 0 else X @ basis
                row.append(rank_all(text_similarity_score_fn(X), inp, y, len(T) - 1, catalog_rows=rows_h)["ndcg@10"])
            name = (
                ("full 384-d" + (", centred" if centred else " (the text-similarity baseline)"))
                if r == 0
                else (f"PCA {r} of the shop's titles, centred (the channel's recipe)")
            )
            print(f"| {name} | " + " | ".join(f"{x:.4f}" for x in row) + " |")
            shop_out[f"{r}{'_centred' if centred else ''}"] = [round(x, 4) for x in row]
    small_out = small_shops(args, T, enc, vocab, data, cache)
    summary = {"ndcg_at_10_by_dims": out, "hidden_shops_ndcg_at_10_by_dims": shop_out}
    print(json.dumps({**summary, "small_shops_ndcg_at_10": small_out}))
    return 0


def small_shops(
    args: argparse.Namespace, T: torch.Tensor, enc: Encoded, vocab: Any, data: Any, cache: Path
) -> dict[str, list[float]]:
    """Shops with fewer titled items than the channel has directions (``--channel-dim``): the
    channel as fitted before the tenth session (no fit below r titles: no centre, the first r
    of MiniLM's raw dimensions) and now (centred on the shop's titles, the directions they span
    first), beside the full 384-d vectors, raw (the baseline) and centred. Two kinds of shop per
    size n: Beauty's n most clicked hidden items (seed 0), each user's history restricted to them
    (users with >= 2), and a simulator shop of n items. The last item ranked among the shop's
    own n items."""
    sizes = [int(x) for x in args.small_shops.split(",") if x]
    if not sizes:
        return {}
    r = args.channel_dim
    counts: dict[int, int] = {}
    hid = {vocab.row(i) for i in hidden_items(data, 0)}
    for s in enc.items:
        for i in s:
            if i in hid:
                counts[i] = counts.get(i, 0) + 1
    by_count = sorted(counts, key=lambda i: (-counts[i], i))
    cases = []  # (label, title matrix with a pad row, catalog rows, histories, targets)
    for n in sizes:
        rows_h = np.array(sorted(by_count[:n]), dtype=np.int64)
        keep = set(rows_h.tolist())
        seqs = [q for q in ([i for i in s if i in keep] for s in enc.items) if len(q) >= 2]
        cases.append(
            (
                f"Beauty, {n} hidden items ({len(seqs)} users)",
                T,
                rows_h,
                Encoded([q[:-1] for q in seqs], [[1] * (len(q) - 1) for q in seqs]),
                np.array([q[-1] for q in seqs], dtype=np.int64),
            )
        )
        shop, shop_text = simulated_shop(seed=11, n_items=n, n_users=600, n_events=12_000, prefix=f"sm{n}")
        sv = vocab_from(shop)
        sv.add(list(shop_text))
        ST = torch.cat([torch.zeros(1, 384), item_text_matrix(sv, shop_text, cache_file=cache)])
        senc = encode(shop, sv)
        keep_s = [k for k, q in enumerate(senc.items) if len(q) >= 2]
        cases.append(
            (
                f"simulator, {len(ST) - 1} items ({len(keep_s)} users)",
                ST,
                np.arange(1, len(ST), dtype=np.int64),
                Encoded([senc.items[k][:-1] for k in keep_s], [senc.types[k][:-1] for k in keep_s]),
                np.array([senc.items[k][-1] for k in keep_s], dtype=np.int64),
            )
        )
    print(f"\n| title vector (shops under {r} titles) | " + " | ".join(c[0] for c in cases) + " |")
    print("|---|" + "---:|" * len(cases))
    ways = [
        ("full 384-d (the text-similarity baseline)", "full"),
        ("full 384-d, centred on the shop", "full_centred"),
        (f"channel before: first {r} raw dims, uncentred (no fit under {r} titles)", "before"),
        (f"channel now: centred, the shop's directions first ({r} in all)", "now"),
    ]
    res: dict[str, list[float]] = {}
    for name, key in ways:
        row = []
        for _label, M, rows_c, inp, y in cases:
            has = (M.abs().sum(1, keepdim=True) > 0).to(M.dtype)
            if key == "full":
                X = M
            elif key == "before":
                X = M[:, :r]
            else:
                mean, basis = text_basis(M[rows_c], r)
                X = (M - mean.float()) * has
                X = X if key == "full_centred" else X @ basis.float()
            row.append(rank_all(text_similarity_score_fn(X), inp, y, len(M) - 1, catalog_rows=rows_c)["ndcg@10"])
        print(f"| {name} | " + " | ".join(f"{x:.4f}" for x in row) + " |")
        res[key] = [round(x, 4) for x in row]
    return res


if __name__ == "__main__":
    raise SystemExit(main())

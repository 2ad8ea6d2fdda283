"""Exact CPU search per query at a worker's batch sizes: FAISS's own paths against the torch product.

Usage (from the repo root; ~40 s, one thread)::

    .venv/bin/python bench/flat_blas.py [--items 12101] [--dim 257] [--k 30]

Random vectors (Beauty's catalog size and the default 257-d served vectors), top-``k`` for batches
of 1..256 queries, in the same run:
  1. a bare ``IndexFlatIP`` with faiss's default ``distance_compute_blas_threshold``;
  2. ``ItemIndex(exact_backend="faiss")``: FAISS's search with the value ``ItemIndex`` sets for that
     batch (``blas_threshold``: one BLAS product from ``FLAT_BLAS_MIN_QUERIES`` queries on, a scan
     query by query below);
  3. ``ItemIndex(exact_backend="torch")``: one torch product over FAISS's vectors and ``torch.topk``;
  4. ``ItemIndex(exact_backend="numpy")``: the same with the product through numpy's BLAS (the
     OpenBLAS in numpy's wheel), ``torch.topk`` as in 3;
and which of the two products ``exact_backend="auto"`` (the default) picks on this CPU, with the
calibration's own timings. One thread for torch, FAISS and numpy's BLAS (a worker's model thread
on 2 cores). Prints µs per query and the ratios. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamrec.indexer import ItemIndex
from streamrec.indexer.faiss_index import FLAT_BLAS_MIN_QUERIES, PRODUCTS, exact_product, time_products
from streamrec.streams.tuning import set_compute_threads


def us_per_query(search: Callable[[], object], nq: int, seconds: float = 0.5) -> float:
    search()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        search()
        n += 1
    return (time.perf_counter() - t0) / n / nq * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=12_101)
    ap.add_argument("--dim", type=int, default=257)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--batches", default="1,2,4,8,12,16,32,50,80,256")
    args = ap.parse_args()
    set_compute_threads(1)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((args.items, args.dim)).astype(np.float32)
    bare = faiss.IndexFlatIP(args.dim)
    bare.add(vecs)
    ids = [f"i{j}" for j in range(args.items)]
    by = {}
    for backend in ("faiss", "torch", "numpy"):
        by[backend] = ItemIndex(args.dim, kind="flat", device="cpu", exact_backend=backend)
        by[backend].rebuild(ids, vecs, background=False)
    default = faiss.cvar.distance_compute_blas_threshold
    print(
        f"\n{args.items:,} items, {args.dim} dims, top-{args.k}, one thread; "
        f"faiss {faiss.__version__}, torch {torch.__version__}"
    )
    print(
        f"| queries per search | µs/query, bare faiss (threshold {default:,}) "
        f"| µs/query, ItemIndex faiss (BLAS from {FLAT_BLAS_MIN_QUERIES} queries) "
        "| µs/query, ItemIndex torch | µs/query, ItemIndex numpy | torch vs ItemIndex faiss | numpy vs torch |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rows = {}
    for nq in (int(x) for x in args.batches.split(",")):
        q = rng.standard_normal((nq, args.dim)).astype(np.float32)
        faiss.cvar.distance_compute_blas_threshold = default
        a = us_per_query(lambda q=q: bare.search(q, args.k), nq)
        b = us_per_query(lambda q=q: by["faiss"].search(q, args.k), nq)
        c = us_per_query(lambda q=q: by["torch"].search(q, args.k), nq)
        d = us_per_query(lambda q=q: by["numpy"].search(q, args.k), nq)
        print(f"| {nq} | {a:,.0f} | {b:,.0f} | {c:,.0f} | {d:,.0f} | {b / c:.2f}x faster | {c / d:.2f}x faster |")
        rows[nq] = {
            "bare_faiss_us": round(a),
            "itemindex_faiss_us": round(b),
            "itemindex_torch_us": round(c),
            "itemindex_numpy_us": round(d),
        }
    faiss.cvar.distance_compute_blas_threshold = default
    auto = exact_product("auto")
    calib = time_products()  # a fresh calibration, as "auto" measures it
    print(
        f"\nexact_backend=auto picks {auto} on this CPU; a calibration now: "
        + ", ".join(f"{p} {calib[p] * 1e3:.2f} ms" for p in PRODUCTS)
    )
    print(
        json.dumps(
            {
                "faiss_default_threshold": default,
                "blas_from_queries": FLAT_BLAS_MIN_QUERIES,
                "auto_product": auto,
                "calibration_ms": {p: round(calib[p] * 1e3, 3) for p in PRODUCTS},
                "per_query_us": rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

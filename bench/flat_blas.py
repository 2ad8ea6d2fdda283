"""FAISS exact search per query at a worker's batch sizes: faiss's own BLAS switch against streamrec's.

Usage (from the repo root; ~30 s, one thread)::

    .venv/bin/python bench/flat_blas.py [--items 12101] [--dim 257] [--k 30]

``IndexFlatIP`` over random vectors (Beauty's catalog size and the default 257-d served vectors),
top-``k`` for batches of 1..256 queries, once with faiss's default
``distance_compute_blas_threshold`` and once with the value ``ItemIndex`` sets for that batch
(``streamrec.indexer.faiss_index.blas_threshold``: one BLAS product from ``FLAT_BLAS_MIN_QUERIES``
queries on, a scan query by query below). Prints µs per query and the ratio, in the same run.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamrec.indexer.faiss_index import FLAT_BLAS_MIN_QUERIES, blas_threshold


def us_per_query(index: faiss.Index, q: np.ndarray, k: int, seconds: float = 0.5) -> float:
    index.search(q, k)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        index.search(q, k)
        n += 1
    return (time.perf_counter() - t0) / n / len(q) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=12_101)
    ap.add_argument("--dim", type=int, default=257)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--batches", default="1,2,4,8,12,16,32,50,256")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    index = faiss.IndexFlatIP(args.dim)
    index.add(rng.standard_normal((args.items, args.dim)).astype(np.float32))
    default = faiss.cvar.distance_compute_blas_threshold
    print(f"\n{args.items:,} items, {args.dim} dims, top-{args.k}, one thread; faiss {faiss.__version__}")
    print(
        f"| queries per search | µs/query, faiss default (threshold {default:,}) "
        f"| µs/query, streamrec (BLAS from {FLAT_BLAS_MIN_QUERIES} queries) | speed-up |"
    )
    print("|---:|---:|---:|---:|")
    rows = {}
    for nq in (int(x) for x in args.batches.split(",")):
        q = rng.standard_normal((nq, args.dim)).astype(np.float32)
        faiss.cvar.distance_compute_blas_threshold = default
        a = us_per_query(index, q, args.k)
        faiss.cvar.distance_compute_blas_threshold = blas_threshold("flat", nq)
        b = us_per_query(index, q, args.k)
        print(f"| {nq} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x |")
        rows[nq] = {"default_us": round(a), "streamrec_us": round(b)}
    faiss.cvar.distance_compute_blas_threshold = default
    print(
        json.dumps(
            {
                "faiss_default_threshold": default,
                "streamrec_blas_from_queries": FLAT_BLAS_MIN_QUERIES,
                "per_query_us": rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Retrieval benchmark: exact vs approximate ItemIndex at 10k / 100k / 1M items.

Measures, through the public ``ItemIndex`` API (id mapping and filtering included): build time,
memory per item (RSS growth while building), queries/s at batch 1 and 256, and recall@10 of each
approximate configuration against the exact index built in the same run. Prints one table; the
last line is one JSON object for the largest size.

Synthetic data (default) is *not* isotropic noise: item vectors are a Gaussian mixture whose
centres lie in a low-rank (16-d) subspace, with Zipf-distributed cluster sizes (popular
categories) and log-normal norms (inner-product scores grow with popularity, as in trained
two-tower / SASRec embeddings). User vectors mix one to three cluster centres plus noise.
``--model DIR`` uses real item vectors from ``streamrec.model.inference.Recommender`` instead.

    .venv/bin/python bench/retrieval.py                  # 10k, 100k, 1M (about 5 minutes here)
    .venv/bin/python bench/retrieval.py --max-items 100000   # quick run
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamrec.indexer import ItemIndex

TARGET_RECALL = 0.95


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def synthetic_items(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(items (n, dim), cluster centres): low-rank Gaussian mixture, Zipf sizes, log-normal norms."""
    rng = np.random.default_rng(seed)
    n_clusters = max(16, int(np.sqrt(n)))
    rank = min(16, dim)
    basis = rng.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(rank)
    centres = rng.standard_normal((n_clusters, rank)).astype(np.float32) @ basis
    popularity = rng.zipf(1.3, n_clusters).clip(1, 1000).astype(np.float64)
    labels = rng.choice(n_clusters, n, p=popularity / popularity.sum())
    items = np.empty((n, dim), np.float32)
    for start in range(0, n, 200_000):  # chunked to bound temporary memory
        lab = labels[start : start + 200_000]
        noise = 0.35 * rng.standard_normal((lab.size, dim)).astype(np.float32)
        norms = np.exp(0.25 * rng.standard_normal((lab.size, 1))).astype(np.float32)
        items[start : start + lab.size] = (centres[lab] + noise) * norms
    return items, centres


def synthetic_users(centres: np.ndarray, nq: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    dim = centres.shape[1]
    q = np.zeros((nq, dim), np.float32)
    for i in range(nq):
        tastes = rng.integers(0, len(centres), rng.integers(1, 4))
        q[i] = centres[tastes].mean(0)
    q += 0.3 * rng.standard_normal((nq, dim)).astype(np.float32)
    return q


def model_vectors(model_dir: str) -> np.ndarray | None:
    try:
        from streamrec.model.inference import Recommender  # type: ignore[import-not-found]
    except ImportError:
        print(f"# --model {model_dir}: streamrec.model.inference is not available; using synthetic")
        return None
    got = Recommender.load(model_dir, device="cpu").item_vectors()  # (ids, vectors) or vectors
    vecs = np.asarray(got[1] if isinstance(got, tuple) else got, dtype=np.float32)
    print(f"# real item vectors from {model_dir}: {vecs.shape}")
    return vecs


def qps(ix: ItemIndex, queries: np.ndarray, batch: int, k: int = 10) -> float:
    """Queries/s. Batch 1 runs FAISS on one OpenMP thread (serving: one thread per request;
    OpenMP barriers on a loaded 2-core box cost milliseconds); batches use all threads."""
    threads = faiss.omp_get_max_threads()
    if batch == 1:
        faiss.omp_set_num_threads(1)
    try:
        ix.search(queries[: min(batch, len(queries))], k)  # warm-up
        t = time.perf_counter()
        for start in range(0, len(queries), batch):
            ix.search(queries[start : start + batch], k)
        return len(queries) / (time.perf_counter() - t)
    finally:
        faiss.omp_set_num_threads(threads)


def top_ids(ix: ItemIndex, queries: np.ndarray, k: int = 10) -> list[list[str]]:
    out: list[list[str]] = []
    for start in range(0, len(queries), 256):
        out += [[i for i, _ in row] for row in ix.search(queries[start : start + 256], k)]
    return out


def recall(got: list[list[str]], want: list[list[str]]) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)]))


def build(kind: str, ids: list[str], vecs: np.ndarray, **params) -> tuple[ItemIndex, float, float]:
    gc.collect()
    before = rss_bytes()
    t = time.perf_counter()
    ix = ItemIndex(vecs.shape[1], kind=kind, device="cpu", **params)
    ix.rebuild(ids, vecs, background=False)
    seconds = time.perf_counter() - t
    gc.collect()
    return ix, seconds, (rss_bytes() - before) / len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--max-items", type=int, default=None, help="cap the sizes (quick run)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--model", default=None, help="model checkpoint dir: use its item vectors")
    ap.add_argument("--queries", type=int, default=1000, help="queries for recall and batch-256 q/s")
    ap.add_argument("--batch1-queries", type=int, default=300, help="approximate, batch 1")
    ap.add_argument("--exact-batch1-queries", type=int, default=40, help="exact, batch 1 (slow)")
    ap.add_argument(
        "--hnsw-builds",
        default=None,
        help="HNSW M:efConstruction pairs to build, e.g. 32:200,16:200 (default: the library defaults)",
    )
    ap.add_argument("--hnsw-ef", default="32,64,128,256", help="efSearch values to sweep")
    ap.add_argument(
        "--hnsw-storage",
        default="flat",
        help="HNSW vector storages to build, e.g. flat,fp16,sq8 (float32, 16-bit, 8-bit scalar quantised)",
    )
    ap.add_argument("--no-ivf", action="store_true", help="skip the IVF configurations")
    ap.add_argument("--ivf-nprobe", default="8,16,32,64", help="nprobe values to sweep")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    defaults = ItemIndex(args.dim, device="cpu")
    real = model_vectors(args.model) if args.model else None
    sizes = [int(s) for s in args.sizes.split(",")]
    if real is not None:
        sizes = [min(s, len(real)) for s in sizes]
        args.dim = real.shape[1]
    if args.max_items:
        sizes = [min(s, args.max_items) for s in sizes]
    sizes = sorted(set(sizes))
    rows: list[dict] = []
    print(
        f"# dim={args.dim} seed={args.seed} queries={args.queries} data="
        f"{'model' if real is not None else 'synthetic low-rank Gaussian mixture'}"
    )
    for n in sizes:
        if real is not None:
            rng = np.random.default_rng(args.seed)
            vecs = real[rng.permutation(len(real))[:n]]
            queries = (
                vecs[rng.integers(0, n, args.queries)] + 0.3 * rng.standard_normal((args.queries, args.dim))
            ).astype(np.float32)
        else:
            vecs, centres = synthetic_items(n, args.dim, args.seed)
            queries = synthetic_users(centres, args.queries, args.seed)
        ids = [f"item-{i}" for i in range(n)]

        flat, secs, mem = build("flat", ids, vecs)
        truth = top_ids(flat, queries)
        base = {
            "items": n,
            "kind": "flat",
            "params": "exact",
            "build_s": secs,
            "bytes_per_item": mem,
            "qps_b1": qps(flat, queries[: args.exact_batch1_queries], 1),
            "qps_b256": qps(flat, queries, 256),
            "recall_at_10": 1.0,
        }
        rows.append(base)
        print(_fmt(base, base), flush=True)
        del flat
        hnsw_builds = (
            [tuple(int(v) for v in b.split(":")) for b in args.hnsw_builds.split(",")]
            if args.hnsw_builds
            else [(defaults.hnsw_m, defaults.hnsw_ef_construction)]
        )
        configs = [
            ("hnsw", "hnsw_ef_search", args.hnsw_ef, dict(hnsw_m=m, hnsw_ef_construction=c, hnsw_storage=st))
            for m, c in hnsw_builds
            for st in args.hnsw_storage.split(",")
        ] + ([] if args.no_ivf else [("ivf", "ivf_nprobe", args.ivf_nprobe, {})])
        for kind, key, values, build_params in configs:
            ix, secs, mem = build(kind, ids, vecs, **build_params)
            same_build = all(getattr(ix, p) == getattr(defaults, p) for p in build_params)
            for v in [int(x) for x in values.split(",")]:
                setattr(ix, key, v)
                row = {
                    "items": n,
                    "kind": kind,
                    "params": _params(ix, kind),
                    "build_s": secs,
                    "bytes_per_item": mem,
                    "recall_at_10": recall(top_ids(ix, queries), truth),
                    "qps_b1": qps(ix, queries[: args.batch1_queries], 1),
                    "qps_b256": qps(ix, queries, 256),
                    "default": same_build and v == getattr(defaults, key),
                }
                rows.append(row)
                print(_fmt(row, base), flush=True)
            del ix
            gc.collect()

    n = sizes[-1]
    base = next(r for r in rows if r["items"] == n and r["kind"] == "flat")
    auto = "flat" if n <= defaults.exact_max else "hnsw"
    pick = next(r for r in rows if r["items"] == n and r["kind"] == auto and r.get("default", True))
    print(
        f"# default config at {n} items: kind={pick['kind']} {pick['params']}; "
        f"target recall@10 >= {TARGET_RECALL} at >= 10x exact q/s"
    )
    print(
        json.dumps(
            {
                "items": n,
                "kind": pick["kind"],
                "params": pick["params"],
                "recall_at_10": round(pick["recall_at_10"], 4),
                "speedup_vs_exact": round(pick["qps_b256"] / base["qps_b256"], 1),
                "speedup_vs_exact_batch_1": round(pick["qps_b1"] / base["qps_b1"], 1),
                "qps_batch_256": round(pick["qps_b256"], 1),
                "qps_batch_1": round(pick["qps_b1"], 1),
            }
        )
    )


def _params(ix: ItemIndex, kind: str) -> str:
    if kind == "hnsw":
        storage = "" if ix.hnsw_storage == "flat" else f" {ix.hnsw_storage}"
        return f"M={ix.hnsw_m} efC={ix.hnsw_ef_construction} ef={ix.hnsw_ef_search}{storage}"
    return f"nlist={ix._state.index.nlist} nprobe={ix.ivf_nprobe}"


_HEADER_DONE = False


def _fmt(r: dict, base: dict) -> str:
    global _HEADER_DONE
    line = (
        f"| {r['items']:>9,} | {r['kind']:<4} | {r['params']:<24} | {r['build_s']:>8.1f} | "
        f"{r['bytes_per_item']:>9.0f} | {r['qps_b1']:>9.0f} | {r['qps_b256']:>10.0f} | "
        f"{r['qps_b256'] / base['qps_b256']:>7.1f}x | {r['recall_at_10']:>9.3f} |"
    )
    if not _HEADER_DONE:
        _HEADER_DONE = True
        line = (
            "| items     | kind | params                   | build s  | bytes/item | q/s b=1   "
            "| q/s b=256  | vs exact | recall@10 |\n"
            "|----------:|------|--------------------------|---------:|-----------:|----------:"
            "|-----------:|---------:|----------:|\n"
        ) + line
    return line


if __name__ == "__main__":
    main()

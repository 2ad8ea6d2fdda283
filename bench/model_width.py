"""What a wider model costs at inference: ``encode_users`` and the exact search, d_model 64 vs others.

Usage (from the repo root; ~1 min on 2 CPU cores)::

    .venv/bin/python bench/model_width.py [--widths 64,128] [--rounds 3] [--cosine-scales 0,16]

Builds the default model (``bench/quality.py``'s MODEL_CONFIG, the text channel included) at each
``d_model`` over Beauty's catalog and titles, untrained (throughput does not depend on the weights),
and measures in the same run, alternating the widths ``--rounds`` times: ``Recommender.encode_users``
sequences/s at batch 256 (Beauty histories) and exact FAISS top-10 queries/s at batch 256 over the
catalog's served vectors (one thread, BLAS as a worker's ``ItemIndex`` uses it at that batch size).
The ratios to the first row are what compare: the first width with the serving pass as it was
before the last block learned to compute only the newest position
(``SASRec.encode(last_only=True)``), every position through every block.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from quality import MODEL_CONFIG, data_dir, data_missing, read_data, throughput  # noqa: E402

from streamrec.model.checkpoint import save_checkpoint  # noqa: E402
from streamrec.model.data import vocab_from  # noqa: E402
from streamrec.model.inference import Recommender  # noqa: E402
from streamrec.model.sasrec import SASRec, SASRecConfig  # noqa: E402
from streamrec.model.train import fit_catalog_basis, item_text_matrix  # noqa: E402


class FullPass(SASRec):
    """The serving pass before ``last_only``: every position through every block, then the last."""

    def encode(self, item_ids, type_ids, table, *, last_only=False):  # type: ignore[no-untyped-def]
        h = super().encode(item_ids, type_ids, table)
        return h[:, -1:] if last_only else h


def search_qps(items: np.ndarray, queries: np.ndarray, seconds: float = 2.0) -> float:
    import faiss

    from streamrec.indexer.faiss_index import blas_threshold

    faiss.omp_set_num_threads(1)
    # as a worker's ItemIndex searches a batch of 256 (BLAS; faiss's own default scans query by query)
    faiss.cvar.distance_compute_blas_threshold = blas_threshold("flat", 256)
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    index.search(queries[:256], 10)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        index.search(queries[n % (len(queries) - 256) :][:256], 10)
        n += 256
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="64,128")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--cosine-scales",
        default="",
        help="comma list of SASRecConfig.cosine_scale values: one row per width and scale (default: the default's)",
    )
    ap.add_argument("--text-cache", default=str(REPO / ".cache" / "streamrec" / "text-cache"))
    args = ap.parse_args()
    d = data_dir()
    if data_missing(d):
        return 2
    torch.manual_seed(0)
    data, text = read_data(d)
    vocab = vocab_from(data)
    titles = torch.cat([torch.zeros(1, 384), item_text_matrix(vocab, text, cache_file=args.text_cache)])
    hist = [[(i, "view") for i in s[:-1]] for s in data.items]
    recs: dict[str, Recommender] = {}
    tmp = tempfile.TemporaryDirectory()
    scales: list[float | None] = [float(x) for x in args.cosine_scales.split(",")] if args.cosine_scales else [None]
    for w in (int(x) for x in args.widths.split(",")):
        for c in scales:
            extra = {} if c is None else {"cosine_scale": c}
            model = SASRec(SASRecConfig(**(MODEL_CONFIG | {"d_model": w} | extra), n_items=len(vocab)))
            model.text_emb = titles.clone()
            fit_catalog_basis(model, vocab, text)
            name = str(w) if c is None else f"{w}, cosine scale {c:g}"
            save_checkpoint(model, vocab, Path(tmp.name) / name)
            if not recs:
                before = Recommender.load(Path(tmp.name) / name, device="cpu")
                before.model.__class__ = FullPass  # same weights, the old pass
                recs[f"{name}, full pass (before)"] = before
            recs[name] = Recommender.load(Path(tmp.name) / name, device="cpu")
    seq: dict[str, list[float]] = {w: [] for w in recs}
    qps: dict[str, list[float]] = {w: [] for w in recs}
    for _ in range(args.rounds):
        for w, rec in recs.items():
            seq[w].append(throughput(rec, hist, 256))
            _ids, vecs = rec.item_vectors()
            users = np.asarray(rec.encode_users(hist[:4096]), dtype=np.float32)
            qps[w].append(search_qps(np.ascontiguousarray(vecs, dtype=np.float32), users))
    base = next(iter(recs))
    print(
        f"\n| d_model | vector dims | encode_users seq/s, batch 256 | vs {base} "
        f"| exact search q/s, batch 256 | vs {base} |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    out = {}
    for w, rec in recs.items():
        s, q = float(np.median(seq[w])), float(np.median(qps[w]))
        sb, qb = float(np.median(seq[base])), float(np.median(qps[base]))
        print(f"| {w} | {rec.dim} | {s:,.0f} | {sb / s:.2f}x cost | {q:,.0f} | {qb / q:.2f}x cost |")
        out[w] = {"dim": rec.dim, "seq_per_s_batch_256": round(s), "search_q_per_s_batch_256": round(q)}
    print(json.dumps({"medians_of_rounds": args.rounds, "widths": out}))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fixtures for the indexer contract tests: small clustered data and one factory per index kind."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.indexer import ExactIndex, ItemIndex

DIM = 16
N = 2000

# Small, fast parameters that still exercise the approximate code paths.
PARAMS = {
    "flat": dict(kind="flat"),
    "hnsw": dict(kind="hnsw", hnsw_m=16, hnsw_ef_construction=40, hnsw_ef_search=64),
    "ivf": dict(kind="ivf", ivf_nlist=32, ivf_nprobe=8),
}
FAISS_KINDS = list(PARAMS)
ALL_KINDS = ["exact", *FAISS_KINDS]


def clustered(n: int, dim: int = DIM, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """A Gaussian mixture with varied norms: closer to learned item vectors than pure noise."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x * np.exp(0.2 * rng.standard_normal((n, 1)))).astype(np.float32)


def make_index(kind: str, dim: int = DIM):
    if kind == "exact":
        return ExactIndex(dim)
    return ItemIndex(dim, device="cpu", **PARAMS[kind])


@pytest.fixture(scope="session")
def data():
    ids = [f"sku-{i}" for i in range(N)]
    return ids, clustered(N), clustered(50, seed=1)


@pytest.fixture(params=ALL_KINDS)
def any_index(request, data):
    ids, vecs, _ = data
    ix = make_index(request.param)
    ix.upsert(ids, vecs)
    return ix


@pytest.fixture(params=FAISS_KINDS)
def faiss_kind(request):
    return request.param

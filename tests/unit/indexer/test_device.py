"""GPU path selection, with only the capability check faked (no GPU needed)."""

from __future__ import annotations

import pytest

from streamrec.indexer import ItemIndex, faiss_index
from streamrec.indexer.faiss_index import choose_kind, placement, select_device


@pytest.fixture
def gpu(monkeypatch):
    def fake(available: bool):
        monkeypatch.setattr(faiss_index, "_gpu_available", lambda: available)

    return fake


def test_gpu_present(gpu):
    gpu(True)
    assert select_device("auto") == "cuda" and select_device("cuda") == "cuda"
    assert select_device("cpu") == "cpu"
    ix = ItemIndex(8)  # empty: no GPU resources are created yet
    assert ix.device == "cuda" and ix.kind == "flat"
    assert ItemIndex(8, device="cpu").device == "cpu"
    # auto: flat while small, then IVF (FAISS has GPU IVF, not GPU HNSW)
    assert choose_kind("auto", 10, 100, "cuda") == "flat"
    assert choose_kind("auto", 1000, 100, "cuda") == "ivf"
    assert placement("ivf", "cuda") == "cuda" and placement("hnsw", "cuda") == "cpu"
    assert ItemIndex(8, kind="hnsw").device == "cpu"


def test_gpu_absent(gpu):
    gpu(False)
    assert select_device("auto") == "cpu"
    assert ItemIndex(8).device == "cpu"
    assert choose_kind("auto", 1000, 100, "cpu") == "hnsw"
    with pytest.raises(ValueError, match="cuda"):
        ItemIndex(8, device="cuda")
    with pytest.raises(ValueError, match="device"):
        ItemIndex(8, device="tpu")


def test_real_capability_check_runs():
    assert isinstance(faiss_index._gpu_available(), bool)

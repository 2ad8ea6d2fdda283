"""Save/load round trip and clear errors for bad checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from streamrec.errors import CheckpointError
from streamrec.model.checkpoint import load_checkpoint
from streamrec.model.inference import Recommender


def test_layout(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "item_map.json",
        "text_emb.safetensors",
        "metrics.json",
        "train_settings.json",
    } <= names
    item_map = json.loads((tiny_checkpoint / "item_map.json").read_text())
    assert sorted(item_map.values()) == list(range(1, len(item_map) + 1))


def test_round_trip_identical_scores(tiny_checkpoint, tmp_path):
    from streamrec.model.checkpoint import save_checkpoint

    model, vocab = load_checkpoint(tiny_checkpoint)
    copy = save_checkpoint(model, vocab, tmp_path / "copy")
    a, b = Recommender.load(tiny_checkpoint, device="cpu"), Recommender.load(copy, device="cpu")
    hist = [[("i1", "view"), ("i4", "view")], [("i2", "purchase")]]
    ids, vecs = a.item_vectors()
    np.testing.assert_array_equal(a.score(a.encode_users(hist), ids), b.score(b.encode_users(hist), ids))
    np.testing.assert_array_equal(vecs, b.item_vectors()[1])


def test_from_pretrained_reads_it(tiny_checkpoint):
    from streamrec.model.sasrec import SASRec

    m = SASRec.from_pretrained(str(tiny_checkpoint), local_files_only=True)
    ref, _ = load_checkpoint(tiny_checkpoint)
    assert np.array_equal(m.id_emb.weight.detach().numpy(), ref.id_emb.weight.detach().numpy())


def test_missing_dir(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Recommender.load(tmp_path / "nope", device="cpu")


@pytest.mark.parametrize("victim", ["model.safetensors", "item_map.json", "text_emb.safetensors"])
def test_missing_file(tiny_checkpoint, tmp_path, victim):
    d = shutil.copytree(tiny_checkpoint, tmp_path / "c")
    (d / victim).unlink()
    with pytest.raises(CheckpointError, match=victim):
        Recommender.load(d, device="cpu")


def test_corrupt_weights(tiny_checkpoint, tmp_path):
    d = shutil.copytree(tiny_checkpoint, tmp_path / "c")
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        Recommender.load(d, device="cpu")


def test_incompatible_config(tiny_checkpoint, tmp_path):
    d = shutil.copytree(tiny_checkpoint, tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="incompatible"):
        Recommender.load(d, device="cpu")
    cfg["model_type"] = "streamrec-sasrec"
    cfg["d_model"] = 32
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        Recommender.load(d, device="cpu")
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        Recommender.load(d, device="cpu")

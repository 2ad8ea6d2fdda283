"""Save / load round trips for every kind; a corrupt or missing file means a rebuild, not a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamrec.errors import CheckpointError
from streamrec.indexer import ItemIndex, load_or_rebuild, load_saved

from .conftest import DIM, FAISS_KINDS, PARAMS, make_index


def _mutated(kind, data):
    ids, vecs, _ = data
    ix = make_index(kind)
    ix.rebuild(ids, vecs, background=False)
    ix.remove(ids[:5])
    ix.set_in_stock(ids[5:50], False)
    ix.upsert([*ids[50:60], "new-1"], np.vstack([vecs[50:60] * -1, vecs[:1] * 3]))
    return ix


@pytest.mark.parametrize("kind", FAISS_KINDS)
def test_save_load_round_trip(kind, data, tmp_path):
    ids, vecs, queries = data
    ix = _mutated(kind, data)
    ix.save(tmp_path / "ix")
    back = ItemIndex.load(tmp_path / "ix", device="cpu", **PARAMS[kind])
    assert back.kind == ix.kind == kind and back.device == "cpu"
    assert len(back) == len(ix) == len(ids) - 5 + 1
    assert "new-1" in back and ids[0] not in back and not back.is_eligible(ids[5])
    ex = [{ids[60]}] * len(queries)
    assert back.search(queries, 10, exclude=ex) == ix.search(queries, 10, exclude=ex)
    back.remove(["new-1"])  # still mutable after load (IVF keeps its direct map)
    back.upsert([ids[0]], vecs[:1])
    assert "new-1" not in back and back.is_eligible(ids[0])
    back.save(tmp_path / "ix")  # overwrite in place
    assert len(ItemIndex.load(tmp_path / "ix")) == len(back)


def test_empty_round_trip(tmp_path):
    ItemIndex(DIM, device="cpu").save(tmp_path)
    back = ItemIndex.load(tmp_path)
    assert len(back) == 0 and back.search(np.ones(DIM), 5) == [[]]


def test_load_rejects_wrong_dim(data, tmp_path):
    make_index("flat").save(tmp_path)
    with pytest.raises(CheckpointError, match="dim"):
        ItemIndex.load(tmp_path, dim=DIM + 1)


@pytest.mark.parametrize(
    "damage",
    [
        "flip:index.faiss",
        "trunc:index.faiss",
        "flip:state.json",
        "drop:index.faiss",
        "drop:manifest.json",
        "edit:manifest.json",
        "nodir",
    ],
)
def test_corrupt_checkpoint_rebuilds(damage, data, tmp_path):
    ids, vecs, queries = data
    good = make_index("hnsw")
    good.rebuild(ids[:300], vecs[:300], background=False)
    good.save(tmp_path / "ix")
    what, _, name = damage.partition(":")
    target = tmp_path / "ix" / name
    if what == "flip":
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif what == "trunc":
        target.write_bytes(target.read_bytes()[:100])
    elif what == "drop":
        target.unlink()
    elif what == "edit":
        m = json.loads(target.read_text())
        m["files"]["state.json"]["sha256"] = "0" * 64
        target.write_text(json.dumps(m))
    directory = tmp_path / ("missing" if what == "nodir" else "ix")
    with pytest.raises(CheckpointError):
        ItemIndex.load(directory)
    calls = []

    def catalog():
        calls.append(1)
        return ids[:300], vecs[:300]

    ix = load_or_rebuild(directory, catalog, device="cpu", **PARAMS["hnsw"])
    assert calls == [1] and len(ix) == 300 and ix.kind == "hnsw"
    assert [len(r) for r in ix.search(queries[:3], 10)] == [10, 10, 10]
    again = load_or_rebuild(directory, catalog)  # the rebuilt index was saved back
    assert calls == [1] and len(again) == 300


@pytest.mark.parametrize("storage", ["fp16", "sq8"])
def test_quantised_hnsw_round_trip_holds_one_copy(storage, data, tmp_path):
    ids, vecs, queries = data
    ix = ItemIndex(DIM, device="cpu", hnsw_storage=storage, **PARAMS["hnsw"])
    ix.rebuild(ids, vecs, background=False)
    assert ix.stored_as() == storage and ix._state.vecs is None  # FAISS holds the only copy
    got, found = ix.vectors([ids[3], "nope"])
    assert found.tolist() == [True, False] and not got[1].any()
    np.testing.assert_allclose(got[0], vecs[3], atol=0.05 * np.abs(vecs).max())
    before = ix._state.n_slots
    ix.upsert(ids[:100], ix.vectors(ids[:100])[0])  # the stored (rounded) values
    ix.upsert(ids[100:200], vecs[100:200])  # the same vectors again: nothing to re-add
    assert ix._state.n_slots == before and not ix.rebuilding()
    ix.save(tmp_path / "ix")
    back = ItemIndex.load(tmp_path / "ix", device="cpu", hnsw_storage=storage, **PARAMS["hnsw"])
    assert back.stored_as() == storage and len(back) == len(ids)
    assert back.search(queries, 10) == ix.search(queries, 10)


def test_unsaved_tracks_real_changes(data, tmp_path):
    ids, vecs, _ = data
    ix = make_index("hnsw")
    ix.rebuild(ids[:300], vecs[:300], background=False)
    assert ix.unsaved()
    ix.save(tmp_path / "ix")
    assert not ix.unsaved()
    ix.upsert(ids[:50], vecs[:50])  # unchanged vectors, already in stock
    ix.set_in_stock(ids[:5], True)
    assert not ix.unsaved()
    ix.set_in_stock(ids[:5], False)
    assert ix.unsaved()
    back = ItemIndex.load(tmp_path / "ix", device="cpu", **PARAMS["hnsw"])
    assert not back.unsaved()
    back.remove([ids[0]])
    assert back.unsaved()


def test_load_saved_matches_meta_kind_and_storage(data, tmp_path):
    ids, vecs, _ = data
    ix = ItemIndex(DIM, device="cpu", hnsw_storage="fp16", **PARAMS["hnsw"])
    ix.rebuild(ids[:300], vecs[:300], background=False)
    ix.save(tmp_path / "ix", meta={"model_version": "v1", "dim": DIM})
    opts = dict(device="cpu", hnsw_m=16, hnsw_storage="fp16")
    good, why = load_saved(tmp_path / "ix", meta={"model_version": "v1", "dim": DIM}, **opts)
    assert good is not None and why == "ok" and len(good) == 300 and good.kind == "hnsw"
    for meta, options, reason in [
        ({"model_version": "v2", "dim": DIM}, opts, "model_version"),  # another model version
        ({"model_version": "v1"}, {**opts, "kind": "flat"}, "kind=hnsw"),  # settings force a kind
        ({"model_version": "v1"}, {**opts, "hnsw_storage": "flat"}, "storage"),  # other storage
    ]:
        index, why = load_saved(tmp_path / "ix", meta=meta, **options)
        assert index is None and reason in why
    index, why = load_saved(tmp_path / "missing", meta={}, device="cpu")
    assert index is None and "missing" in why
    index, why = load_saved(tmp_path / "ix", meta={"model_version": "v1"}, dim=DIM + 1, device="cpu")
    assert index is None and "dim" in why

"""The Recommender interface the stream workers use."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.model.inference import Recommender


@pytest.fixture
def rec(tiny_checkpoint) -> Recommender:
    return Recommender.load(tiny_checkpoint, device="cpu", version="v-test")


def test_basics(rec):
    assert rec.version == "v-test"
    ids, vecs = rec.item_vectors()
    assert len(ids) == 24 and vecs.shape == (24, rec.dim) and vecs.dtype == np.float32
    u = rec.encode_users([[("i1", "view"), ("i4", "add_to_cart")], [], [("nope", "view")]])
    assert u.shape == (3, rec.dim) and u.dtype == np.float32
    assert np.all(u[1] == 0) and np.all(u[2] == 0)  # empty / all-unknown history
    s = rec.score(u, ids[:5])
    np.testing.assert_allclose(s, u @ vecs[:5].T, rtol=1e-5, atol=1e-6)


def test_default_name_and_device(tiny_checkpoint):
    r = Recommender.load(tiny_checkpoint)  # device="auto"
    assert r.version == tiny_checkpoint.name


def test_history_truncated_to_max_len(rec):
    long = [(f"i{1 + k % 24}", "view") for k in range(40)]
    a = rec.encode_users([long])
    b = rec.encode_users([long[-rec.model.config.max_len :]])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_add_items_known_unknown_and_no_text(rec):
    known_ids, before = rec.item_vectors()
    vecs = rec.add_items(
        [("i2", "ignored new title"), ("new-a", "red lipstick shade 99"), ("new-b", None), ("new-c", "   ")]
    )
    assert vecs.shape == (4, rec.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(vecs[0], before[known_ids.index("i2")], atol=1e-6)  # known: learned + cached text
    default = rec.model.default_vector().numpy()
    np.testing.assert_allclose(vecs[2], default, atol=1e-6)  # no text, no history
    np.testing.assert_allclose(vecs[3], default, atol=1e-6)
    assert not np.allclose(vecs[1], default)  # text-only (zero-shot)
    ids, after = rec.item_vectors()
    assert ids[-3:] == ["new-a", "new-b", "new-c"] and after.shape == (27, rec.dim)
    np.testing.assert_allclose(after[:24], before, atol=1e-6)  # old items unchanged
    # added items may now appear in histories
    u1 = rec.encode_users([[("i1", "view"), ("new-a", "view")]])
    u0 = rec.encode_users([[("i1", "view")]])
    assert not np.allclose(u0, u1)
    # adding again is idempotent
    np.testing.assert_allclose(rec.add_items([("new-a", "red lipstick shade 99")]), vecs[1:2], atol=1e-6)


def test_known_item_without_text_gets_text(rec):
    # i5 had no title in training; giving one now changes its vector
    before = rec.add_items([("i5", None)])
    after = rec.add_items([("i5", "green lipstick shade 5")])
    assert not np.allclose(before, after)


def test_score_unknown_ids_and_bad_shape(rec):
    u = rec.encode_users([[("i1", "view")]])
    s = rec.score(u, ["unknown-item"])
    np.testing.assert_allclose(s[0, 0], float(u[0] @ rec.model.default_vector().numpy()), rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        rec.score(np.zeros((1, rec.dim + 1)), ["i1"])


def test_pad_left_matches_a_plain_loop():
    import numpy as np
    import torch

    from streamrec.model.data import pad_left

    def reference(seqs, length):
        out = torch.zeros((len(seqs), length), dtype=torch.long)
        for b, s in enumerate(seqs):
            s = list(s)[-length:] if length > 0 else []
            if s:
                out[b, length - len(s) :] = torch.tensor(s)
        return out

    rng = np.random.default_rng(0)
    for length in (0, 1, 3, 50):
        for _ in range(20):
            seqs = [[int(x) for x in rng.integers(1, 99, size=rng.integers(0, 70))] for _ in range(rng.integers(0, 30))]
            assert torch.equal(pad_left(seqs, length), reference(seqs, length))
    assert pad_left([(1, 2), range(3, 6)], 3).tolist() == [[0, 1, 2], [3, 4, 5]]  # any sequence type


def test_a_cosine_model_serves_unit_items_and_scaled_users(tiny_data, tiny_text, tmp_path):
    """A model trained with ``cosine_scale`` serves what it trained on: every item's model part a
    unit vector (a new item's too, made from its title alone) and a user's the scale times the
    share of the history the model knows; the hybrid gates fitted on top stay finite."""
    from streamrec.model.checkpoint import save_checkpoint
    from streamrec.model.train import TrainSettings, train

    from .conftest import TINY_CONFIG

    res = train(
        tiny_data,
        item_text=tiny_text,
        config=TINY_CONFIG | {"cosine_scale": 8.0},
        settings=TrainSettings(max_epochs=2, device="cpu", progress=False, batch_size=32),
    )
    assert np.isfinite(res.metrics["val"]["ndcg@10"])
    save_checkpoint(res.model, res.vocab, tmp_path / "cos")
    rec = Recommender.load(tmp_path / "cos", device="cpu")
    d = rec.model.config.d_model
    ids, vecs = rec.item_vectors()
    np.testing.assert_allclose(np.linalg.norm(vecs[:, :d], axis=1), 1.0, atol=1e-5)
    new = rec.add_items([("new-a", "red lipstick shade 99")])
    assert np.linalg.norm(new[0, :d]) == pytest.approx(1.0, abs=1e-5)
    known = next(i for i in ids if rec.model.item_count[rec.vocab.row(i)] > 0)
    u = rec.encode_users([[(known, "view")], [(known, "view"), ("new-a", "view")]])
    assert np.linalg.norm(u[0, :d]) == pytest.approx(8.0, rel=1e-4)
    assert np.linalg.norm(u[1, :d]) == pytest.approx(4.0, rel=1e-4)  # one of its two items known
    np.testing.assert_allclose(rec.score(u, ["new-a"])[:, 0], u @ new[0], rtol=1e-4, atol=1e-5)

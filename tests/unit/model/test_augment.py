"""Sequence data augmentation (crop / mask / reorder) in the training batches."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from streamrec.model.augment import Augmenter, parse_ops
from streamrec.model.data import Encoded, training_batches
from streamrec.model.sasrec import MASK_ID, PAD_ID, SASRec, SASRecConfig
from streamrec.model.train import TrainSettings, train

from .conftest import TINY_CONFIG

# Users with disjoint items (user k owns k*100+1 ..), so a batch row names its user.
LENGTHS = [2, 3, 5, 8, 11, 13, 4, 7, 9, 6]
USERS = [[k * 100 + j for j in range(1, n + 1)] for k, n in enumerate(LENGTHS, start=1)]
TRAIN = Encoded(USERS, [[1 + (j % 3) for j in range(len(s))] for s in USERS])  # types 1..3


def _batches(augment: Augmenter | None, seed: int = 3, max_len: int = 12):
    rng = np.random.default_rng(seed)
    return [
        tuple(t.tolist() for t in b)
        for b in training_batches(TRAIN, max_len=max_len, batch_size=3, rng=rng, augment=augment)
    ]


def _rows(batches):
    """(inputs, types, targets) per sequence, padding stripped (left padding: PAD at the start)."""
    out = []
    for xs, ts, ys in batches:
        for x, t, y in zip(xs, ts, ys):
            k = next(i for i, v in enumerate(y) if v != PAD_ID)
            assert all(v == PAD_ID for v in x[:k]) and all(v == 0 for v in t[:k])
            out.append((x[k:], t[k:], y[k:]))
    return out


def _owner(row) -> list[int]:
    return USERS[row[2][0] // 100 - 1]


def test_off_gives_the_same_batches_as_before():
    # Pinned from training_batches before augmentation existed (main at e70fe65), and the rng
    # must be left where it was: "" draws nothing.
    items = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14], [2, 4, 6, 8, 10, 12]]
    rng = np.random.default_rng(7)
    got = [
        tuple(t.tolist() for t in b)
        for b in training_batches(Encoded(items, [[1] * len(s) for s in items]), max_len=4, batch_size=2, rng=rng)
    ]
    assert got == [
        ([[0, 4], [1, 2]], [[0, 1], [1, 1]], [[0, 5], [2, 3]]),
        ([[0, 11, 12, 13], [6, 7, 8, 9]], [[0, 1, 1, 1], [1, 1, 1, 1]], [[0, 12, 13, 14], [7, 8, 9, 10]]),
        ([[4, 6, 8, 10]], [[1, 1, 1, 1]], [[6, 8, 10, 12]]),
    ]
    assert rng.integers(1000) == 833
    assert Augmenter.from_settings(TrainSettings()) is None
    assert _batches(None) == _batches(Augmenter.from_settings(TrainSettings(augment=" ")))


@pytest.mark.parametrize("ops", [("crop",), ("mask",), ("reorder",), ("crop", "mask", "reorder")])
def test_augmented_batches_keep_shapes(ops):
    for xs, ts, ys in _batches(Augmenter(ops, prob=1.0)):
        assert len(xs) == len(ts) == len(ys)
        assert {len(r) for r in xs} == {len(r) for r in ts} == {len(r) for r in ys} and len({len(r) for r in xs}) == 1
        for x, t, y in zip(xs, ts, ys):
            # a real input (or a hidden one) has a type and a target; padding has neither
            assert [v != PAD_ID for v in x] == [v != 0 for v in t] == [v != PAD_ID for v in y]


def test_crop_keeps_consecutive_pairs_of_the_users_items():
    aug = Augmenter(("crop",), prob=1.0, crop=0.6)
    rows = _rows(_batches(aug))
    assert len(rows) == len(USERS)
    shorter = 0
    for x, t, y in rows:
        s = _owner((x, t, y))
        assert set(x) | set(y) <= set(s)
        assert x[1:] == y[:-1]  # inputs and targets come from the same (cropped) sequence
        a = s.index(x[0])
        assert s[a : a + len(x) + 1] == x + y[-1:]  # a contiguous piece of the history
        assert t == TRAIN.types[USERS.index(s)][a : a + len(x)]  # types follow their items
        assert len(x) + 1 == min(len(s), max(2, int(0.6 * len(s))))
        shorter += len(x) + 1 < len(s)
    assert shorter >= 5


def test_reorder_permutes_a_contiguous_piece_of_the_users_items():
    rows = _rows(_batches(Augmenter(("reorder",), prob=1.0, reorder=0.6)))
    moved = 0
    for x, t, y in rows:
        s = _owner((x, t, y))
        seq = x + y[-1:]
        assert x[1:] == y[:-1] and Counter(seq) == Counter(s)  # every target a real item of the user
        diff = [j for j, (u, v) in enumerate(zip(seq, s)) if u != v]
        if diff:
            moved += 1
            assert diff[-1] - diff[0] + 1 <= int(0.6 * len(s))  # only inside the shuffled window
        types = TRAIN.types[USERS.index(s)]
        assert t == [types[s.index(v)] for v in x]  # each item keeps its own type
    assert moved >= 5


def test_mask_hides_inputs_only():
    plain = _rows(_batches(None))
    masked = _rows(_batches(Augmenter(("mask",), prob=1.0, mask=0.3)))
    n_hidden = 0
    for (x0, t0, y0), (x, t, y) in zip(sorted(plain, key=_owner), sorted(masked, key=_owner)):
        assert y == y0 and t == t0  # targets (and types) intact
        hidden = [j for j, v in enumerate(x) if v == MASK_ID]
        assert len(hidden) == int(0.3 * len(x0))
        assert all(x[j] == x0[j] for j in range(len(x)) if j not in hidden)
        n_hidden += len(hidden)
    assert n_hidden > 0


def test_probability_and_repeatability():
    aug = Augmenter(("crop", "mask", "reorder"), prob=0.5)
    assert _batches(aug, seed=5) == _batches(aug, seed=5)
    assert _batches(aug, seed=5) != _batches(aug, seed=6)
    plain = sorted(_rows(_batches(None)), key=_owner)
    assert sorted(_rows(_batches(Augmenter(("crop", "reorder", "mask"), prob=0.0))), key=_owner) == plain
    changed = sum(a != b for a, b in zip(plain, sorted(_rows(_batches(aug)), key=_owner)))
    assert 0 < changed < len(USERS)


def test_a_hidden_item_carries_neither_id_nor_text():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=6, d_model=8, n_heads=1, d_ff=16, max_len=5, hybrid=False)).eval()
    model.text_emb = torch.randn(7, model.config.text_dim)
    model.text_emb[0] = 0
    with torch.no_grad():
        model.id_emb.weight[6] = 0  # item 6: no trained id ...
        model.text_emb[6] = 0  # ... and no title
        table = model.item_table()
        h = lambda seq: model.encode(torch.tensor([seq]), None, table)[0]  # noqa: E731
        hidden = h([1, MASK_ID, 3])
        assert torch.allclose(hidden, h([1, 6, 3]), atol=1e-6)  # = an item with no id and no text
        assert not torch.allclose(hidden, h([1, 2, 3]), atol=1e-4)
        assert not torch.allclose(hidden[-1], h([1, PAD_ID, 3])[-1], atol=1e-4)  # a real position, not padding
        _, loss = model(torch.tensor([[1, MASK_ID, 3]]), None, torch.tensor([[2, 3, 4]]))
        assert torch.isfinite(loss)


def test_settings_validated_and_recorded(tiny_data):
    with pytest.raises(ValueError, match="'flip'"):
        Augmenter.from_settings(TrainSettings(augment="crop,flip"))
    with pytest.raises(ValueError, match=r"augment_prob 1\.5"):
        Augmenter.from_settings(TrainSettings(augment="mask", augment_prob=1.5))
    assert parse_ops("Crop, reorder,crop") == ("crop", "reorder")
    res = train(
        tiny_data,
        config=TINY_CONFIG | dict(use_text=False, hybrid=False),
        settings=TrainSettings(max_epochs=1, device="cpu", progress=False, augment="crop,mask", augment_mask=0.5),
    )
    assert res.settings["augment"] == "crop,mask" and res.settings["augment_mask"] == 0.5
    assert np.isfinite(res.metrics["history"][0]["loss"])


def test_contrastive_views_come_from_the_same_user():
    from streamrec.model.data import contrastive_batches

    aug = Augmenter(("crop", "mask", "reorder"), prob=1.0)
    rng = np.random.default_rng(1)
    n_rows = 0
    for (x, _t, y), ((x1, t1), (x2, t2)) in contrastive_batches(TRAIN, max_len=12, batch_size=3, rng=rng, views=aug):
        assert x1.shape[0] == x2.shape[0] == x.shape[0] and x1.shape == t1.shape and x2.shape == t2.shape
        for k in range(x.shape[0]):
            user = set(_owner((None, None, [i for i in y[k].tolist() if i != PAD_ID])))
            for v in (x1[k].tolist(), x2[k].tolist()):
                real = [i for i in v if i != PAD_ID]
                assert real and v[-1] != PAD_ID  # left-padded, the user state is a real position
                assert set(real) - {MASK_ID} <= user
                assert len(real) <= len([i for i in x[k].tolist() if i != PAD_ID])  # of the input part
            n_rows += 1
    assert n_rows == len(USERS)


def test_contrastive_term_trains_and_is_validated(tiny_data):
    from streamrec.model.augment import info_nce

    z = torch.randn(4, 8)
    assert info_nce(z, z, 0.1) < info_nce(z, torch.randn(4, 8), 0.1)  # the positive pair matters
    with pytest.raises(ValueError, match="contrastive -1"):
        Augmenter.views_from_settings(TrainSettings(contrastive=-1))
    assert Augmenter.views_from_settings(TrainSettings()) is None
    assert Augmenter.views_from_settings(TrainSettings(contrastive=0.1)).ops == ("crop", "mask", "reorder")
    cfg = TINY_CONFIG | dict(use_text=False, hybrid=False)
    runs = [
        train(tiny_data, config=cfg, settings=TrainSettings(max_epochs=1, device="cpu", progress=False, contrastive=w))
        for w in (0.0, 0.5)
    ]
    assert runs[1].settings["contrastive"] == 0.5
    loss0, loss1 = (r.metrics["history"][0]["loss"] for r in runs)
    assert np.isfinite(loss1) and loss1 > loss0  # the term adds to the loss

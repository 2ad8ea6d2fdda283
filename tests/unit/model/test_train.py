"""Training API: metrics, finetune growing the vocabulary, data parsing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrec.model.checkpoint import load_checkpoint
from streamrec.model.data import Interactions, ItemVocab, leave_one_out, read_item_text, read_sequences
from streamrec.model.train import TrainSettings, finetune

from .conftest import TINY_CONFIG, write_item_text, write_sequences


def test_trained_metrics(tiny_checkpoint):
    load_checkpoint(tiny_checkpoint)  # the saved checkpoint loads
    import json

    m = json.loads((tiny_checkpoint / "metrics.json").read_text())
    assert m["epochs"] >= 1 and m["best_epoch"] >= 1
    assert 0 <= m["test"]["ndcg@10"] <= 1 and "hr@20" in m["val"]


def test_finetune_grows_vocab_keeps_old_rows(tiny_checkpoint, tiny_text):
    model, vocab = load_checkpoint(tiny_checkpoint)
    old_rows = dict(vocab.rows)
    old_emb = model.id_emb.weight.detach().clone()
    data = Interactions(
        ["x1", "x2"], [["i1", "i2", "fresh1", "i3"], ["fresh2", "i1", "i2", "fresh1"]], [["view"] * 4, ["view"] * 4]
    )
    text = dict(tiny_text, fresh1="blue lipstick shade 77")
    res = finetune(
        model, vocab, data, item_text=text, settings=TrainSettings(max_epochs=1, device="cpu", progress=False, lr=1e-12)
    )
    assert res.metrics["added_items"] == 2
    assert len(res.vocab) == len(old_rows) + 2
    assert all(res.vocab.rows[k] == v for k, v in old_rows.items())
    assert res.vocab.ids[-2:] == ["fresh1", "fresh2"]
    n_old = len(old_rows) + 1
    # lr ~ 0: old rows are kept (to float precision), new rows started at zero (= text only)
    assert torch.allclose(res.model.id_emb.weight[:n_old], old_emb, atol=1e-6)
    assert torch.allclose(res.model.id_emb.weight[n_old:], torch.zeros(2, old_emb.shape[1]), atol=1e-6)
    assert res.model.text_emb[res.vocab.row("fresh1")].abs().sum() > 0
    assert res.model.text_emb[res.vocab.row("fresh2")].abs().sum() == 0  # no text given


def test_read_files(tmp_path, tiny_data):
    p = write_sequences(tmp_path / "s.txt", tiny_data)
    back = read_sequences(p)
    assert back.users == tiny_data.users and back.items == tiny_data.items
    t = read_item_text(write_item_text(tmp_path / "t.tsv"))
    assert t["i1"] and t["i5"] is None
    (tmp_path / "typed.txt").write_text("u1 a:purchase b c:add_to_cart x:y\n")
    typed = read_sequences(tmp_path / "typed.txt")
    assert typed.items == [["a", "b", "c", "x:y"]]
    assert typed.types == [["purchase", "view", "add_to_cart", "view"]]


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.txt"):
        read_sequences(tmp_path / "nope.txt")
    (tmp_path / "one.txt").write_text("lonely_user\n")
    with pytest.raises(ValueError, match=r"one\.txt:1"):
        read_sequences(tmp_path / "one.txt")
    (tmp_path / "t.tsv").write_text("no header here\n")
    with pytest.raises(ValueError, match="header"):
        read_item_text(tmp_path / "t.tsv")


def test_leave_one_out_split():
    from streamrec.model.data import Encoded

    s = leave_one_out(Encoded([[1, 2, 3, 4], [5, 6]], [[1] * 4, [1] * 2]))
    assert s.train.items == [[1, 2], [5, 6]]
    assert s.val_inputs.items == [[1, 2]] and list(s.val_targets) == [3]
    assert s.test_inputs.items == [[1, 2, 3]] and list(s.test_targets) == [4]


def test_item_vocab_roundtrip(tmp_path):
    v = ItemVocab(["a", "b"])
    assert v.add(["b", "c"]) == ["c"] and v.row("c") == 3 and v.row("zz") == 0
    v.save(tmp_path / "m.json")
    assert ItemVocab.load(tmp_path / "m.json").ids == ["a", "b", "c"]


def test_leave_one_out_val_users_subset():
    from streamrec.model.data import Encoded

    enc = Encoded([[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11], [12, 13]], [[1] * 4, [1] * 3, [1] * 4, [1] * 2])
    s = leave_one_out(enc, val_users=1, seed=0)
    assert len(s.val_targets) == 1 and len(s.test_targets) == 3
    # the held-out user trains without its 2nd-last item, the others with it
    trained_on_val_item = sum(1 for seq in s.train.items if seq[-1] in (3, 6, 10))
    assert trained_on_val_item == 2
    assert list(s.test_targets) == [4, 7, 11]
    assert leave_one_out(enc, val_users=99).val_targets.tolist() == leave_one_out(enc).val_targets.tolist()


def test_lr_schedules():
    from streamrec.model.train import lr_at

    const = TrainSettings(lr=1e-3, lr_schedule="constant")
    assert lr_at(const, 0, 0.0) == lr_at(const, 500, 0.9) == 1e-3
    cos = TrainSettings(lr=1e-3, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(cos, 0, 0.0) == pytest.approx(1e-3)
    assert lr_at(cos, 0, 0.5) == pytest.approx(0.55e-3)
    assert lr_at(cos, 0, 1.0) == pytest.approx(1e-4)
    assert lr_at(cos, 0, 7.0) == pytest.approx(1e-4)  # past the end of the budget: the floor
    warm = TrainSettings(lr=1e-3, lr_schedule="constant", warmup_steps=10)
    assert lr_at(warm, 0, 0.0) == pytest.approx(1e-4) and lr_at(warm, 10, 0.0) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule 'step'"):
        lr_at(TrainSettings(lr_schedule="step"), 0, 0.0)


def test_ema_keeps_the_averaged_weights(tiny_data, tiny_text):
    """With a decay near 1 the average barely leaves the initial weights, while the live
    weights move: the result is the average."""
    from streamrec.model.train import train

    def run(ema: float, lr: float = 1e-2):
        s = TrainSettings(max_epochs=2, patience=10, device="cpu", progress=False, batch_size=8, lr=lr, ema=ema)
        return train(tiny_data, item_text=tiny_text, config=TINY_CONFIG, settings=s).model.blocks[0].mlp[0].weight

    init = run(0.0, lr=1e-12).detach()  # the same seed: the initial weights
    live, avg = run(0.0).detach(), run(0.99999).detach()
    assert (live - avg).abs().max() > 10 * (avg - init).abs().max()
    with pytest.raises(ValueError, match="ema"):
        run(1.0)


def test_cosine_schedule_reaches_the_floor_by_max_epochs(tiny_data, tiny_text):
    """The optimiser's last learning rate is near lr * min_lr_ratio at the end of max_epochs."""
    from streamrec.model.train import train

    seen = []
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        train(
            tiny_data,
            item_text=tiny_text,
            config=TINY_CONFIG,
            settings=TrainSettings(
                max_epochs=3,
                patience=10,
                device="cpu",
                progress=False,
                batch_size=8,
                lr=1e-2,
                lr_schedule="cosine",
                min_lr_ratio=0.1,
            ),
        )
    finally:
        torch.optim.AdamW.step = orig
    assert seen[0] == pytest.approx(1e-2)
    assert seen == sorted(seen, reverse=True)
    assert seen[-1] < 0.25e-2  # the last step starts at progress (3 - 1/steps_per_epoch) / 3


def test_prefix_batches_give_every_prefix_once_with_its_next_item():
    from streamrec.model.data import Encoded, prefix_batches, prefix_count

    train = Encoded([[1, 2, 3, 4], [5, 6], [7]], [[1] * 4, [1] * 2, [1]])
    assert prefix_count(train) == 4
    rows = []
    for x, _t, y in prefix_batches(train, max_len=2, batch_size=3, rng=np.random.default_rng(0)):
        assert bool((y[:, :-1] == 0).all())
        rows += [(tuple(a.tolist()), int(b)) for a, b in zip(x, y[:, -1])]
    assert sorted(rows) == [((0, 1), 2), ((0, 5), 6), ((1, 2), 3), ((2, 3), 4)]  # newest max_len items


def test_a_window_model_trains_on_prefixes_whatever_it_is_asked(tiny_data, tiny_text):
    from streamrec.model.train import train

    data, text = tiny_data, tiny_text
    cfg = TINY_CONFIG | {"freq_mix": 0.7, "freq_kernel": "window", "freq_beta": 1.0}
    base = {"max_epochs": 1, "progress": False, "device": "cpu", "batch_size": 16}
    a = train(data, item_text=text, config=cfg, settings=TrainSettings(**base))  # "positions", the default
    b = train(data, item_text=text, config=cfg, settings=TrainSettings(**base, samples="prefixes"))
    assert np.isfinite(a.metrics["history"][0]["loss"]) and "test" in a.metrics
    assert a.metrics["history"][0]["loss"] == b.metrics["history"][0]["loss"]  # the same prefix batches
    with pytest.raises(ValueError, match="augmentation"):
        train(data, item_text=text, config=cfg, settings=TrainSettings(**base, augment="crop"))
    with pytest.raises(ValueError, match="samples"):
        train(data, item_text=text, config=cfg, settings=TrainSettings(**base, samples="pairs"))


def test_the_gate_fit_ranks_against_the_catalog_beyond_the_clicked_items(tiny_data, tiny_text):
    """The serving catalog's titled items that no sequence holds join the gate fit as new
    candidates (as the worker's index ranks them): the same trained model part, the same first
    batch, and the fit's softmax has 60 more candidates, so its first loss is higher. At most
    ``gate_catalog_max`` of them are embedded, and all of them are counted."""
    from dataclasses import replace

    from streamrec.model.sasrec import TEXT_DIM
    from streamrec.model.train import catalog_candidates, train

    from .conftest import COLOURS

    text = dict(tiny_text) | {f"d{k}": f"{COLOURS[k % 3]} lipstick shade {100 + k}" for k in range(60)}
    s = TrainSettings(max_epochs=3, device="cpu", progress=False, batch_size=8)
    with_catalog = train(tiny_data, item_text=text, config=TINY_CONFIG, settings=s)
    alone = train(tiny_data, item_text=text, config=TINY_CONFIG, settings=replace(s, gate_catalog_max=0))
    assert with_catalog.metrics["gates"]["catalog_candidates"] == 60
    assert alone.metrics["gates"]["catalog_candidates"] == 0
    assert "d0" not in with_catalog.vocab  # candidates of the fit only, not rows of the model

    assert torch.equal(with_catalog.model.text_proj.weight, alone.model.text_proj.weight)  # same model part
    assert with_catalog.metrics["gates"]["loss_first"] > alone.metrics["gates"]["loss_first"] + 0.01
    extra, total = catalog_candidates(with_catalog.model, with_catalog.vocab, text, replace(s, gate_catalog_max=7))
    assert extra is not None and extra.shape == (7, TEXT_DIM) and total == 60
    assert catalog_candidates(with_catalog.model, with_catalog.vocab, tiny_text, s) == (None, 0)


def test_an_item_no_training_sequence_holds_is_served_from_its_title(tiny_data, tiny_text):
    """An item that is only ever a held-out target has a row, but its id only learned "never the
    answer" as a softmax negative: after training its id row is zero (scored from its title, as
    an item added later), while trained items keep theirs."""
    from streamrec.model.train import train

    data = Interactions(
        [*tiny_data.users, "solo-user"],
        [*tiny_data.items, ["i1", "i4", "i7", "solo"]],  # "solo": this user's test item only
        [*tiny_data.types, ["view"] * 4],
    )
    text = dict(tiny_text, solo="red lipstick shade 99")
    s = TrainSettings(max_epochs=2, device="cpu", progress=False, batch_size=8)
    res = train(data, item_text=text, config=TINY_CONFIG, settings=s)
    row = res.vocab.row("solo")
    w = res.model.id_emb.weight.detach()
    assert res.metrics["ids_cleared"] >= 1 and res.model.item_count[row] == 0
    assert torch.all(w[row] == 0) and w[res.vocab.row("i1")].abs().sum() > 0


def test_train_and_finetune_embed_each_title_once_without_a_text_cache(tiny_data, tiny_text, monkeypatch):
    """With no ``text_cache`` set, ``train`` and ``finetune`` still share one (in-memory) cache
    across the model's titles, the channel's basis fit and the gate fit's catalog candidates:
    the catalog's extra titles are read by the last two, and embedded once."""
    from collections import Counter

    from streamrec.model.text import TextEncoder
    from streamrec.model.train import train

    from .conftest import COLOURS

    seen: list[str] = []
    original = TextEncoder.encode

    def counting(self, texts, batch_size=128):
        seen.extend(t for t in texts if t)
        return original(self, texts, batch_size)

    monkeypatch.setattr(TextEncoder, "encode", counting)
    text = dict(tiny_text) | {f"d{k}": f"{COLOURS[k % 3]} lipstick shade {100 + k}" for k in range(20)}
    s = TrainSettings(max_epochs=1, device="cpu", progress=False, batch_size=8)
    res = train(tiny_data, item_text=text, config=TINY_CONFIG, settings=s)
    assert res.metrics["gates"]["catalog_candidates"] == 20
    counts = Counter(seen)
    assert set(counts) == {t for t in text.values() if t}  # every title, the extra ones included
    assert max(counts.values()) == 1, counts.most_common(3)

    seen.clear()
    more = text | {f"e{k}": f"{COLOURS[k % 3]} mascara {k}" for k in range(5)}
    finetune(res.model, res.vocab, tiny_data, item_text=more, settings=s)
    counts = Counter(seen)
    assert counts and max(counts.values()) == 1, counts.most_common(3)

"""Item-to-item transitions (streamrec.model.transitions): the table, its terms, its file, its weight."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamrec.model.transitions import FILE, Transitions

SEQS = [[1, 2, 3], [1, 2], [2, 2, 4]]


def followers(t: Transitions, a: int) -> dict[int, float]:
    s = slice(t.indptr[a], t.indptr[a + 1])
    return dict(zip(t.cols[s].tolist(), t.vals[s].tolist()))


def test_fit_counts_followers_within_the_window_by_distance_and_keeps_the_heaviest():
    t = Transitions.fit(SEQS, 4, window=2, top_m=50)
    assert followers(t, 1) == {2: 2.0, 3: 0.5}
    assert followers(t, 2) == {3: 1.0, 4: 1.5}  # 2 -> 2 is not counted; 4 at distance 2 and 1
    assert followers(t, 3) == {} and followers(t, 4) == {} and followers(t, 0) == {}
    top1 = Transitions.fit(SEQS, 4, window=2, top_m=1)
    assert followers(top1, 1) == {2: 2.0} and followers(top1, 2) == {4: 1.5}
    assert followers(Transitions.fit(SEQS, 4, window=1), 1) == {2: 2.0}
    with pytest.raises(ValueError, match=r"rows must lie in 0\.\.4"):
        Transitions.fit([[1, 5]], 4)
    with pytest.raises(ValueError, match="top_m"):
        Transitions.fit(SEQS, 4, top_m=0)


def test_terms_sum_the_newest_items_with_decay_and_skip_unusable_rows():
    t = Transitions.fit(SEQS, 4, window=2)
    t.recent, t.decay = 2, 0.5
    # user 0: newest 1 (age 0); user 1: newest 2 (age 0), then 1 (age 1); 3 is too old; user 2: nothing
    u, c, s = t.sparse([[1], [3, 1, 2], []])
    got = {(int(a), int(b)): float(v) for a, b, v in zip(u, c, s)}
    assert got == pytest.approx(
        {
            (0, 2): math.log1p(2.0),
            (0, 3): math.log1p(0.5),
            (1, 2): math.log1p(0.5 * 2.0),
            (1, 3): math.log1p(1.0 + 0.5 * 0.5),
            (1, 4): math.log1p(1.5),
        }
    )
    usable = np.array([False, True, False, True, True])  # row 2 was given to a new item
    u, c, s = t.sparse([[1], [2]], usable=usable)
    assert list(zip(u.tolist(), c.tolist())) == [(0, 3)]  # 2 neither gives nor gets transitions
    dense = t.dense([[1], [3, 1, 2], []], 5)
    assert dense.shape == (3, 5) and float(dense[0, 2]) == pytest.approx(math.log1p(2.0))
    assert float(dense[2].abs().sum()) == 0.0


def test_file_round_trip_and_bad_tables_are_refused(tmp_path):
    t = Transitions.fit(SEQS, 4, window=2)
    t.weight = 2.0
    assert Transitions.load(tmp_path) is None  # no file: no table
    t.save(tmp_path)
    back = Transitions.load(tmp_path)
    assert back is not None and back.weight == 2.0 and back.recent == t.recent and back.decay == t.decay
    assert np.array_equal(back.indptr, t.indptr) and np.array_equal(back.cols, t.cols)
    assert np.array_equal(back.vals, t.vals)
    (tmp_path / FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="unreadable transitions table"):
        Transitions.load(tmp_path)
    with pytest.raises(ValueError, match="malformed"):
        Transitions(np.array([0, 1, 1]), np.array([7]), np.array([1.0]))  # a follower beyond the items
    with pytest.raises(ValueError, match="weight"):
        Transitions(t.indptr, t.cols, t.vals, weight=-1.0)


@pytest.fixture(scope="module")
def tiny_with_transitions(tmp_path_factory, tiny_data, tiny_text):
    """The model tests' tiny model, trained with the transitions term on (off by default)."""
    from streamrec.model.checkpoint import save_checkpoint
    from streamrec.model.train import TrainSettings, train
    from tests.unit.model.conftest import TINY_CONFIG

    res = train(
        tiny_data,
        item_text=tiny_text,
        config=TINY_CONFIG,
        settings=TrainSettings(max_epochs=3, device="cpu", progress=False, batch_size=32, transitions=True),
    )
    out = tmp_path_factory.mktemp("ckpt") / "tiny-transitions"
    save_checkpoint(res.model, res.vocab, out, metrics=res.metrics)
    return out


def test_off_by_default(tiny_checkpoint):
    from streamrec.model.checkpoint import load_checkpoint, read_metrics

    assert load_checkpoint(tiny_checkpoint)[0].transitions is None and not (tiny_checkpoint / FILE).exists()
    assert "transitions" not in read_metrics(tiny_checkpoint)


def test_training_chooses_a_weight_on_validation_and_the_checkpoint_keeps_it(tiny_with_transitions, tiny_data):
    """The tiny shop's users walk through a family in order: what follows an item is known from
    training, so the transitions term must help on the validation pairs and be kept."""
    from streamrec.model.checkpoint import load_checkpoint, read_metrics
    from streamrec.model.data import encode, leave_one_out
    from streamrec.model.evaluate import evaluate_model, fit_transition_weight

    fitted = read_metrics(tiny_with_transitions)["transitions"]
    model, vocab = load_checkpoint(tiny_with_transitions)
    assert model.transitions is not None and model.transitions.weight == fitted["weight"] > 0
    by_weight = fitted["val_ndcg@10_by_weight"]
    assert by_weight[str(fitted["weight"])] == max(by_weight.values()) > by_weight["0.0"]
    split = leave_one_out(encode(tiny_data, vocab))
    best, ndcg = fit_transition_weight(model, model.transitions, split.val_inputs, split.val_targets)
    assert best == fitted["weight"] and ndcg == pytest.approx(by_weight)
    assert fit_transition_weight(model, model.transitions, split.val_inputs, split.val_targets, weights=(0.0,))[0] == 0
    # served scores: the inner product plus the term; without the term, the model's alone
    with_t = evaluate_model(model, split.val_inputs, split.val_targets)
    without = evaluate_model(model, split.val_inputs, split.val_targets, transitions=False)
    assert with_t["ndcg@10"] == pytest.approx(by_weight[str(best)])
    assert without["ndcg@10"] == pytest.approx(by_weight["0.0"])


def test_a_model_without_transitions_saves_no_table(tiny_with_transitions, tmp_path):
    from streamrec.model.checkpoint import load_checkpoint, save_checkpoint

    model, vocab = load_checkpoint(tiny_with_transitions)
    save_checkpoint(model, vocab, tmp_path / "a")
    assert (tmp_path / "a" / FILE).is_file()
    model.transitions = None
    save_checkpoint(model, vocab, tmp_path / "a")  # overwritten in place: the old table goes
    assert not (tmp_path / "a" / FILE).exists() and load_checkpoint(tmp_path / "a")[0].transitions is None
    assert torch.equal(load_checkpoint(tmp_path / "a")[0].text_emb, model.text_emb)


def test_memory_report_counts_the_table_of_a_served_model(tiny_checkpoint, tiny_with_transitions):
    """The worker's memory report (``streamrec_memory_bytes{part="transitions"}``) names the table's
    three arrays, and 0 for a model without one."""
    from streamrec.model.inference import Recommender

    rec = Recommender.load(tiny_with_transitions, device="cpu")
    table = rec.transitions
    assert table is not None
    expected = table.indptr.nbytes + table.cols.nbytes + table.vals.nbytes
    assert rec.memory_bytes()["transitions"] == expected > 0
    assert Recommender.load(tiny_checkpoint, device="cpu").memory_bytes()["transitions"] == 0


def test_a_table_of_weight_0_is_served_nowhere(tiny_with_transitions):
    """One rule for the served model and the evaluation: a weight of 0 keeps the table unused."""
    import dataclasses

    import torch

    from streamrec.model.evaluate import model_score_fn
    from streamrec.model.inference import Recommender

    rec = Recommender.load(tiny_with_transitions, device="cpu")
    table = rec.model.transitions
    assert table is not None and table.served and rec.transitions is table
    rec.model.transitions = dataclasses.replace(table, weight=0.0)
    assert not rec.model.transitions.served and rec.transitions is None
    hist, types = [[1, 2], [3, 4, 5]], [[0, 0], [0, 0, 0]]
    plain = model_score_fn(rec.model, transitions=False)(hist, types)
    assert torch.equal(model_score_fn(rec.model)(hist, types), plain)
    rec.model.transitions = table  # with its weight, the term changes the scores
    assert not torch.equal(model_score_fn(rec.model)(hist, types), plain)

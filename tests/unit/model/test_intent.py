"""The purchase-intent model: shapes, the prefix masking of its examples, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.errors import CheckpointError
from streamrec.model.intent import (
    IntentModel,
    fit_intent,
    intent_examples,
    log_loss,
    pr_auc,
    roc_auc,
    train_intent,
)
from streamrec.serving.session import FEATURE_NAMES
from streamrec.typed_events import TypedEvent, by_user, parse_lines

MIN = 60_000
T0 = 1_511_544_070_000


def ev(user: str, item: str, type_: str, minute: float, raw: str | None = None) -> TypedEvent:
    return TypedEvent(user, item, "cat", type_, T0 + int(minute * MIN), raw or type_)


def test_examples_skip_purchases_and_label_a_later_purchase():
    seq = [
        ev("u", "a", "view", 0),
        ev("u", "a", "add_to_cart", 1),
        ev("u", "a", "purchase", 2),
        ev("u", "b", "view", 3),  # after the last purchase: negative
        ev("u", "c", "view", 100),
        ev("u", "c", "view", 101),
    ]  # a second session, no purchase
    ex = intent_examples({"u": seq})
    assert ex.x.shape == (5, len(FEATURE_NAMES))  # 6 events, the purchase is not scored
    assert ex.y.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert len(set(ex.session_start_ms.tolist())) == 2


def test_example_features_see_only_the_prefix():
    """The row at an event is the same whatever follows it: nothing later can leak in."""
    seq = [
        ev("u", "a", "view", 0),
        ev("u", "b", "view", 1),
        ev("u", "a", "add_to_cart", 2),
        ev("u", "a", "purchase", 3),
        ev("u", "c", "view", 4),
    ]
    full = intent_examples({"u": seq})
    for k in range(1, len(seq) + 1):
        part = intent_examples({"u": seq[:k]})
        n = len(part.y)
        assert np.array_equal(part.x, full.x[:n])


def test_favourites_count_as_views_unless_kept_apart():
    seq = [ev("u", "a", "view", 0, raw="favorite"), ev("u", "a", "purchase", 1)]
    fav = FEATURE_NAMES.index("log_favs")
    assert intent_examples({"u": seq}).x[0, fav] == 0.0
    assert intent_examples({"u": seq}, favorites=True).x[0, fav] > 0.0


def test_model_shapes_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, len(FEATURE_NAMES))).astype(np.float32)
    y = (x[:, 1] + 0.3 * rng.normal(size=300) > 0.5).astype(np.float32)
    for hidden in (0, 8):
        m = fit_intent(x, y, feature_names=FEATURE_NAMES, hidden=hidden, steps=150)
        p = m.predict(x)
        assert p.shape == (300,) and p.dtype == np.float32 and ((p >= 0) & (p <= 1)).all()
        assert m.predict(x[:0]).shape == (0,)
        assert roc_auc(y, p) > 0.8 and log_loss(y, p) < log_loss(y, np.full(300, y.mean()))
        m.save(tmp_path / f"h{hidden}")
        back = IntentModel.load(tmp_path / f"h{hidden}")
        assert back is not None and np.allclose(back.predict(x), p)
        with pytest.raises(ValueError, match="shape"):
            m.predict(x[:, :3])
    assert IntentModel.load(tmp_path / "nothing") is None
    (tmp_path / "h0" / "intent.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="intent"):
        IntentModel.load(tmp_path / "h0")


def test_fit_needs_both_labels():
    with pytest.raises(ValueError, match="positive and negative"):
        fit_intent(np.zeros((4, 2), np.float32), np.ones(4, np.float32), feature_names=("a", "b"))


def test_metrics_on_known_cases():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert pr_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert pr_auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_train_intent_on_typed_events():
    rng = np.random.default_rng(1)
    lines = ["user_id,item_id,category_id,behavior,ts"]
    t = 1_511_544_070
    for u in range(60):
        for _s in range(6):
            t += 7200
            buyer = rng.random() < 0.3
            for k in range(int(rng.integers(2, 6))):
                lines.append(f"u{u},i{k},c1,{'cart' if buyer and k == 1 else 'pv'},{t + 30 * k}")
            if buyer:
                lines.append(f"u{u},i1,c1,buy,{t + 400}")
    model, info = train_intent(by_user(parse_lines(lines)))
    assert model is not None and info["holdout"]["model_roc_auc"] > 0.9
    assert model.cfg.metrics == info
    none, why = train_intent(by_user(parse_lines(lines[:1] + [x for x in lines[1:] if ",buy," not in x])))
    assert none is None and "purchase" in why["skipped"]


def test_a_retrained_version_keeps_the_intent_model(tmp_path):
    from streamrec.model.retrain import carry_intent

    base, new, bare = tmp_path / "base", tmp_path / "new", tmp_path / "bare"
    for d in (base, new, bare):
        d.mkdir()
    x = np.r_[np.zeros((5, 2)), np.ones((5, 2))].astype(np.float32)
    fit_intent(x, np.r_[np.zeros(5), np.ones(5)].astype(np.float32), feature_names=("a", "b"), steps=20).save(base)
    assert carry_intent(base, new) and IntentModel.load(new) is not None
    assert not carry_intent(bare, tmp_path) and not carry_intent(None, tmp_path)

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


def _log_table(*, n_users: int = 80, informative_from: float = 0.0, buys: bool = True, seed: int = 0):
    """A training-log table (the columns a round reads) of 6 sessions per user, 2 h apart. Sessions
    that start at or after ``informative_from`` (a share of the time span) follow "a cart is
    followed by a purchase"; earlier ones buy at random, whatever they did."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, str, int]] = []
    span = 6 * 7200_000
    for u in range(n_users):
        t = T0 + int(rng.integers(0, 3_600_000))
        for s in range(6):
            start = t + s * 7200_000
            carts = rng.random() < 0.3
            informative = (start - T0) >= informative_from * span
            buyer = buys and (carts if informative else rng.random() < 0.3)
            for k in range(int(rng.integers(2, 6))):
                kind = "add_to_cart" if carts and k == 1 else "view"
                rows.append((f"u{u}", f"i{k}", kind, start + 30_000 * k))
            if buyer:
                rows.append((f"u{u}", "i1", "purchase", start + 400_000))
    rows.sort(key=lambda r: r[3])
    cols = list(zip(*rows))
    return pa.table({"user_id": cols[0], "item_id": cols[1], "type": cols[2], "ts": list(cols[3])})


def test_a_round_refits_the_intent_model_only_when_the_log_does_better(tmp_path):
    """``refresh_intent``: a log that teaches the pattern gives the new version a refitted model;
    a log whose training part is noise keeps the better base model (its hold-out log loss is
    lower); a log without purchases keeps the base model, or none when there is none."""
    from streamrec.model.retrain import refresh_intent

    first, good, noisy, nobuy, bare = (tmp_path / n for n in ("first", "good", "noisy", "nobuy", "bare"))
    for d in (first, good, noisy, nobuy, bare):
        d.mkdir()
    said = refresh_intent(_log_table(), None, first)  # no base: fitted on the log
    assert said.startswith("retrained") and "no model before" in said
    fitted = IntentModel.load(first)
    assert fitted is not None and fitted.cfg.metrics["holdout"]["replaced_log_loss"] is None

    said = refresh_intent(_log_table(seed=1), first, good)  # as good as the base or better
    assert said.startswith("retrained"), said
    assert IntentModel.load(good).cfg.metrics["holdout"]["replaced_log_loss"] is not None

    # the log's older sessions (its training part) buy at random, the latest (the last of each
    # user's 6 sessions: the hold-out) follow the pattern
    said = refresh_intent(_log_table(informative_from=0.8, seed=2), first, noisy, holdout=1 / 6)
    assert said.startswith("carried (hold-out log loss"), said
    assert (noisy / "intent.json").read_bytes() == (first / "intent.json").read_bytes()

    assert refresh_intent(_log_table(buys=False), first, nobuy).startswith("carried (the log has no")
    assert refresh_intent(_log_table(buys=False), None, bare).startswith("none (")
    assert IntentModel.load(bare) is None

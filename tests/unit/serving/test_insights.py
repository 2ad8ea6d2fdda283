"""User insights (issue #15): session counters, interest profiles, reasons, purchase intent in
the scorer. A real tiny model and a real FAISS index, no Kafka."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.model.intent import fit_intent
from streamrec.schemas import CatalogItem, Profile, Recommendation, ShopEvent
from streamrec.serving.profile import InterestProfile, ProfileWeights
from streamrec.serving.session import FEATURE_NAMES, SessionStats, features
from streamrec.serving.state import UserState
from streamrec.streams.pipeline import Pipeline
from tests.unit.serving.tiny_shop import TS, item, tiny_pipeline

HOUR = 3_600_000


def event(user: str, i: int, type_: str = "view", n: int = 0, session: str = "s") -> ShopEvent:
    return ShopEvent(
        event_id=f"{user}-{i}-{type_}-{n}",
        user_id=user,
        session_id=session,
        item_id=f"i{i}",
        type=type_,
        ts=TS + n * 1000,
    )


@pytest.fixture
def pipeline(tiny_checkpoint) -> Pipeline:
    return tiny_pipeline(tiny_checkpoint, history_len=10)


# -- session counters ------------------------------------------------------------------------------


def test_session_stats_split_on_gap_and_session_id_and_carry_the_past():
    s = SessionStats()
    s.update("a", "view", 0, "s1")
    s.update("a", "add_to_cart", 60_000, "s1")
    s.update("a", "purchase", 120_000, "s1")
    assert (s.n_view, s.n_cart, s.n_purchase, s.n_events, s.n_repeat) == (1, 1, 1, 3, 2)
    s.update("b", "view", 120_000 + 31 * 60_000, "s1")  # > 30 min later: a new session
    assert (s.n_events, s.past_sessions, s.past_buy_sessions, s.past_purchases) == (1, 1, 1, 1)
    s.update("c", "view", 120_000 + 32 * 60_000, "s2")  # a new session id: a new session too
    assert (s.n_events, s.past_sessions, s.past_buy_sessions) == (1, 2, 1)
    row = dict(zip(FEATURE_NAMES, s.row()))
    assert row["has_bought_before"] == 1.0 and row["log_events"] == pytest.approx(np.log1p(1))
    assert SessionStats.from_json(s.to_json()) == s


def test_batched_features_equal_the_rows():
    """features() (one tuple per state, numpy logs) gives SessionStats.row() for every state."""
    rng = np.random.default_rng(0)
    kinds = ("view", "add_to_cart", "remove_from_cart", "purchase", "favorite")
    states = [SessionStats()]
    for _ in range(40):
        s, t = SessionStats(), int(rng.integers(0, 10**9))
        for _n in range(int(rng.integers(1, 30))):
            t += int(rng.choice([1_000, 60_000, 45 * 60_000]))
            s.update(f"i{rng.integers(0, 8)}", str(rng.choice(kinds)), t, f"s{rng.integers(0, 2)}")
        states.append(s)
    edge = SessionStats()
    edge.update("a", "view", 0)  # a session starting at ts 0 (row() reads it as no start)
    edge.update("a", "add_to_cart", 60_000)
    states.append(edge)
    want = np.asarray([s.row() for s in states], dtype=np.float32)
    np.testing.assert_allclose(features(states), want, rtol=1e-6, atol=0)


def test_session_items_are_bounded():
    s = SessionStats()
    for n in range(500):
        s.update(f"i{n}", "view", n)
    assert len(s.items) == 64 and s.n_events == 500
    assert features([s]).shape == (1, len(FEATURE_NAMES))


# -- interest profile --------------------------------------------------------------------------------


def test_profile_weights_types_and_decays():
    w = ProfileWeights(half_life_s=3600.0)
    p = InterestProfile()
    p.update(category="shoes", brand="A", type="view", ts_ms=0, weights=w)
    p.update(category="bags", brand="B", type="purchase", ts_ms=0, weights=w)
    p.update(category="hats", brand="C", type="add_to_cart", ts_ms=0, weights=w)
    assert [c for c, _ in p.top("categories", now_ms=0, weights=w)] == ["bags", "hats", "shoes"]
    # one half-life later every weight is halved; a fresh view then counts 1 on top of 0.5
    p.update(category="shoes", brand=None, type="view", ts_ms=HOUR, weights=w)
    top = dict(p.top("categories", now_ms=HOUR, weights=w))
    assert top == pytest.approx({"bags": 2.5, "hats": 1.5, "shoes": 1.5})
    assert dict(p.top("brands", now_ms=HOUR, weights=w))["B"] == pytest.approx(2.5)
    # an older event (out of order) counts decayed, not at full weight
    p.update(category="bags", brand=None, type="view", ts_ms=0, weights=w)
    assert dict(p.top("categories", now_ms=HOUR, weights=w))["bags"] == pytest.approx(3.0)


def test_profile_is_bounded_keeping_the_heaviest():
    w = ProfileWeights(max_entries=3)
    p = InterestProfile()
    p.update(category="big", brand=None, type="purchase", ts_ms=0, weights=w)
    for n in range(50):
        p.update(category=f"c{n}", brand=f"b{n}", type="view", ts_ms=n, weights=w)
    assert len(p.categories) == 3 and len(p.brands) == 3
    assert p.top("categories", n=1)[0][0] == "big"
    assert InterestProfile.from_json(p.to_json()) == p


def test_profile_weights_validate():
    with pytest.raises(ValueError, match="max_entries"):
        ProfileWeights(max_entries=0)
    with pytest.raises(ValueError, match="view"):
        ProfileWeights(view=-1.0)


def test_views_in_one_category_put_it_on_top_of_the_served_profile(pipeline):
    pipeline.apply_catalog(
        [("i30", item(30, category="perfume", brand="Scent")), ("i31", item(31, category="perfume", brand="Scent"))]
    )
    st = UserState()
    pipeline.apply_event(st, event("u", 1, "purchase", 0))  # makeup, long ago
    for n, i in enumerate([30, 31, 30, 31, 30, 31, 30], start=1):
        pipeline.apply_event(st, event("u", i, "view", n * 24 * 3600))  # one a day, 7 days later...
    prof = pipeline.profile_of("u", st, event_id="e", now_ms=TS + 10**9)
    assert isinstance(Profile.from_bytes(prof.to_bytes()), Profile)
    assert prof.categories[0].name == "perfume" and prof.brands[0].name == "Scent"
    assert [c.name for c in prof.categories] == ["perfume", "makeup"]
    # the topic's bytes (orjson, no pydantic objects) parse back to the same message
    assert Profile.from_bytes(pipeline.profile_bytes("u", st, event_id="e", now_ms=TS + 10**9)) == prof


# -- reasons -----------------------------------------------------------------------------------------


def test_reasons_name_the_closest_history_item(pipeline):
    st = UserState()
    for n, i in enumerate([3, 6, 9]):
        pipeline.apply_event(st, event("u", i, "view", n))
    [recs] = pipeline.scorer.recommend_explained([st])
    assert len(recs) == 5
    rec = pipeline.scorer.recommender
    hist = ["i3", "i6", "i9"]
    hv, _ = rec.lookup(hist)
    for item_id, _, (kind, about) in recs:
        assert kind == "similar_to" and about in hist
        if item_id not in hist:  # the reason is the argmax of the inner products (itself excluded)
            v, _ = rec.lookup([item_id])
            assert about == hist[int(np.argmax(hv @ v[0]))]
    # same lists as without reasons (explaining changes no ranking)
    assert [(i, s) for i, s, _ in recs] == pipeline.scorer.recommend([st])[0]


def test_reason_popular_for_the_popularity_fill(pipeline):
    fresh = [event("a", 2, "purchase", 1), event("b", 8, "view", 2)]
    [recs], [intent] = pipeline.score_explained([UserState()], fresh)
    assert [r for _, _, r in recs[:2]] == [("popular", None), ("popular", None)]
    assert all(r[0] == "popular" for _, _, r in recs)  # trained items from the cold-start fill too
    assert intent is None  # this checkpoint has no intent model


def test_reason_new_item_for_a_zero_shot_item(pipeline):
    pipeline.apply_catalog(
        [
            (
                "new-1",
                CatalogItem(
                    item_id="new-1",
                    title="red lipstick shade 99",
                    category="makeup",
                    brand="Tiny",
                    price=1.0,
                    in_stock=True,
                    updated_ts=TS,
                ),
            )
        ]
    )
    st = UserState()
    for n, i in enumerate([3, 6, 9]):
        pipeline.apply_event(st, event("u", i, "view", n))
    rec = pipeline.scorer
    # make the new item the only candidate besides the purchased ones: every other item bought
    rec.top_k = 1
    st.purchased_list = [f"i{i}" for i in range(1, 25)]
    [recs] = rec.recommend_explained([st])
    assert recs[0][0] == "new-1" and recs[0][2] == ("new_item", None)
    # the cold-start fill labels it new_item as well
    [cold] = rec.recommend_explained([UserState(purchased_list=list(st.purchased_list))])
    assert cold[0][0] == "new-1" and cold[0][2] == ("new_item", None)


# -- purchase intent in the scorer ---------------------------------------------------------------------


def test_scorer_intent_uses_the_session_features(pipeline):
    x = np.zeros((40, len(FEATURE_NAMES)), np.float32)
    x[20:, FEATURE_NAMES.index("log_carts")] = 1.0
    y = np.r_[np.zeros(20), np.ones(20)].astype(np.float32)
    pipeline.scorer.recommender.intent = fit_intent(x, y, feature_names=FEATURE_NAMES, steps=100)
    browsing, carting = UserState(), UserState()
    pipeline.apply_event(browsing, event("b", 1, "view", 0))
    pipeline.apply_event(carting, event("c", 1, "view", 0))
    pipeline.apply_event(carting, event("c", 1, "add_to_cart", 1))
    lists, intents = pipeline.score_explained([browsing, carting], [])
    assert len(lists) == 2 and all(0.0 <= p <= 1.0 for p in intents)
    assert intents[1] > intents[0]
    rec = Recommendation(
        user_id="c", items=[], model_version="v", event_id="e", event_ts=TS, produced_ts=TS, purchase_intent=intents[1]
    )
    assert Recommendation.from_bytes(rec.to_bytes()).purchase_intent == pytest.approx(intents[1])


def test_user_state_round_trips_with_insights_and_reads_old_states():
    st = UserState()
    st.update(
        event_id="e1",
        item_id="a",
        type="add_to_cart",
        ts=TS,
        session_id="s",
        history_len=5,
        purchased_max=5,
        category="c",
        brand="b",
        profile_weights=ProfileWeights(),
    )
    back = UserState.from_json(st.to_json())
    assert back == st and back.session.n_cart == 1 and back.profile.categories["c"][0] == 3.0
    old = UserState.from_json({"h": [["a", "view", TS, "e0"]], "p": [], "s": "s", "r": None})
    assert old.session == SessionStats() and old.profile == InterestProfile()


def test_malformed_stored_insights_are_refused_for_the_reset_policy():
    base = {"h": [], "p": [], "s": None, "r": None}
    for bad in ({"x": {"n_view": "many"}}, {"x": [1]}, {"x": {"items": ["a"]}}, {"i": {"c": {"a": "x"}}}, {"i": [1]}):
        with pytest.raises((TypeError, ValueError)):
            UserState.from_json({**base, **bad})

"""Pure serving logic with a real tiny model and a real FAISS index (no Kafka)."""

from __future__ import annotations

import pytest

from streamrec.schemas import ShopEvent
from streamrec.serving.metrics import Metrics
from streamrec.serving.popularity import Popularity
from streamrec.serving.state import UserState
from streamrec.streams.pipeline import Pipeline
from tests.unit.serving.tiny_shop import TS, TYPES, item, tiny_pipeline


@pytest.fixture
def pipeline(tiny_checkpoint) -> Pipeline:
    return tiny_pipeline(tiny_checkpoint, history_len=4)


def event(user: str, i: int, type_: str = "view", n: int = 0) -> ShopEvent:
    return ShopEvent(
        event_id=f"{user}-{i}-{type_}-{n}", user_id=user, session_id="s", item_id=f"i{i}", type=type_, ts=TS + n
    )


def test_user_state_is_bounded_and_dedupes():
    s = UserState()
    for n in range(10):
        assert s.update(
            event_id=f"e{n}", item_id=f"i{n}", type="purchase", ts=n, session_id="s", history_len=4, purchased_max=3
        )
    assert len(s.history) == 4 and s.purchased_list == ["i7", "i8", "i9"]
    assert not s.update(
        event_id="e9", item_id="i9", type="view", ts=99, session_id="s", history_len=4, purchased_max=3
    )  # a redelivered event changes nothing
    assert UserState.from_json(s.to_json()) == s


def test_popularity_weights_types_and_decays():
    p = Popularity(half_life_s=1)
    p.add("old", "purchase", ts_ms=0)  # 5 points, long ago
    p.add("new", "view", ts_ms=10_000)  # 1 point, 10 half-lives later: worth more now
    assert p.top(2) == ["new", "old"]
    assert p.top(2, exclude={"new"}) == ["old"]
    assert p.top(2, eligible=lambda i: i != "old") == ["new"]


def test_scorer_excludes_purchased_and_out_of_stock_and_returns_k(pipeline):
    st = UserState()
    for n, (i, t) in enumerate([(1, "view"), (4, "purchase"), (7, "view"), (10, "purchase")]):
        pipeline.apply_event(st, event("u", i, t, n))
    pipeline.apply_catalog([("i13", item(13, in_stock=False)), ("i16", None)])  # out of stock; deleted
    [recs] = pipeline.score([st], [])
    ids = [i for i, _ in recs]
    assert len(ids) == 5 == len(set(ids))
    assert not {"i4", "i10", "i13", "i16"} & set(ids)
    scores = [s for _, s in recs]
    assert scores == sorted(scores, reverse=True)


def test_cold_user_gets_popular_items_never_empty(pipeline):
    fresh = [event("a", 2, "purchase", 1), event("b", 2, "view", 2), event("c", 8, "view", 3)]
    [recs] = pipeline.score([UserState()], fresh)
    ids = [i for i, _ in recs]
    assert ids[:2] == ["i2", "i8"] and len(ids) == 5  # popular first, topped up to k
    # even with no popularity at all, a cold user still gets k eligible items
    empty = Pipeline(
        recommender=pipeline.scorer.recommender,
        index=pipeline.scorer.index,
        top_k=5,
        history_len=4,
        purchased_max=3,
        trigger_types=TYPES,
    )
    [recs] = empty.score([UserState()], [])
    assert len(recs) == 5


def test_catalog_changes_reach_the_index(pipeline):
    index = pipeline.scorer.index
    pipeline.apply_catalog([("i30", item(30, title="violet lipstick shade 30"))])  # zero-shot: text only
    assert "i30" in index and index.is_eligible("i30")
    pipeline.apply_catalog([("i30", item(30, in_stock=False, title="violet lipstick shade 30"))])
    assert not index.is_eligible("i30")
    pipeline.apply_catalog([("i31", item(31, title=""))])  # no text, no history: a default vector
    assert "i31" in index
    pipeline.apply_catalog([("i30", None)])
    assert "i30" not in index and pipeline.metrics.value("streamrec_catalog_items") == len(index)


def test_metrics_render_prometheus_text():
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics()
    m.events_in.inc(3)
    m.dlq.inc()
    m.observe_latency_ms(7.0)
    m.batch_size.observe(3)
    m.stage_seconds.labels(stage="parse").observe(0.002)
    text = m.render(model_version="v9", consumer_lag={"t/0": 4})
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("streamrec_events_in_total", ())] == 3 and samples[("streamrec_dlq_total", ())] == 1
    assert samples[("streamrec_event_to_recommendation_ms_bucket", (("le", "10.0"),))] == 1
    assert samples[("streamrec_event_to_recommendation_ms_bucket", (("le", "5.0"),))] == 0
    assert samples[("streamrec_model_info", (("version", "v9"),))] == 1
    assert samples[("streamrec_consumer_lag", (("partition", "t/0"),))] == 4
    assert samples[("streamrec_stage_seconds_count", (("stage", "parse"),))] == 1
    # the model version and the lag are as of the latest render, not accumulated
    text = m.render(model_version="v10", consumer_lag={})
    assert 'version="v9"' not in text and "streamrec_consumer_lag{" not in text
    # each worker its own registry: a second one starts from zero
    assert "streamrec_events_in_total 0.0" in Metrics().render(model_version="v1")


def test_scoring_times_model_index_and_filter_stages(pipeline):
    states = [UserState(), UserState()]
    pipeline.apply_event(states[0], event("u", 3))  # one warm user, one cold (filled from popularity)
    lists = pipeline.score(states, [])
    assert [len(x) for x in lists] == [5, 5]
    m = pipeline.metrics
    for stage in ("model", "index", "filter"):
        assert m.value("streamrec_stage_seconds_count", stage=stage) == 1, stage


def test_thread_cpu_is_exported_per_thread():
    import threading

    from streamrec.serving.metrics import thread_cpu_seconds

    busy = threading.Event()

    def spin() -> None:
        x = 0
        while not busy.is_set():
            x += 1

    t = threading.Thread(target=spin, name="spinner-test")
    t.start()
    try:
        import time

        time.sleep(0.3)
        cpu = thread_cpu_seconds()
    finally:
        busy.set()
        t.join()
    assert cpu.get("spinner-test", 0.0) > 0.0 and "MainThread" in cpu
    text = Metrics().render(model_version="v1")
    assert 'streamrec_thread_cpu_seconds_total{thread="MainThread"}' in text


def test_transition_candidates_join_the_index_results_with_their_term(pipeline):
    """An item that followed the user's newest item in training gets its term on top of its inner
    product, also when the index did not return it; purchased or out-of-stock ones never come."""
    import numpy as np

    from streamrec.model.transitions import Transitions

    rec = pipeline.scorer.recommender
    n = rec.model.config.n_items
    st = UserState()
    pipeline.apply_event(st, event("u", 1, "view", 0))
    [plain] = pipeline.score([st], [])
    outside = next(f"i{i}" for i in range(24, 1, -1) if f"i{i}" not in dict(plain))  # not in the top 5
    to, skip = rec.vocab.row(outside), rec.vocab.row("i2")
    # i1 was followed by `outside` (weight 3) and by i2; i2 is bought below
    indptr = np.zeros(n + 2, np.int64)
    indptr[rec.vocab.row("i1") + 1 :] = 2
    rec.model.transitions = Transitions(indptr, np.array([to, skip]), np.array([3.0, 9.0]), weight=10.0)
    pipeline.apply_event(st, event("u", 2, "purchase", 1))
    pipeline.apply_event(st, event("u", 1, "view", 2))  # the newest item is i1 again
    [recs] = pipeline.score([st], [])
    got = dict(recs)
    inner = float(rec.score(rec.encode_users([st.history_pairs()]), [outside])[0, 0])
    # history i1 (age 2), i2 (age 1: no followers), i1 (age 0): 3 * (1 + 0.5 ** 2)
    assert recs[0][0] == outside and got[outside] == pytest.approx(inner + 10.0 * np.log1p(3.75), rel=1e-5)
    assert "i2" not in got and len(recs) == 5
    pipeline.apply_catalog([(outside, item(int(outside[1:]), in_stock=False))])
    [recs] = pipeline.score([st], [])
    assert outside not in dict(recs) and len(recs) == 5
    rec.model.transitions.weight = 0.0  # weight 0: not served
    [recs] = pipeline.score([st], [])
    assert recs == pipeline.score([st], [])[0] and rec.transitions is None

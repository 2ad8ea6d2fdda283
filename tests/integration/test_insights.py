"""User insights end to end (issue #15): real Kafka, a real `streamrec worker` process, a model
with a purchase-intent model, and a typed session replayed in the Taobao layout."""

from __future__ import annotations

import json
import time
import uuid

from confluent_kafka import Consumer

from streamrec.client import EventProducer, RecommendationSubscriber
from streamrec.devtools.replay import run_typed_replay
from streamrec.schemas import Profile
from streamrec.streams.topics import create_topics
from streamrec.typed_events import by_user, parse_lines
from tests.integration.test_worker import wait_for
from tests.integration.worker_harness import start_worker


def profiles_from_topic(settings, user: str, last_event: str, timeout: float = 60.0) -> Profile:
    """The profile of ``user`` on the profiles topic that follows ``last_event``."""
    c = Consumer(
        {
            "bootstrap.servers": settings.resolved_bootstrap(),
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([settings.topic_profiles])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error() or m.key() != user.encode():
                continue
            prof = Profile.from_bytes(m.value())
            if prof.event_id == last_event:
                return prof
    finally:
        c.close()
    raise AssertionError(f"no profile of {user} after {last_event} on {settings.topic_profiles}")


def test_typed_session_gets_intent_reasons_and_a_profile(kafka_settings, sim_model, shop, tmp_path):
    create_topics(kafka_settings)
    catalog = [c for c in shop.catalog() if c.in_stock]
    with EventProducer.from_settings(kafka_settings) as producer:
        for item in shop.catalog():
            producer.send_catalog(item)
    by_cat: dict[str, list] = {}
    for c in catalog:
        by_cat.setdefault(c.category, []).append(c)
    cats = sorted(by_cat, key=lambda k: -len(by_cat[k]))
    one_cat = by_cat[cats[0]][:4]
    mixed = [by_cat[cats[1]][0], by_cat[cats[2]][0], by_cat[cats[1]][1]]
    t = int(time.time()) - 600
    lines = ["user_id,item_id,category_id,behavior,ts"]
    # carol only views, all in one category; dave views, carts and buys across two others
    lines += [f"carol,{c.item_id},{c.category},pv,{t + 20 * k}" for k, c in enumerate(one_cat)]
    lines += [
        f"dave,{mixed[0].item_id},{mixed[0].category},pv,{t}",
        f"dave,{mixed[0].item_id},{mixed[0].category},cart,{t + 30}",
        f"dave,{mixed[1].item_id},{mixed[1].category},pv,{t + 60}",
        f"dave,{mixed[0].item_id},{mixed[0].category},buy,{t + 90}",
        f"dave,{mixed[2].item_id},{mixed[2].category},pv,{t + 120}",
    ]
    users = by_user(parse_lines(lines))
    last = {"carol": f"it-carol-{len(users['carol'])}", "dave": f"it-dave-{len(users['dave'])}"}

    # every batch's profile is sent (the default sends an unchanged ranking at most once a minute;
    # tests/unit/streams/test_agents.py covers that): the message after each user's last event exists
    w = start_worker(kafka_settings, sim_model, tmp_path, STREAMREC_PROFILE_PUBLISH_S="0")
    try:
        w.wait_healthy()
        with RecommendationSubscriber.from_settings(kafka_settings, user_ids=set(users)) as sub:
            sub.wait_ready()
            with EventProducer.from_settings(kafka_settings) as producer:
                assert (
                    run_typed_replay(producer, users, rate=None, max_events=None, send_catalog=False, id_prefix="it")
                    == len(lines) - 1
                )
            recs = wait_for(sub, lambda got: set(last.values()) <= {r.event_id for r in got})
        for rec in recs:
            history = {e.item_id for e in users[rec.user_id]}
            assert rec.purchase_intent is not None and 0.0 <= rec.purchase_intent <= 1.0
            assert len(rec.items) == kafka_settings.top_k
            for it in rec.items:
                assert it.reason is not None and it.reason.kind in ("similar_to", "popular", "new_item")
                if it.reason.kind == "similar_to":
                    assert it.reason.item_id in history
        final = {r.user_id: r for r in recs if r.event_id in last.values()}
        assert any(it.reason.kind == "similar_to" for it in final["carol"].items)

        # the latest list over HTTP carries the same reasons and intent
        status, body = w.get("/users/dave/recommendations")
        got = json.loads(body)
        assert status == 200 and got["event_id"] == last["dave"]
        assert got["purchase_intent"] == final["dave"].purchase_intent

        for user in users:
            status, body = w.get(f"/users/{user}/profile")
            assert status == 200, body
            view = Profile.from_dict(json.loads(body))
            topic = profiles_from_topic(kafka_settings, user, last[user])
            # the profile view and shop.profiles agree (everything but when each was produced)
            assert view.model_dump(exclude={"produced_ts"}) == topic.model_dump(exclude={"produced_ts"})
        carol = Profile.from_dict(json.loads(w.get("/users/carol/profile")[1]))
        assert [c.name for c in carol.categories] == [cats[0]]  # only views in one category: on top
        dave = Profile.from_dict(json.loads(w.get("/users/dave/profile")[1]))
        assert dave.categories[0].name == cats[1]  # the carted and bought category leads
        assert w.get("/users/nobody/profile")[0] == 404
    finally:
        w.stop()

"""The foundation against a real broker: topics, EventProducer, RecommendationSubscriber."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer

from streamrec.client import EventProducer, RecommendationSubscriber
from streamrec.errors import SchemaError
from streamrec.schemas import Recommendation, ScoredItem, ShopEvent
from streamrec.streams.topics import admin_client, create_topics, topic_specs


def _event(i: int, user: str = "u1", type_: str = "view") -> dict:
    return {
        "event_id": f"e{i}",
        "user_id": user,
        "session_id": "s1",
        "item_id": f"sku-{i}",
        "type": type_,
        "ts": 1_760_000_000_000 + i,
    }


def _consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg)
    finally:
        c.close()
    return out


def _consume_to_end(bootstrap: str, topic: str, timeout: float = 30.0) -> list:
    """Every message of ``topic`` below the end offsets taken now, all partitions."""
    from confluent_kafka import TopicPartition

    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False}
    )
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        end = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out, pos = [], dict.fromkeys(parts, 0)
        deadline = time.monotonic() + timeout
        while any(pos[p] < end[p] for p in parts):
            assert time.monotonic() < deadline, f"could not read {topic} up to {end}; at {pos}"
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                pos[msg.partition()] = msg.offset() + 1
                if msg.offset() < end[msg.partition()]:
                    out.append(msg)
    finally:
        c.close()
    return out


def test_create_topics_twice_is_fine(kafka_settings):
    first = create_topics(kafka_settings)
    assert set(first.values()) == {"created"}
    second = create_topics(kafka_settings)
    assert set(second.values()) == {"exists"}
    md = admin_client(kafka_settings).list_topics(timeout=10)
    for spec in topic_specs(kafka_settings):
        assert len(md.topics[spec.name].partitions) == spec.partitions


def test_event_producer_round_trip(kafka_settings):
    create_topics(kafka_settings)
    with EventProducer.from_settings(kafka_settings) as producer:
        for i in range(20):
            producer.send(_event(i, user=f"user-{i % 3}"))
    msgs = _consume_all(kafka_settings.resolved_bootstrap(), kafka_settings.topic_events, 20)
    assert len(msgs) == 20
    events = [ShopEvent.from_bytes(m.value()) for m in msgs]
    assert {e.event_id for e in events} == {f"e{i}" for i in range(20)}
    for m, e in zip(msgs, events):
        assert m.key().decode() == e.user_id  # keyed by user: one user's events stay in order
    # per-user order preserved within the partition
    for user in {e.user_id for e in events}:
        ids = [int(e.event_id[1:]) for e in events if e.user_id == user]
        assert ids == sorted(ids)


def test_invalid_event_is_refused_and_not_sent(kafka_settings):
    create_topics(kafka_settings)
    with EventProducer.from_settings(kafka_settings) as producer:
        with pytest.raises(SchemaError, match="type"):
            producer.send(_event(1, type_="zoom"))
        with pytest.raises(SchemaError, match="user_id"):
            producer.send({**_event(2), "user_id": "x" * 500})
        producer.send(_event(3))
    # The producer flushed on close, so every message it sent is below the end offsets now: read
    # the whole topic up to them (no wait for something that might still come).
    msgs = _consume_to_end(kafka_settings.resolved_bootstrap(), kafka_settings.topic_events)
    assert [ShopEvent.from_bytes(m.value()).event_id for m in msgs] == ["e3"]


def test_subscriber_filters_users_and_skips_malformed(kafka_settings):
    from confluent_kafka import Producer

    create_topics(kafka_settings)
    with RecommendationSubscriber.from_settings(kafka_settings, user_ids={"alice"}) as sub:
        sub.wait_ready(timeout=30)
        p = Producer({"bootstrap.servers": kafka_settings.resolved_bootstrap()})
        topic = kafka_settings.topic_recommendations
        p.produce(topic, key=b"alice", value=b"{not json")
        for user in ("bob", "alice"):
            rec = Recommendation(
                user_id=user,
                items=[ScoredItem(item_id="sku-1", score=0.5)],
                model_version="v1",
                event_id="e1",
                event_ts=1_760_000_000_000,
                produced_ts=1_760_000_000_001,
            )
            p.produce(topic, key=user.encode(), value=rec.to_bytes())
        p.flush(10)
        got = None
        deadline = time.monotonic() + 30
        while got is None and time.monotonic() < deadline:
            got = sub.poll(1.0)
        assert got is not None and got.user_id == "alice"
        assert got.items[0].item_id == "sku-1"
        assert sub.skipped == 1

"""Corrupt state: a user's stored state that no longer decodes (an older release's, or damaged)
resets that user with a log line and a metric; the other users are unaffected."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamrec.client import EventProducer, RecommendationSubscriber
from streamrec.schemas import ShopEvent
from streamrec.streams.tables import USERS_CHANGELOG_CONFIG
from streamrec.streams.topics import create_topics
from tests.integration.worker_harness import start_worker


def partition_of(bootstrap: str, key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives ``key``, as the producer does."""
    topic = f"probe-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)
    got: list[int] = []
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    p.produce(topic, key=key, value=b"x", on_delivery=lambda err, msg: got.append(msg.partition()))
    assert p.flush(60) == 0 and got
    admin.delete_topics([topic])
    return got[0]


@pytest.mark.slow
def test_undecodable_state_resets_only_that_user(kafka_settings, sim_model, shop, tmp_path):
    settings = kafka_settings
    bootstrap = settings.resolved_bootstrap()
    create_topics(settings)
    with EventProducer.from_settings(settings) as producer:
        for item in shop.catalog():
            producer.send_catalog(item)
    # The worker restores the users table from its changelog: damage mallory's record there (as
    # an older release or a bad disk would have left it), and give carol a good one.
    changelog = f"{settings.app_id}-users-changelog"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics(
        [NewTopic(changelog, num_partitions=settings.partitions, replication_factor=1, config=USERS_CHANGELOG_CONFIG)]
    )[changelog].result(30)
    items = [c.item_id for c in shop.catalog() if c.in_stock]
    raw = Producer({"bootstrap.servers": bootstrap})
    damaged = {"mallory": b'{"h": [["i1", "view"]], "p": 3}', "trent": b"\x00\xffnot json"}
    for user, value in damaged.items():
        raw.produce(
            changelog,
            key=json.dumps(user).encode(),
            value=value,
            partition=partition_of(bootstrap, user.encode(), settings.partitions),
        )
    carol = {"h": [[items[0], "purchase", 1_760_000_000_000, "carol-old"]], "p": [items[0]], "s": "s0", "r": None}
    raw.produce(
        changelog,
        key=b'"carol"',
        value=json.dumps(carol).encode(),
        partition=partition_of(bootstrap, b"carol", settings.partitions),
    )
    assert raw.flush(60) == 0

    w = start_worker(settings, sim_model, tmp_path)
    try:
        w.wait_healthy()
        users = ["mallory", "trent", "carol", "dave"]
        events = [
            ShopEvent(
                event_id=f"{u}-new",
                user_id=u,
                session_id="s1",
                item_id=items[1],
                type="view",
                ts=int(time.time() * 1000),
            )
            for u in users
        ]
        with RecommendationSubscriber.from_settings(settings, user_ids=set(users)) as sub:
            sub.wait_ready()
            with EventProducer.from_settings(settings) as producer:
                for e in events:
                    producer.send(e)
            got: dict[str, object] = {}
            deadline = time.monotonic() + 120
            while len(got) < len(users) and time.monotonic() < deadline:
                rec = sub.poll(0.5)
                if rec is not None:
                    got[rec.user_id] = rec
        assert set(got) == set(users), w.log()[-3000:]  # everyone answered, the damaged users too
        carol_items = [i.item_id for i in got["carol"].items]
        assert items[0] not in carol_items  # carol's restored purchase still counts: unaffected
        text = w.get("/metrics")[1]
        resets = next(x for x in text.splitlines() if x.startswith("streamrec_state_resets_total "))
        assert float(resets.split()[1]) == 2.0
        dlq = next(x for x in text.splitlines() if x.startswith("streamrec_dlq_total "))
        assert float(dlq.split()[1]) == 0.0  # a reset is not a refused event
        log = w.log()
        assert "user state reset user=mallory" in log and "user state reset user=trent" in log
        assert "user state reset user=carol" not in log and "Traceback" not in log
        status, body = w.get("/users/mallory/recommendations")
        assert status == 200 and json.loads(body)["event_id"] == "mallory-new"
    finally:
        w.stop()

"""streams.direct against the real broker: messages are acknowledged before wait_delivered
returns, and a user's messages land on the partition Faust/aiokafka would pick (murmur2), so the
recommendations of a user share the partition number of the user's events."""

from __future__ import annotations

import uuid

from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer

from streamrec.streams.direct import DirectProducer
from streamrec.streams.topics import create_topics


async def test_direct_messages_are_acknowledged_on_the_users_partition(kafka_settings):
    settings = kafka_settings
    create_topics(settings)
    p = DirectProducer(settings)
    users = [f"user-{i}" for i in range(40)]
    out = p.channel(settings.topic_recommendations)
    for u in users:
        await out.send(key=u.encode(), value=f'{{"user_id": "{u}"}}'.encode())
    assert await p.wait_delivered(60) and p.pending() == 0 and p.delivered == len(users)
    p.close()
    c = Consumer(
        {
            "bootstrap.servers": settings.resolved_bootstrap(),
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([settings.topic_recommendations])
    seen: dict[str, int] = {}
    try:
        for _ in range(120):
            msg = c.poll(1.0)
            if msg is not None and not msg.error():
                seen[msg.key().decode()] = msg.partition()
            if len(seen) == len(users):
                break
    finally:
        c.close()
    parts = list(range(settings.partitions))
    want = {u: DefaultPartitioner()(u.encode(), parts, parts) for u in users}
    assert seen == want

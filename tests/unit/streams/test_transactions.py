"""TransactionalSink without a broker: each message goes to the transaction of the partition its
current event came from (Faust's transactional id), or through the plain topic without one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import faust
from faust.events import Event
from faust.types import Message

from streamrec.streams.agents import as_current
from streamrec.streams.transactions import TransactionalSink


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def send(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append((*args, kwargs))
        return "sent"


def make(app_id: str = "worker-1") -> tuple[TransactionalSink, Recorder, Recorder, faust.App]:
    real = faust.App(app_id, autodiscover=False)
    producer, topic = Recorder(), Recorder()
    topic.get_topic_name = lambda: "shop.recommendations"  # type: ignore[attr-defined]
    app = SimpleNamespace(
        conf=SimpleNamespace(id=app_id),
        producer=producer,
        assignor=SimpleNamespace(group_for_topic={"shop.events": 0, "shop.user-deletions": 1}.__getitem__),
    )
    return TransactionalSink(app, topic), producer, topic, real  # type: ignore[arg-type]


async def test_a_message_joins_the_transaction_of_its_events_partition():
    sink, producer, topic, real = make()

    async def send_for(topic_name: str, partition: int) -> None:
        msg = Message(topic_name, partition, 41, 0.0, 0, [], b"u1", b"{}", None)
        event = Event(real, b"u1", b"{}", [], msg)  # held: the current event is a weak reference
        as_current(event)
        assert await sink.send(key=b"u1", value=b"rec") == "sent"

    await send_for("shop.events", 3)
    await send_for("shop.user-deletions", 0)
    assert producer.calls == [
        ("shop.recommendations", b"u1", b"rec", None, None, None, {"transactional_id": "worker-1-0-3"}),
        ("shop.recommendations", b"u1", b"rec", None, None, None, {"transactional_id": "worker-1-1-0"}),
    ]
    assert topic.calls == []


async def test_without_a_current_event_it_is_a_plain_send():
    sink, producer, topic, _ = make()

    async def send() -> None:
        assert faust.current_event() is None
        await sink.send(key=b"k", value=b"v")

    await send()
    assert topic.calls == [({"key": b"k", "value": b"v"},)] and producer.calls == []

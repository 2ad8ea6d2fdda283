"""The worker's consumer puts source partitions with no committed offset at the beginning when
streams resume (the data-loss fix in streamrec.streams.consumer; the end-to-end guard is
tests/integration/test_worker.py::test_worker_killed_before_its_first_commit_successor_reads_every_event)."""

from __future__ import annotations

from faust.types import TP

from streamrec.streams.app import StreamApp
from streamrec.streams.consumer import Consumer, Transport, partitions_to_rewind

COMMITTED = {
    TP("events", 0): None,  # never committed
    TP("events", 1): -1,  # never committed (broker's "no offset")
    TP("events", 2): 0,  # committed at 0: aiokafka does not seek there
    TP("events", 3): 17,  # aiokafka seeks here itself
    TP("app-users-changelog", 0): None,  # positioned by table recovery, never rewound here
    TP("app-__assignor-__leader", 0): None,
}


def is_source(tp: TP) -> bool:
    return tp.topic == "events"


def test_uncommitted_source_partitions_are_rewound_when_reset_is_earliest():
    got = partitions_to_rewind(COMMITTED, is_source=is_source, auto_offset_reset="earliest")
    assert sorted(got) == [TP("events", 0), TP("events", 1), TP("events", 2)]


def test_with_reset_latest_only_a_commit_at_zero_is_rewound():
    assert partitions_to_rewind(COMMITTED, is_source=is_source, auto_offset_reset="latest") == [TP("events", 2)]


def test_worker_app_builds_the_rewinding_consumer():
    app = StreamApp("unit-consumer", broker="kafka://127.0.0.1:9", autodiscover=False)
    assert isinstance(app.transport, Transport)
    assert app.transport.Consumer is Consumer


async def test_a_recovery_seek_waits_for_the_fetch_in_flight(monkeypatch):
    """The recovery's seek of a changelog partition runs only once no fetch is in flight: a
    fetch returning after it, while the flow is stopped, would have its records dropped and the
    recovery would wait forever for them (see Consumer.seek_wait)."""
    import asyncio

    from faust.transport.drivers import aiokafka as faust_aiokafka

    app = StreamApp("unit-consumer-seek", broker="kafka://127.0.0.1:9", autodiscover=False)
    consumer = app.consumer
    assert isinstance(consumer, Consumer)
    seeks: list[dict] = []

    async def seek_wait(self, partitions):
        seeks.append(dict(partitions))

    fetched = asyncio.Event()

    async def getmany(self, active_partitions, timeout):  # noqa: ASYNC109 - a fetch, returning when told
        await fetched.wait()
        return {}

    monkeypatch.setattr(faust_aiokafka.Consumer, "seek_wait", seek_wait)
    monkeypatch.setattr(faust_aiokafka.Consumer, "_getmany", getmany)
    fetch = asyncio.ensure_future(consumer._getmany(set(), 1.0))
    await asyncio.sleep(0.01)
    task = asyncio.ensure_future(consumer.seek_wait({TP("app-users-changelog", 0): 0}))
    await asyncio.sleep(0.05)
    assert seeks == []  # it waits for the fetch in flight
    fetched.set()  # the fetch returns
    await asyncio.wait_for(asyncio.gather(fetch, task), 1)
    assert seeks == [{TP("app-users-changelog", 0): 0}]
    await asyncio.wait_for(consumer.seek_wait({TP("app-users-changelog", 1): 3}), 1)  # no fetch: at once
    assert seeks[-1] == {TP("app-users-changelog", 1): 3}

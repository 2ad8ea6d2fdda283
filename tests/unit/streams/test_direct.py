"""streams.direct without a broker: nothing sent is delivered at once; an unreachable broker
keeps a message pending (never dropped), so the commit that waits for it is skipped; the users
table's changelog through the direct producer (streams.tables.UsersTable)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from streamrec.config import Settings
from streamrec.devtools.localkafka import free_port
from streamrec.schemas import UserDeletion
from streamrec.serving.state import UserState
from streamrec.streams.direct import DirectProducer
from streamrec.streams.tables import UsersTable
from tests.unit.streams.test_agents import TS, harness  # noqa: F401 - the fixture


async def test_nothing_sent_is_delivered_and_no_client_is_made():
    p = DirectProducer(Settings(bootstrap_servers="127.0.0.1:1"))
    assert await p.wait_delivered(0.1) and p.pending() == 0
    assert p._client is None and p.close(0.1) == 0


async def test_unreachable_broker_keeps_the_message_pending():
    p = DirectProducer(Settings(bootstrap_servers=f"127.0.0.1:{free_port()}"), config={"log_level": 0})
    await p.channel("t").send(key=b"u1", value=b"{}")
    assert p.pending() == 1
    assert not await p.wait_delivered(0.3)  # not acknowledged: a commit would be skipped
    assert p.pending() == 1 and p.failed == 0  # still queued (no deadline), not dropped
    p._producer.purge()


async def test_a_full_local_queue_keeps_later_messages_behind_in_order():
    """librdkafka's queue holds one message here: the next ones wait in the producer's backlog,
    in order, and count as pending (a commit waits for them); none is dropped."""
    p = DirectProducer(
        Settings(bootstrap_servers=f"127.0.0.1:{free_port()}"),
        config={"log_level": 0, "queue.buffering.max.messages": 1},
    )
    for i in range(3):
        p.produce_nowait("t", f"u{i}".encode(), b"{}", partition=0)
    assert p.pending() == 3 and [m[2] for m in p._backlog] == [b"u1", b"u2"]
    assert not await p.wait_delivered(0.2)
    assert p.pending() == 3 and p.failed == 0
    p._producer.purge()


class Recording:
    """A stand-in for DirectProducer.produce_nowait: what the table hands it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int, Any]] = []

    def produce_nowait(self, topic: str, key: bytes, value: bytes | None, *, partition: int, delivered: Any) -> None:
        self.sent.append((topic, key, value, partition, delivered))

    async def wait_backlog(self) -> None:
        self.waited = True


async def test_the_users_changelog_goes_to_the_direct_producer_with_fausts_bytes(harness):  # noqa: F811
    """With a direct producer, each user's write is one message on the changelog topic, on that
    user's own event's partition, with the bytes Faust's codecs give; a deletion is a tombstone;
    nothing goes through Faust's producer buffer."""
    h = harness
    users = h.users
    assert isinstance(users, UsersTable)
    rec = users.direct = Recording()
    await h.handler.handle([h.shop("a", 1, n=1, partition=0), h.shop("b", 2, n=2, partition=1)])
    assert h.app.producer.buffer.pending.empty()
    assert rec.waited  # the batch ended with the backlog check
    topic = users.changelog_topic.get_topic_name()
    codecs = h.app.serializers  # as a recovering worker reads the changelog back
    sent = {
        codecs.loads_key(users.key_type, key, serializer=users.key_serializer): (t, value, partition)
        for t, key, value, partition, _ in rec.sent
    }
    assert sorted(sent) == ["a", "b"] and {t for t, _, _ in sent.values()} == {topic}
    assert sent["a"][2] == 0 and sent["b"][2] == 1
    b = codecs.loads_value(users.value_type, sent["b"][1], serializer=users.value_serializer)
    assert [hh[3] for hh in UserState.from_json(b).history] == ["b-2-view-2"]
    a = codecs.loads_value(users.value_type, sent["a"][1], serializer=users.value_serializer)
    assert a == json.loads(json.dumps(users.get("a")))  # what the store holds (tuples as JSON arrays)

    rec.sent.clear()
    req = UserDeletion(user_id="a", requested_ts=TS + 10)
    await h.handler.delete_user(h.event(req.to_bytes(), partition=0, key=b"a"))
    [(t, key, value, partition, _)] = rec.sent
    assert (t, value, partition) == (topic, None, 0)
    assert codecs.loads_key(users.key_type, key, serializer=users.key_serializer) == "a"


async def test_acknowledged_changelog_offsets_reach_the_store_at_persist(harness, monkeypatch):  # noqa: F811
    """Deliveries are noted (highest offset per partition) and written to the store only by
    persist_delivered, each once."""
    users = harness.users
    written: list[tuple[Any, int]] = []
    monkeypatch.setattr(users.data, "set_persisted_offset", lambda tp, offset: written.append((tp, offset)))
    users._noted(0, 5)
    users._noted(0, 3)  # reports may come out of order across partitions' threads: the highest wins
    users._noted(1, 7)
    assert written == []
    assert users.persist_delivered() == 2
    topic = users.changelog_topic.get_topic_name()
    assert sorted((tp.topic, tp.partition, off) for tp, off in written) == [(topic, 0, 5), (topic, 1, 7)]
    assert users.persist_delivered() == 0 and len(written) == 2


async def test_a_handover_waits_for_what_was_sent_and_says_when_it_could_not(caplog):
    p = DirectProducer(Settings(bootstrap_servers=f"127.0.0.1:{free_port()}"), config={"log_level": 0})
    assert await p.handover(0.1)  # nothing sent
    p.produce_nowait("t", b"u1", b"{}", partition=0)
    assert not await p.handover(0.2)
    assert "handed over with 1 message(s) not yet acknowledged" in caplog.text
    p._producer.purge()


def receivers_of(app: Any, signal: Any, name: str, owner: Any) -> list[Any]:
    """The receivers ``name`` that mode files for ``app`` on ``signal`` and whose closure holds
    ``owner``. mode files them under hash(app), an address: an app of an earlier test, freed, can
    have left its own under the same key, so only this app's own (by what they hold) count."""
    return [
        r
        for r in signal._filter_receivers[signal._create_id(app)]
        if getattr(r, "__name__", "") == name
        and any(c.cell_contents is owner for c in (getattr(r, "__closure__", None) or ()))
    ]


def test_the_worker_waits_for_its_direct_deliveries_when_partitions_are_revoked(tiny_checkpoint, tmp_path):
    from streamrec.indexer import ItemIndex
    from streamrec.model.inference import Recommender
    from streamrec.streams.app import create_app

    rec = Recommender.load(tiny_checkpoint, device="cpu")
    apps = []  # kept alive: mode files an app's receivers under the app's id
    for direct in (True, False):
        settings = Settings(data_dir=tmp_path, app_id=f"unit-direct-{direct}", direct_produce=direct)
        app, pipeline = create_app(settings, recommender=rec, index=ItemIndex(rec.dim, kind="flat"), store="memory://")
        apps.append(app)
        signal = app.on_partitions_revoked  # mode keeps receivers per sender (the app)
        users = app.streamrec_handler.users
        assert (users.direct is not None) is direct
        assert len(receivers_of(app, signal, "handover", users.direct)) == (1 if direct else 0)
        pipeline._executor.shutdown(wait=True)


def test_a_stopped_app_drops_its_receivers(tiny_checkpoint, tmp_path):
    # mode files receivers under hash(app) (an address) in a mapping shared by every app and holds
    # them strongly: a stopped app must drop its own, or a later app at the same address runs them
    from streamrec.indexer import ItemIndex
    from streamrec.model.inference import Recommender
    from streamrec.streams.app import create_app

    rec = Recommender.load(tiny_checkpoint, device="cpu")
    settings = Settings(data_dir=tmp_path, app_id="unit-direct-drop", direct_produce=True)
    app, pipeline = create_app(settings, recommender=rec, index=ItemIndex(rec.dim, kind="flat"), store="memory://")
    direct = app.streamrec_handler.users.direct
    revoked, shutdown = app.on_partitions_revoked, app.on_before_shutdown
    assert len(receivers_of(app, revoked, "handover", direct)) == 1
    assert len(receivers_of(app, shutdown, "save_index", pipeline)) == 1
    asyncio.run(shutdown.send())  # what Faust's App.on_stop sends
    assert receivers_of(app, revoked, "handover", direct) == []
    assert receivers_of(app, shutdown, "save_index", pipeline) == []
    pipeline._executor.shutdown(wait=True)


async def test_the_agent_waits_while_the_backlog_is_over_its_bound():
    p = DirectProducer(
        Settings(bootstrap_servers=f"127.0.0.1:{free_port()}"),
        config={"log_level": 0, "queue.buffering.max.messages": 1},
    )
    for i in range(3):
        p.produce_nowait("t", f"u{i}".encode(), b"{}", partition=0)
    assert p.backlog() == 2
    await asyncio.wait_for(p.wait_backlog(2), 1)  # within the bound: at once
    with pytest.raises(TimeoutError):  # over it: waits for room (none comes: no broker)
        await asyncio.wait_for(p.wait_backlog(1), 0.2)
    p._producer.purge()

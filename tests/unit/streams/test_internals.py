"""Private Faust / aiokafka internals the worker relies on: these fail loudly if one moves or
changes shape after an upgrade (checked against faust-streaming 0.15.3 and aiokafka 0.14.0)."""

from __future__ import annotations

import contextvars
import inspect
import re
import sys
from typing import Any

import faust
import faust.streams
from faust.events import Event
from faust.types import Message


def test_faust_current_event_is_a_contextvar_of_weakrefs_read_by_current_event():
    from streamrec.streams.agents import as_current

    var = getattr(faust.streams, "_current_event", None)
    assert isinstance(var, contextvars.ContextVar), "faust.streams._current_event moved or changed type"
    app = faust.App("internals-test", autodiscover=False)
    msg = Message("t", 3, 7, 0.0, 0, [], b"k", b"v", None)
    event = Event(app, b"k", b"v", [], msg)

    def check() -> None:
        as_current(event)
        assert faust.current_event() is event
        assert faust.current_event().message.partition == 3  # what the table's changelog uses

    contextvars.copy_context().run(check)


async def test_aiokafka_force_metadata_update_is_an_awaitable_on_the_consumer_client():
    from aiokafka import AIOKafkaConsumer
    from aiokafka.client import AIOKafkaClient

    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")  # never started: no broker needed
    client = getattr(consumer, "_client", None)
    assert isinstance(client, AIOKafkaClient), "AIOKafkaConsumer._client moved or changed type"
    assert list(inspect.signature(AIOKafkaClient.force_metadata_update).parameters) == ["self"]
    pending = client.force_metadata_update()
    assert inspect.isawaitable(pending)
    pending.cancel()


def test_faust_worker_spinner_sets_the_root_logger_to_debug_and_disable_spinner_prevents_it():
    """Faust's worker, at WARNING, adds a DEBUG spinner handler and sets the ROOT logger to DEBUG
    (faust.worker.Worker._setup_spinner_handler); streamrec's worker turns the spinner off."""
    import logging

    from faust.worker import Worker

    from streamrec.streams.cli import disable_spinner

    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        for disabled in (False, True):
            app = faust.App(f"internals-spinner-{disabled}", autodiscover=False)
            worker = Worker(app, loglevel="WARNING", redirect_stdouts=False)
            assert worker.spinner is not None, "faust Worker no longer creates a spinner"
            if disabled:
                disable_spinner(worker)
            root.setLevel(logging.WARNING)
            worker._setup_logging()
            assert root.level == (logging.WARNING if disabled else logging.DEBUG)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def test_faust_transactional_ids_and_the_transactional_send_are_what_the_sink_relies_on():
    """streams/transactions.py builds Faust's transactional id itself and sends with it; the
    worker's consumer wraps force_commit and drains the producer buffer."""
    from faust.transport.consumer import Consumer as FaustConsumer
    from faust.transport.consumer import TransactionManager
    from faust.transport.drivers.aiokafka import Producer
    from faust.transport.producer import ProducerBuffer

    assert TransactionManager.transactional_id_format == "{group_id}-{tpg.group}-{tpg.partition}"
    send = inspect.signature(Producer.send).parameters
    assert list(send)[:7] == ["self", "topic", "key", "value", "partition", "timestamp", "headers"]
    assert send["transactional_id"].kind is inspect.Parameter.KEYWORD_ONLY
    assert list(inspect.signature(FaustConsumer.force_commit).parameters) == ["self", "topics", "start_new_transaction"]
    assert inspect.iscoroutinefunction(ProducerBuffer.flush)


async def test_worker_consumer_batches_fetches_through_aiokafkas_private_fetch_settings(tiny_checkpoint, tmp_path):
    """streams.consumer.ConsumerThread sets aiokafka's ``_fetch_min_bytes``/``_fetch_max_wait_ms``
    after Faust built the consumer; aiokafka reads them when it starts its fetcher."""
    import uuid

    from aiokafka import AIOKafkaConsumer

    from streamrec.config import Settings
    from streamrec.indexer import ItemIndex
    from streamrec.model.inference import Recommender
    from streamrec.streams.app import create_app
    from streamrec.streams.consumer import ConsumerThread

    start_src = inspect.getsource(AIOKafkaConsumer.start)
    assert "fetch_min_bytes=self._fetch_min_bytes" in start_src, "aiokafka no longer reads _fetch_min_bytes"
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start_src, "aiokafka no longer reads _fetch_max_wait_ms"
    rec = Recommender.load(tiny_checkpoint, device="cpu")
    settings = Settings(
        data_dir=tmp_path, app_id=f"unit-{uuid.uuid4().hex[:8]}", fetch_min_bytes=1234, fetch_max_wait_ms=7
    )
    app, pipeline = create_app(settings, recommender=rec, index=ItemIndex(rec.dim, kind="flat"), store="memory://")
    try:
        thread = app.consumer._thread
        assert isinstance(thread, ConsumerThread)
        consumer = thread._create_worker_consumer(app.transport)  # built, never started: no broker
        assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (1234, 7)
    finally:
        pipeline._executor.shutdown(wait=True)


def test_faust_acks_a_message_when_its_last_reference_is_released_and_take_events_acks_each_batch():
    """streams.agents.consume_events (overlap) holds one more reference per message, so that
    ``take_events``' ack (when the next batch is taken) does not make the offset committable; the
    finished batch's ack does."""
    from faust.types.tuples import ConsumerMessage

    class Consumer:
        def __init__(self) -> None:
            self.acked: list[Any] = []

        def ack(self, message: Any) -> bool:
            self.acked.append(message.offset)
            return True

    consumer = Consumer()
    msg = ConsumerMessage("t", 0, 7, 0.0, 0, [], b"k", b"v", None)
    msg.incref()  # the conductor's reference (one channel)
    msg.incref()  # the agent's
    assert msg.ack(consumer) is False and consumer.acked == [] and msg.refcount == 1  # take_events
    assert msg.ack(consumer) is True and consumer.acked == [7]  # the finished batch
    src = inspect.getsource(faust.streams.Stream.take_events)
    assert "yield list(events)" in src and "await self.ack(event)" in src and "self.enable_acks = False" in src


def test_faust_table_writes_go_through_on_key_set_and_on_key_del_as_users_table_overrides_them():
    """streams.tables.UsersTable replaces the changelog send of on_key_set / on_key_del and
    keeps the rest of what they do: that must be all they do (faust-streaming 0.15.3)."""
    from faust.tables.base import Collection
    from faust.tables.table import Table
    from mode.utils.collections import ManagedUserDict

    for name, rest in (
        ("on_key_set", ["_maybe_set_key_ttl", "_sensor_on_set"]),
        ("on_key_del", ["_maybe_del_key_ttl", "_sensor_on_del"]),
    ):
        src = inspect.getsource(getattr(Table, name))
        calls = set(re.findall(r"self\.(\w+)\(", src))
        assert calls == {"send_changelog", "partition_for_key", *rest}, (name, calls)
    assert "self.on_key_set(" in inspect.getsource(ManagedUserDict.__setitem__)
    assert "self.on_key_del(" in inspect.getsource(ManagedUserDict.__delitem__)
    assert "set_persisted_offset" in inspect.getsource(Collection._on_changelog_sent)


def test_faust_recovery_seeks_changelogs_with_seek_wait_and_a_fetch_in_flight_is_signalled():
    """streams.consumer.Consumer.seek_wait relies on these (faust-streaming 0.15.3): the recovery
    positions its changelog partitions with ``consumer.seek_wait``; a fetch returning while the
    flow is stopped has its records dropped; a fetch goes through ``_getmany`` only when the
    flow is active (else it waits for it to resume); and Faust's own in-flight signal is never
    cleared (why the worker tracks the fetch itself: if this changes, revisit seek_wait)."""
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer as FaustConsumer

    assert "consumer.seek_wait(" in inspect.getsource(Recovery._seek_offsets)
    getmany = inspect.getsource(FaustConsumer.getmany)
    assert "if self.flow_active:" in getmany and "await self.perform_seek()" in getmany
    wait_next = inspect.getsource(FaustConsumer._wait_next_records)
    assert wait_next.index("await self.wait(self.can_resume_flow)") < wait_next.index("await self._getmany(")
    faust_src = inspect.getsource(sys.modules[FaustConsumer.__module__])
    assert "not_waiting_next_records.clear()" not in faust_src

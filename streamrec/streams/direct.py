"""Recommendations, profiles and the users table's changelog produced through librdkafka
(confluent-kafka), not Faust's producer.

Faust's producer is aiokafka, pure Python on the worker's one event loop: at 500 events/s its send
path (``Topic.publish_message``, aiokafka's accumulator and ``Sender``, the protocol encoding) took
about a quarter of the loop's samples (bench/RESULTS.md, Pipeline). librdkafka batches, encodes and
sends in its own C threads, so a send costs the loop a few microseconds.

At-least-once is kept: Faust commits an event's offset only after the agent has taken the next
batch, and the worker's consumer (:class:`streamrec.streams.consumer.Consumer`) first waits until
every message this producer was given before the commit is acknowledged by the broker (acks=all,
idempotent, retried without a deadline while the broker is away); while any is still waiting the
commit is skipped and tried again at the next interval. So no offset is committed before the
recommendations of its events are stored, as with Faust's own producer, whose buffer Faust
flushes before committing. Events whose offsets were not committed are read again after a crash
and answered again (the user's state deduplicates them, the answer is re-sent).

The users table's changelog (:class:`streamrec.streams.tables.UsersTable`) takes the same path,
through :meth:`DirectProducer.produce_nowait`: Faust writes a table synchronously, and its own
changelog path (``Topic.send_soon``, the producer buffer, aiokafka's sender) was the largest single
cost of the event loop once the model stage was taken out (bench/RESULTS.md, Pipeline, eighth
session). The same commit rule covers it: no offset is committed before the states of its events
are in the changelog, as Faust's own commit flushes its producer first.

Used only with ``processing_guarantee=at_least_once`` and ``STREAMREC_DIRECT_PRODUCE`` (default
on): under exactly_once the recommendations must be in Faust's transaction.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streamrec.config import Settings

log = logging.getLogger(__name__)

#: Most :meth:`DirectProducer.produce_nowait` messages held back (librdkafka's queue full) before
#: the events agent waits for room (librdkafka's own queue holds 100,000 by default)
BACKLOG_MAX = 10_000

#: ``delivered(partition, offset)``: called with where the broker stored a message
Delivered = Callable[[int, int], None]


class DirectProducer:
    """One librdkafka producer for the worker's output topics; see the module docstring.

    Every message gets a sequence number; :meth:`wait_delivered` waits until every message up to
    the number issued when it was called has its delivery report (later ones do not delay it).
    """

    def __init__(self, settings: Settings, *, config: dict[str, Any] | None = None) -> None:
        conf = settings.confluent_config()
        conf.update(
            {
                "client.id": f"{settings.app_id}-direct",
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": settings.direct_linger_ms,
                "message.timeout.ms": 0,  # never give up on a message: the commit waits for it
                "partitioner": "murmur2_random",  # Kafka's (Java) default, as Faust/aiokafka use
            }
        )
        conf.update(config or {})
        self._conf = conf
        self._client: Producer | None = None  # made on the first send (no connection before)
        self._lock = threading.Lock()
        self._seq = 0  #: last sequence number issued
        self._inflight: dict[int, None] = {}  #: sequence numbers without a delivery report, in order
        #: :meth:`produce_nowait` messages librdkafka's full queue refused, in order (sent first)
        self._backlog: deque[tuple[int, str, bytes, bytes | None, int, Delivered | None]] = deque()
        self._backlog_lock = threading.Lock()
        self.failed = 0  #: messages refused for good (each is logged)
        self.delivered = 0

    @property
    def _producer(self) -> Producer:
        if self._client is None:
            self._client = Producer(self._conf)
        return self._client

    def channel(self, topic: str) -> DirectChannel:
        return DirectChannel(self, topic)

    def _report(self, seq: int, err: KafkaError | None, msg: Message, delivered: Delivered | None = None) -> None:
        with self._lock:
            self._inflight.pop(seq, None)
            if err is None:
                self.delivered += 1
            else:
                self.failed += 1
        if err is not None:
            log.error("delivery failed topic=%s key=%r error=%s", msg.topic(), msg.key(), err.str())
        elif delivered is not None:
            partition, offset = msg.partition(), msg.offset()
            if partition is not None and offset is not None:
                delivered(partition, offset)

    def _reporter(self, seq: int, delivered: Delivered | None) -> Callable[[KafkaError | None, Message], None]:
        return lambda err, msg: self._report(seq, err, msg, delivered)

    def _issue(self) -> int:
        with self._lock:
            self._seq += 1
            self._inflight[self._seq] = None
            return self._seq

    def produce_nowait(
        self, topic: str, key: bytes, value: bytes | None, *, partition: int, delivered: Delivered | None = None
    ) -> None:
        """Hand one message to librdkafka now, without awaiting (for Faust's synchronous table
        writes: :class:`streamrec.streams.tables.UsersTable`); ``value`` None is a tombstone.
        ``delivered(partition, offset)`` is called once the broker has it (on whichever thread
        serves delivery reports). When librdkafka's queue is full (the broker slow or away) the
        message waits here, and later ones queue behind it, so the partition's order is kept; it
        counts as in flight, so :meth:`wait_delivered` (the commit) waits for it too."""
        item = (self._issue(), topic, key, value, partition, delivered)
        with self._backlog_lock:
            self._backlog.append(item)
            self._drain_backlog()
        self._producer.poll(0)  # serve delivery reports

    def _drain_backlog(self) -> None:
        """Send what waits in the backlog, in order, until librdkafka's queue is full (the caller
        holds ``_backlog_lock``)."""
        backlog = self._backlog
        while backlog:
            seq, topic, key, value, partition, delivered = backlog[0]
            try:
                self._producer.produce(
                    topic, value=value, key=key, partition=partition, on_delivery=self._reporter(seq, delivered)
                )
            except BufferError:
                return
            backlog.popleft()

    def backlog(self) -> int:
        """Messages waiting for room in librdkafka's queue (see :meth:`produce_nowait`)."""
        return len(self._backlog)

    async def wait_backlog(self, max_messages: int = BACKLOG_MAX) -> None:
        """Wait until at most ``max_messages`` wait in the backlog: the events agent calls this
        after each batch, so that a broker that takes no writes pauses the stream (as Faust's full
        producer buffer does) instead of growing the worker's memory."""
        while len(self._backlog) > max_messages:
            self._producer.poll(0)
            self._send_backlog()
            if len(self._backlog) > max_messages:
                await asyncio.sleep(0.01)

    def _send_backlog(self) -> None:
        if self._backlog:
            with self._backlog_lock:
                self._drain_backlog()

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        seq = self._issue()
        self._send_backlog()
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._reporter(seq, None))
                break
            except BufferError:  # local queue full (the broker is slow or away): wait, retry
                self._producer.poll(0)
                await asyncio.sleep(0.01)
                self._send_backlog()
        self._producer.poll(0)  # serve delivery reports

    def pending(self) -> int:
        with self._lock:
            return len(self._inflight)

    def _wait(self, upto: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                oldest = next(iter(self._inflight), None)
            if oldest is None or oldest > upto:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._send_backlog()
            self._producer.poll(min(0.05, left))

    async def wait_delivered(self, timeout_s: float = 10.0) -> bool:
        """True once every message sent before this call is acknowledged (waits in a thread)."""
        with self._lock:
            upto = self._seq
            if not self._inflight or next(iter(self._inflight)) > upto:
                return True
        return await asyncio.get_running_loop().run_in_executor(None, self._wait, upto, timeout_s)

    async def handover(self, timeout_s: float = 5.0) -> bool:
        """At a rebalance, before this worker's partitions go (``app.on_partitions_revoked``): wait
        until every message sent so far is acknowledged, as Faust flushes its own producer there.
        The next owner of a partition then reads every state this worker wrote to its changelog;
        a state delivered after the next owner's own writes would otherwise come last in the
        compacted changelog and win at a later recovery. False (logged) when ``timeout_s`` passed
        first (the broker away: those events were not committed and are read again)."""
        ok = await self.wait_delivered(timeout_s)
        if not ok:
            log.warning("partitions handed over with %d message(s) not yet acknowledged", self.pending())
        return ok

    def close(self, timeout_s: float = 10.0) -> int:
        """Deliver what waits (up to ``timeout_s``); returns how many messages stayed undelivered."""
        if self._client is None:
            return 0
        deadline = time.monotonic() + timeout_s
        while self._backlog and time.monotonic() < deadline:
            self._send_backlog()
            self._producer.poll(0.05)
        remaining = int(self._producer.flush(max(0.0, deadline - time.monotonic()))) + len(self._backlog)
        if remaining:
            log.error("closing with %d message(s) undelivered", remaining)
        return remaining


class DirectChannel:
    """``send(key=, value=)`` of one topic: the interface :class:`BatchHandler` publishes to."""

    def __init__(self, producer: DirectProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def send(self, *, key: bytes, value: bytes) -> None:
        await self.producer.send(self.topic, key, value)

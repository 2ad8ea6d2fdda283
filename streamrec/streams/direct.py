"""Recommendations and profiles produced through librdkafka (confluent-kafka), not Faust's producer.

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

Used only with ``processing_guarantee=at_least_once`` and ``STREAMREC_DIRECT_PRODUCE`` (default
on): under exactly_once the recommendations must be in Faust's transaction.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streamrec.config import Settings

log = logging.getLogger(__name__)

#: librdkafka's own log lines go through this logger. Its name starts with "kafka" so that the
#: worker's outage filter (streams.outage.CLIENT_LOGGERS) rate-limits them like aiokafka's.
LIBRDKAFKA_LOGGER = "kafka.librdkafka"


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
                "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
            }
        )
        conf.update(config or {})
        self._conf = conf
        self._client: Producer | None = None  # made on the first send (no connection before)
        self._lock = threading.Lock()
        self._seq = 0  #: last sequence number issued
        self._inflight: dict[int, None] = {}  #: sequence numbers without a delivery report, in order
        self.failed = 0  #: messages refused for good (each is logged)
        self.delivered = 0

    @property
    def _producer(self) -> Producer:
        if self._client is None:
            self._client = Producer(self._conf)
        return self._client

    def channel(self, topic: str) -> DirectChannel:
        return DirectChannel(self, topic)

    def _report(self, seq: int, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            self._inflight.pop(seq, None)
            if err is None:
                self.delivered += 1
            else:
                self.failed += 1
        if err is not None:
            log.error("delivery failed topic=%s key=%r error=%s", msg.topic(), msg.key(), err.str())

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._inflight[seq] = None
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, on_delivery=lambda err, msg: self._report(seq, err, msg)
                )
                break
            except BufferError:  # local queue full (the broker is slow or away): wait, retry
                self._producer.poll(0)
                await asyncio.sleep(0.01)
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
            self._producer.poll(min(0.05, left))

    async def wait_delivered(self, timeout_s: float = 10.0) -> bool:
        """True once every message sent before this call is acknowledged (waits in a thread)."""
        with self._lock:
            upto = self._seq
            if not self._inflight or next(iter(self._inflight)) > upto:
                return True
        return await asyncio.get_running_loop().run_in_executor(None, self._wait, upto, timeout_s)

    def close(self, timeout_s: float = 10.0) -> int:
        """Deliver what waits (up to ``timeout_s``); returns how many messages stayed undelivered."""
        if self._client is None:
            return 0
        remaining = int(self._producer.flush(timeout_s))
        if remaining:
            log.error("closing with %d recommendation/profile message(s) undelivered", remaining)
        return remaining


class DirectChannel:
    """``send(key=, value=)`` of one topic: the interface :class:`BatchHandler` publishes to."""

    def __init__(self, producer: DirectProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def send(self, *, key: bytes, value: bytes) -> None:
        await self.producer.send(self.topic, key, value)

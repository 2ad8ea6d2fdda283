"""RecommendationSubscriber: iterate over recommendations for all users or a chosen set."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from streamrec.client.connection import ConnectionWatch
from streamrec.errors import SchemaError, StreamrecError
from streamrec.schemas import Recommendation

log = logging.getLogger(__name__)


class RecommendationSubscriber:
    """Yield :class:`Recommendation` objects from the recommendations topic.

    ``from_beginning=False`` (default) starts at the end of the topic: only recommendations
    produced after the subscriber is assigned its partitions are seen (call :meth:`wait_ready`
    before emitting events if that matters). Malformed messages are skipped with a log line.
    Credentials or a certificate that the broker refuses raise
    :class:`~streamrec.errors.KafkaAuthError` from :meth:`wait_ready` / :meth:`poll`::

        with RecommendationSubscriber("localhost:9092", user_ids={"u1"}) as sub:
            for rec in sub:
                print(rec.user_id, [i.item_id for i in rec.items])
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = "shop.recommendations",
        user_ids: Iterable[str] | None = None,
        from_beginning: bool = False,
        group_id: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            # A fresh group per subscriber by default: every subscriber sees every message.
            "group.id": group_id or f"streamrec-subscriber-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": group_id is not None,
            "enable.partition.eof": False,
            # librdkafka's default long poll is 500 ms; a partition whose position is resolved
            # while a fetch is in flight joins only the next fetch, so right after the assignment
            # its first recommendations could wait that long (bench/RESULTS.md, "The 0.5 s tail")
            "fetch.wait.max.ms": 100,
        }
        conf.update(config or {})
        self.topic = topic
        self.user_ids = frozenset(user_ids) if user_ids is not None else None
        self.skipped = 0
        self._from_beginning = from_beginning
        self._fresh_group = group_id is None
        self._assigned = False
        #: next offset to read per (topic, partition), for resuming after a re-assignment
        self._positions: dict[tuple[str, int], int] = {}
        self._watch = ConnectionWatch(bootstrap_servers)
        self._consumer = Consumer(self._watch.install(conf))
        self._consumer.subscribe([topic], on_assign=self._on_assign)

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> RecommendationSubscriber:
        conf = settings.confluent_config()
        bootstrap = conf.pop("bootstrap.servers")
        conf.update(kwargs.pop("config", {}) or {})
        kwargs.setdefault("topic", settings.topic_recommendations)
        return cls(bootstrap, config=conf, **kwargs)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._fresh_group:
            # A fresh group commits nothing, so after a re-assignment (a broker restart, a group
            # rebalance) "latest" or "earliest" would skip or repeat what came meanwhile: resume
            # each partition we already read from where we left it.
            for tp in partitions:
                resume = self._positions.get((tp.topic, tp.partition))
                if resume is not None:
                    tp.offset = resume
                elif not self._from_beginning:
                    # Pin "latest" to the end offsets as of now: librdkafka resolves it lazily at
                    # the first fetch, which would silently skip what is produced right after
                    # wait_ready().
                    tp.offset = self._end_offset(consumer, tp)
                    if tp.offset >= 0:
                        self._positions[(tp.topic, tp.partition)] = tp.offset
            consumer.assign(partitions)
        self._assigned = True

    @staticmethod
    def _end_offset(consumer: Consumer, tp: TopicPartition, timeout: float = 15.0) -> int:
        """The partition's end offset now; retried while a fresh topic elects its leader.

        Runs inside librdkafka's rebalance callback, so it must never raise.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                return int(high)
            except Exception as exc:  # noqa: BLE001 - runs in a rebalance callback: never raise (not leader yet, timeout)
                if time.monotonic() > deadline:
                    log.warning(
                        "end offset of %s[%d] unknown (%s); starting at the latest", tp.topic, tp.partition, exc
                    )
                    return OFFSET_END
                time.sleep(0.2)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until partitions are assigned (so that nothing produced from now on is missed)."""
        deadline = time.monotonic() + timeout
        while not self._assigned:
            if time.monotonic() > deadline:
                raise StreamrecError(f"no partitions of {self.topic!r} assigned after {timeout:.0f}s")
            msg = self._consumer.poll(0.1)
            self._watch.check()
            if msg is not None:
                self._pending = msg
                break

    _pending: Any = None

    def poll(self, timeout: float = 1.0) -> Recommendation | None:
        """The next matching recommendation, or None when nothing arrived within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if self._pending is not None:
                msg, self._pending = self._pending, None
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                msg = self._consumer.poll(min(left, 0.5))
                self._watch.check()
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", msg.error())
                continue
            self._positions[(msg.topic(), msg.partition())] = msg.offset() + 1
            if self.user_ids is not None:
                key = msg.key()
                if key is not None and key.decode("utf-8", "replace") not in self.user_ids:
                    continue
            try:
                rec = Recommendation.from_bytes(msg.value())
            except SchemaError as exc:
                self.skipped += 1
                log.warning(
                    "skipping malformed recommendation topic=%s partition=%s offset=%s reason=%s",
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    exc.reason,
                )
                continue
            if self.user_ids is not None and rec.user_id not in self.user_ids:
                continue
            return rec

    def __iter__(self) -> Iterator[Recommendation]:
        while True:
            rec = self.poll(1.0)
            if rec is not None:
                yield rec

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> RecommendationSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The catalog reader: every worker reads the whole compacted catalog topic into its index."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

from streamrec.config import Settings
from streamrec.errors import KafkaRuntimeError, SchemaError
from streamrec.schemas import CatalogItem, DeadLetter
from streamrec.streams.kafka_config import aiokafka_config
from streamrec.streams.pipeline import Pipeline

log = logging.getLogger(__name__)

CATALOG_BATCH = 512


async def refresh_metadata(consumer: Any) -> None:
    """Ask the broker for fresh metadata now, so ``partitions_for_topic`` sees a new topic.

    Private: aiokafka has no public call that refreshes the metadata ``partitions_for_topic``
    reads (``topics()`` fetches into a throwaway copy). Checked against aiokafka 0.14.0
    (``AIOKafkaClient.force_metadata_update()`` returns an awaitable);
    tests/unit/streams/test_internals.py fails if it moves or changes.
    """
    await consumer._client.force_metadata_update()


async def refuse_item(msg: Any, reason: str, pipeline: Pipeline, dead_letters: Any) -> None:
    """Log a malformed catalog item and send it to the catalog dead-letter topic.

    Every worker reads the whole catalog, so each sends its own dead letter for the same record:
    they are identical (same topic, partition, offset), and consumers dedup them by that triple.
    """
    pipeline.metrics.catalog_dlq.inc()
    log.warning(
        "bad catalog item topic=%s partition=%s offset=%s reason=%s", msg.topic, msg.partition, msg.offset, reason
    )
    if dead_letters is None:
        return
    dl = DeadLetter.wrap(topic=msg.topic, partition=msg.partition, offset=msg.offset, reason=reason, original=msg.value)
    await dead_letters.send(key=msg.key, value=dl.to_bytes())


async def catalog_reader(settings: Settings, pipeline: Pipeline, *, dead_letters: Any = None) -> None:
    """Read the whole compacted catalog topic on every worker (no consumer group), then follow it.

    Every worker needs every item in its own index, so this is a plain assign-all consumer rather
    than part of the worker's consumer group. ``catalog_ready`` is set once the end offsets seen at
    start-up have been reached. A malformed item goes to ``dead_letters`` (the catalog dead-letter
    topic) with the reason and its original bytes: a shop needs to know its product did not go in.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        **aiokafka_config(settings),
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        client_id=f"{settings.app_id}-catalog",
    )
    await consumer.start()
    try:
        parts = None
        for _ in range(120):
            parts = consumer.partitions_for_topic(settings.topic_catalog)
            if parts:
                break
            await refresh_metadata(consumer)
            await asyncio.sleep(0.5)
        if not parts:
            log.warning("catalog topic %s not found; serving without a catalog", settings.topic_catalog)
            pipeline.catalog_ready.set()
            return
        tps = [TopicPartition(settings.topic_catalog, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        started = time.monotonic()
        pending = {tp for tp, off in end.items() if off > 0}
        if not pending:
            await pipeline.run(pipeline.catalog_loaded)
            pipeline.catalog_ready.set()
        while True:
            records = await consumer.getmany(timeout_ms=200, max_records=CATALOG_BATCH * 4)
            changes: list[tuple[str, CatalogItem | None]] = []
            for tp, msgs in records.items():
                for msg in msgs:
                    if tp in pending and msg.offset + 1 >= end[tp]:
                        pending.discard(tp)
                    if msg.value is None:
                        if msg.key:
                            changes.append((msg.key.decode("utf-8", "replace")[:128], None))
                        continue
                    try:
                        item = CatalogItem.from_bytes(msg.value)
                    except SchemaError as exc:
                        await refuse_item(msg, exc.reason, pipeline, dead_letters)
                        continue
                    changes.append((item.item_id, item))
            for i in range(0, len(changes), CATALOG_BATCH):
                await pipeline.run(pipeline.apply_catalog, changes[i : i + CATALOG_BATCH])
            if pending:
                for tp in list(pending):
                    if await consumer.position(tp) >= end[tp]:
                        pending.discard(tp)
            if not pending and not pipeline.catalog_ready.is_set():
                log.info("catalog loaded items=%d seconds=%.1f", len(pipeline.catalog), time.monotonic() - started)
                await pipeline.run(pipeline.catalog_loaded)  # the index kind for this size
                pipeline.catalog_ready.set()
    finally:
        await consumer.stop()


def read_catalog_topic(
    settings: Settings, *, chunk: int = CATALOG_BATCH * 8, timeout_s: float = 600.0
) -> Iterator[list[tuple[str, CatalogItem | None]]]:
    """The whole compacted catalog topic as of now, in chunks of ``(item_id, item)`` changes in
    topic order (``item`` None: deleted), read from the beginning to the end offsets seen at the
    call. A hot swap builds its new version from this (synchronous: it runs on the swap thread).
    Records that do not parse are skipped (the catalog reader logs them)."""
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    topic = settings.topic_catalog
    consumer = Consumer(
        settings.confluent_config()
        | {
            "group.id": f"{settings.app_id}-catalog-snapshot-{uuid.uuid4().hex[:8]}",  # never committed
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "log_level": 3,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None or meta.error is not None:
            log.warning("catalog topic %s not readable for a snapshot; building without a catalog", topic)
            return
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in meta.partitions}
        pending = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise KafkaRuntimeError(f"catalog snapshot of {topic} not read within {timeout_s:.0f}s")
            out: list[tuple[str, CatalogItem | None]] = []
            for msg in consumer.consume(num_messages=chunk, timeout=0.5):
                p, offset = msg.partition(), msg.offset()
                if msg.error() is not None or p not in pending or offset is None or offset >= ends[p]:
                    continue
                if offset + 1 >= ends[p]:
                    pending.discard(p)
                value = msg.value()
                if value is None:
                    key = msg.key()
                    if key:
                        out.append((key.decode("utf-8", "replace")[:128], None))
                    continue
                try:
                    item = CatalogItem.from_bytes(value)
                except SchemaError:
                    continue
                out.append((item.item_id, item))
            for p in list(pending):  # a compacted tail: the position may pass the end without a record
                pos = consumer.position([TopicPartition(topic, p)])[0].offset
                if pos >= ends[p]:
                    pending.discard(p)
            if out:
                yield out
    finally:
        consumer.close()

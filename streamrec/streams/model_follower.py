"""Each worker's reader of ``streamrec.model-updates``: hot-swap every newly announced version.

Every worker serves every announced version, so this is a plain reader that assigns all
partitions of the topic (no consumer group, nothing committed), like the catalog reader.

* At start the worker serves the registry's current version (``streamrec worker``). The reader
  reads the topic from the beginning to the end offsets it saw at start and keeps the latest
  announcement; it swaps to it only when it is *newer* than the version served (by the
  registry's version number), so a restart never goes back to an older announcement, and an
  explicit ``--model DIR`` is not replaced by history.
* Afterwards every announcement of a version other than the one served is swapped in (a rollback,
  ``streamrec models promote OLD``, is an announcement too). Announcements that arrive while a
  version is being built wait in Kafka; the reader then takes only the latest of them.
* The checkpoint is the announced ``version`` in this worker's own registry when it has it (a
  shared volume mounted elsewhere), else the announced ``path``.
* A malformed announcement, or a version that cannot be loaded, is refused: one log line and
  ``streamrec_model_refusals_total``; the serving version keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

from streamrec.config import Settings
from streamrec.errors import SchemaError
from streamrec.schemas import ModelUpdate
from streamrec.streams.catalog import refresh_metadata
from streamrec.streams.kafka_config import aiokafka_config
from streamrec.streams.pipeline import Pipeline

log = logging.getLogger(__name__)

_VERSION_NUMBER = re.compile(r"^v(\d{1,12})-")
#: How often a worker looks again for a model-updates topic that does not exist yet, s.
TOPIC_RETRY_S = 5.0


def version_number(version: str) -> int | None:
    """The registry's sequence number of ``version`` (``v0007-20261129T201500Z`` -> 7), or None.

    >>> version_number("v0007-20261129T201500Z"), version_number("my-model")
    (7, None)
    """
    m = _VERSION_NUMBER.match(version)
    return int(m.group(1)) if m else None


def is_newer(announced: str, serving: str) -> bool:
    """Whether ``announced`` is a later registry version than ``serving`` (False when either is
    not a registry version name: then only a live announcement swaps).

    >>> is_newer("v0003-20261129T201500Z", "v0002-20261129T200000Z")
    True
    >>> is_newer("v0002-20261129T200000Z", "v0002-20261129T200000Z"), is_newer("v0003-x", "tiny")
    (False, False)
    """
    a, s = version_number(announced), version_number(serving)
    return a is not None and s is not None and a > s


def resolve_checkpoint(update: ModelUpdate, registry_dir: Path) -> Path:
    """Where to load ``update`` from: the version in this worker's registry when it is there
    (workers on other hosts mount the registry elsewhere), else the announced path. The
    version name comes from the network: it is only matched against the registry's listing,
    never joined into a path."""
    from streamrec.model.registry import ModelRegistry

    try:
        return ModelRegistry(registry_dir).version_path(update.version)
    except ValueError:
        return Path(update.path)


def parse_update(value: bytes | None, where: str) -> ModelUpdate | None:
    """The announcement in ``value``, or None (logged) when it is not one."""
    if value is None:
        return None  # a compaction tombstone: nothing to serve
    try:
        return ModelUpdate.from_bytes(value)
    except SchemaError as exc:
        log.error("model update refused %s reason=%s", where, exc.reason)
        return None


class ModelFollower:
    """Apply announcements to a pipeline; the Kafka loop is :func:`follow_model_updates`."""

    def __init__(self, pipeline: Pipeline, registry_dir: Path) -> None:
        self.pipeline = pipeline
        self.registry_dir = registry_dir

    def refuse_malformed(self) -> None:
        self.pipeline.metrics.model_refusals.inc()

    async def apply(self, update: ModelUpdate, *, startup: bool = False) -> bool:
        """Swap to ``update`` when it should be served; True when it was swapped in."""
        serving = self.pipeline.model_version
        if update.version == serving:
            log.info("model update for the version already serving version=%s", serving)
            return False
        if startup and not is_newer(update.version, serving):
            log.info(
                "latest announced model not newer than the one serving: announced=%s serving=%s",
                update.version,
                serving,
            )
            return False
        path = resolve_checkpoint(update, self.registry_dir)
        return await self.pipeline.swap_model(update.version, path) is not None


async def follow_model_updates(settings: Settings, pipeline: Pipeline) -> None:
    """The worker's task: read the model-updates topic (see the module docstring) forever."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    follower = ModelFollower(pipeline, settings.registry_dir)
    topic = settings.topic_model_updates
    consumer = AIOKafkaConsumer(
        **aiokafka_config(settings),
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        client_id=f"{settings.app_id}-models",
    )
    await consumer.start()
    try:
        parts: Any = None
        waited = 0
        while not parts:
            parts = consumer.partitions_for_topic(topic)
            if parts:
                break
            if waited == 20:
                log.warning(
                    "model-updates topic %s not found yet; still serving version=%s, looking again every %.0fs",
                    topic,
                    pipeline.model_version,
                    TOPIC_RETRY_S,
                )
            await refresh_metadata(consumer)
            await asyncio.sleep(0.5 if waited < 20 else TOPIC_RETRY_S)
            waited += 1
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        latest: ModelUpdate | None = None
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                for msg in msgs:
                    if msg.offset >= end[tp]:
                        break
                    upd = parse_update(msg.value, f"topic={tp.topic} partition={tp.partition} offset={msg.offset}")
                    if upd is not None and (latest is None or upd.created_ts >= latest.created_ts):
                        latest = upd
        # past the startup end offsets, the next getmany starts at `end` again
        for tp in tps:
            consumer.seek(tp, end[tp])
        await pipeline.catalog_ready.wait()  # a version is built for the whole catalog
        log.info(
            "following model updates topic=%s serving=%s latest_announced=%s",
            topic,
            pipeline.model_version,
            latest.version if latest else None,
        )
        if latest is not None:
            await follower.apply(latest, startup=True)
        while True:
            latest = None
            for tp, msgs in (await consumer.getmany(timeout_ms=1000)).items():
                for msg in msgs:
                    where = f"topic={tp.topic} partition={tp.partition} offset={msg.offset}"
                    upd = parse_update(msg.value, where)
                    if upd is None:
                        if msg.value is not None:
                            follower.refuse_malformed()
                        continue
                    log.info("model update announced version=%s %s", upd.version, where)
                    if latest is None or upd.created_ts >= latest.created_ts:
                        latest = upd
            if latest is not None:
                await follower.apply(latest)
    finally:
        await consumer.stop()

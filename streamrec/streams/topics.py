"""The topics streamrec uses, their configs, and idempotent creation."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streamrec.client.connection import ConnectionWatch
from streamrec.config import Settings
from streamrec.errors import KafkaRuntimeError

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic with its partition count and configs (names come from settings)."""
    n = settings.partitions
    return [
        TopicSpec(settings.topic_events, n, {"retention.ms": str(7 * DAY_MS)}, "shop events, key user_id"),
        TopicSpec(settings.topic_catalog, n, {"cleanup.policy": "compact"}, "catalog items, key item_id"),
        TopicSpec(settings.topic_recommendations, n, {"retention.ms": str(DAY_MS)}, "recommendations, key user_id"),
        TopicSpec(settings.topic_dlq, n, {"retention.ms": str(14 * DAY_MS)}, "refused events with reasons"),
        TopicSpec(
            settings.topic_catalog_dlq, n, {"retention.ms": str(14 * DAY_MS)}, "refused catalog items with reasons"
        ),
        TopicSpec(settings.topic_model_updates, 1, {"cleanup.policy": "compact"}, "model versions ready to serve"),
        # Partitioned like the events topic (same count, key user_id): a user's deletion reaches the
        # worker that owns the user's state. Kept as long as the events, then gone: it names users.
        TopicSpec(
            settings.topic_deletions, n, {"retention.ms": str(7 * DAY_MS)}, "user deletion requests, key user_id"
        ),
        TopicSpec(settings.topic_profiles, n, {"cleanup.policy": "compact"}, "interest profiles, key user_id"),
    ]


class _DebugLog:
    """librdkafka's own log lines (``logger``), at DEBUG: the admin client's callers turn what
    matters into one clear error (:class:`ConnectionWatch`, :func:`cluster_metadata`), and
    librdkafka printed a burst of raw ``%3|FAIL`` lines to stderr around it, sometimes after it.
    Served by the client's ``poll``, in the caller's thread."""

    def log(self, level: int, msg: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("librdkafka %s", msg % args if args else msg)


def admin_client(settings: Settings, watch: ConnectionWatch | None = None) -> AdminClient:
    conf: dict[str, Any] = settings.confluent_config()
    conf["log_level"] = 3
    conf["logger"] = _DebugLog()
    if watch is not None:
        watch.install(conf)
    return AdminClient(conf)


def cluster_metadata(admin: AdminClient, watch: ConnectionWatch, *, timeout: float) -> Any:
    """``admin.list_topics()``, but a refused password or certificate raises
    :class:`~streamrec.errors.KafkaAuthError` within a second instead of after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            watch.check()
            if time.monotonic() >= deadline:
                raise KafkaRuntimeError(f"cannot reach Kafka at {watch.bootstrap}: {exc.args[0].str()}") from None


def create_topics(settings: Settings, *, timeout: float = 30.0) -> dict[str, str]:
    """Create missing topics; existing ones are left alone. Returns ``{name: "created"|"exists"}``.

    Running it twice is fine. A topic that exists with fewer partitions than configured is
    reported (Kafka never shrinks partitions, and growing them would re-key users).
    """
    watch = ConnectionWatch(settings.resolved_bootstrap())
    admin = admin_client(settings, watch)
    specs = topic_specs(settings)
    existing = cluster_metadata(admin, watch, timeout=timeout).topics
    result: dict[str, str] = {}
    new = []
    for spec in specs:
        if spec.name in existing:
            have = len(existing[spec.name].partitions)
            result[spec.name] = "exists" if have == spec.partitions else f"exists ({have} partitions)"
        else:
            new.append(
                NewTopic(
                    spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=settings.replication_factor,
                    config=spec.config,
                )
            )
    if new:
        for name, fut in admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout).items():
            try:
                fut.result()
                result[name] = "created"
            except KafkaException as exc:
                err = exc.args[0]
                if getattr(err, "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                    result[name] = "exists"
                else:
                    raise KafkaRuntimeError(f"could not create topic {name!r}: {err}") from None
    for name, status in result.items():
        log.info("topic=%s status=%s", name, status)
    return result

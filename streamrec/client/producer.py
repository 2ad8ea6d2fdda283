"""EventProducer: validated, idempotent, keyed production of shop events and catalog items."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streamrec.client.connection import ConnectionWatch
from streamrec.errors import DeliveryError, StreamrecError
from streamrec.schemas import CatalogItem, ShopEvent, UserDeletion

log = logging.getLogger(__name__)


class EventProducer:
    """Send :class:`ShopEvent` s (keyed by user id) and :class:`CatalogItem` s (keyed by item id).

    Every message is validated before it is sent: an invalid one raises
    :class:`~streamrec.errors.SchemaError` and nothing is produced. The producer is idempotent
    with ``acks=all``, so a retried send never duplicates or reorders a user's events. Delivery
    failures are collected and raised as :class:`~streamrec.errors.DeliveryError` by
    :meth:`flush` (and on leaving the ``with`` block). Credentials or a certificate that the broker
    refuses raise :class:`~streamrec.errors.KafkaAuthError` at once (from :meth:`send` or
    :meth:`flush`) rather than waiting out the timeout::

        with EventProducer("localhost:9092") as producer:
            producer.send({"event_id": "e1", "user_id": "u1", "session_id": "s1",
                           "item_id": "sku-9", "type": "view", "ts": 1700000000000})
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        events_topic: str = "shop.events",
        catalog_topic: str = "shop.catalog",
        deletions_topic: str = "shop.user-deletions",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            # Kafka's (Java) default partitioner, as Faust and aiokafka use: a user's events land
            # on the partition whose worker owns that user's state and HTTP route.
            "partitioner": "murmur2_random",
            "client.id": "streamrec-event-producer",
        }
        conf.update(config or {})  # SASL/SSL and tuning pass through untouched
        if conf.get("acks") not in ("all", -1, "-1"):
            raise ValueError(f"acks={conf.get('acks')!r}: EventProducer needs acks=all")
        self.events_topic = events_topic
        self.catalog_topic = catalog_topic
        self.deletions_topic = deletions_topic
        self._watch = ConnectionWatch(bootstrap_servers)
        self._producer = Producer(self._watch.install(conf))
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self._closed = False
        self.delivered = 0

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> EventProducer:
        """Build from a :class:`streamrec.config.Settings` (bootstrap, SASL/SSL, topic names)."""
        conf = settings.confluent_config()
        bootstrap = conf.pop("bootstrap.servers")
        conf.update(overrides.pop("config", {}) or {})
        return cls(
            bootstrap,
            events_topic=overrides.pop("events_topic", settings.topic_events),
            catalog_topic=overrides.pop("catalog_topic", settings.topic_catalog),
            deletions_topic=overrides.pop("deletions_topic", settings.topic_deletions),
            config=conf,
        )

    # -- sending ---------------------------------------------------------------------------

    def send(self, event: ShopEvent | Mapping[str, Any]) -> ShopEvent:
        """Validate and send one event (asynchronously); returns the validated event."""
        ev = event if isinstance(event, ShopEvent) else ShopEvent.from_dict(dict(event))
        self._produce(self.events_topic, ev.user_id, ev.to_bytes())
        return ev

    def send_catalog(self, item: CatalogItem | Mapping[str, Any]) -> CatalogItem:
        """Validate and send one catalog item (the catalog topic is compacted by item id)."""
        it = item if isinstance(item, CatalogItem) else CatalogItem.from_dict(dict(item))
        self._produce(self.catalog_topic, it.item_id, it.to_bytes())
        return it

    def delete_item(self, item_id: str) -> None:
        """Tombstone an item: a null value on the compacted catalog topic removes it."""
        if not item_id or len(item_id) > 128:
            raise ValueError(f"item_id {item_id!r}: must be 1..128 characters")
        self._produce(self.catalog_topic, item_id, None)

    def delete_user(self, user_id: str, *, requested_ts: int | None = None) -> UserDeletion:
        """Ask the workers to erase ``user_id`` (right to erasure): a :class:`UserDeletion` on the
        deletions topic, keyed by user id. The worker that owns the user removes the user's state
        (a tombstone in its changelog) and stops serving the user's recommendations; the trainer
        purges the user's events from its training log."""
        req = UserDeletion.from_dict(
            {
                "user_id": user_id,
                "requested_ts": int(time.time() * 1000) if requested_ts is None else requested_ts,
            }
        )
        self._produce(self.deletions_topic, req.user_id, req.to_bytes())
        return req

    def _produce(self, topic: str, key: str, value: bytes | None) -> None:
        self._watch.check()
        while True:
            try:
                self._producer.produce(topic, key=key.encode("utf-8"), value=value, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: serve callbacks, then retry
                self._producer.poll(0.05)
                self._watch.check()
        self._producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            return
        text = f"{msg.topic()} key={msg.key()!r}: {err.str()}"
        log.error("delivery failed %s", text)
        with self._lock:
            self._errors.append(text)

    # -- lifecycle ---------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every message to be acknowledged; raise DeliveryError if any failed (and
        KafkaAuthError at once if the broker refuses the credentials or the certificate)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
            self._watch.check()
            if not remaining or time.monotonic() >= deadline:
                break
        with self._lock:
            errors, self._errors = self._errors, []
        if remaining:
            errors.append(f"{remaining} message(s) still undelivered after {timeout:.0f}s")
        if errors:
            shown = "; ".join(errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else "")
            raise DeliveryError(f"{len(errors)} delivery error(s): {shown}")

    def close(self, timeout: float = 30.0) -> None:
        """Flush (raising as :meth:`flush` does), then release the client: its threads stop and
        it no longer reconnects. Messages still undelivered when ``timeout`` ran out are dropped."""
        try:
            self.flush(timeout)
        finally:
            self._release()

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        if len(self._producer):  # undeliverable leftovers: drop them rather than block in close()
            self._producer.purge()
            self._producer.poll(0)
        self._producer.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # don't hide the original error behind a delivery error
            self.flush(5.0)
        except StreamrecError as derr:
            log.error("%s", derr)
        finally:
            self._release()

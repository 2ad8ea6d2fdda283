"""``streamrec.model-updates``: the announcement that a model version is now the one to serve.

Producers: the trainer after a gated promotion, and ``streamrec models promote VERSION`` (a
rollback or a manual promotion). Consumers: the workers (each with its own reader, no group).

The message is a :class:`~streamrec.schemas.ModelUpdate` (JSON):

* ``version``: the registry version name (``v0007-20261129T201500Z``);
* ``path``: the version's directory as the publisher sees it (absolute). A worker on another
  host, or with the data volume mounted elsewhere, resolves the ``version`` in its own registry
  (``ModelRegistry(settings.registry_dir).version_path(version)``) and falls back to ``path``;
  in docker compose every service mounts the ``streamrec-data`` volume at ``/data``, so both agree;
* ``metrics``: numbers from the gate (``holdout_ndcg@10``, ``holdout_hr@10``, ``current_ndcg@10``,
  ``current_hr@10``, ``holdout_users``, ``train_events``, ``train_seconds``, ``added_items``,
  ``full``), plus ``rollback`` = 1.0 when sent by ``models promote``;
* ``created_ts``: when the announcement was made (epoch ms).

Every message means "serve this version now", so the key is constant (:data:`KEY`): the topic
is compacted and a reader that starts from the beginning finds the latest announcement. The
registry's ``CURRENT`` is written before the message is sent, so a worker (re)starting after the
message reads the same version from the registry.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from streamrec.config import Settings
from streamrec.errors import KafkaRuntimeError
from streamrec.schemas import ModelUpdate

log = logging.getLogger(__name__)

#: Key of every message on the model-updates topic (compaction keeps the latest).
KEY = b"current"


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def update_for(registry: Any, version: str, metrics: dict[str, float] | None = None) -> ModelUpdate:
    """The announcement for ``version`` of ``registry`` (ValueError when it is unknown).
    Without ``metrics``, the gate numbers stored in the version's metrics are used."""
    from streamrec.model.checkpoint import read_metrics

    path = Path(registry.version_path(version)).resolve()
    if metrics is None:
        stored = read_metrics(path)
        gate = stored.get("gate") or {}
        metrics = {}
        metrics |= {
            f"holdout_{k}": v for k, v in _numbers(gate.get("candidate") or {}).items() if k in ("ndcg@10", "hr@10")
        }
        metrics |= {f"test_{k}": v for k, v in _numbers(stored.get("test") or {}).items() if k in ("ndcg@10", "hr@10")}
    return ModelUpdate(
        version=version, path=str(path), metrics=dict(list(metrics.items())[:256]), created_ts=int(time.time() * 1000)
    )


def publish(settings: Settings, update: ModelUpdate, *, timeout: float = 30.0) -> None:
    """Send ``update`` and wait until the broker has it (acks=all). KafkaRuntimeError otherwise."""
    from confluent_kafka import KafkaException, Producer

    conf = settings.confluent_config() | {
        "enable.idempotence": True,
        "acks": "all",
        "message.timeout.ms": int(timeout * 1000),
        "log_level": 3,
    }
    producer = Producer(conf)
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    try:
        producer.produce(settings.topic_model_updates, key=KEY, value=update.to_bytes(), on_delivery=on_delivery)
    except (KafkaException, BufferError) as exc:
        raise KafkaRuntimeError(f"cannot announce model version {update.version}: {exc}") from None
    remaining = producer.flush(timeout + 5)
    if remaining or errors:
        reason = errors[0] if errors else "not delivered in time"
        raise KafkaRuntimeError(
            f"cannot announce model version {update.version} on {settings.topic_model_updates} "
            f"via {settings.resolved_bootstrap()}: {reason}"
        )
    log.info(
        "model update published topic=%s version=%s path=%s", settings.topic_model_updates, update.version, update.path
    )

"""``streamrec trainer``: the separate consumer that logs the event stream and retrains the model.

Its own process and consumer group (``<app id>-trainer``), independent of the workers: it reads
``shop.events`` (and follows ``shop.catalog`` for item text), never the workers' changelogs.

* **Ingest** (main thread): records are buffered per partition (:class:`SegmentBuffer`), written
  as one durable Parquet segment per partition (:class:`TrainLog`), and only then are their
  offsets committed. On (re)assignment each partition resumes at the later of the committed
  offset and the offset after its newest segment, so a trainer SIGKILLed between a write and
  its commit does not even re-read those events (and de-duplication by ``event_id`` makes a
  re-read harmless anyway). Malformed records are counted and skipped: the workers dead-letter
  them.
* **Catalog**: a group-less reader of the compacted catalog topic, from the beginning, keeps
  ``item_id -> text`` in memory (tombstones delete).
* **Adapt**: once the catalog reader has reached the end of the topic, a current version that holds
  less than ``trainer_adapt_below`` of the catalog's titled items (a model moved from another
  shop) gets its text channel fitted to the catalog's titles, with no training, and the result is
  promoted and announced (:func:`streamrec.model.retrain.adapt_current`): the shop's new items are
  ranked in their own title directions before the first round, which needs events. Each version is
  checked once, so a rollback to a version checked before (``models promote``) is not undone.
* **Erasure**: a consumer of the deletions topic (group ``<app id>-trainer-deletions``) drops
  the user's buffered events and purges the user from the log
  (:meth:`TrainLog.purge_user`, durable and redone after a crash) before committing the
  deletion's offset; replays of the user's older events are not logged again.
* **Cadence**: every ``retrain_interval_s``, when ``retrain_min_events`` new events were logged
  since the last round (or a full retrain is due), one round of
  :func:`streamrec.model.retrain.retrain` runs in a background thread while ingestion goes on.
  A promoted version is announced on ``streamrec.model-updates``
  (:mod:`streamrec.streams.model_updates`).
* ``/metrics`` (Prometheus text, ``trainer_web_port``) counts events, duplicates, malformed
  records, segments, rounds and gate decisions, with both metric sets of the last decision.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from streamrec.config import Settings
from streamrec.errors import KafkaRuntimeError, SchemaError
from streamrec.model.trainlog import SegmentBuffer, TrainLog

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
RETENTION_EVERY_S = 60.0
MALFORMED_LOG_EVERY_S = 30.0
ADAPT_CHECKED_KEEP = 1000  # versions whose adapting was checked, remembered in the trainer's state


class TrainerMetrics:
    """The trainer's Prometheus metrics, in their own registry (no process-global state)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = r = CollectorRegistry()
        self.events = Counter("streamrec_trainer_events", "events written to the training log", registry=r)
        self.duplicates = Counter(
            "streamrec_trainer_duplicates", "events dropped as already logged (event_id)", registry=r
        )
        self.malformed = Counter(
            "streamrec_trainer_malformed", "records skipped as malformed (workers dead-letter them)", registry=r
        )
        self.segments = Counter("streamrec_trainer_segments", "training-log segments written", registry=r)
        self.commit_failures = Counter(
            "streamrec_trainer_commit_failures",
            "offset commits that failed (the log resumes from its segments)",
            registry=r,
        )
        self.log_rows = Gauge("streamrec_trainer_log_rows", "events in the training log", registry=r)
        self.log_bytes = Gauge("streamrec_trainer_log_bytes", "bytes of the training log", registry=r)
        self.catalog_items = Gauge("streamrec_trainer_catalog_items", "catalog items with text known", registry=r)
        self.retrains = Counter("streamrec_trainer_retrains", "retraining rounds run", ["mode"], registry=r)
        self.retrain_errors = Counter(
            "streamrec_trainer_retrain_errors", "rounds that failed or were skipped", ["reason"], registry=r
        )
        self.decisions = Counter("streamrec_trainer_gate_decisions", "gate decisions", ["decision"], registry=r)
        self.adapted = Counter(
            "streamrec_trainer_adapted", "versions adapted to the catalog's titles (no training)", registry=r
        )
        self.gate_metric = Gauge(
            "streamrec_trainer_gate_metric", "hold-out metrics of the last decision", ["model", "metric"], registry=r
        )
        self.publish_failures = Counter(
            "streamrec_trainer_publish_failures", "ModelUpdate announcements that failed", registry=r
        )
        self.last_round_s = Gauge("streamrec_trainer_last_round_seconds", "duration of the last round", registry=r)
        self.current = Gauge(
            "streamrec_trainer_current_version", "1 for the registry's current version", ["version"], registry=r
        )
        self.erased = Counter(
            "streamrec_trainer_erased_events", "events removed or dropped for a user deletion", registry=r
        )
        self.deletions = Counter(
            "streamrec_trainer_deletions", "user deletions applied to the training log", registry=r
        )
        self.running = Gauge("streamrec_trainer_retrain_running", "1 while a round runs", registry=r)

    def set_current(self, version: str | None) -> None:
        self.current.clear()
        if version:
            self.current.labels(version=version).set(1)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    from streamrec.fsutil import atomic_write_text

    atomic_write_text(path, json.dumps(state, sort_keys=True))


def retrain_config(settings: Settings) -> Any:
    from streamrec.model.retrain import RetrainConfig

    return RetrainConfig(
        time_budget_s=settings.retrain_time_budget_s,
        window_s=settings.retrain_window_s,
        replay_ratio=settings.retrain_replay_ratio,
        holdout_users=settings.retrain_holdout_users,
        tolerance=settings.retrain_gate_tolerance,
        device=settings.device,
        text_cache=str(settings.text_cache_path),  # the text cache the worker, train and evaluate share
        keep=settings.registry_keep,
    )


class Trainer:
    """The trainer process (see the module docstring). ``run(stop)`` blocks until ``stop`` is set."""

    def __init__(self, settings: Settings, *, full_first: bool = False, metrics: TrainerMetrics | None = None) -> None:
        from streamrec.model.registry import ModelRegistry

        self.settings = settings
        self.metrics = metrics or TrainerMetrics()
        self.log = TrainLog(
            settings.trainlog_dir,
            topic=settings.topic_events,
            max_age_s=settings.trainlog_max_age_s,
            max_bytes=settings.trainlog_max_bytes,
        )
        self.buffer = SegmentBuffer(max_events=settings.trainlog_segment_events, max_age_s=settings.trainlog_segment_s)
        self.registry = ModelRegistry(settings.registry_dir)
        self.state_path = settings.trainlog_dir / STATE_FILE
        self.state = _read_state(self.state_path)
        self.decisions_path = settings.data_dir / "trainer" / "decisions.jsonl"
        self.catalog: dict[str, str | None] = {}
        self.full_pending = full_first
        self.next_check = time.monotonic() + (0.0 if full_first else settings.retrain_interval_s)
        self.job: threading.Thread | None = None
        self._consumer: Any = None
        self._catalog_consumer: Any = None
        # the catalog partitions whose end the reader has not reached yet (librdkafka's
        # partition EOF: offsets alone cannot tell, as transaction markers and compaction leave
        # gaps); None before the reader is opened
        self._catalog_pending: set[int] | None = None
        self._deletions_consumer: Any = None
        self._last_malformed_log = 0.0
        self._malformed_unlogged = 0
        self._last_error_log = 0.0
        self._last_retention = 0.0
        self._next_adapt_check = 0.0
        # one poll never overfills a segment
        self._take = max(1, min(1000, settings.trainlog_segment_events))
        self.metrics.set_current(self.registry.current_version())
        self._update_log_gauges()

    # -- Kafka -----------------------------------------------------------------------------------

    def _conf(self, group: str) -> dict[str, Any]:
        return self.settings.confluent_config() | {
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "log_level": 3,
            # Ingestion never blocks for long (training runs in its own thread).
            "max.poll.interval.ms": 300_000,
        }

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        nxt = self.log.next_offsets()
        try:
            committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=15)}
        except Exception as exc:  # noqa: BLE001 - fall back to the log's own offsets
            log.warning("could not read committed offsets, resuming from the log reason=%s", exc)
            committed = {}
        for tp in partitions:
            start = max(committed.get(tp.partition, -1), nxt.get(tp.partition, -1))
            if start >= 0:
                tp.offset = start
            log.info(
                "partition assigned topic=%s partition=%d committed=%s log_next=%s start=%s",
                tp.topic,
                tp.partition,
                committed.get(tp.partition),
                nxt.get(tp.partition),
                start if start >= 0 else "earliest",
            )
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self.flush()

    def _open(self) -> None:
        from confluent_kafka import (
            OFFSET_BEGINNING,
            Consumer,
            KafkaException,
            TopicPartition,
        )

        s = self.settings
        # Static membership: a restarted trainer (same group, same instance id) takes its
        # partitions back at once instead of waiting for the dead member's session to time out,
        # and a second trainer started on the same group fences the first (one log writer).
        self._consumer = Consumer(
            self._conf(s.trainer_group) | {"group.instance.id": s.trainer_group, "session.timeout.ms": 30_000}
        )
        self._consumer.subscribe([s.topic_events], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._deletions_consumer = Consumer(self._conf(f"{s.trainer_group}-deletions"))
        self._deletions_consumer.subscribe([s.topic_deletions])
        self._catalog_consumer = Consumer(self._conf(f"{s.trainer_group}-catalog") | {"enable.partition.eof": True})
        try:
            meta = self._catalog_consumer.list_topics(s.topic_catalog, timeout=30)
        except KafkaException as exc:
            raise KafkaRuntimeError(f"cannot reach Kafka at {s.resolved_bootstrap()}: {exc}") from None
        topic = meta.topics.get(s.topic_catalog)
        if topic is None or topic.error is not None or not topic.partitions:
            log.warning("catalog topic not found topic=%s: items are learned without text", s.topic_catalog)
            return
        # Group-less: assigned by hand from the beginning, never committed.
        self._catalog_pending = set(topic.partitions)
        self._catalog_consumer.assign(
            [TopicPartition(s.topic_catalog, p, OFFSET_BEGINNING) for p in sorted(topic.partitions)]
        )

    def _close(self) -> None:
        for c in (self._consumer, self._catalog_consumer, self._deletions_consumer):
            if c is not None:
                try:
                    c.close()
                except Exception as exc:  # noqa: BLE001 - closing; report and carry on
                    log.warning("consumer close failed reason=%s", exc)

    # -- ingest ----------------------------------------------------------------------------------

    def _malformed(self, topic: str, partition: int, offset: int, reason: str) -> None:
        self.metrics.malformed.inc()
        self._malformed_unlogged += 1
        now = time.monotonic()
        if now - self._last_malformed_log >= MALFORMED_LOG_EVERY_S:  # rate-limited: the DLQ has them all
            log.warning(
                "malformed record skipped topic=%s partition=%d offset=%d reason=%s skipped_since_last_line=%d",
                topic,
                partition,
                offset,
                reason,
                self._malformed_unlogged,
            )
            self._last_malformed_log = now
            self._malformed_unlogged = 0

    def ingest(self, messages: list[Any]) -> None:
        for m in messages:
            if m.error() is not None:
                now = time.monotonic()
                if m.error().code() != -191 and now - self._last_error_log >= MALFORMED_LOG_EVERY_S:
                    # -191: _PARTITION_EOF. Rate-limited: librdkafka repeats e.g. an unknown topic.
                    log.warning("consumer error topic=%s reason=%s", m.topic(), m.error())
                    self._last_error_log = now
                continue
            reason = self.buffer.add(m.partition(), m.offset(), m.value())
            if reason is not None:
                self._malformed(m.topic(), m.partition(), m.offset(), reason)

    def follow_catalog(self, messages: list[Any]) -> None:
        from confluent_kafka import KafkaError

        from streamrec.schemas import CatalogItem

        for m in messages:
            if m.error() is not None:
                if self._catalog_pending and m.error().code() == KafkaError._PARTITION_EOF:
                    self._catalog_pending.discard(m.partition())
                continue
            key = (m.key() or b"").decode("utf-8", "replace")
            if m.value() is None:
                self.catalog.pop(key, None)
                continue
            try:
                item = CatalogItem.from_bytes(m.value())
            except SchemaError:
                continue  # the workers dead-letter bad catalog records too
            self.catalog[item.item_id] = item.text()
        self.metrics.catalog_items.set(len(self.catalog))

    @property
    def catalog_caught_up(self) -> bool:
        """Whether the catalog reader has reached the end of every catalog partition once."""
        return self._catalog_pending is not None and not self._catalog_pending

    def apply_deletions(self, messages: list[Any]) -> None:
        """Erase each :class:`UserDeletion`'s user from the buffer and the log, then commit."""
        from streamrec.schemas import UserDeletion

        done = False
        for m in messages:
            if m.error() is not None:
                continue
            try:
                d = UserDeletion.from_bytes(m.value())
            except SchemaError as exc:
                self._malformed(m.topic(), m.partition(), m.offset(), str(exc))
                done = True
                continue
            self.erase(d.user_id, d.requested_ts)
            done = True
        if done and self._deletions_consumer is not None:
            from confluent_kafka import KafkaException

            try:
                self._deletions_consumer.commit(asynchronous=False)
            except KafkaException as exc:  # redelivered: a purge is idempotent
                log.warning("deletion offset commit failed reason=%s", exc)

    def erase(self, user_id: str, requested_ts: int) -> None:
        """Drop the user's buffered events and purge the user's rows from the log (durable)."""
        dropped = self.buffer.drop_user(user_id, requested_ts)
        removed = self.log.purge_user(user_id, requested_ts)
        self.metrics.erased.inc(dropped + removed)
        self.metrics.deletions.inc()
        self._update_log_gauges()

    def flush(self) -> None:
        """Write every buffered partition as a segment, then commit the offsets after them."""
        from confluent_kafka import KafkaException, TopicPartition

        if len(self.buffer) == 0:
            return
        commits = []
        for partition, pending in self.buffer.drain():
            res = self.log.append(partition, pending.first, pending.last, pending.records)
            self.metrics.events.inc(res.written)
            self.metrics.duplicates.inc(res.duplicates)
            self.metrics.erased.inc(res.erased)
            if res.segment is not None:
                self.metrics.segments.inc()
            commits.append(TopicPartition(self.settings.topic_events, partition, pending.last + 1))
        if self._consumer is not None and commits:
            try:
                self._consumer.commit(offsets=commits, asynchronous=False)
            except KafkaException as exc:
                self.metrics.commit_failures.inc()
                log.warning("offset commit failed (a restart resumes from the log's segments) reason=%s", exc)
        self._update_log_gauges()

    def _update_log_gauges(self) -> None:
        self.metrics.log_rows.set(self.log.rows)
        self.metrics.log_bytes.set(self.log.bytes)

    # -- retraining ------------------------------------------------------------------------------

    def _due(self, now: float) -> bool | None:
        """None: no round now; else whether the round is a full retrain."""
        if self.job is not None and self.job.is_alive():
            return None
        if now < self.next_check:
            return None
        self.next_check = now + self.settings.retrain_interval_s
        rounds = int(self.state.get("rounds", 0))
        every = self.settings.retrain_full_every
        full = self.full_pending or (every > 0 and (rounds + 1) % every == 0)
        new = self.log.rows_written_since(float(self.state.get("last_round_unix", 0.0)))
        if not full and new < self.settings.retrain_min_events:
            log.debug("retrain not due new_events=%d min_events=%d", new, self.settings.retrain_min_events)
            return None
        return full

    def maybe_adapt(self) -> None:
        """Start adapting the current version to the catalog (see the module docstring) when the
        catalog has been read, no job runs and this version was not checked yet."""
        if self.settings.trainer_adapt_below <= 0 or not self.catalog_caught_up:
            return
        if self.job is not None and self.job.is_alive():
            return
        version = self.registry.current_version()
        checked = self.state.get("adapt_checked")
        checked = checked if isinstance(checked, list) else []
        if version is None or version in checked:
            return  # once per version: a rollback to a version checked before stays as promoted
        self.state["adapt_checked"] = [*checked, version][-ADAPT_CHECKED_KEEP:]
        _write_state(self.state_path, self.state)
        self.job = threading.Thread(target=self._adapt, args=(dict(self.catalog),), name="adapt", daemon=True)
        self.job.start()

    def _adapt(self, catalog: dict[str, str | None]) -> None:
        from streamrec.model.retrain import adapt_current

        try:
            version = adapt_current(
                self.registry,
                catalog,
                below=self.settings.trainer_adapt_below,
                text_cache=self.settings.text_cache_path,
                device=self.settings.device,
            )
        except Exception:
            self.metrics.retrain_errors.labels(reason="adapt").inc()
            log.exception("adapting the current version to the catalog failed")
            return
        if version is None:
            return
        self.metrics.adapted.inc()
        self._announce(version, {"adapted": 1.0})

    def _announce(self, version: str, metrics: dict[str, float]) -> None:
        """Announce a promoted ``version`` on the model-updates topic (a failure is counted and
        logged: the registry's CURRENT is already set)."""
        from streamrec.streams.model_updates import publish, update_for

        self.metrics.set_current(version)
        try:
            publish(self.settings, update_for(self.registry, version, metrics))
        except KafkaRuntimeError as exc:
            self.metrics.publish_failures.inc()
            log.error(
                "model update not announced version=%s reason=%s (the registry's CURRENT "
                "is set; workers that restart pick it up)",
                version,
                exc,
            )

    def maybe_retrain(self, now: float | None = None) -> None:
        full = self._due(time.monotonic() if now is None else now)
        if full is None:
            return
        self.flush()
        self.state["last_round_unix"] = time.time()
        self.state["rounds"] = int(self.state.get("rounds", 0)) + 1
        _write_state(self.state_path, self.state)
        catalog = dict(self.catalog)
        self.job = threading.Thread(target=self._round, args=(full, catalog), name="retrain", daemon=True)
        self.job.start()

    def _round(self, full: bool, catalog: dict[str, str | None]) -> None:
        import torch  # imported here: ingestion starts without waiting for torch

        from streamrec.model.retrain import append_decision, retrain

        torch.set_num_threads(self.settings.torch_threads or max(1, (os.cpu_count() or 2) - 1))
        t0 = time.monotonic()
        self.metrics.running.set(1)
        mode = "full" if full else "finetune"
        try:
            table = self.log.read()
            log.info("retrain start mode=%s events=%d catalog_items=%d", mode, table.num_rows, len(catalog))
            decision = retrain(table, self.registry, catalog, retrain_config(self.settings), full=full)
        except ValueError as exc:
            self.metrics.retrain_errors.labels(reason="not_enough_data").inc()
            log.warning("retrain skipped mode=%s reason=%s", mode, exc)
            return
        except Exception:
            self.metrics.retrain_errors.labels(reason="error").inc()
            log.exception("retrain failed mode=%s", mode)
            return
        finally:
            self.metrics.running.set(0)
            self.metrics.last_round_s.set(time.monotonic() - t0)
        if full:
            self.full_pending = False  # a --full that found too little data is retried next time
        self.metrics.retrains.labels(mode=decision.mode).inc()
        self.metrics.decisions.labels(decision="promoted" if decision.promoted else "rejected").inc()
        for name, values in (("candidate", decision.candidate), ("current", decision.current or {})):
            for k in ("ndcg@10", "hr@10"):
                if k in values:
                    self.metrics.gate_metric.labels(model=name, metric=k).set(values[k])
        try:
            append_decision(self.decisions_path, decision)
        except OSError as exc:
            log.warning("could not append the decision file=%s reason=%s", self.decisions_path, exc)
        if decision.promoted and decision.version:
            self._announce(decision.version, decision.flat_metrics())

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self._open()
        log.info(
            "trainer started group=%s topic=%s log=%s log_rows=%d current_version=%s",
            self.settings.trainer_group,
            self.settings.topic_events,
            self.log.root,
            self.log.rows,
            self.registry.current_version(),
        )
        try:
            while not stop.is_set():
                self.ingest(self._consumer.consume(num_messages=self._take, timeout=0.2))
                if self._deletions_consumer is not None:
                    self.apply_deletions(self._deletions_consumer.consume(num_messages=100, timeout=0))
                if self._catalog_consumer is not None and self._catalog_consumer.assignment():
                    self.follow_catalog(self._catalog_consumer.consume(num_messages=1000, timeout=0))
                if self.buffer.due():
                    self.flush()
                now = time.monotonic()
                if now - self._last_retention >= RETENTION_EVERY_S:
                    self._last_retention = now
                    if self.log.enforce_retention():
                        self._update_log_gauges()
                if now >= self._next_adapt_check:  # the registry's CURRENT read at most once a second
                    self._next_adapt_check = now + 1.0
                    self.maybe_adapt()
                self.maybe_retrain(now)
            self.flush()
        finally:
            self._close()
            if self.job is not None and self.job.is_alive():
                log.info("waiting for the running retrain to finish (at most its time budget)")
                self.job.join(self.settings.retrain_time_budget_s + 120)


def serve_metrics(metrics: TrainerMetrics, host: str, port: int) -> Any:
    """Start the ``/metrics`` HTTP endpoint in a thread; returns the server (``.server_port``)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    log.info("trainer metrics url=http://%s:%d/metrics", host, server.server_port)
    return server

"""The Faust app: events -> per-user state -> batched model + index -> recommendations.

Agents stay thin: parsing, state updates and scoring are the pure code in
:mod:`streamrec.serving` and :mod:`streamrec.streams.pipeline`; this module only wires topics,
the table, the catalog reader and the web views together.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from pathlib import Path
from typing import Any

import faust
from faust.streams import _current_event  # see _as_current()

from streamrec.config import Settings
from streamrec.errors import SchemaError
from streamrec.schemas import CatalogItem, DeadLetter, Reason, Recommendation, ScoredItem, ShopEvent
from streamrec.serving.state import UserState
from streamrec.streams.consumer import Transport
from streamrec.streams.kafka_config import aiokafka_config, faust_brokers, faust_credentials
from streamrec.streams.pipeline import Pipeline

log = logging.getLogger(__name__)

CATALOG_BATCH = 512
CATALOG_READY_TIMEOUT_S = 300.0
def _as_current(event: Any) -> None:
    """Make ``event`` Faust's current event.

    Faust picks the table partition (store and changelog) from the *current* event. Inside a
    ``take_events`` batch that is the last event of the batch, so each user's update is bound to
    its own event first; otherwise a user's state could land in another partition's changelog
    and be lost on recovery.
    """
    _current_event.set(weakref.ref(event))


class StreamApp(faust.App):
    """``faust.App`` whose consumer seeks uncommitted source partitions to the beginning when
    streams resume (see :mod:`streamrec.streams.consumer`; without it a restarted worker of a group
    that never committed could skip the events its predecessor had not committed)."""

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)


def worker_datadir(settings: Settings) -> Path:
    """Each worker its own RocksDB dir (two workers on one host would fight over LOCK files)."""
    return settings.data_dir / "worker" / f"{settings.app_id}-{settings.web_port}"


def create_app(settings: Settings, *, recommender: Any, index: Any) -> tuple[faust.App, Pipeline]:
    """Build the worker app around a loaded model and an (empty or restored) item index."""
    pipeline = Pipeline(
        recommender=recommender, index=index, top_k=settings.top_k, history_len=settings.history_len,
        purchased_max=settings.purchased_max, trigger_types=settings.trigger_types,
        profile_weights=settings.profile_weights(),
    )
    datadir = worker_datadir(settings)
    datadir.mkdir(parents=True, exist_ok=True)
    app = StreamApp(
        settings.app_id,
        broker=faust_brokers(settings),
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host if settings.web_host != "0.0.0.0" else "localhost",
        producer_acks=-1,
        producer_linger_ms=1,
        broker_commit_interval=1.0,
        # A worker that dies (SIGKILL, OOM) holds its partitions until the session times out;
        # keep that short so a restarted or surviving worker takes over within seconds.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        autodiscover=False,
        web_in_thread=False,
        logging_config=None,
    )
    # Table writes queue changelog messages in Faust's producer buffer; past 100 (its default) the
    # stream pauses to drain it ("producer buffer full"), which every full batch of users hit.
    app.producer.buffer.max_messages = 8 * settings.batch_max
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    events_topic = app.topic(settings.topic_events, partitions=settings.partitions, **raw)
    recs_topic = app.topic(settings.topic_recommendations, partitions=settings.partitions, **raw)
    dlq_topic = app.topic(settings.topic_dlq, partitions=settings.partitions, **raw)
    profiles_topic = app.topic(settings.topic_profiles, partitions=settings.partitions, **raw)
    users = app.Table(
        "users", default=None, partitions=settings.partitions,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
        help="per-user history, purchases, latest list",
    )

    async def dead_letter(event: Any, reason: str) -> None:
        msg = event.message
        pipeline.metrics.dlq += 1
        log.warning("dead-letter topic=%s partition=%s offset=%s reason=%s", msg.topic, msg.partition,
                    msg.offset, reason)
        dl = DeadLetter.wrap(topic=msg.topic, partition=msg.partition, offset=msg.offset,
                             reason=reason, original=msg.value)
        await dlq_topic.send(key=msg.key, value=dl.to_bytes())

    @app.agent(events_topic, concurrency=1)
    async def process_events(stream: Any) -> None:
        log.info("events agent waiting for the catalog topic=%s", settings.topic_events)
        if not pipeline.catalog_ready.is_set():
            try:
                await asyncio.wait_for(pipeline.catalog_ready.wait(), CATALOG_READY_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.warning("catalog not caught up after %.0fs; scoring with what is loaded", CATALOG_READY_TIMEOUT_S)
        log.info("events agent consuming topic=%s batch_max=%d within_s=%s", settings.topic_events,
                 settings.batch_max, settings.batch_within_s)
        async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            await handle_batch(batch)

    async def handle_batch(batch: list[Any]) -> None:
        """Parse, update each user's state in memory, score once, publish, then write each
        touched user's state once (bound to that user's own event, see ``_as_current``)."""
        metrics = pipeline.metrics
        metrics.events_in += len(batch)
        metrics.batches += 1
        metrics.batch_size.observe(len(batch))
        states: dict[str, UserState] = {}
        answer: dict[str, ShopEvent] = {}  # user -> latest triggering event
        source: dict[str, Any] = {}  # user -> the Faust event of that user's latest message
        fresh: list[ShopEvent] = []
        for event in batch:
            try:
                ev = ShopEvent.from_bytes(event.message.value)
            except SchemaError as exc:
                await dead_letter(event, exc.reason)
                continue
            try:
                state = states.get(ev.user_id)
                if state is None:
                    _as_current(event)
                    state = UserState.from_json(users.get(ev.user_id))
                if pipeline.apply_event(state, ev):
                    fresh.append(ev)
            except Exception as exc:  # a bug or a corrupt stored state must not stop the stream
                log.exception("event failed user=%s event=%s", ev.user_id, ev.event_id)
                await dead_letter(event, f"processing failed: {type(exc).__name__}: {exc}")
                continue
            states[ev.user_id] = state
            source[ev.user_id] = event
            if ev.type in pipeline.trigger_types:
                answer[ev.user_id] = ev
        try:
            await publish(states, answer, source, fresh)
        finally:  # state changes are kept even when scoring fails (those events went to the DLQ)
            for user, state in states.items():
                _as_current(source[user])
                users[user] = state.to_json()

    async def publish(states: dict[str, UserState], answer: dict[str, ShopEvent], source: dict[str, Any],
                      fresh: list[ShopEvent]) -> None:
        metrics = pipeline.metrics
        events = list(answer.values())
        insights = settings.recommendation_insights
        try:
            if insights:
                lists, intents = await pipeline.run(pipeline.score_explained, [states[e.user_id] for e in events],
                                                    fresh)
            else:
                plain = await pipeline.run(pipeline.score, [states[e.user_id] for e in events], fresh)
                lists, intents = [[(i, s, None) for i, s in r] for r in plain], [None] * len(plain)
        except Exception as exc:
            log.exception("scoring failed users=%d", len(events))
            for ev in events:
                await dead_letter(source[ev.user_id], f"scoring failed: {type(exc).__name__}: {exc}")
            return
        now = pipeline.now_ms()
        version = pipeline.model_version
        for ev, recs, intent in zip(events, lists, intents):
            rec = Recommendation(
                user_id=ev.user_id,
                items=[ScoredItem(item_id=i, score=s, reason=Reason(kind=r[0], item_id=r[1]) if r else None)
                       for i, s, r in recs],
                model_version=version, event_id=ev.event_id, event_ts=ev.ts, produced_ts=now,
                purchase_intent=intent,
            )
            await recs_topic.send(key=ev.user_id.encode(), value=rec.to_bytes())
            metrics.recommendations_out += 1
            metrics.observe_latency_ms(max(0, now - ev.ts))
            # kept for GET /users/{id}/recommendations (and the profile's purchase_intent)
            states[ev.user_id].latest = {"items": [[i, s, list(r)] if r else [i, s] for i, s, r in recs],
                                         "model_version": version, "event_id": ev.event_id, "produced_ts": now,
                                         **({"purchase_intent": intent} if intent is not None else {})}
        # every user touched by the batch: the interest profile, on the compacted profiles topic
        for user in {e.user_id for e in fresh}:
            state = states.get(user)
            if state is not None and state.history:
                prof = pipeline.profile_of(user, state, event_id=state.history[-1][3], now_ms=now)
                await profiles_topic.send(key=user.encode(), value=prof.to_bytes())

    @app.task
    async def read_catalog() -> None:
        await catalog_reader(settings, pipeline)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        ready = pipeline.catalog_ready.is_set()
        return web.json({
            "status": "ok" if ready else "starting",
            "model_version": pipeline.model_version,
            "catalog_items": len(pipeline.scorer.index),
            "catalog_ready": ready,
        }, status=200 if ready else 503)

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        lag = await _consumer_lag(app, settings.topic_events)
        text = pipeline.metrics.render(model_version=pipeline.model_version, consumer_lag=lag)
        return web.text(text, content_type="text/plain", headers={"X-Prometheus-Format": "0.0.4"})

    @app.page("/users/{user_id}/recommendations")
    @app.table_route(table=users, match_info="user_id")
    async def user_recommendations(web: Any, request: Any, user_id: str) -> Any:
        if not 1 <= len(user_id) <= 128:
            return web.json({"error": "user id must be 1..128 characters"}, status=400)
        state = UserState.from_json(users.get(user_id))
        if state.latest is None:
            return web.json({"user_id": user_id, "error": "no recommendation yet"}, status=404)
        return web.json({"user_id": user_id, **state.latest})

    @app.page("/users/{user_id}/profile")
    @app.table_route(table=users, match_info="user_id")
    async def user_profile(web: Any, request: Any, user_id: str) -> Any:
        if not 1 <= len(user_id) <= 128:
            return web.json({"error": "user id must be 1..128 characters"}, status=400)
        state = UserState.from_json(users.get(user_id))
        if not state.history:
            return web.json({"user_id": user_id, "error": "no events yet"}, status=404)
        prof = pipeline.profile_of(user_id, state, event_id=state.history[-1][3], now_ms=pipeline.now_ms())
        return web.json(prof.to_dict())

    app.streamrec_pipeline = pipeline  # type: ignore[attr-defined]
    return app, pipeline


async def _consumer_lag(app: faust.App, topic: str) -> dict[str, int]:
    """Best effort: end offset minus position for each assigned partition of ``topic``."""
    try:
        consumer = app.consumer
        lag = {}
        for tp in sorted(consumer.assignment()):
            if tp.topic != topic:
                continue
            high = consumer.highwater(tp)
            pos = await consumer.position(tp)
            if high is not None and pos is not None and high >= 0:
                lag[f"{tp.topic}/{tp.partition}"] = max(0, int(high) - int(pos))
        return lag
    except Exception:  # pragma: no cover - metrics must never fail the view
        log.debug("consumer lag unavailable", exc_info=True)
        return {}


async def catalog_reader(settings: Settings, pipeline: Pipeline) -> None:
    """Read the whole compacted catalog topic on every worker (no consumer group), then follow it.

    Every worker needs every item in its own index, so this is a plain assign-all consumer rather
    than part of the worker's consumer group. ``catalog_ready`` is set once the end offsets seen at
    start-up have been reached.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        **aiokafka_config(settings), enable_auto_commit=False, group_id=None, auto_offset_reset="earliest",
        client_id=f"{settings.app_id}-catalog",
    )
    await consumer.start()
    try:
        parts = None
        for _ in range(120):
            parts = consumer.partitions_for_topic(settings.topic_catalog)
            if parts:
                break
            await consumer._client.force_metadata_update()  # noqa: SLF001
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
                        log.warning("bad catalog item topic=%s partition=%s offset=%s reason=%s",
                                    tp.topic, tp.partition, msg.offset, exc.reason)
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
                pipeline.catalog_ready.set()
    finally:
        await consumer.stop()

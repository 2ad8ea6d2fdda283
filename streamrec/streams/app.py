"""The Faust app: events -> per-user state -> batched model + index -> recommendations.

This module only wires: topics, the table, the events agent (:mod:`streamrec.streams.agents`),
the catalog reader (:mod:`streamrec.streams.catalog`), the model-updates reader that hot-swaps
new versions (:mod:`streamrec.streams.model_follower`) and the web views
(:mod:`streamrec.streams.views`). The logic lives in those modules and in :mod:`streamrec.serving`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, cast

import faust
from faust.tables.base import Collection

from streamrec.config import Settings
from streamrec.serving.swap import VersionLoader
from streamrec.streams.agents import BatchHandler, consume_deletions, consume_events
from streamrec.streams.catalog import catalog_reader, read_catalog_topic
from streamrec.streams.consumer import Transport
from streamrec.streams.direct import DirectProducer
from streamrec.streams.kafka_config import faust_brokers, faust_credentials
from streamrec.streams.model_follower import follow_model_updates
from streamrec.streams.outage import BrokerWatch
from streamrec.streams.outage import install as mute_client_noise
from streamrec.streams.pipeline import Pipeline
from streamrec.streams.tables import USERS_CHANGELOG_CONFIG, UsersTable, register_state_codec
from streamrec.streams.transactions import TransactionalSink
from streamrec.streams.tuning import Refreezer, compute_threads, freeze_heap, watch_gc_pauses, watch_loop_lag
from streamrec.streams.views import register_views

log = logging.getLogger(__name__)

#: How often the worker checks whether its catalog grew enough to freeze the heap again, seconds.
REFREEZE_CHECK_S = 60.0

MEMORY_GAUGE_INTERVAL_S = 10.0  # how often the per-part memory gauges are measured


class StreamApp(faust.App):
    """``faust.App`` whose consumer seeks uncommitted source partitions to the beginning when
    streams resume (see :mod:`streamrec.streams.consumer`; without it a restarted worker of a group
    that never committed could skip the events its predecessor had not committed)."""

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)


def worker_datadir(settings: Settings) -> Path:
    """Each worker its own RocksDB dir (two workers on one host would fight over LOCK files)."""
    return settings.data_dir / "worker" / f"{settings.app_id}-{settings.web_port}"


def index_options(settings: Settings) -> dict[str, Any]:
    """The worker's :class:`~streamrec.indexer.ItemIndex` options."""
    return {
        "kind": settings.index_kind,
        "exact_max": settings.index_exact_max,
        "hnsw_m": settings.hnsw_m,
        "hnsw_ef_construction": settings.hnsw_ef_construction,
        "hnsw_ef_search": settings.hnsw_ef_search,
        "hnsw_storage": settings.hnsw_storage,
        "ivf_nlist": settings.ivf_nlist,
        "ivf_nprobe": settings.ivf_nprobe,
        "flat_blas_min_queries": settings.flat_blas_min_queries,
        "exact_backend": settings.index_exact_backend,
        "device": settings.device,
    }


def new_index(settings: Settings, dim: int) -> Any:
    """An empty item index with the worker's index settings (at start and for each new version)."""
    from streamrec.indexer import ItemIndex

    return ItemIndex(dim, **index_options(settings))


def index_dir(settings: Settings) -> Path:
    """Where the worker keeps its item index between runs (one per app: any worker of the app
    may load it, the catalog it reads then corrects it)."""
    return settings.data_dir / "index" / settings.app_id


def index_meta(recommender: Any) -> dict[str, Any]:
    """What a saved index must have been saved with to be loaded for ``recommender``."""
    return {"model_version": str(recommender.version), "dim": int(recommender.dim)}


def saved_or_new_index(settings: Settings, recommender: Any) -> Any:
    """The index this app saved for this model version (a warm restart serves it at once; the
    catalog read at start adds, changes and removes what changed meanwhile), else a new one."""
    from streamrec.indexer import load_saved

    t0 = time.perf_counter()
    index, reason = load_saved(index_dir(settings), meta=index_meta(recommender), **index_options(settings))
    if index is None:
        log.info("no saved index used, building one from the catalog: reason=%s", reason)
        return new_index(settings, recommender.dim)
    log.info(
        "saved index loaded: kind=%s items=%d seconds=%.1f dir=%s",
        index.kind,
        len(index),
        time.perf_counter() - t0,
        index_dir(settings),
    )
    return index


def create_app(
    settings: Settings,
    *,
    recommender: Any,
    index: Any,
    store: str = "rocksdb://",
    loader: VersionLoader | None = None,
    follow_models: bool = True,
) -> tuple[faust.App, Pipeline]:
    """Build the worker app around a loaded model and an (empty or restored) item index.

    ``store`` is the table store (``memory://`` in unit tests). ``loader`` says how the worker
    loads the versions it hot-swaps (sharing ``recommender``'s title encoder or text cache; see
    :func:`streamrec.streams.cli.build_worker`); without one it serves ``recommender`` only.
    ``follow_models`` starts the model-updates reader. The app carries its :class:`BatchHandler`
    as ``app.streamrec_handler`` and the pipeline as ``app.streamrec_pipeline``.
    """
    pipeline = Pipeline(
        recommender=recommender,
        index=index,
        top_k=settings.top_k,
        history_len=settings.history_len,
        purchased_max=settings.purchased_max,
        trigger_types=settings.trigger_types,
        profile_weights=settings.profile_weights(),
        profile_publish_s=settings.profile_publish_s,
        new_index=lambda dim: new_index(settings, dim),
        loader=loader,
        index_dir=index_dir(settings),
        compute_threads=compute_threads(settings.torch_threads),
    )
    datadir = worker_datadir(settings)
    datadir.mkdir(parents=True, exist_ok=True)
    app = StreamApp(
        settings.app_id,
        broker=faust_brokers(settings),
        broker_credentials=faust_credentials(settings),
        store=store,
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host if settings.web_host != "0.0.0.0" else "localhost",
        producer_acks=-1,
        producer_linger_ms=settings.changelog_linger_ms,
        producer_max_batch_size=settings.changelog_batch_bytes,
        broker_commit_interval=settings.commit_interval_s,
        processing_guarantee=settings.processing_guarantee,
        # A worker that dies (SIGKILL, OOM) holds its partitions until the session times out;
        # keep that short so a restarted or surviving worker takes over within seconds.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        autodiscover=False,
        web_in_thread=False,
        logging_config=None,
        Table=UsersTable,  # Faust's table; its changelog may go through librdkafka (below)
    )
    # Table writes queue changelog messages in Faust's producer buffer; past 100 (its default) the
    # stream pauses to drain it ("producer buffer full"), which every full batch of users hit.
    app.producer.buffer.max_messages = 8 * settings.batch_max
    app.streamrec_settings = settings  # type: ignore[attr-defined]  # read by streams.consumer
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    events_topic = app.topic(settings.topic_events, partitions=settings.partitions, **raw)
    recs_topic = app.topic(settings.topic_recommendations, partitions=settings.partitions, **raw)
    dlq_topic = app.topic(settings.topic_dlq, partitions=settings.partitions, **raw)
    # partitioned like the events topic: Faust's assignor gives both partitions p to one worker
    deletions_topic = app.topic(settings.topic_deletions, partitions=settings.partitions, **raw)
    catalog_dlq_topic = app.topic(settings.topic_catalog_dlq, partitions=settings.partitions, **raw)
    profiles_topic = app.topic(settings.topic_profiles, partitions=settings.partitions, **raw)
    users = app.Table(
        "users",
        default=None,
        partitions=settings.partitions,
        # JSON values; one that does not decode resets its user instead of stopping recovery
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer=register_state_codec()),
        help="per-user history, purchases, latest list",
        # compaction bounded in time: a deleted user's records leave the changelog within 24 h
        extra_topic_configs=USERS_CHANGELOG_CONFIG,
    )
    # Faust takes the changelog's and the store's value codec from the table's value_serializer
    # (derived from value_type: "json"), not from the schema, and app.Table() has already made the
    # changelog topic: set the codec, then remake the topic with it (same name and configs).
    # Private: checked against faust-streaming 0.15.3 (Collection._new_changelog_topic; the
    # table manager looks the topic up by name, lazily); tests/unit/streams/test_deletion.py fails
    # if the changelog stops using the codec.
    # app.Table() is typed as the TableT interface; what it builds is a Table (a Collection)
    table = cast(Collection, users)
    table.value_serializer = register_state_codec()
    users.changelog_topic = table._new_changelog_topic()

    exactly_once = settings.processing_guarantee == "exactly_once"

    def sink(topic: Any) -> Any:  # exactly_once: each output in its event's transaction
        return TransactionalSink(app, topic) if exactly_once else topic

    direct = None
    recs_out: Any = sink(recs_topic)
    profiles_out: Any = sink(profiles_topic)
    if settings.direct_produce and not exactly_once:
        direct = DirectProducer(settings)  # see streams.direct: the consumer's commit waits for it
        recs_out = direct.channel(settings.topic_recommendations)
        profiles_out = direct.channel(settings.topic_profiles)
        if settings.direct_changelog:  # the users table's changelog too (streams.tables.UsersTable)
            cast(UsersTable, users).direct = direct
    handler = BatchHandler(
        pipeline=pipeline,
        users=users,
        recommendations=recs_out,
        dead_letters=sink(dlq_topic),
        profiles=profiles_out,
        insights=settings.recommendation_insights,
    )
    # exactly_once: no commit in the middle of a batch, nor before its state is handed over
    app.streamrec_commit_lock = handler.lock if exactly_once else None  # type: ignore[attr-defined]

    @app.agent(events_topic, concurrency=1)
    async def process_events(stream: Any) -> None:
        await consume_events(
            stream,
            handler,
            batch_max=settings.batch_max,
            within_s=settings.batch_within_s,
            overlap=settings.overlap_batches and not exactly_once,
        )

    @app.agent(deletions_topic, concurrency=1)
    async def process_deletions(stream: Any) -> None:
        await consume_deletions(stream, handler)

    @app.task
    async def read_catalog() -> None:
        await catalog_reader(settings, pipeline, dead_letters=catalog_dlq_topic)

    watch = BrokerWatch(settings.resolved_bootstrap().split(","))

    @app.task
    async def watch_broker() -> None:
        # logging is configured by now (the worker sets it up before it starts the app's tasks)
        mute_client_noise(watch)
        metrics = pipeline.metrics

        def on_change(available: bool) -> None:
            metrics.kafka_available.set(1 if available else 0)
            if not available:
                metrics.kafka_outages.inc()

        await watch.run(on_change=on_change)

    if follow_models and loader is not None:
        # a new version is built from the catalog topic itself (the source of truth), as at a start
        pipeline.catalog_source = lambda: read_catalog_topic(settings)

        @app.task
        async def follow_models_task() -> None:
            await follow_model_updates(settings, pipeline)

    @app.task
    async def loop_lag() -> None:
        await watch_loop_lag(pipeline.metrics)

    @app.task
    async def gc_tuning() -> None:
        watch_gc_pauses(pipeline.metrics)
        if settings.gc_freeze:
            await pipeline.catalog_ready.wait()
            log.info("garbage collector: %d objects frozen after the catalog load", freeze_heap())
            refreezer = Refreezer(len(pipeline.catalog))
            while True:  # a catalog that keeps growing: freeze what it added, now and then
                await asyncio.sleep(REFREEZE_CHECK_S)
                frozen = refreezer.maybe(len(pipeline.catalog))
                if frozen is not None:
                    log.info("garbage collector: %d objects frozen, catalog items=%d", frozen, len(pipeline.catalog))

    @app.timer(MEMORY_GAUGE_INTERVAL_S)
    async def memory_gauges() -> None:
        if pipeline.catalog_ready.is_set():  # while loading, each catalog batch measures it
            await pipeline.run(pipeline.update_memory)

    async def save_index(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        # a clean stop saves the index, so the next start serves it at once (no rebuild)
        try:
            if pipeline.catalog_ready.is_set():
                await pipeline.run(pipeline.save_index)
        finally:
            disconnect_receivers()

    revoked: Any = None  # the receiver of app.on_partitions_revoked, if any
    if direct is not None:

        async def handover(sender: Any, *args: Any, **kwargs: Any) -> None:
            await direct.handover()  # see DirectProducer.handover

        revoked = handover
        app.on_partitions_revoked.connect(cast(Any, handover))

    def disconnect_receivers() -> None:
        # mode keeps every app's receivers in one class-level mapping keyed by hash(app), the app's
        # address, and holds them strongly: once this app stops, a later app of the same process
        # at the same address would run them (a dead producer's handover, a dead pipeline's index
        # save), and they keep this pipeline alive. A stopped app drops them (mode-streaming 0.7.1's
        # disconnect matches strong receivers; tests/unit/streams/test_direct.py checks it).
        app.on_before_shutdown.disconnect(cast(Any, save_index))
        if revoked is not None:
            app.on_partitions_revoked.disconnect(revoked)

    app.on_before_shutdown.connect(cast(Any, save_index))  # mode's stub wants a plain callable

    register_views(app, pipeline, users, events_topic=settings.topic_events)
    app.streamrec_pipeline = pipeline  # type: ignore[attr-defined]
    app.streamrec_handler = handler  # type: ignore[attr-defined]
    app.streamrec_direct = direct  # type: ignore[attr-defined]  # read by streams.consumer.commit
    app.streamrec_broker_watch = watch  # type: ignore[attr-defined]
    return app, pipeline

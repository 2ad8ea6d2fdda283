"""The worker's Kafka consumer: Faust's aiokafka consumer with one data-loss fix (seek on resume),
and commits that wait for the batch in progress under exactly_once (:meth:`Consumer.force_commit`).

When a worker has finished recovering its tables, Faust (faust-streaming 0.15.3,
``Recovery.on_recovery_completed``) resumes the source partitions, then "seeks them to the
committed offsets" (``Consumer.perform_seek``), then empties every stream queue
(``flow_control.resume()``). The fetcher is already running at that point (it was started to
read the changelogs), so records it fetches from the resumed partitions before the clear are
delivered into the stream queue and thrown away. For a partition with a committed offset the seek
rewinds the fetch position and they are fetched again. aiokafka's ``seek_to_committed`` does
nothing for a partition with no committed offset (a new group whose first worker died before its
first commit), so the position stays where the fetcher left it, often at the end of the
partition, and the discarded events are never read. That is lost recommendations. Nothing is
committed, so the restarted worker shows a lag of 0 and no events in.

:class:`Consumer` fixes both parts:

* it seeks partitions that have no committed offset to the beginning, as
  ``auto_offset_reset="earliest"`` asks;
* it stops the flow before seeking. The recovery path leaves the flow running; Faust's own
  rebalance path stops it. While the flow is stopped nothing is fetched or delivered until the
  caller resumes it, after the stream queues are cleared. Otherwise a fetched batch still being
  delivered could move the read offsets past the rewound position. Faust would then drop the
  records it fetches again as already read.

Every Faust 0.15.3 caller of ``perform_seek`` (``Recovery._resume_streams``,
``Recovery.on_recovery_completed``, and ``Consumer.getmany`` when the flow is stopped) either
resumes the flow itself right after clearing the queues or runs while it is already stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger(__name__)


def partitions_to_rewind(
    committed: Mapping[Any, int | None], *, is_source: Callable[[Any], bool], auto_offset_reset: str
) -> list[Any]:
    """The source partitions that ``seek_to_committed`` leaves unpositioned and that must start
    from the beginning: those with no committed offset (when the reset policy is "earliest") and
    those committed at 0 (aiokafka seeks only to offsets > 0)."""
    out = []
    for tp, offset in committed.items():
        if not is_source(tp):
            continue
        if offset == 0 or ((offset is None or offset < 0) and auto_offset_reset == "earliest"):
            out.append(tp)
    return out


#: How long one commit waits for the direct producer's acknowledgements before it is skipped.
DIRECT_WAIT_S = 5.0


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, whose aiokafka consumer batches its fetches.

    Faust creates the worker's aiokafka consumer with ``fetch_max_wait_ms=1500`` and aiokafka's
    ``fetch_min_bytes=1``: the broker answers a fetch as soon as one record is there, so at a few
    hundred events/s the consumer thread runs a fetch round for every few events (~0.5 ms of CPU
    each, plus the broker's). ``STREAMREC_FETCH_MIN_BYTES`` / ``STREAMREC_FETCH_MAX_WAIT_MS`` set
    both (relies on aiokafka's ``_fetch_min_bytes``/``_fetch_max_wait_ms``, read when the consumer
    starts; faust-streaming 0.15.3 / aiokafka 0.14, checked by tests/unit/streams/test_internals.py).
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        settings = getattr(self.app, "streamrec_settings", None)
        if settings is not None:
            consumer._fetch_min_bytes = settings.fetch_min_bytes
            consumer._fetch_max_wait_ms = settings.fetch_max_wait_ms
        return consumer


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, but "seek to committed" never skips uncommitted partitions."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """Faust's commit (attached messages, producer flush, offset commit), timed as the
        ``commit`` stage of the worker's metrics (``app.streamrec_pipeline``, when present)."""
        t0 = time.perf_counter()
        try:
            direct = getattr(self.app, "streamrec_direct", None)
            # what went out through librdkafka (streams.direct: answers, profiles, the users
            # changelog) must be stored before the offsets of their events are committed; while
            # some still wait, skip this commit
            if direct is not None and not await direct.wait_delivered(DIRECT_WAIT_S):
                now = time.monotonic()
                if now - getattr(self, "_deferred_logged", -1e9) >= 30.0:  # a broker outage: rarely
                    self._deferred_logged = now
                    log.warning("commit deferred: %d output message(s) not yet acknowledged", direct.pending())
                return False
            if direct is not None:  # the table changelog offsets now acknowledged, into the stores
                for table in self.app.tables.values():
                    persist = getattr(table, "persist_delivered", None)
                    if persist is not None:
                        persist()
            return await super().commit(topics, start_new_transaction=start_new_transaction)
        finally:
            pipeline = getattr(self.app, "streamrec_pipeline", None)
            if pipeline is not None:
                pipeline.metrics.stage_seconds.labels(stage="commit").observe(time.perf_counter() - t0)

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """Faust's commit; under exactly_once (``app.streamrec_commit_lock`` set: the events
        agent's lock, held for a whole batch) it waits for the batch in progress and first hands
        the producer buffer's messages (changelog writes) to their transactions, so that a
        transaction never holds a batch's outputs without its offsets, nor its offsets without
        its state (see :mod:`streamrec.streams.transactions`)."""
        lock = getattr(self.app, "streamrec_commit_lock", None)
        if lock is None:
            return await super().force_commit(topics, start_new_transaction=start_new_transaction)
        async with lock:
            await self.app.producer.buffer.flush()
            return await super().force_commit(topics, start_new_transaction=start_new_transaction)

    #: Longest a recovery seek waits for the fetch in flight (a fetch returns within its 1 s timeout).
    FETCH_WAIT_S = 5.0

    @property
    def _fetch_idle(self) -> asyncio.Event:
        """Set while no fetch (``_getmany``) is in flight."""
        event = self.__dict__.get("_streamrec_fetch_idle")
        if event is None:
            event = self.__dict__["_streamrec_fetch_idle"] = asyncio.Event()
            event.set()
        return event

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:  # noqa: ASYNC109 - Faust's signature
        idle = self._fetch_idle
        idle.clear()
        try:
            return await super()._getmany(active_partitions, timeout)
        finally:
            idle.set()

    async def seek_wait(self, partitions: Mapping[Any, int]) -> None:
        """Faust's seek (recovery positions the changelog partitions it reads with it), once no
        fetch is in flight.

        A fetch that started before a rebalance stopped the flow returns while it is stopped, and
        Faust then drops its records (``Consumer.getmany``, "getmany called while flow not
        active"). aiokafka has already moved past them, and Faust's re-seek to the committed
        offsets moves only partitions with a commit, never a changelog. Such a fetch can read the
        assignment's new partitions (Faust hands it the live set of active partitions, which the
        assignment updates in place). If the recovery's seek of a changelog partition comes first,
        the fetch returns its records, they are dropped, and the recovery waits forever for
        records it has skipped: "No event received for active tp ... since recovery start" (seen
        once in CI, ``tests/integration/test_failover.py``). Faust's ``wait_for_stopped_flow`` is
        meant for this, but in faust-streaming 0.15.3 its event is never cleared, so the worker
        tracks the fetch itself (``_getmany``). After the fetch, a new one waits for the flow to
        resume, so the seek stands."""
        try:
            await asyncio.wait_for(self._fetch_idle.wait(), self.FETCH_WAIT_S)
        except TimeoutError:
            log.warning("recovery seek: a fetch still in flight after %.0fs, seeking anyway", self.FETCH_WAIT_S)
        await super().seek_wait(partitions)

    async def perform_seek(self) -> None:
        # The callers resume the flow (consumer.resume_flow()) after flow_control.resume() has
        # emptied the stream queues; see the module docstring.
        self.stop_flow()
        await super().perform_seek()

    async def seek_to_committed(self) -> Mapping[Any, int]:
        committed = await super().seek_to_committed()
        rewind = partitions_to_rewind(
            committed,
            is_source=self._is_source_tp,
            auto_offset_reset=self.app.conf.consumer_auto_offset_reset,
        )
        if rewind:
            log.info(
                "no committed offset, reading from the beginning: %s",
                ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(rewind)),
            )
            await self._thread.seek_to_beginning(*rewind)
        return committed

    def _is_source_tp(self, tp: Any) -> bool:
        """A partition whose progress the worker commits: not a changelog (recovery positions
        those) and not an internal topic consumed without acks (the assignor's leader topic)."""
        return not self._is_changelog_tp(tp) and self.app.topics.acks_enabled_for(tp.topic)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer

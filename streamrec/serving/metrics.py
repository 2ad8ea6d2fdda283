"""Worker metrics through ``prometheus_client``, one :class:`CollectorRegistry` per worker.

Each :class:`Metrics` owns its registry (never the process-wide default one), so tests and
benchmarks can build many workers in one process. Adding a metric is one line in ``__init__``::

    self.swaps = self.counter("streamrec_model_swaps", "Model versions swapped in.")
    self.load_s = self.histogram("streamrec_model_load_seconds", "Checkpoint load time.", (0.1, 1, 10))

and using it is the ``prometheus_client`` API (``.inc()``, ``.observe()``, ``.labels(...)``).
Per-stage times go to one labelled histogram, ``streamrec_stage_seconds{stage=...}``::

    with metrics.stage("parse"):
        ...

The worker's stages, one batch at a time (``bench/pipeline.py`` prints them per event):
``parse`` (bytes -> events), ``state_read`` (table get + decode), ``model`` (user encoder) and
``index`` (FAISS search) and ``filter`` (purchased/stock filtering, popularity fill, lists) on the
model thread, ``score`` (the whole model-thread call as the event loop waits for it),
``produce`` (recommendations handed to the producer), ``state_write`` (table set: RocksDB +
changelog message) and ``commit`` (Faust's commit: producer flush + offset commit).
``streamrec_thread_cpu_seconds{thread=...}`` is the CPU time of each thread of the process
(Linux ``/proc``), the load-insensitive side of the same question.

>>> m = Metrics()
>>> m.events_in.inc(2)
>>> m.observe_latency_ms(12.0)
>>> with m.stage("parse"):
...     pass
>>> text = m.render(model_version="v1")
>>> "streamrec_events_in_total 2.0" in text, 'streamrec_stage_seconds_count{stage="parse"} 1.0' in text
(True, True)
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily

#: Content type of the text exposition format that :meth:`Metrics.render` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Per-stage time of one batch, seconds (100 µs .. 5 s).
STAGE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: Time to build and swap in a new model version, s.
SWAP_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0)


class Metrics:
    """The worker's counters, gauges and histograms, rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events_in = self.counter("streamrec_events_in", "Events consumed from the events topic.")
        self.recommendations_out = self.counter("streamrec_recommendations_out", "Recommendations published.")
        self.dlq = self.counter("streamrec_dlq", "Messages sent to the dead-letter topic.")
        self.duplicates = self.counter("streamrec_duplicate_events", "Redelivered events recognised by event id.")
        self.state_resets = self.counter(
            "streamrec_state_resets", "Stored user states that no longer decoded and were reset."
        )
        self.batches = self.counter("streamrec_batches", "Scoring batches handled.")
        self.user_deletions = self.counter(
            "streamrec_user_deletions", "Users erased on a deletion request (right to erasure)."
        )
        self.catalog_dlq = self.counter(
            "streamrec_catalog_dlq", "Catalog items refused and sent to the catalog dead-letter topic."
        )
        self.kafka_available = self.gauge(
            "streamrec_kafka_available", "1 while the worker reaches a Kafka bootstrap server, 0 during an outage."
        )
        self.kafka_available.set(1)
        self.kafka_outages = self.counter("streamrec_kafka_outages", "Kafka outages seen by this worker.")
        self.catalog_items = self.gauge("streamrec_catalog_items", "Items in this worker's index.")
        self.model_info = self.gauge("streamrec_model_info", "The model version being served.", ("version",))
        self.consumer_lag = self.gauge(
            "streamrec_consumer_lag", "Messages behind the end of each partition.", ("partition",)
        )
        # hot swap (streamrec.serving.swap): versions swapped in, refused, and what a swap cost
        self.model_swaps = self.counter("streamrec_model_swaps", "Model versions swapped in while serving.")
        self.model_refusals = self.counter(
            "streamrec_model_refusals", "Announced model versions refused (missing, corrupt, incompatible)."
        )
        self.model_swap_in_progress = self.gauge(
            "streamrec_model_swap_in_progress", "1 while a new version is being built off the hot path."
        )
        self.model_swap_seconds = self.histogram(
            "streamrec_model_swap_seconds", "Announcement taken to new version serving, s.", SWAP_BUCKETS_S
        )
        self.model_swap_titles = self.counter(
            "streamrec_model_swap_titles",
            "Catalog titles a swap needed: reused or run through the text model.",
            ("source",),
        )
        self.batch_size = self.histogram("streamrec_batch_size", "Events per scoring batch.", BATCH_BUCKETS)
        self.latency = self.histogram(
            "streamrec_event_to_recommendation_ms",
            "Event timestamp to recommendation produced, ms.",
            LATENCY_BUCKETS_MS,
        )
        self.stage_seconds = self.histogram(
            "streamrec_stage_seconds", "Time per batch in each worker stage, s.", STAGE_BUCKETS_S, ("stage",)
        )
        self.loop_lag = self.histogram(
            "streamrec_loop_lag_seconds", "How late the event loop woke a periodic timer, s.", STAGE_BUCKETS_S
        )
        self.gc_pause = self.histogram(
            "streamrec_gc_pause_seconds",
            "Python's cyclic garbage collections (every thread waits for them), s.",
            STAGE_BUCKETS_S,
            ("generation",),
        )
        self.registry.register(ThreadCpuCollector())
        # catalog scale: the text cache, the index kind, memory per part
        self.titles_embedded = self.counter(
            "streamrec_titles_embedded", "Catalog titles embedded by MiniLM (text-cache misses)."
        )
        self.title_cache_hits = self.counter("streamrec_title_cache_hits", "Catalog titles answered by the text cache.")
        self.title_embed_seconds = self.counter(
            "streamrec_title_embed_seconds", "Seconds spent embedding catalog titles."
        )
        self.index_info = self.gauge("streamrec_index_info", "The index kind being served.", ("kind",))
        self.index_rebuilding = self.gauge(
            "streamrec_index_rebuilding", "1 while the index is rebuilt in the background."
        )
        self.memory_bytes = self.gauge("streamrec_memory_bytes", "Bytes held by each part of the worker.", ("part",))
        self._titles_seen = (0, 0, 0.0)
        #: the last 2048 latencies, for quick percentiles in logs and the demo
        self.recent_latency: deque[float] = deque(maxlen=2048)

    # -- adding metrics ----------------------------------------------------------------------

    def counter(self, name: str, help_: str, labels: Sequence[str] = ()) -> Counter:
        """A counter in this worker's registry (exposed as ``<name>_total``)."""
        return Counter(name, help_, labelnames=tuple(labels), registry=self.registry)

    def gauge(self, name: str, help_: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, help_, labelnames=tuple(labels), registry=self.registry)

    def histogram(self, name: str, help_: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> Histogram:
        return Histogram(name, help_, labelnames=tuple(labels), buckets=tuple(buckets), registry=self.registry)

    def stage(self, name: str) -> Any:
        """A context manager (and decorator) timing one stage into ``streamrec_stage_seconds``."""
        return self.stage_seconds.labels(stage=name).time()

    # -- helpers -----------------------------------------------------------------------------

    def value(self, sample: str, **labels: str) -> float:
        """One sample's current value by its exposed name (``streamrec_dlq_total``), 0 if absent."""
        return self.registry.get_sample_value(sample, labels) or 0.0

    def count_titles(self, *, embedded: int, hits: int, seconds: float) -> None:
        """Bring the title counters up to the text cache's running totals."""
        e0, h0, s0 = self._titles_seen
        self.titles_embedded.inc(max(0, embedded - e0))
        self.title_cache_hits.inc(max(0, hits - h0))
        self.title_embed_seconds.inc(max(0.0, seconds - s0))
        self._titles_seen = (max(e0, embedded), max(h0, hits), max(s0, seconds))

    def set_index(self, *, kind: str, rebuilding: bool) -> None:
        self.index_info.clear()
        if kind:
            self.index_info.labels(kind=kind).set(1)
        self.index_rebuilding.set(int(rebuilding))

    def observe_latency_ms(self, ms: float) -> None:
        self.latency.observe(ms)
        self.recent_latency.append(ms)

    def latency_quantiles(self) -> dict[str, float]:
        data = sorted(self.recent_latency)
        if not data:
            return {}

        def pick(q: float) -> float:
            return data[min(len(data) - 1, int(q * len(data)))]

        return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99)}

    def render(
        self, *, model_version: str, consumer_lag: dict[str, int] | None = None, names: Sequence[str] = ()
    ) -> str:
        """The text exposition format; the model version and the lag are set as of now. ``names``
        (Prometheus's ``name[]`` query parameter): only these samples, e.g.
        ``streamrec_events_in_total`` (the other collectors are not run)."""
        self.model_info.clear()
        self.model_info.labels(version=model_version).set(1)
        self.consumer_lag.clear()
        for tp, lag in (consumer_lag or {}).items():
            self.consumer_lag.labels(partition=tp).set(lag)
        registry: Any = self.registry.restricted_registry(names) if names else self.registry
        return generate_latest(registry).decode("utf-8")


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of each live Python thread of this process, by thread name,
    plus ``other`` for native threads (RocksDB, OpenMP); empty where ``/proc`` is missing.

    >>> isinstance(thread_cpu_seconds(), dict)
    True
    """
    task = Path(f"/proc/{os.getpid()}/task")
    if not task.is_dir():
        return {}
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    out: dict[str, float] = {}
    for d in task.iterdir():
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime
        name = names.get(int(d.name), "other")
        out[name] = out.get(name, 0.0) + cpu
    return out


class ThreadCpuCollector:
    """Exposes :func:`thread_cpu_seconds` as ``streamrec_thread_cpu_seconds_total{thread=...}``.

    Counts of threads that ended are dropped, so a counter may step back when a thread exits."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        fam = CounterMetricFamily(
            "streamrec_thread_cpu_seconds", "CPU time of each thread of the worker.", labels=["thread"]
        )
        for name, cpu in sorted(thread_cpu_seconds().items()):
            fam.add_metric([name], cpu)
        yield fam

    def describe(self) -> list[Any]:
        return []

"""Worker metrics rendered as Prometheus text (no client library needed).

>>> m = Metrics()
>>> m.events_in += 2
>>> m.observe_latency_ms(12.0)
>>> "streamrec_events_in_total 2" in m.render(model_version="v1")
True
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self, name: str, help_: str) -> list[str]:
        lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        acc = 0
        for bound, count in zip(self.buckets, self.counts):
            acc += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {acc}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        lines.append(f"{name}_sum {self.total:.3f}")
        lines.append(f"{name}_count {self.n}")
        return lines


@dataclass
class Metrics:
    events_in: int = 0
    recommendations_out: int = 0
    dlq: int = 0
    duplicates: int = 0
    catalog_items: int = 0
    batches: int = 0
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_MS))
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    recent_latency: deque = field(default_factory=lambda: deque(maxlen=2048))
    titles_embedded: int = 0  # catalog titles run through MiniLM by this process
    title_cache_hits: int = 0  # catalog titles answered by the text cache
    title_embed_seconds: float = 0.0  # time spent in MiniLM
    index_kind: str = ""
    index_rebuilding: int = 0
    memory: dict = field(default_factory=dict)  # part -> bytes

    def observe_latency_ms(self, ms: float) -> None:
        self.latency.observe(ms)
        self.recent_latency.append(ms)

    def latency_quantiles(self) -> dict[str, float]:
        data = sorted(self.recent_latency)
        if not data:
            return {}
        pick = lambda q: data[min(len(data) - 1, int(q * len(data)))]  # noqa: E731
        return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99)}

    def render(self, *, model_version: str, consumer_lag: dict[str, int] | None = None) -> str:
        lines = [
            "# HELP streamrec_events_in_total Events consumed from the events topic.",
            "# TYPE streamrec_events_in_total counter",
            f"streamrec_events_in_total {self.events_in}",
            "# HELP streamrec_recommendations_out_total Recommendations published.",
            "# TYPE streamrec_recommendations_out_total counter",
            f"streamrec_recommendations_out_total {self.recommendations_out}",
            "# HELP streamrec_dlq_total Messages sent to the dead-letter topic.",
            "# TYPE streamrec_dlq_total counter",
            f"streamrec_dlq_total {self.dlq}",
            "# HELP streamrec_duplicate_events_total Redelivered events recognised by event id.",
            "# TYPE streamrec_duplicate_events_total counter",
            f"streamrec_duplicate_events_total {self.duplicates}",
            "# HELP streamrec_catalog_items Items in this worker's index.",
            "# TYPE streamrec_catalog_items gauge",
            f"streamrec_catalog_items {self.catalog_items}",
            "# HELP streamrec_model_info The model version being served.",
            "# TYPE streamrec_model_info gauge",
            f'streamrec_model_info{{version="{model_version}"}} 1',
        ]
        lines += [
            "# HELP streamrec_titles_embedded_total Catalog titles embedded by MiniLM (text-cache misses).",
            "# TYPE streamrec_titles_embedded_total counter",
            f"streamrec_titles_embedded_total {self.titles_embedded}",
            "# HELP streamrec_title_cache_hits_total Catalog titles answered by the text cache.",
            "# TYPE streamrec_title_cache_hits_total counter",
            f"streamrec_title_cache_hits_total {self.title_cache_hits}",
            "# HELP streamrec_title_embed_seconds_total Seconds spent embedding titles.",
            "# TYPE streamrec_title_embed_seconds_total counter",
            f"streamrec_title_embed_seconds_total {self.title_embed_seconds:.3f}",
            "# HELP streamrec_index_rebuilding 1 while the index is rebuilt in the background.",
            "# TYPE streamrec_index_rebuilding gauge",
            f"streamrec_index_rebuilding {self.index_rebuilding}",
        ]
        if self.index_kind:
            lines += ["# HELP streamrec_index_info The index kind being served.",
                      "# TYPE streamrec_index_info gauge", f'streamrec_index_info{{kind="{self.index_kind}"}} 1']
        if self.memory:
            lines += ["# HELP streamrec_memory_bytes Bytes held by each part of the worker.",
                      "# TYPE streamrec_memory_bytes gauge"]
            lines += [f'streamrec_memory_bytes{{part="{k}"}} {v}' for k, v in sorted(self.memory.items())]
        lines += self.batch_size.render("streamrec_batch_size", "Events per scoring batch.")
        lines += self.latency.render(
            "streamrec_event_to_recommendation_ms", "Event timestamp to recommendation produced, ms."
        )
        if consumer_lag:
            lines += ["# HELP streamrec_consumer_lag Messages behind the end of each partition.",
                      "# TYPE streamrec_consumer_lag gauge"]
            lines += [f'streamrec_consumer_lag{{partition="{tp}"}} {lag}' for tp, lag in consumer_lag.items()]
        return "\n".join(lines) + "\n"

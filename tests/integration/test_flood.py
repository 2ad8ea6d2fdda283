"""Flood and backpressure: a burst at 10x the worker's drain rate. Lag rises and drains, the
worker's memory stays bounded, nothing is lost, and ``/health`` answers throughout.

The drain rate is measured first, in the same run (on a shared CI machine it varies a lot). The
burst lasts ``STREAMREC_FLOOD_SECONDS`` (default 3 s, so that CI stays within budget; the issue's
30 s run is the same test with ``STREAMREC_FLOOD_SECONDS=30``).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from streamrec.schemas import Recommendation, ShopEvent
from tests.integration.worker_harness import produce_waiting, running_worker, shop_producer

FLOOD_S = float(os.environ.get("STREAMREC_FLOOD_SECONDS", "3"))
WARMUP = 1000


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(text: str, name: str) -> float:
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(name) and not x.startswith("#"))


@pytest.mark.slow
@pytest.mark.timeout(600 + int(30 * FLOOD_S))  # a burst of B s takes about 10 B s to drain
def test_flood_at_ten_times_the_drain_rate_lag_drains_nothing_lost(kafka_settings, sim_model, shop, tmp_path):
    settings = kafka_settings
    items = [c.item_id for c in shop.catalog() if c.in_stock]
    raw = shop_producer(settings, shop, **{"queue.buffering.max.messages": 1_000_000})
    tag = uuid.uuid4().hex[:6]
    n = 0

    def send(count: int) -> None:
        nonlocal n
        for _ in range(count):
            # one event per user: every event gets its own recommendation, so counts are exact
            e = ShopEvent(
                event_id=f"fl{tag}-{n}",
                user_id=f"fl{tag}-u{n}",
                session_id="s",
                item_id=items[n % len(items)],
                type="view",
                ts=int(time.time() * 1000),
            )
            produce_waiting(raw, settings.topic_events, e.user_id.encode(), e.to_bytes())
            n += 1
        raw.poll(0)

    with running_worker(settings, sim_model, tmp_path) as w:
        # the drain rate, measured on this machine now
        t0 = time.monotonic()
        send(WARMUP)
        assert raw.flush(60) == 0
        while metric(w.get("/metrics")[1], "streamrec_events_in_total") < WARMUP:
            assert time.monotonic() - t0 < 300, "warm-up not consumed"
            time.sleep(0.2)
        drain_rate = WARMUP / (time.monotonic() - t0)
        baseline_rss = rss_mib(w.proc.pid)

        samples: list[tuple[float, float, int]] = []  # (lag, rss MiB, /health status)
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                try:
                    status, _ = w.get("/health", timeout=60)
                    text = w.get("/metrics", timeout=60)[1]
                    samples.append((metric(text, "streamrec_consumer_lag{"), rss_mib(w.proc.pid), status))
                except OSError:  # no answer within 60 s: recorded as a failed health check
                    samples.append((-1.0, rss_mib(w.proc.pid), 0))
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        burst = int(10 * drain_rate * FLOOD_S)
        t1 = time.monotonic()
        per_tick = max(1, int(10 * drain_rate / 10))  # 10 ticks a second at 10x the drain rate
        while n < WARMUP + burst:
            send(min(per_tick, WARMUP + burst - n))
            time.sleep(max(0.0, t1 + (n - WARMUP) / (10 * drain_rate) - time.monotonic()))
        assert raw.flush(120) == 0
        total = n
        deadline = time.monotonic() + 900
        while metric(w.get("/metrics", timeout=60)[1], "streamrec_events_in_total") < total:
            assert w.proc.poll() is None, w.log()[-3000:]
            assert time.monotonic() < deadline, "the flood never drained"
            time.sleep(1)
        time.sleep(2)
        stop.set()
        watcher.join(120)

        # nothing lost: a recommendation for every event, each exactly once
        c = Consumer(
            {
                "bootstrap.servers": settings.resolved_bootstrap(),
                "group.id": f"flood-{tag}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        c.subscribe([settings.topic_recommendations])
        seen: set[str] = set()
        deadline = time.monotonic() + 300
        while len(seen) < total and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                seen.add(Recommendation.from_bytes(msg.value()).event_id)
        c.close()
        assert len(seen) == total and seen == {f"fl{tag}-{i}" for i in range(total)}

        lags = [s[0] for s in samples]
        assert max(lags) > 0 and lags[-1] == 0, lags  # the lag rose, then drained
        assert all(s[2] == 200 for s in samples), [s[2] for s in samples]  # /health answered throughout
        peak = max(s[1] for s in samples)
        assert peak < baseline_rss + 1024, (baseline_rss, peak)  # bounded, loosely: +1 GiB at most
        print(
            f"flood drain_rate={drain_rate:.0f}/s burst={burst} in {FLOOD_S}s max_lag={max(lags):.0f} "
            f"rss baseline={baseline_rss:.0f}MiB peak={peak:.0f}MiB"
        )

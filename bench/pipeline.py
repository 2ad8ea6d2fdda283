"""Pipeline benchmark: events/s through one worker and event-to-recommendation latency.

Measured in one run, each figure beside its ceiling:
  1. raw consume: a bare aiokafka consumer reading the events topic (the Kafka ceiling);
  2. model+index alone: the worker's own parse -> state -> encode -> search code, no Kafka,
     at the worker's batch size (the compute ceiling);
  3. pipeline: a real `streamrec worker` process draining a backlog of the same events;
  4. latency: produce -> recommendation received, p50/p95/p99 at 100, 500 and 1000 events/s.

Data: Amazon Beauty (../shared/data/beauty or $STREAMREC_BENCH_DATA) replayed as events, its items
as the catalog, and a model trained on it (``--model DIR``, else a short training run here).
Starts a local Kafka unless STREAMREC_BOOTSTRAP_SERVERS is set. The last line is one JSON object.

    .venv/bin/python bench/pipeline.py [--model DIR] [--events 30000] [--rate-seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamrec.devtools import localkafka  # noqa: E402
from streamrec.client import EventProducer, RecommendationSubscriber  # noqa: E402
from streamrec.config import Settings  # noqa: E402
from streamrec.datafiles import read_item_text, read_sequences  # noqa: E402
from streamrec.devtools.replay import catalog_from_dataset, dataset_items  # noqa: E402
from streamrec.schemas import ShopEvent  # noqa: E402
from streamrec.streams.topics import create_topics  # noqa: E402


def data_dir() -> Path:
    return Path(os.environ.get("STREAMREC_BENCH_DATA", REPO.parent / "shared" / "data" / "beauty"))


def beauty_events(sequences: dict[str, list[str]], n: int, *, prefix: str) -> list[ShopEvent]:
    """The first ``n`` events of Beauty, users interleaved (as live traffic), ts filled at send."""
    users = list(sequences)
    out: list[ShopEvent] = []
    pos = 0
    while len(out) < n:
        progressed = False
        for u in users:
            seq = sequences[u]
            if pos < len(seq):
                out.append(ShopEvent(event_id=f"{prefix}-{len(out)}", user_id=f"u{u}", session_id=f"s{u}",
                                     item_id=seq[pos].split(":")[0], type="view", ts=1_760_000_000_000))
                progressed = True
                if len(out) >= n:
                    break
        if not progressed:
            break
        pos += 1
    return out


def ensure_model(args: argparse.Namespace, work: Path) -> Path:
    if args.model:
        return Path(args.model)
    out = work / "model"
    d = data_dir()
    print(f"training a model on Beauty for {args.train_seconds}s (pass --model DIR to skip)...", flush=True)
    subprocess.run([sys.executable, "-m", "streamrec.cli", "--log-level", "WARNING", "train", "--sequences",
                    str(d / "sequences.txt"), "--item-text", str(d / "item_text.tsv"), "--out", str(out),
                    "--time-budget", str(args.train_seconds), "--no-progress"], check=True)
    return out


def raw_consume(settings: Settings, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    async def run() -> float:
        c = AIOKafkaConsumer(settings.topic_events, bootstrap_servers=settings.resolved_bootstrap(),
                             group_id=f"bench-raw-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest",
                             enable_auto_commit=False, max_poll_records=2000)
        await c.start()
        seen, t0 = 0, None
        try:
            while seen < n:
                batch = await c.getmany(timeout_ms=1000)
                for msgs in batch.values():
                    if msgs and t0 is None:
                        t0 = time.perf_counter()
                    seen += len(msgs)
        finally:
            await c.stop()
        return seen / (time.perf_counter() - t0)

    return asyncio.run(run())


def model_index_alone(model: Path, catalog, events: list[ShopEvent], batch: int) -> float:
    """The worker's batch path without Kafka: parse bytes, update state, score, build messages."""
    from streamrec.indexer import ItemIndex
    from streamrec.model.inference import Recommender
    from streamrec.schemas import Recommendation, ScoredItem
    from streamrec.serving.state import UserState
    from streamrec.streams.pipeline import Pipeline

    rec = Recommender.load(model, device="cpu")
    index = ItemIndex(rec.dim)
    p = Pipeline(recommender=rec, index=index, top_k=10, history_len=50, purchased_max=500,
                 trigger_types=("view", "add_to_cart", "remove_from_cart", "purchase"))
    p.apply_catalog([(c.item_id, c) for c in catalog])
    raw = [e.to_bytes() for e in events]
    states: dict[str, dict] = {}

    def run_batch(chunk: list[bytes]) -> None:
        answer, fresh = {}, []
        for b in chunk:
            ev = ShopEvent.from_bytes(b)
            st = UserState.from_json(states.get(ev.user_id))
            if p.apply_event(st, ev):
                fresh.append(ev)
            states[ev.user_id] = st.to_json()
            answer[ev.user_id] = (st, ev)
        items = list(answer.values())
        lists = p.score([s for s, _ in items], fresh)
        for (st, ev), recs in zip(items, lists):
            Recommendation(user_id=ev.user_id, items=[ScoredItem(item_id=i, score=s) for i, s in recs],
                           model_version="bench", event_id=ev.event_id, event_ts=ev.ts,
                           produced_ts=ev.ts).to_bytes()
            st.latest = {"items": recs}
            states[ev.user_id] = st.to_json()

    run_batch(raw[:batch])  # warm-up
    states.clear()
    t0 = time.perf_counter()
    for i in range(0, len(raw), batch):
        run_batch(raw[i : i + batch])
    return len(raw) / (time.perf_counter() - t0)


def scrape(url: str) -> dict[str, float]:
    out = {}
    with urllib.request.urlopen(url, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                k, _, v = line.partition(" ")
                out[k] = float(v)
    return out


def start_worker(settings: Settings, model: Path, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    for name in ("topic_events", "topic_catalog", "topic_recommendations", "topic_dlq", "topic_model_updates",
                 "app_id", "partitions", "data_dir"):
        env[f"STREAMREC_{name.upper()}"] = str(getattr(settings, name))
    env.update({"STREAMREC_BOOTSTRAP_SERVERS": settings.resolved_bootstrap(), "STREAMREC_WEB_PORT": str(port),
                "STREAMREC_DEVICE": "cpu"})
    proc = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "--log-level", "WARNING", "worker", "--model",
                             str(model)], env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    raise SystemExit("worker did not become healthy")


def latency_at(settings: Settings, events: list[ShopEvent], rate: float, seconds: float) -> dict[str, float]:
    n = int(rate * seconds)
    sent_at: dict[str, float] = {}
    lat: list[float] = []
    in_worker: list[float] = []  # event ts -> recommendation produced (the worker's own share)
    done = threading.Event()
    with RecommendationSubscriber(settings.resolved_bootstrap(), topic=settings.topic_recommendations) as sub:
        sub.wait_ready()

        def consume() -> None:
            while not done.is_set():
                r = sub.poll(0.2)
                if r is not None and r.event_id in sent_at:
                    lat.append((time.time() - sent_at[r.event_id]) * 1000)
                    in_worker.append(float(r.produced_ts - r.event_ts))

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        with EventProducer(settings.resolved_bootstrap(), events_topic=settings.topic_events,
                           config={"linger.ms": 0}) as producer:
            t0 = time.perf_counter()
            for i in range(n):
                target = t0 + i / rate
                delay = target - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                e = events[i % len(events)]
                now = time.time()
                ev = e.model_copy(update={"event_id": f"lat{rate:.0f}-{i}", "ts": int(now * 1000)})
                sent_at[ev.event_id] = now
                producer.send(ev)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(lat) < 0.9 * n:
            time.sleep(0.2)
        time.sleep(1.0)
        done.set()
        t.join(2)
    arr = np.array(lat) if lat else np.array([float("nan")])
    work = np.array(in_worker) if in_worker else np.array([float("nan")])
    return {"rate": rate, "sent": n, "answered": len(lat), "p50": float(np.percentile(arr, 50)),
            "p95": float(np.percentile(arr, 95)), "p99": float(np.percentile(arr, 99)),
            "worker_p99": float(np.percentile(work, 99))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint dir trained on Beauty (default: train one now)")
    ap.add_argument("--train-seconds", type=int, default=180)
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=256, help="worker batch size (STREAMREC_BATCH_MAX)")
    ap.add_argument("--rates", default="100,500,1000")
    ap.add_argument("--rate-seconds", type=float, default=15.0)
    args = ap.parse_args()
    d = data_dir()
    if not (d / "sequences.txt").is_file():
        print(f"Beauty data not found at {d} (set STREAMREC_BENCH_DATA)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    model = ensure_model(args, work)
    sequences = read_sequences(d / "sequences.txt")
    texts = read_item_text(d / "item_text.tsv")
    catalog = catalog_from_dataset(dataset_items(sequences, texts), texts)
    events = beauty_events(sequences, args.events, prefix="bench")

    started = None
    bootstrap = os.environ.get("STREAMREC_BOOTSTRAP_SERVERS")
    if not bootstrap:
        started = work / "kafka"
        bootstrap = localkafka.start(started, libs=Settings().kafka_libs.expanduser()).bootstrap
    tag = f"bench{uuid.uuid4().hex[:6]}"
    settings = Settings(bootstrap_servers=bootstrap, topic_events=f"{tag}.events", topic_catalog=f"{tag}.catalog",
                        topic_recommendations=f"{tag}.recs", topic_dlq=f"{tag}.dlq",
                        topic_model_updates=f"{tag}.models", app_id=tag, data_dir=work / "data", partitions=4,
                        batch_max=args.batch)
    worker = None
    try:
        create_topics(settings)
        print(f"producing {len(catalog)} catalog items and {len(events)} events...", flush=True)
        now = int(time.time() * 1000)
        with EventProducer.from_settings(settings) as producer:
            for c in catalog:
                producer.send_catalog(c)
            for e in events:
                producer.send(e.model_copy(update={"ts": now}))

        raw = raw_consume(settings, len(events))
        print(f"raw consume: {raw:,.0f} events/s", flush=True)
        alone = model_index_alone(model, catalog, events, args.batch)
        print(f"model+index alone: {alone:,.0f} events/s", flush=True)

        port = localkafka.free_port()
        t_start = time.perf_counter()
        worker = start_worker(settings, model, port, work / "worker.log")
        url = f"http://127.0.0.1:{port}/metrics"
        first = None
        while True:
            m = scrape(url)
            n = m.get("streamrec_events_in_total", 0)
            if n > 0 and first is None:
                first = (time.perf_counter(), n)
            if n >= len(events):
                break
            if time.perf_counter() - t_start > 600:
                raise SystemExit("worker did not drain the backlog in 10 minutes")
            time.sleep(0.2)
        t1 = time.perf_counter()
        pipeline = (n - first[1]) / (t1 - first[0]) if t1 > first[0] else float("nan")
        print(f"pipeline: {pipeline:,.0f} events/s", flush=True)

        lat = [latency_at(settings, events, float(r), args.rate_seconds) for r in args.rates.split(",")]
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
        if started is not None:
            localkafka.stop(started)

    print()
    print("| measure | events/s | vs ceiling |")
    print("|---|---:|---:|")
    print(f"| raw consume (bare aiokafka, ceiling) | {raw:,.0f} | 1.00 |")
    print(f"| model+index alone, batch {args.batch} (ceiling) | {alone:,.0f} | 1.00 |")
    print(f"| pipeline, one worker | {pipeline:,.0f} | {pipeline / alone:.2f} of model+index, "
          f"{pipeline / raw:.2f} of raw |")
    print()
    print("| rate ev/s | sent | answered | p50 ms | p95 ms | p99 ms | p99 ms event ts -> produced (worker) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in lat:
        print(f"| {r['rate']:.0f} | {r['sent']} | {r['answered']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} "
              f"| {r['worker_p99']:.1f} |")
    at500 = next((r for r in lat if r["rate"] == 500), lat[0])
    print(json.dumps({"pipeline_events_per_s": round(pipeline, 1), "model_index_events_per_s": round(alone, 1),
                      "raw_consume_events_per_s": round(raw, 1), "p99_ms_at_500": round(at500["p99"], 1),
                      "p50_ms_at_500": round(at500["p50"], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

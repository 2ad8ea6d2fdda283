"""Pipeline benchmark: events/s through one worker and event-to-recommendation latency.

Measured in one run, each figure beside its ceiling:
  1. raw consume: a bare aiokafka consumer reading the events topic (the Kafka ceiling);
  2. model+index alone: the worker's own parse -> state -> encode -> search code, no Kafka,
     at the worker's batch size (the compute ceiling);
  3. pipeline: a real `streamrec worker` process draining a backlog of the same events;
  4. latency: produce -> recommendation received, p50/p95/p99 at 100, 500 and 1000 events/s.

``--workers 1,2`` runs each guarantee once per number of worker processes, back to back (with
``--repeat N``, N times, the order reversed every other time): the workers of a run share its
topics and consumer group (4 partitions), and each has its own Python interpreter, so one
worker's event loop and another's model thread never wait for the same GIL. In such runs every
backlog is produced only once all of the run's workers are ready (so that no rebalance falls
inside the drain), and the CPU, /metrics and stage figures are summed over the workers.

``--loop-bound`` adds one more worker that drains the same backlog with a model stage that costs
nothing (``bench/free_model_worker.py``: fixed answers, everything else as in the worker): the
drain that no change to the model or the index can lift. Beside each drain, the CPU bound: the
cores divided by the worker's and the broker's CPU per event (what the drain would be with every
core busy on them and nothing waiting).

Steps 3-4 run once per processing guarantee (``--guarantees``, default at_least_once and
exactly_once, each a fresh worker on its own topics). ``--insights off,on`` runs them once more
per value, back to back, each worker started with ``STREAMREC_RECOMMENDATION_INSIGHTS=false`` /
``true`` (``--repeat N``: N times, the order reversed every other time), and adds a table of
on against off (events/s, worker CPU µs/event, p99) with the ratio on/off (issue #15: insights
may cost at most 10 % of the worker's events/s). Beside each figure: the worker's CPU
seconds per event (from /proc, much less sensitive to other load on the machine than wall
time), split by thread (``streamrec_thread_cpu_seconds``), the broker's CPU per event when the
script started the broker itself, the per-stage time per event from the worker's
``streamrec_stage_seconds`` histogram, and the load average. ``--profile DIR`` also records a
py-spy profile (200 Hz, raw collapsed stacks, one file per phase; summarise them with
``bench/profile_summary.py``).

A broker the script starts itself is fresh: its JVM compiles Kafka's request paths (the C2 and C1
compiler threads) during the first minute or two of traffic, on the same 2 cores as the worker.
Measured per broker thread, the compiler threads took as much CPU as the request handling during
the first drain. A shop's broker is long-running, so before the measured runs a warm-up worker
(``--warmup-events``, default 10,000; 0: none) drains a backlog of its own on topics of its own
and stops; its figures are not reported. One such drain was not enough: the nineteenth session saw
the broker's CPU per event at 709-982 µs in the first measured run and 199-418 µs in later ones.
So the warm-up drains again, on new topics, until the broker's CPU per event falls by less than a
fifth from one drain to the next (``--warmup-rounds``, at most 4 by default), and prints each
drain's figure.

Data: Amazon Beauty (../shared/data/beauty or $STREAMREC_BENCH_DATA) replayed as events, its items
as the catalog, and a model trained on it (``--model DIR``, else a short training run here).
Starts a local Kafka unless STREAMREC_BOOTSTRAP_SERVERS is set. The last line is one JSON object.

    .venv/bin/python bench/pipeline.py [--model DIR] [--events 30000] [--rate-seconds 15]
        [--guarantees at_least_once,exactly_once] [--insights off,on [--repeat N]] [--profile DIR]
        [--loop-bound] [--workers 1,2 [--repeat N]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from worker_proc import FIELDS, launch, stop, train_model, wait_healthy, worker_env  # noqa: E402

from streamrec.client import EventProducer, RecommendationSubscriber  # noqa: E402
from streamrec.config import Settings  # noqa: E402
from streamrec.datafiles import read_item_text, read_sequences  # noqa: E402
from streamrec.devtools import localkafka  # noqa: E402
from streamrec.devtools.replay import catalog_from_dataset, dataset_items  # noqa: E402
from streamrec.schemas import ShopEvent  # noqa: E402
from streamrec.streams.topics import create_topics  # noqa: E402
from streamrec.streams.tuning import compute_threads  # noqa: E402


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
                out.append(
                    ShopEvent(
                        event_id=f"{prefix}-{len(out)}",
                        user_id=f"u{u}",
                        session_id=f"s{u}",
                        item_id=seq[pos].split(":")[0],
                        type="view",
                        ts=1_760_000_000_000,
                    )
                )
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
    return train_model(d / "sequences.txt", d / "item_text.tsv", out, args.train_seconds)


def produce_backlog(
    settings: Settings, events: list[ShopEvent], *, catalog: list | None = None, ts_ms: int | None = None
) -> None:
    """Produce ``catalog`` (if given) and ``events`` to ``settings``' topics, every event stamped
    ``ts_ms`` (default: now), and wait until the broker has them all."""
    now = int(time.time() * 1000) if ts_ms is None else ts_ms
    with EventProducer.from_settings(settings) as producer:
        for c in catalog or ():
            producer.send_catalog(c)
        for e in events:
            producer.send(e.model_copy(update={"ts": now}))


def raw_consume(settings: Settings, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    async def run() -> float:
        c = AIOKafkaConsumer(
            settings.topic_events,
            bootstrap_servers=settings.resolved_bootstrap(),
            group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_poll_records=2000,
        )
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


def model_index_alone(model: Path, catalog, events: list[ShopEvent], batch: int, threads: int) -> tuple[float, float]:
    """The worker's batch path without Kafka: parse bytes, update state, score, build messages,
    with the worker's torch and FAISS threads (``threads``; on these 2 cores one thread is also
    the faster: bench/RESULTS.md, Pipeline, seventh session). Returns (events/s, CPU seconds per
    event of this process)."""
    from streamrec.indexer import ItemIndex
    from streamrec.model.inference import Recommender
    from streamrec.schemas import Recommendation, ScoredItem
    from streamrec.serving.state import UserState
    from streamrec.streams.pipeline import Pipeline
    from streamrec.streams.tuning import set_compute_threads

    set_compute_threads(threads)  # this thread scores (FAISS's OpenMP setting is per thread)

    rec = Recommender.load(model, device="cpu")
    # the worker's exact search (--worker-env STREAMREC_INDEX_EXACT_BACKEND=faiss measures FAISS's own)
    backend = WORKER_ENV.get("STREAMREC_INDEX_EXACT_BACKEND", Settings().index_exact_backend)
    index = ItemIndex(rec.dim, exact_backend=backend)
    if backend != "faiss":
        print(f"model+index alone: exact search {backend}, product {index.exact_product}", flush=True)
    p = Pipeline(
        recommender=rec,
        index=index,
        top_k=10,
        history_len=50,
        purchased_max=500,
        trigger_types=("view", "add_to_cart", "remove_from_cart", "purchase"),
    )
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
            Recommendation(
                user_id=ev.user_id,
                items=[ScoredItem(item_id=i, score=s) for i, s in recs],
                model_version="bench",
                event_id=ev.event_id,
                event_ts=ev.ts,
                produced_ts=ev.ts,
            ).to_bytes()
            st.latest = {"items": recs}
            states[ev.user_id] = st.to_json()

    run_batch(raw[:batch])  # warm-up
    states.clear()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(raw), batch):
        run_batch(raw[i : i + batch])
    cpu = time.process_time() - c0
    return len(raw) / (time.perf_counter() - t0), cpu / len(raw)


def scrape(url: str) -> dict[str, float]:
    """Every sample of the worker's /metrics as ``name{label=value,...}`` -> value."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(smp.labels.items()))
            out[f"{smp.name}{{{labels}}}" if labels else smp.name] = smp.value
    return out


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, children excluded) of process ``pid``; nan when unknown."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_children(pids: list[int]) -> list[int]:
    """``pids`` and every process below them, so that a worker's CPU counts all of its processes
    (a worker that starts helpers, e.g. branch ``experiment/model-process``'s model process)."""
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


#: the worker's stages, in pipeline order (see streamrec/serving/metrics.py)
STAGES = ("parse", "state_read", "model", "index", "filter", "score", "produce", "state_write", "commit")


def scrape_all(urls: list[str]) -> dict[str, float]:
    """:func:`scrape` of each worker's /metrics, every sample summed over the workers."""
    out: dict[str, float] = {}
    for url in urls:
        for k, v in scrape(url).items():
            out[k] = out.get(k, 0.0) + v
    return out


class Probe:
    """One phase of a worker run: what its /metrics and CPU counters moved by, per event (summed
    over the run's workers when it has several)."""

    def __init__(self, urls: list[str], worker_pids: list[int], broker_pid: int | None) -> None:
        self.urls, self.broker_pid = urls, broker_pid
        self.worker_pid = worker_pids[0]  # py-spy follows the first
        self.worker_pids = with_children(worker_pids)
        self.start()

    def _worker_cpu(self) -> float:
        return sum(proc_cpu(pid) for pid in self.worker_pids)

    def start(self) -> None:
        self.m0 = scrape_all(self.urls)
        self.w0, self.b0, self.t0 = self._worker_cpu(), proc_cpu(self.broker_pid), time.perf_counter()
        self.load0 = os.getloadavg()[0]

    def stop(self) -> dict:
        m1 = scrape_all(self.urls)
        w1, b1, t1 = self._worker_cpu(), proc_cpu(self.broker_pid), time.perf_counter()
        d = {k: v - self.m0.get(k, 0.0) for k, v in m1.items()}
        n = d.get("streamrec_events_in_total", 0.0)
        per = 1e6 / n if n else float("nan")  # seconds per phase -> µs per event
        threads = {}
        for k, v in d.items():
            if k.startswith("streamrec_thread_cpu_seconds_total{"):
                name = k.split("thread=", 1)[1].rstrip("}")
                name = {"MainThread": "loop"}.get(name, "model" if name.startswith("streamrec-model") else name)
                if not name.startswith(("loop", "model")):
                    name = "other threads"
                threads[name] = threads.get(name, 0.0) + v * per
        lag_n = d.get("streamrec_loop_lag_seconds_count", 0.0)
        lag_late = lag_n - d.get("streamrec_loop_lag_seconds_bucket{le=0.1}", lag_n)
        return {
            "events": n,
            "seconds": t1 - self.t0,
            "load": max(self.load0, os.getloadavg()[0]),
            "batches": d.get("streamrec_batches_total", 0.0),
            "cpu_us": (w1 - self.w0) * per,
            "broker_cpu_us": (b1 - self.b0) * per,
            "threads_us": threads,
            "stages_us": {st: d.get(f"streamrec_stage_seconds_sum{{stage={st}}}", 0.0) * per for st in STAGES},
            "commits": d.get("streamrec_stage_seconds_count{stage=commit}", 0.0),
            "loop_lag_over_100ms": lag_late,
            # full (generation 2) garbage collections in the phase and their total pause
            "gc2_n": d.get("streamrec_gc_pause_seconds_count{generation=2}", 0.0),
            "gc2_ms": d.get("streamrec_gc_pause_seconds_sum{generation=2}", 0.0) * 1000,
        }


def py_spy(pid: int, out: Path | None, seconds: int) -> subprocess.Popen | None:
    """Start a py-spy recording of ``pid`` (raw collapsed stacks, per thread, idle included)."""
    if out is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    # the venv's own py-spy (the dev extra) when the venv is not on PATH
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen(
        [
            exe,
            "record",
            "-r",
            "200",
            "-d",
            str(seconds),
            "-p",
            str(pid),
            "-o",
            str(out),
            "--format",
            "raw",
            "--threads",
            "--idle",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


#: The broker counts as warm once a warm-up drain's broker CPU per event is within this factor of
#: the previous one's (``--warmup-rounds``).
WARM_SETTLED = 1.25

#: ``--worker-env`` settings, given to every worker of the run.
WORKER_ENV: dict[str, str] = {}


def start_worker(
    settings: Settings,
    model: Path,
    port: int,
    log: Path,
    guarantee: str,
    insights: str | None = None,
    *,
    free_model: bool = False,
    wait: bool = True,
    extra_env: str = "",
) -> subprocess.Popen:
    """A `streamrec worker` process on ``settings``' topics; ``insights`` "on"/"off" sets
    ``STREAMREC_RECOMMENDATION_INSIGHTS`` (None: the worker's default); ``free_model``: the worker
    of ``bench/free_model_worker.py`` (its model stage costs nothing); ``wait``: return once it
    is ready (else at once); ``extra_env``: "NAME=VALUE ..." settings of this worker only
    (``--compare-env``)."""
    switches = {"STREAMREC_PROCESSING_GUARANTEE": guarantee}
    switches.update(kv.split("=", 1) for kv in extra_env.split())
    if insights is not None:
        switches["STREAMREC_RECOMMENDATION_INSIGHTS"] = "true" if insights == "on" else "false"
    env = worker_env(
        settings,
        (*FIELDS, "topic_profiles", "topic_deletions"),
        base={**WORKER_ENV, **switches},
        STREAMREC_WEB_PORT=str(port),
    )
    entry = (str(REPO / "bench" / "free_model_worker.py"),) if free_model else ("-m", "streamrec.cli")
    proc = launch(["--log-level", "WARNING", "worker", "--model", str(model)], env, log, entry=entry)
    if wait:
        wait_healthy(proc, port, log)
    return proc


def warm_producer(settings: Settings) -> EventProducer:
    """The load generator's producer, ready to send: one event sent and acknowledged.

    A new idempotent librdkafka producer first obtains a producer id from the broker; until then
    (up to ~0.5 s here) its messages wait in its queue. A shop's backend keeps one producer for
    its lifetime, so the bench does too: the phases share one producer, warmed by one event
    (user ``bench-warmup``) before the first phase."""
    producer = EventProducer(settings.resolved_bootstrap(), events_topic=settings.topic_events, config={"linger.ms": 0})
    producer.send(
        ShopEvent(
            event_id=f"warmup-{uuid.uuid4().hex[:8]}",
            user_id="bench-warmup",
            session_id="bench-warmup",
            item_id="warmup",
            type="view",
            ts=int(time.time() * 1000),
        )
    )
    producer.flush(10)
    return producer


def latency_at(
    settings: Settings,
    events: list[ShopEvent],
    rate: float,
    seconds: float,
    probe: Probe | None = None,
    profile: Path | None = None,
    dump: Path | None = None,
    producer: EventProducer | None = None,
) -> dict:
    """Events at ``rate`` for ``seconds``, each answer's latency. ``producer``: a warm producer
    (see :func:`warm_producer`); a fresh one waits for its producer id first (``enable.idempotence``),
    which holds its first sends up to ~0.5 s and would show as a tail of the worker."""
    n = int(rate * seconds)
    sent_at: dict[str, float] = {}
    lat: list[float] = []
    in_worker: list[float] = []  # event ts -> recommendation produced (the worker's own share)
    rows: list[tuple[str, float, float, float]] = []  # per answer: event id, sent, latency, worker share
    done = threading.Event()
    with RecommendationSubscriber(settings.resolved_bootstrap(), topic=settings.topic_recommendations) as sub:
        sub.wait_ready()

        def consume() -> None:
            while not done.is_set():
                r = sub.poll(0.2)
                if r is not None and r.event_id in sent_at:
                    sent = sent_at[r.event_id]
                    lat.append((time.time() - sent) * 1000)
                    in_worker.append(float(r.produced_ts - r.event_ts))
                    rows.append((r.event_id, sent, lat[-1], in_worker[-1]))

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        if probe is not None:
            probe.start()
        spy = py_spy(probe.worker_pid, profile, int(min(seconds, 12))) if probe is not None else None
        with contextlib.nullcontext(producer) if producer is not None else warm_producer(settings) as producer:
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
        costs = probe.stop() if probe is not None else {}
        if spy is not None:
            spy.wait(60)
    if dump is not None:  # one CSV per rate: when each answered event was sent, its latencies
        dump.mkdir(parents=True, exist_ok=True)
        with open(dump / f"latency-{rate:.0f}.csv", "w") as f:
            f.write("event_id,sent_unix_s,latency_ms,worker_ms\n")
            f.writelines(f"{e},{s:.4f},{ms:.2f},{w:.0f}\n" for e, s, ms, w in sorted(rows, key=lambda r: r[1]))
    arr = np.array(lat) if lat else np.array([float("nan")])
    work = np.array(in_worker) if in_worker else np.array([float("nan")])
    return {
        "rate": rate,
        "sent": n,
        "answered": len(lat),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "worker_p99": float(np.percentile(work, 99)),
        **costs,
    }


@dataclass(frozen=True)
class Variant:
    """One worker run: a processing guarantee, insights on/off (None: the default), a repetition."""

    guarantee: str
    insights: str | None = None
    rep: int = 0
    reps: int = 1
    warmup: bool = False  # the broker's warm-up run (not reported)
    free_model: bool = False  # --loop-bound: the model stage costs nothing (bench/free_model_worker.py)
    workers: int = 1  # worker processes sharing the run's topics (--workers)
    env: str = ""  # --compare-env: the settings this run adds ("NAME=VALUE ..."; "": none)

    @property
    def name(self) -> str:
        out = self.guarantee if self.insights is None else f"{self.guarantee}, insights {self.insights}"
        out = out if self.workers == 1 else f"{out}, {self.workers} workers"
        out = f"{out}, {self.env}" if self.env else out
        out = f"warm-up, {out}" if self.warmup else out
        out = f"{out}, model stage free (loop bound)" if self.free_model else out
        return out if self.reps == 1 else f"{out} #{self.rep + 1}"

    @property
    def key(self) -> str:
        """Topic-safe tag."""
        out = self.guarantee if self.insights is None else f"{self.guarantee}-ins{self.insights}"
        out = out if self.workers == 1 else f"{out}-w{self.workers}"
        out = f"{out}-env" if self.env else out
        out = f"warmup-{out}" if self.warmup else out
        out = f"{out}-free" if self.free_model else out
        return out if self.reps == 1 else f"{out}-{self.rep}"


def variants(
    guarantees: list[str], insights: list[str], repeat: int, workers: list[int] | None = None, compare_env: str = ""
) -> list[Variant]:
    """Per guarantee: the insights values (or the worker counts, or without and with
    ``compare_env``) back to back, ``repeat`` times, the order reversed every other time
    (off,on,on,off,...) so that a drifting load hits both alike.

    >>> [v.key for v in variants(["at_least_once"], [], 2, [1, 2])]
    ['at_least_once-0', 'at_least_once-w2-0', 'at_least_once-w2-1', 'at_least_once-1']
    >>> [v.name for v in variants(["at_least_once"], [], 2, compare_env="STREAMREC_X=1")]
    ['at_least_once #1', 'at_least_once, STREAMREC_X=1 #1', 'at_least_once, STREAMREC_X=1 #2', 'at_least_once #2']
    """
    if compare_env:
        return [
            Variant(g, rep=rep, reps=repeat, env=env)
            for g in guarantees
            for rep in range(repeat)
            for env in (("", compare_env) if rep % 2 == 0 else (compare_env, ""))
        ]
    if workers and workers != [1]:
        return [
            Variant(g, rep=rep, reps=repeat, workers=w)
            for g in guarantees
            for rep in range(repeat)
            for w in (workers if rep % 2 == 0 else workers[::-1])
        ]
    if not insights:
        return [Variant(g) for g in guarantees]
    out = []
    for g in guarantees:
        for rep in range(repeat):
            for ins in insights if rep % 2 == 0 else insights[::-1]:
                out.append(Variant(g, ins, rep, repeat))
    return out


def run_worker(
    settings: Settings,
    model: Path,
    work: Path,
    *,
    variant: Variant,
    n_events: int,
    events: list[ShopEvent],
    rates: list[float],
    rate_seconds: float,
    broker_pid: int | None,
    profile: Path | None,
    dump: Path | None = None,
    backlog: list[ShopEvent] | None = None,
) -> dict:
    """One worker run (``variant``): drain the backlog on its topics, then the latency phases.
    ``backlog``: events to produce once the run's workers are all ready (else it is on the topic
    already)."""
    ports = [localkafka.free_port() for _ in range(variant.workers)]
    t_start = time.perf_counter()
    producer: EventProducer | None = None
    name, key = variant.name, variant.key
    logs = [work / (f"worker-{key}.log" if i == 0 else f"worker-{key}-{i + 1}.log") for i in range(len(ports))]
    procs: list[subprocess.Popen] = []
    try:
        for port, log in zip(ports, logs):
            procs.append(
                start_worker(
                    settings,
                    model,
                    port,
                    log,
                    variant.guarantee,
                    variant.insights,
                    free_model=variant.free_model,
                    wait=variant.workers == 1,
                    extra_env=variant.env,
                )
            )
        if variant.workers > 1:  # all launched at once, so that they join the group together
            for proc, port, log in zip(procs, ports, logs):
                wait_healthy(proc, port, log, since=t_start)
        if backlog is not None:
            time.sleep(5.0)  # the group's last rebalance settles before the backlog arrives
            produce_backlog(settings, backlog)
        worker = procs[0]
        urls = [f"http://127.0.0.1:{port}/metrics" for port in ports]
        pids = [p.pid for p in procs]
        spy = py_spy(worker.pid, profile / f"{key}-drain.txt" if profile else None, 12)
        probe, first = None, None
        # the poll reads one counter (/metrics?name[]=...), not every histogram of the worker
        count_urls = [f"{url}?name[]=streamrec_events_in_total" for url in urls]
        while True:
            m = scrape_all(count_urls)
            n = m.get("streamrec_events_in_total", 0)
            if n > 0 and first is None:
                first = (time.perf_counter(), n)
                probe = Probe(urls, pids, broker_pid)
            if n >= n_events:
                break
            if time.perf_counter() - t_start > 600:
                raise SystemExit("worker did not drain the backlog in 10 minutes")
            time.sleep(0.25)
        t1 = time.perf_counter()
        drain = probe.stop()
        if spy is not None:
            spy.wait(60)
        drain["events_per_s"] = (n - first[1]) / (t1 - first[0]) if t1 > first[0] else float("nan")
        print(
            f"[{name}] pipeline: {drain['events_per_s']:,.0f} events/s, worker CPU "
            f"{drain['cpu_us']:.0f} µs/event (load {drain['load']:.1f})",
            flush=True,
        )
        lat = []
        producer = warm_producer(settings)
        time.sleep(1.0)  # the warm-up event's answer is out before the first phase
        for r in rates:
            prof = profile / f"{key}-{r:.0f}.txt" if profile else None
            res = latency_at(
                settings,
                events,
                r,
                rate_seconds,
                Probe(urls, pids, broker_pid),
                prof,
                dump / key if dump else None,
                producer,
            )
            print(
                f"[{name}] {r:.0f} ev/s: p50 {res['p50']:.1f} p99 {res['p99']:.1f} ms, worker CPU "
                f"{res['cpu_us']:.0f} µs/event (load {res['load']:.1f})",
                flush=True,
            )
            lat.append(res)
    finally:
        if producer is not None:
            producer.close()
        for proc in procs:
            stop(proc, 60)
    return {"drain": drain, "latency": lat}


def fmt(x: float, digits: int = 0) -> str:
    return "-" if math.isnan(x) else f"{x:,.{digits}f}"


def insights_table(runs: list[tuple[Variant, dict]], rates: list[float]) -> dict[str, float | list | None]:
    """Print insights on against off per guarantee (means over repeats; ratio on/off) and return
    the figures for the JSON line (keys of guarantees after the first are prefixed with it)."""
    out: dict[str, float | list | None] = {}
    guarantees = list(dict.fromkeys(v.guarantee for v, _ in runs if v.insights is not None))
    if not guarantees:
        return out
    print()
    print("Insights on against off (each its own worker, back to back; means over repeats):")
    print()
    print("| guarantee | measure | insights off | insights on | on / off |")
    print("|---|---|---:|---:|---:|")

    def mean(xs: list[float]) -> float:
        xs = [x for x in xs if not math.isnan(x)]
        return float(np.mean(xs)) if xs else float("nan")

    for gi, g in enumerate(guarantees):
        pre = "" if gi == 0 else f"{g}_"
        by = {ins: [res for v, res in runs if v.guarantee == g and v.insights == ins] for ins in ("off", "on")}
        if not by["off"] or not by["on"]:
            continue
        rows: list[tuple[str, str, list[float], list[float]]] = [
            (
                "drain, events/s",
                "events_per_s",
                [r["drain"]["events_per_s"] for r in by["off"]],
                [r["drain"]["events_per_s"] for r in by["on"]],
            ),
            (
                "drain, worker CPU µs/event",
                "cpu_us_per_event",
                [r["drain"]["cpu_us"] for r in by["off"]],
                [r["drain"]["cpu_us"] for r in by["on"]],
            ),
        ]
        for rate in rates:

            def at(res: dict, field: str, rate: float = rate) -> float:
                return next((r[field] for r in res["latency"] if r["rate"] == rate), float("nan"))

            rows.append(
                (
                    f"{rate:.0f} ev/s, p99 ms",
                    f"p99_ms_at_{rate:.0f}",
                    [at(r, "p99") for r in by["off"]],
                    [at(r, "p99") for r in by["on"]],
                )
            )
            rows.append(
                (
                    f"{rate:.0f} ev/s, worker CPU µs/event",
                    f"cpu_us_per_event_at_{rate:.0f}",
                    [at(r, "cpu_us") for r in by["off"]],
                    [at(r, "cpu_us") for r in by["on"]],
                )
            )
        for label, field, off, on in rows:
            m_off, m_on = mean(off), mean(on)
            ratio = m_on / m_off if m_off else float("nan")
            digits = 1 if "p99" in field else 0
            print(f"| {g} | {label} | {fmt(m_off, digits)} | {fmt(m_on, digits)} | {fmt(ratio, 3)} |")
            out[f"{pre}insights_off_{field}"] = None if math.isnan(m_off) else round(m_off, 1)
            out[f"{pre}insights_on_{field}"] = None if math.isnan(m_on) else round(m_on, 1)
            out[f"{pre}insights_on_off_{field}_ratio"] = None if math.isnan(ratio) else round(ratio, 4)
        if len(by["off"]) > 1:  # the ratio of each back-to-back pair, to judge the noise
            pairs = [
                round(b["drain"]["events_per_s"] / a["drain"]["events_per_s"], 4) for a, b in zip(by["off"], by["on"])
            ]
            print(f"| {g} | drain events/s on / off, each pair | | | {', '.join(f'{p:.3f}' for p in pairs)} |")
            out[f"{pre}insights_on_off_events_per_s_ratio_pairs"] = pairs
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint dir trained on Beauty (default: train one now)")
    ap.add_argument("--train-seconds", type=int, default=180)
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=256, help="worker batch size (STREAMREC_BATCH_MAX)")
    ap.add_argument("--rates", default="100,500,1000")
    ap.add_argument("--rate-seconds", type=float, default=15.0)
    ap.add_argument(
        "--guarantees",
        default="at_least_once,exactly_once",
        help="processing guarantees to run, each with its own worker (STREAMREC_PROCESSING_GUARANTEE)",
    )
    ap.add_argument(
        "--insights",
        default="",
        help="off and/or on (e.g. off,on): run each guarantee once per value, back to back, each worker "
        "started with STREAMREC_RECOMMENDATION_INSIGHTS=false/true (default: the worker's default only)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="with --insights or --workers: run the values this many times, order reversed every other time",
    )
    ap.add_argument(
        "--workers",
        default="1",
        help="worker processes per run, e.g. 1,2: each guarantee once per count, back to back (with "
        "--repeat, the order reversed every other time); a run's workers share its topics (4 partitions)",
    )
    ap.add_argument(
        "--worker-env",
        default="",
        help="STREAMREC_NAME=VALUE settings (space-separated) for every worker of this run, e.g. "
        "STREAMREC_DIRECT_PRODUCE=false to measure Faust's own producer against the default",
    )
    ap.add_argument(
        "--compare-env",
        default="",
        metavar="SETTINGS",
        help="STREAMREC_NAME=VALUE settings (space-separated): each guarantee runs without and with them, "
        "back to back on the same broker (with --repeat, the order reversed every other time)",
    )
    ap.add_argument(
        "--dump-latencies",
        metavar="DIR",
        help="write each rate's answered events (sent time, latency, worker share) to DIR/<run>/latency-<rate>.csv",
    )
    ap.add_argument("--profile", help="directory for py-spy profiles of each phase (py-spy must be on PATH)")
    ap.add_argument(
        "--loop-bound",
        action="store_true",
        help="one more worker (first guarantee) drains the backlog with a model stage that costs nothing "
        "(bench/free_model_worker.py): what everything but the model and the index allows",
    )
    ap.add_argument(
        "--warmup-events",
        type=int,
        default=10_000,
        help="a warm-up worker first drains this many events (at most --events) on topics of its own, so that "
        "the broker's JVM has compiled its hot paths before the measured runs (0: none; see the module docstring)",
    )
    ap.add_argument(
        "--warmup-rounds",
        type=int,
        default=4,
        help="at most this many warm-up drains, each on topics of its own, until the broker's CPU per event "
        f"falls by less than {1 - 1 / WARM_SETTLED:.0%} from one to the next",
    )
    ap.add_argument(
        "--broker-prop",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a server.properties line for the broker this script starts (repeatable)",
    )
    ap.add_argument(
        "--broker-jvm", action="append", default=[], metavar="OPTION", help="a JVM option for that broker (repeatable)"
    )
    args = ap.parse_args()
    broker_props = {}
    for kv in args.broker_prop:
        key, sep, value = kv.partition("=")
        if not sep or not key.strip():
            print(f"--broker-prop: expected KEY=VALUE, got {kv!r}", file=sys.stderr)
            return 2
        broker_props[key.strip()] = value.strip()
    try:
        localkafka.check_broker_options(broker_props, tuple(args.broker_jvm))
    except ValueError as e:
        print(f"--broker-prop/--broker-jvm: {e}", file=sys.stderr)
        return 2
    guarantees = [g.strip() for g in args.guarantees.split(",") if g.strip()]
    if not guarantees or any(g not in ("at_least_once", "exactly_once") for g in guarantees):
        print(f"--guarantees: expected at_least_once and/or exactly_once, got {args.guarantees!r}", file=sys.stderr)
        return 2
    insights = [i.strip() for i in args.insights.split(",") if i.strip()]
    if any(i not in ("off", "on") for i in insights) or len(set(insights)) != len(insights):
        print(f"--insights: expected off and/or on, got {args.insights!r}", file=sys.stderr)
        return 2
    for flag, text in (("--worker-env", args.worker_env), ("--compare-env", args.compare_env)):
        for kv in text.split():
            name, sep, _ = kv.partition("=")
            if not sep or not name.startswith("STREAMREC_") or name in ("STREAMREC_PROCESSING_GUARANTEE",):
                print(f"{flag}: expected STREAMREC_NAME=VALUE (not the guarantee), got {kv!r}", file=sys.stderr)
                return 2
    WORKER_ENV.update(kv.split("=", 1) for kv in args.worker_env.split())
    compare_env = " ".join(args.compare_env.split())
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        workers = []
    if not workers or any(not 1 <= w <= 4 for w in workers) or len(set(workers)) != len(workers):
        print(
            f"--workers: expected distinct counts of 1..4 (one per partition at most), got {args.workers!r}",
            file=sys.stderr,
        )
        return 2
    if sum(map(bool, (insights, workers != [1], compare_env))) > 1:
        print("--workers, --insights and --compare-env: give one of them", file=sys.stderr)
        return 2
    if not 1 <= args.warmup_rounds <= 10:
        print(f"--warmup-rounds: expected 1..10, got {args.warmup_rounds}", file=sys.stderr)
        return 2
    if not 1 <= args.repeat <= 20:
        print(f"--repeat: expected 1..20, got {args.repeat}", file=sys.stderr)
        return 2
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    profile = Path(args.profile) if args.profile else None
    d = data_dir()
    if not (d / "sequences.txt").is_file():
        print(f"Beauty data not found at {d} (set STREAMREC_BENCH_DATA)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    model = ensure_model(args, work)
    if insights and not (model / "intent.json").is_file():
        print(
            f"note: {model} has no intent model (intent.json): insights on computes reasons and profiles, "
            "but no purchase_intent",
            flush=True,
        )
    sequences = read_sequences(d / "sequences.txt")
    texts = read_item_text(d / "item_text.tsv")
    catalog = catalog_from_dataset(dataset_items(sequences, texts), texts)
    events = beauty_events(sequences, args.events, prefix="bench")
    load_start = os.getloadavg()

    started = None
    broker_pid = None
    bootstrap = os.environ.get("STREAMREC_BOOTSTRAP_SERVERS")
    if not bootstrap:
        started = work / "kafka"
        state = localkafka.start(
            started,
            libs=Settings().kafka_libs.expanduser(),
            extra_props=broker_props,
            jvm_options=tuple(args.broker_jvm),
        )
        bootstrap, broker_pid = state.bootstrap, state.pid
    tag = f"bench{uuid.uuid4().hex[:6]}"
    base = Settings(
        bootstrap_servers=bootstrap,
        topic_catalog=f"{tag}.catalog",
        topic_dlq=f"{tag}.dlq",
        topic_model_updates=f"{tag}.models",
        data_dir=work / "data",
        partitions=4,
        batch_max=args.batch,
    )
    runs = variants(guarantees, insights, args.repeat, workers, compare_env)
    late = workers != [1]  # each run's backlog produced once its workers are ready (see the docstring)
    if args.loop_bound:
        runs.append(Variant(runs[0].guarantee, free_model=True))
    warmups = (
        [Variant(runs[0].guarantee, rep=i, reps=args.warmup_rounds, warmup=True) for i in range(args.warmup_rounds)]
        if args.warmup_events > 0 and started is not None
        else []
    )
    per_v = {
        v: base.model_copy(
            update={
                "topic_events": f"{tag}.{v.key}.events",
                "topic_recommendations": f"{tag}.{v.key}.recs",
                "topic_profiles": f"{tag}.{v.key}.profiles",
                "topic_deletions": f"{tag}.{v.key}.deletions",
                "app_id": f"{tag}-{v.key}",
            }
        )
        for v in warmups + runs
    }
    results: dict[Variant, dict] = {}
    try:
        print(f"producing {len(catalog)} catalog items and {len(events)} events per worker run...", flush=True)
        now = int(time.time() * 1000)
        n_warm = min(args.warmup_events, len(events))
        shared = next(iter(per_v.values()))  # the catalog topic is every run's (made with the first run's)
        create_topics(shared)
        produce_backlog(shared, [], catalog=catalog)
        for v, settings in per_v.items():
            if not v.warmup:  # a warm-up's backlog is produced when its round comes (below)
                create_topics(settings)
                produce_backlog(settings, [] if late else events, ts_ms=now)
        previous: float | None = None  # the broker's CPU per event in the previous warm-up drain
        settled = False
        for v in warmups:  # until the broker's CPU per event stops falling (see the module docstring)
            settings = per_v.pop(v)
            if settled:
                continue
            create_topics(settings)
            produce_backlog(settings, events[:n_warm], ts_ms=now)
            print(
                f"warm-up {v.rep + 1}: a worker drains {n_warm:,} events on its own topics (not reported)...",
                flush=True,
            )
            warm = run_worker(
                settings,
                model,
                work,
                variant=v,
                n_events=n_warm,
                events=events,
                rates=[],
                rate_seconds=args.rate_seconds,
                broker_pid=broker_pid,
                profile=None,
            )
            broker_cpu = warm["drain"]["broker_cpu_us"]
            print(f"warm-up {v.rep + 1}: broker CPU {broker_cpu:,.0f} µs/event", flush=True)
            settled = previous is not None and not broker_cpu * WARM_SETTLED < previous
            previous = broker_cpu

        first = per_v[runs[0]]
        if late:  # the runs' topics are still empty: the raw consume reads a backlog of its own
            first = base.model_copy(update={"topic_events": f"{tag}.raw.events", "app_id": f"{tag}-raw"})
            create_topics(first)
            produce_backlog(first, events, ts_ms=now)
        raw = raw_consume(first, len(events))
        print(f"raw consume: {raw:,.0f} events/s", flush=True)
        threads = compute_threads(int(WORKER_ENV.get("STREAMREC_TORCH_THREADS", Settings().torch_threads)))
        alone, alone_cpu = model_index_alone(model, catalog, events, args.batch, threads)
        print(
            f"model+index alone ({threads} thread{'s' if threads > 1 else ''}): {alone:,.0f} events/s, "
            f"{alone_cpu * 1e6:.0f} µs CPU/event",
            flush=True,
        )
        for v, settings in per_v.items():
            results[v] = run_worker(
                settings,
                model,
                work,
                variant=v,
                n_events=len(events),
                events=events,
                rates=[] if v.free_model else rates,  # the loop bound: its drain only
                rate_seconds=args.rate_seconds,
                broker_pid=broker_pid,
                profile=profile,
                dump=Path(args.dump_latencies) if args.dump_latencies else None,
                backlog=events if late else None,
            )
    finally:
        if started is not None:
            localkafka.stop(started)
    load_end = os.getloadavg()

    print()
    print(
        f"load average at start {load_start[0]:.1f} / {load_start[1]:.1f} / {load_start[2]:.1f}, "
        f"at end {load_end[0]:.1f} / {load_end[1]:.1f} / {load_end[2]:.1f} (1 / 5 / 15 min)"
    )
    if broker_props or args.broker_jvm:
        print(f"broker: {' '.join(f'{k}={v}' for k, v in broker_props.items())} {' '.join(args.broker_jvm)}".rstrip())
    print()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(
        f"| measure | events/s | vs ceiling | worker CPU µs/event | broker CPU µs/event "
        f"| CPU bound, events/s ({cores} cores / worker + broker CPU per event) | load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| raw consume (bare aiokafka, ceiling) | {raw:,.0f} | 1.00 | | | | |")
    print(
        f"| model+index alone, batch {args.batch}, {threads} compute thread(s) (ceiling) | {alone:,.0f} | 1.00 "
        f"| {alone_cpu * 1e6:.0f} "
        f"(this process) | | | |"
    )
    for v, res in results.items():
        dr = res["drain"]
        both = dr["cpu_us"] + dr["broker_cpu_us"]  # NaN when the broker is not this script's
        print(
            f"| pipeline, {'one worker, ' if v.workers == 1 else ''}{v.name} (draining) | {dr['events_per_s']:,.0f} | "
            f"{dr['events_per_s'] / alone:.2f} of model+index | {dr['cpu_us']:.0f} | {fmt(dr['broker_cpu_us'])} "
            f"| {fmt(cores * 1e6 / both) if both > 0 else '-'} | {dr['load']:.1f} |"
        )
    print()
    print("Latency, produce -> recommendation received:")
    print()
    print(
        "| run | rate ev/s | sent | answered | p50 ms | p95 ms | p99 ms | p99 ms worker (event ts -> produced) "
        "| worker CPU µs/event | broker CPU µs/event | loop stalls > 100 ms | full GCs (ms in all) | load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for v, res in results.items():
        for r in res["latency"]:
            print(
                f"| {v.name} | {r['rate']:.0f} | {r['sent']} | {r['answered']} | {r['p50']:.1f} | {r['p95']:.1f} "
                f"| {r['p99']:.1f} | {r['worker_p99']:.1f} | {r['cpu_us']:.0f} | {fmt(r['broker_cpu_us'])} "
                f"| {r['loop_lag_over_100ms']:.0f} | {r['gc2_n']:.0f} ({r['gc2_ms']:.0f}) | {r['load']:.1f} |"
            )
    print()
    print(
        "Where the worker's time goes, µs per event (stage wall time from streamrec_stage_seconds; "
        "`score` is the model-thread call as the loop waits for it, incl. model + index + filter; "
        "thread columns are CPU time):"
    )
    print()
    print(
        "| run | phase | events/batch | " + " | ".join(STAGES) + " | CPU loop thread | CPU model thread "
        "| CPU other threads |"
    )
    print("|---|---|---:|" + "---:|" * (len(STAGES) + 3))
    for v, res in results.items():
        for name, ph in [("drain", res["drain"])] + [(f"{r['rate']:.0f} ev/s", r) for r in res["latency"]]:
            th = ph["threads_us"]
            print(
                f"| {v.name} | {name} | {ph['events'] / max(ph['batches'], 1):.1f} | "
                + " | ".join(f"{ph['stages_us'][st]:.0f}" for st in STAGES)
                + f" | {th.get('loop', 0):.0f} | {th.get('model', 0):.0f} | {th.get('other threads', 0):.0f} |"
            )
    compared = insights_table(list(results.items()), rates)
    g0 = guarantees[0]
    v0 = runs[0]
    main_res = results[v0]
    at = {r["rate"]: r for r in main_res["latency"]}
    summary: dict[str, object] = {
        "guarantee": g0,
        "insights": v0.insights,
        "worker_env": dict(WORKER_ENV),
        "pipeline_events_per_s": round(main_res["drain"]["events_per_s"], 1),
        "model_index_events_per_s": round(alone, 1),
        "raw_consume_events_per_s": round(raw, 1),
        "pipeline_cpu_us_per_event": round(main_res["drain"]["cpu_us"], 1),
        "model_index_cpu_us_per_event": round(alone_cpu * 1e6, 1),
        "p99_ms_at_500": round(at[500.0]["p99"], 1) if 500.0 in at else None,
        "p50_ms_at_500": round(at[500.0]["p50"], 1) if 500.0 in at else None,
        "p99_ms_at_1000": round(at[1000.0]["p99"], 1) if 1000.0 in at else None,
        "load_average_start": round(load_start[0], 1),
        "load_average_end": round(load_end[0], 1),
    }
    for g in guarantees[1:]:
        res = results[next(v for v in runs if v.guarantee == g)]
        summary[f"{g}_events_per_s"] = round(res["drain"]["events_per_s"], 1)
        summary[f"{g}_cpu_us_per_event"] = round(res["drain"]["cpu_us"], 1)
        a = {r["rate"]: r for r in res["latency"]}
        summary[f"{g}_p99_ms_at_500"] = round(a[500.0]["p99"], 1) if 500.0 in a else None
    free = [res for v, res in results.items() if v.free_model]
    if free:
        summary["loop_bound_events_per_s"] = round(free[0]["drain"]["events_per_s"], 1)
        summary["loop_bound_cpu_us_per_event"] = round(free[0]["drain"]["cpu_us"], 1)
    summary.update(compared)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Freshness benchmark (issue #10): how fast the live stream reaches the serving model, what
retraining buys under drift, and what a hot swap costs in latency. One run, real processes: a
`streamrec worker` (serving the registry's current version) and a `streamrec trainer`.

1. Swap latency. The simulator's first drift phase is sent at ``--rate`` events/s through the
   worker while ``--swaps`` versions are announced on the model-updates topic (alternating between
   v1 and a perturbed copy of it). Produce -> recommendation latency of the events sent while a swap
   is in progress (announcement sent .. the first recommendation by the new version, plus 1 s for
   the new version's first batches) is ``p99_ms_during_swap``; of all other events (after a
   warm-up) ``p99_ms_steady``; of the events sent in the 5 s before each announcement (the same
   machine load as the swap that follows: this machine is shared) ``p99_ms_before_swap``.
2. event_to_model_s. The trainer starts (interval ``--interval`` s, ``--budget`` s of training per
   round) and the drifted traffic flows at ``--train-rate`` events/s. Once the trainer is warm (its
   process is up and its first version serves: reported as ``trainer_warmup_s``), the events sent
   until ``--promotions`` more versions serve are measured. For each promoted version, the
   trainer's log says how many logged events its round read (``retrain start ... events=N``); an
   event is trained into the first promoted version whose round read at least its position in send
   order (the error is the trainer's ingestion lag, well under a second at these rates). Its
   event_to_model time runs from its send to the first recommendation that version made (as
   received by a subscriber): cadence + training + gate + announcement + swap. Max and mean over
   the events sent while the trainer ran.
3. stale vs retrained. After the last promotion the trainer stops, and the next ``--window``
   events are sent. For each user in that window, the user's first event in it is the target and
   every earlier event the history; v1 (trained before the drift: stale) and the last promoted
   version rank the whole catalog (items of the history excluded; new items by their text, as the
   worker does) and NDCG@10 / HR@10 are compared on the same users and targets.

Starts a local Kafka unless STREAMREC_BOOTSTRAP_SERVERS is set. The last line is one JSON object.

    .venv/bin/python bench/freshness.py [--rate 200] [--train-rate 40] [--interval 30] [--budget 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
sys.path.insert(0, str(REPO / "bench"))

from worker_proc import launch, stop, tagged_settings, train_model, wait_healthy, worker_env  # noqa: E402

from streamrec.client import EventProducer, RecommendationSubscriber  # noqa: E402
from streamrec.config import Settings  # noqa: E402
from streamrec.devtools import localkafka  # noqa: E402
from streamrec.devtools.simulator import ShopSimulator, write_dataset  # noqa: E402
from streamrec.schemas import CatalogItem, ModelUpdate, ShopEvent  # noqa: E402
from streamrec.streams.topics import create_topics  # noqa: E402

#: A swap's latency window: announcement .. serving, plus this long after (the first batches of
#: the new version); the matched steady baseline: this long before each announcement.
AFTER_SWAP_S = 1.0
BEFORE_SWAP_S = 5.0
#: Seconds the worker and the trainer get to shut down on SIGTERM before they are killed.
GRACE_S = 90


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return worker_env(settings, **{"PYTHONUNBUFFERED": "1", **extra})


def get_json(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        return json.loads(e.read().decode())


def start_worker(settings: Settings, port: int, log: Path) -> subprocess.Popen:
    proc = launch(["worker"], env_for(settings, STREAMREC_WEB_PORT=str(port)), log)
    wait_healthy(proc, port, log)
    return proc


def announce(settings: Settings, version: str, path: Path) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": settings.resolved_bootstrap(), "acks": "all"})
    upd = ModelUpdate(version=version, path=str(path), metrics={}, created_ts=int(time.time() * 1000))
    p.produce(settings.topic_model_updates, key=b"current", value=upd.to_bytes())
    p.flush(15)


class Recorder(threading.Thread):
    """Reads every recommendation: arrival time per event id, first arrival per model version."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.sub = RecommendationSubscriber(settings.resolved_bootstrap(), topic=settings.topic_recommendations)
        self.sub.wait_ready()
        self.arrived: dict[str, tuple[float, str]] = {}  # event id -> (wall time, version)
        self.first_seen: dict[str, float] = {}  # version -> wall time of its first recommendation
        self.changes: list[tuple[float, str]] = []  # (wall time, version) whenever the version changed
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            r = self.sub.poll(0.2)
            if r is not None:
                now = time.time()
                self.arrived.setdefault(r.event_id, (now, r.model_version))
                self.first_seen.setdefault(r.model_version, now)
                if not self.changes or self.changes[-1][1] != r.model_version:
                    self.changes.append((now, r.model_version))

    def served_since(self, version: str, t: float) -> float | None:
        """When recommendations started carrying ``version`` at or after ``t`` (None: not yet)."""
        return next((c for c, v in list(self.changes) if v == version and c >= t), None)

    def close(self) -> None:
        self.done.set()
        self.join(5)
        self.sub.close()


class Sender:
    """Sends stream records at a fixed event rate, keeping every event's wall send time in order."""

    def __init__(self, settings: Settings) -> None:
        self.producer = EventProducer.from_settings(settings, config={"linger.ms": 0})
        self.order: list[tuple[str, float]] = []  # (event id, wall send time), in send order

    def send(self, recs: list, rate: float | None, tick=None) -> None:
        t0 = time.perf_counter()
        n = 0
        for r in recs:
            if isinstance(r, CatalogItem):
                self.producer.send_catalog(r)
                continue
            if rate:
                delay = t0 + n / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            self.producer.send(r)
            self.order.append((r.event_id, time.time()))
            n += 1
            if tick is not None and n % 50 == 0:
                tick(n)
        self.producer.flush()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def rank_metrics(rec, catalog: dict[str, str], users: list[tuple[list[tuple[str, str]], str]]) -> dict[str, float]:
    """NDCG@10 / HR@10 of ``rec`` (a Recommender) ranking the whole catalog for each (history,
    target); the history's items are excluded from the ranking."""
    ids = list(catalog)
    vecs = rec.add_items([(i, catalog[i]) for i in ids])  # known: learned; new: from text
    pos = {i: k for k, i in enumerate(ids)}
    u = rec.encode_users([h for h, _ in users])
    scores = u @ vecs.T
    ndcg = hr = 0.0
    for row, (h, target) in zip(scores, users):
        seen = [pos[i] for i, _ in h if i in pos and i != target]
        row = row.copy()
        row[seen] = -np.inf
        rank = int((row > row[pos[target]]).sum())
        if rank < 10:
            hr += 1
            ndcg += 1 / np.log2(rank + 2)
    return {"ndcg@10": ndcg / len(users), "hr@10": hr / len(users)}


ROUND_START = re.compile(r"retrain start mode=(\w+) events=(\d+)")
DECISION = re.compile(r"retrain decision=(\w+) mode=\w+ version=(\S+)")


STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")


def _stamp(line: str) -> float:
    from datetime import datetime

    m = STAMP.match(line)
    if not m:
        return float("nan")
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000


def rounds_from_log(text: str) -> list[tuple[int, str | None, str, float]]:
    """(events read, promoted version or None, decision, round seconds) per round, in order."""
    out: list[tuple[int, str | None, str, float]] = []
    pending: tuple[int, float] | None = None
    for line in text.splitlines():
        if m := ROUND_START.search(line):
            pending = (int(m.group(2)), _stamp(line))
        elif (m := DECISION.search(line)) and pending is not None:
            promoted = m.group(1) == "promoted"
            out.append((pending[0], m.group(2) if promoted else None, m.group(1), _stamp(line) - pending[1]))
            pending = None
        elif ("retrain skipped" in line or "retrain failed" in line) and pending is not None:
            out.append((pending[0], None, "skipped", _stamp(line) - pending[1]))
            pending = None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--phase", type=int, default=8000, help="events per drift phase (phase 0 trains v1)")
    ap.add_argument("--v1-budget", type=float, default=45.0, help="training seconds of v1")
    ap.add_argument("--rate", type=float, default=200.0, help="events/s of the swap-latency part")
    ap.add_argument("--swaps", type=int, default=10)
    ap.add_argument("--train-rate", type=float, default=40.0, help="events/s while the trainer runs")
    ap.add_argument("--interval", type=float, default=30.0, help="STREAMREC_RETRAIN_INTERVAL_S")
    ap.add_argument("--budget", type=float, default=10.0, help="STREAMREC_RETRAIN_TIME_BUDGET_S")
    ap.add_argument("--min-events", type=int, default=300, help="STREAMREC_RETRAIN_MIN_EVENTS")
    ap.add_argument("--holdout", type=int, default=200, help="STREAMREC_RETRAIN_HOLDOUT_USERS")
    ap.add_argument("--promotions", type=int, default=2, help="stop the live part after this many")
    ap.add_argument("--max-live", type=float, default=300.0, help="seconds of live traffic at most")
    ap.add_argument("--window", type=int, default=3000, help="events of the scored next window")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="streamrec-freshness-"))
    tag = f"fresh{uuid.uuid4().hex[:6]}"
    started_kafka = None
    bootstrap = os.environ.get("STREAMREC_BOOTSTRAP_SERVERS")
    if not bootstrap:
        started_kafka = work / "kafka"
        bootstrap = localkafka.start(started_kafka, libs=Settings().kafka_libs.expanduser()).bootstrap
    settings = tagged_settings(bootstrap, tag, work / "data")
    sim_kw = {"seed": 3, "n_items": args.items, "n_users": args.users, "id_prefix": tag, "drift_every": args.phase}
    sim = ShopSimulator(**sim_kw)
    total = 3 * args.phase  # enough for phase 0 + live + window (never all of it)
    stream = list(sim.stream(total))
    events_idx = [k for k, r in enumerate(stream) if isinstance(r, ShopEvent)]
    phase0 = stream[: events_idx[args.phase - 1] + 1]
    rest = stream[events_idx[args.phase - 1] + 1 :]
    catalog = {c.item_id: c.text() for c in sim.catalog()}
    catalog |= {r.item_id: r.text() for r in stream if isinstance(r, CatalogItem)}

    from streamrec.model.registry import ModelRegistry

    print(f"training v1 on drift phase 0 ({args.phase} events) for {args.v1_budget:.0f}s...", flush=True)
    seq, text = write_dataset(ShopSimulator(**sim_kw), work / "phase0", n_events=args.phase, with_types=True)
    train_model(seq, text, work / "v1", args.v1_budget, cli_opts=("--device", "cpu"), train_opts=("--seed", "1"))
    registry = ModelRegistry(settings.registry_dir)
    v1 = registry.register(work / "v1")
    registry.promote(v1)
    import torch

    from streamrec.model.checkpoint import load_checkpoint, save_checkpoint

    model, vocab = load_checkpoint(work / "v1")
    with torch.no_grad():
        model.id_emb.weight.mul_(1.1)
    v1b = registry.register(save_checkpoint(model, vocab, work / "v1b"))

    worker = trainer = None
    rec = None
    try:
        create_topics(settings)
        sender = Sender(settings)
        for c in sim.catalog():
            sender.producer.send_catalog(c)
        sender.producer.flush()
        port = localkafka.free_port()
        worker = start_worker(settings, port, work / "worker.log")
        health = f"http://127.0.0.1:{port}/health"
        rec = Recorder(settings)
        rec.start()

        # -- 1. swap latency ------------------------------------------------------------------
        n0 = sum(isinstance(r, ShopEvent) for r in phase0)
        swap_every = n0 // (args.swaps + 1)
        windows: list[tuple[float, float]] = []  # (announced, serving) wall times
        state = {"next": 1, "target": v1}
        lock = threading.Lock()

        def watch(target: str, t_ann: float) -> None:
            # the swap is over when recommendations carry the target (no polling of the worker:
            # the measurement must not load it)
            deadline = time.monotonic() + 120
            while (t_served := rec.served_since(target, t_ann)) is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"version {target} never served; see {work / 'worker.log'}")
                time.sleep(0.02)
            with lock:
                windows.append((t_ann, t_served))

        watchers: list[threading.Thread] = []

        def tick(n: int) -> None:
            k = state["next"]
            if k <= args.swaps and n >= k * swap_every and all(not w.is_alive() for w in watchers):
                target = v1b if state["target"] == v1 else v1
                state["target"], state["next"] = target, k + 1
                t_ann = time.time()
                announce(settings, target, registry.versions_dir / target)
                w = threading.Thread(target=watch, args=(target, t_ann), daemon=True)
                w.start()
                watchers.append(w)

        print(f"part 1: {n0} events at {args.rate:.0f}/s with {args.swaps} swaps...", flush=True)
        t_part1 = time.time()
        sender.send(phase0, args.rate, tick)
        for w in watchers:
            w.join(120)
        if state["target"] != v1:  # end on v1: the trainer fine-tunes the registry's current one
            t_ann = time.time()
            announce(settings, v1, registry.versions_dir / v1)
            watch(v1, t_ann)
        registry.promote(v1)
        part1 = dict(sender.order)
        deadline = time.monotonic() + 60
        while sum(e in rec.arrived for e in part1) < 0.99 * len(part1) and time.monotonic() < deadline:
            time.sleep(0.5)
        during, steady, before = [], [], []
        for eid, t_sent in part1.items():
            if eid not in rec.arrived or t_sent < t_part1 + 3:  # 3 s warm-up
                continue
            ms = (rec.arrived[eid][0] - t_sent) * 1000
            if any(a <= t_sent <= b + AFTER_SWAP_S for a, b in windows):
                during.append(ms)
            else:
                steady.append(ms)
                if any(a - BEFORE_SWAP_S <= t_sent < a for a, _ in windows):
                    before.append(ms)
        swap_s = [b - a for a, b in windows]
        health_now = get_json(health)
        print(
            f"  swaps {len(windows)} (worker counted {health_now.get('model_swaps')}), "
            f"{np.mean(swap_s):.2f}s each; p99 steady {pct(steady, 99):.1f} ms, during {pct(during, 99):.1f} ms",
            flush=True,
        )

        # -- 2. freshness with the trainer -----------------------------------------------------
        tport = localkafka.free_port()
        trainer_log = work / "trainer.log"
        trainer = launch(
            ["trainer"],
            env_for(
                settings,
                STREAMREC_RETRAIN_INTERVAL_S=str(args.interval),
                STREAMREC_RETRAIN_MIN_EVENTS=str(args.min_events),
                STREAMREC_RETRAIN_TIME_BUDGET_S=str(args.budget),
                STREAMREC_RETRAIN_HOLDOUT_USERS=str(args.holdout),
                STREAMREC_TRAINLOG_SEGMENT_S="1",
                STREAMREC_TRAINLOG_MAX_AGE_S="1e9",
                STREAMREC_TRAINER_WEB_PORT=str(tport),
            ),
            trainer_log,
        )
        t_trainer = time.time()
        print(
            f"part 2: trainer every {args.interval:.0f}s ({args.budget:.0f}s budget), traffic at "
            f"{args.train_rate:.0f}/s until {args.promotions} promotions (at most {args.max_live:.0f}s)...",
            flush=True,
        )
        pos = 0
        chunk = max(1, int(args.train_rate))  # one second of traffic per call
        deadline = time.monotonic() + args.max_live
        live_start = t_warm = None
        while time.monotonic() < deadline:
            part = rest[pos : pos + chunk]
            pos += len(part)
            sender.send(part, args.train_rate)
            promoted = [r for r in rounds_from_log(trainer_log.read_text(errors="replace")) if r[1]]
            served = [r for r in promoted if r[1] in rec.first_seen]
            if live_start is None and served:
                # warm-up over: the trainer process is up and its first version is serving;
                # events from here on are measured
                live_start, t_warm = len(sender.order), time.time()
                measured_after = len(promoted)
            if live_start is not None and len(served) >= measured_after + args.promotions:
                break
            if trainer.poll() is not None:
                raise SystemExit(f"trainer exited; see {trainer_log}")
        if live_start is None:
            raise SystemExit(f"the trainer promoted nothing within {args.max_live:.0f}s; see {trainer_log}")
        live_end = len(sender.order)
        stop(trainer, GRACE_S)
        trainer = None
        rounds = rounds_from_log(trainer_log.read_text(errors="replace"))
        promoted = [(n, v) for n, v, _, _ in rounds if v and v in rec.first_seen]
        # -- 3. the next window ---------------------------------------------------------------
        window_recs = []
        nw = 0
        for r in rest[pos:]:
            window_recs.append(r)
            nw += isinstance(r, ShopEvent)
            if nw >= args.window:
                break
        print(f"part 3: the next window ({nw} events)...", flush=True)
        sender.send(window_recs, args.train_rate * 4)
        time.sleep(3)
    finally:
        stop(trainer, GRACE_S)
        if rec is not None:
            rec.close()
        stop(worker, GRACE_S)
        if started_kafka is not None:
            localkafka.stop(started_kafka)

    # event -> first promoted version whose round read it
    e2m: list[float] = []
    prev = 0
    for n, v in promoted:
        for k in range(max(prev, live_start), min(n, live_end)):
            e2m.append(rec.first_seen[v] - sender.order[k][1])
        prev = max(prev, n)
    if not promoted:
        print("no version was promoted and served; see", work, file=sys.stderr)

    # stale vs retrained on the window
    from streamrec.model.inference import Recommender

    sent_events = [r for r in phase0 + rest[:pos] if isinstance(r, ShopEvent)]
    window_events = [r for r in window_recs if isinstance(r, ShopEvent)]
    history: dict[str, list[tuple[str, str]]] = {}
    for e in sent_events:
        history.setdefault(e.user_id, []).append((e.item_id, e.type))
    cases: list[tuple[list[tuple[str, str]], str]] = []
    taken: set[str] = set()
    for e in window_events:
        if e.user_id not in taken and history.get(e.user_id):
            taken.add(e.user_id)
            cases.append((list(history[e.user_id]), e.item_id))
        history.setdefault(e.user_id, []).append((e.item_id, e.type))
    torch.set_num_threads(1)
    stale = rank_metrics(Recommender.load(registry.versions_dir / v1, device="cpu"), catalog, cases)
    last = promoted[-1][1] if promoted else v1
    fresh = rank_metrics(Recommender.load(registry.versions_dir / last, device="cpu"), catalog, cases)

    print()
    print(f"Part 1: {sum(e in rec.arrived for e in part1)} of {len(part1)} events answered")
    print(
        f"Swap latency: one worker, {args.rate:.0f} events/s, {len(windows)} swaps "
        f"(catalog {args.items} items, each swap {np.mean(swap_s):.2f}s from announcement to serving)"
    )
    print()
    print("| events sent | n | p50 ms | p95 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| outside swaps (steady) | {len(steady)} | {pct(steady, 50):.1f} | {pct(steady, 95):.1f} | "
        f"{pct(steady, 99):.1f} |"
    )
    print(
        f"| in the {BEFORE_SWAP_S:.0f} s before each announcement (matched baseline) | {len(before)} | "
        f"{pct(before, 50):.1f} | {pct(before, 95):.1f} | {pct(before, 99):.1f} |"
    )
    print(
        f"| while a swap was in progress (announcement .. serving + {AFTER_SWAP_S:.0f} s) | {len(during)} | "
        f"{pct(during, 50):.1f} | {pct(during, 95):.1f} | {pct(during, 99):.1f} |"
    )
    print()
    print(
        f"Freshness: trainer interval {args.interval:.0f}s, budget {args.budget:.0f}s, traffic "
        f"{args.train_rate:.0f} events/s; warm-up (trainer process start .. its first version serving) "
        f"{t_warm - t_trainer:.0f}s, then {live_end - live_start} measured events over "
        f"{sender.order[live_end - 1][1] - t_warm:.0f}s"
    )
    print()
    print(
        "| round | events read | round s (train + gate + register) | decision | version | "
        "first rec by it, s after trainer start |"
    )
    print("|---:|---:|---:|---|---|---:|")
    for k, (n, v, d, secs) in enumerate(rounds, 1):
        seen = f"{rec.first_seen[v] - t_trainer:.1f}" if v and v in rec.first_seen else "-"
        print(f"| {k} | {n} | {secs:.1f} | {d} | {v or '-'} | {seen} |")
    print()
    print(
        f"event -> first recommendation by a version trained on it: n={len(e2m)}, mean {np.mean(e2m):.1f}s, "
        f"p50 {pct(e2m, 50):.1f}s, max {max(e2m) if e2m else float('nan'):.1f}s"
    )
    print()
    print(f"Next window after the last promotion ({len(cases)} users, full ranking over {len(catalog)} items):")
    print()
    print("| model | NDCG@10 | HR@10 |")
    print("|---|---:|---:|")
    print(f"| stale: {v1} (trained on phase 0) | {stale['ndcg@10']:.4f} | {stale['hr@10']:.4f} |")
    print(f"| retrained: {last} | {fresh['ndcg@10']:.4f} | {fresh['hr@10']:.4f} |")
    print()
    result = {
        "event_to_model_s": round(max(e2m), 1) if e2m else None,
        "event_to_model_s_mean": round(float(np.mean(e2m)), 1) if e2m else None,
        "trainer_warmup_s": round(t_warm - t_trainer, 1),
        "retrain_interval_s": args.interval,
        "retrain_budget_s": args.budget,
        "event_rate_while_training": args.train_rate,
        "stale_ndcg_at_10": round(stale["ndcg@10"], 4),
        "retrained_ndcg_at_10": round(fresh["ndcg@10"], 4),
        "stale_hr_at_10": round(stale["hr@10"], 4),
        "retrained_hr_at_10": round(fresh["hr@10"], 4),
        "p99_ms_steady": round(pct(steady, 99), 1),
        "p99_ms_during_swap": round(pct(during, 99), 1),
        "p99_ms_before_swap": round(pct(before, 99), 1),
        "swap_rate_events_per_s": args.rate,
        "swaps": len(windows),
        "promotions": len(promoted),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

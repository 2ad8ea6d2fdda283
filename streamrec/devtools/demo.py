"""``make demo``: the whole pipeline on one machine, with a live terminal view.

Local Kafka (unless STREAMREC_BOOTSTRAP_SERVERS is set), topics, a model (the registry's current
one, else one trained on the simulator's shop), one worker, a trainer retraining on a short
cadence, the simulator emitting events whose tastes drift, and a rich view of events/s,
recommendations/s, latency, DLQ count, the model version serving (changing live as the trainer
promotes versions and the worker hot-swaps them), the trainer's rounds and gate decisions, and a
few users' latest recommendations with item titles, each with its reason ("like <the history item
it is closest to>", "popular", "new item") and the session's purchase intent. Titles come from the
catalog topic itself (a reader thread follows it), so items added while the demo runs show with
their titles too. Runs until DEMO_SECONDS pass or Ctrl-C, then stops everything it started.

Knobs (environment): ``DEMO_RATE`` events/s (300), ``DEMO_DRIFT`` events per drift phase (20000;
0: no drift), ``DEMO_RETRAIN_INTERVAL_S`` (60), ``DEMO_RETRAIN_MIN_EVENTS`` (2000),
``DEMO_RETRAIN_BUDGET_S`` training seconds per round (30).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque

from streamrec.config import Settings, load_settings

log = logging.getLogger(__name__)

SIM_SEED = 0
SIM_ITEMS = 500
SIM_USERS = 300


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamrec.cli", "--log-level", "WARNING", *args]


def _env(settings: Settings, bootstrap: str) -> dict[str, str]:
    env = dict(os.environ)
    env["STREAMREC_BOOTSTRAP_SERVERS"] = bootstrap
    env["STREAMREC_DATA_DIR"] = str(settings.data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ensure_model(settings: Settings, env: dict[str, str]) -> str:
    from streamrec.model.registry import ModelRegistry

    registry = ModelRegistry(settings.registry_dir)
    if registry.current_path() is not None:
        return str(registry.current_version())
    sim_dir = settings.data_dir / "sim"
    print("no model yet: training one on the simulator's shop (about a minute)...", flush=True)
    subprocess.run(
        _cli(
            "simulate",
            "--write-dataset",
            str(sim_dir),
            "--events",
            "30000",
            "--seed",
            str(SIM_SEED),
            "--items",
            str(SIM_ITEMS),
            "--users",
            str(SIM_USERS),
            "--with-types",
        ),
        env=env,
        check=True,
    )
    subprocess.run(
        _cli(
            "train",
            "--sequences",
            str(sim_dir / "sequences.txt"),
            "--item-text",
            str(sim_dir / "item_text.tsv"),
            "--events",
            str(sim_dir / "events.csv"),
            "--time-budget",
            "60",
            "--no-progress",
        ),
        env=env,
        check=True,
    )
    return str(ModelRegistry(settings.registry_dir).current_version())


class LiveStats:
    """What the view shows, fed by a recommendation subscriber thread, the worker's /metrics and
    the trainer's /metrics."""

    def __init__(self) -> None:
        self.recs: deque[tuple[float, float]] = deque(maxlen=20_000)  # (arrival, latency ms)
        self.latest: dict[str, list[tuple[str, str | None, str | None]]] = {}  # item, reason, about
        self.intent: dict[str, float | None] = {}
        self.order: deque[str] = deque(maxlen=5)
        self.metrics: dict[str, float] = {}
        self.trainer: dict[str, float] = {}  # trainer samples, labels folded into the name
        self.model_version = "?"
        #: (seconds since start, version) each time recommendations started carrying a new version
        self.versions: deque[tuple[float, str]] = deque(maxlen=6)
        self.t0 = time.monotonic()
        self.lock = threading.Lock()

    def on_rec(self, rec) -> None:
        with self.lock:
            self.recs.append((time.monotonic(), rec.produced_ts - rec.event_ts))
            self.latest[rec.user_id] = [
                (i.item_id, i.reason.kind if i.reason else None, i.reason.item_id if i.reason else None)
                for i in rec.items[:5]
            ]
            self.intent[rec.user_id] = rec.purchase_intent
            if rec.user_id not in self.order:
                self.order.append(rec.user_id)
            if rec.model_version != self.model_version:
                self.versions.append((time.monotonic() - self.t0, rec.model_version))
            self.model_version = rec.model_version


def describe(items: list[tuple[str, str | None, str | None]], titles: dict[str, str], n: int = 3) -> str:
    """``title (why)`` for the first ``n`` items; an item without a known title shows its id, and
    a title that two of the items shown share (the simulator's titles repeat) is followed by the id.

    >>> describe([("a", "similar_to", "b"), ("c", "popular", None), ("d", "new_item", None)],
    ...          {"a": "Red lipstick", "b": "Pink lipstick", "d": "Blue gloss"})
    'Red lipstick (like Pink lipstick); c (popular); Blue gloss (new item)'
    >>> describe([("a", "similar_to", "b")], {"a": "Red lipstick", "b": "Red lipstick"})
    'Red lipstick [a] (like Red lipstick [b])'
    >>> describe([("a", "similar_to", "b")], {"a": "Mascara", "b": "Torura Luminous Mascara Shade 03"})
    'Mascara (like Torura Luminous Mascara Shade…)'
    """
    shown = items[:n]
    ids = {i for item, _, about in shown for i in (item, about) if i}
    seen: dict[str, set[str]] = {}
    for i in ids:
        seen.setdefault(titles.get(i) or i, set()).add(i)

    def name(i: str, width: int) -> str:
        title = titles.get(i) or i
        short = title if len(title) <= width else title[: width - 1].rstrip() + "…"  # cut, and says so
        return f"{short} [{i}]" if len(seen.get(title, ())) > 1 else short

    out = []
    for item, kind, about in shown:
        title = name(item, 40)
        if kind == "similar_to" and about:
            out.append(f"{title} (like {name(about, 30)})")
        elif kind == "popular":
            out.append(f"{title} (popular)")
        elif kind == "new_item":
            out.append(f"{title} (new item)")
        else:
            out.append(title)
    return "; ".join(out)


def follow_titles(
    bootstrap: str, topic: str, titles: dict[str, str], stop: threading.Event, settings: Settings
) -> None:
    """Keep ``titles`` up to date from the compacted catalog topic (new items included)."""
    import uuid

    from confluent_kafka import Consumer

    from streamrec.errors import SchemaError
    from streamrec.schemas import CatalogItem

    conf = settings.confluent_config()
    conf.update(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"streamrec-demo-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer = Consumer(conf)
    consumer.subscribe([topic])
    try:
        while not stop.is_set():
            msg = consumer.poll(0.5)
            if msg is None or msg.error() or msg.value() is None:
                continue
            try:
                item = CatalogItem.from_bytes(msg.value())
            except SchemaError:
                continue
            titles[item.item_id] = item.title or item.item_id
    finally:
        consumer.close()


def _scrape(url: str) -> dict[str, float]:
    """Unlabelled samples of the worker's /metrics, by sample name (``streamrec_dlq_total``...)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=2) as resp:
        text = resp.read().decode()
    return {s.name: float(s.value) for fam in text_string_to_metric_families(text) for s in fam.samples if not s.labels}


def _scrape_labelled(url: str) -> dict[str, float]:
    """Every sample of a /metrics page, labels folded into the key (``name{k=v,...}``)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=2) as resp:
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(smp.labels.items()))
            out[f"{smp.name}{{{labels}}}" if labels else smp.name] = float(smp.value)
    return out


def _render(stats: LiveStats, titles: dict[str, str], rates: dict[str, float], elapsed: float):
    from rich.console import Group
    from rich.table import Table

    with stats.lock:
        now = time.monotonic()
        window = [lat for t, lat in stats.recs if now - t <= 10]
        lat = sorted(window)
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
        head = Table(title=f"streamrec demo - {elapsed:.0f}s", show_header=True)
        for col in ("events/s", "recs/s", "p50 ms", "p99 ms", "DLQ", "catalog", "model"):
            head.add_column(col, justify="right")
        head.add_row(
            f"{rates.get('events', 0):.0f}",
            f"{rates.get('recs', 0):.0f}",
            f"{p(0.5):.0f}",
            f"{p(0.99):.0f}",
            f"{stats.metrics.get('streamrec_dlq_total', 0):.0f}",
            f"{stats.metrics.get('streamrec_catalog_items', 0):.0f}",
            stats.model_version,
        )
        m, tr = stats.metrics, stats.trainer
        models = Table(title="model versions (the trainer promotes, the worker hot-swaps)", show_header=True)
        for col in (
            "serving since",
            "version",
            "swaps",
            "refused",
            "trainer rounds",
            "promoted",
            "rejected",
            "last gate NDCG@10 cand / cur",
        ):
            models.add_column(col, justify="right")
        gate = (
            f"{tr.get('streamrec_trainer_gate_metric{metric=ndcg@10,model=candidate}', float('nan')):.4f} / "
            f"{tr.get('streamrec_trainer_gate_metric{metric=ndcg@10,model=current}', float('nan')):.4f}"
        )
        rounds = sum(v for k, v in tr.items() if k.startswith("streamrec_trainer_retrains_total"))
        history = list(stats.versions) or [(0.0, stats.model_version)]
        for n, (since, version) in enumerate(history):
            last = n == len(history) - 1
            models.add_row(
                f"{since:.0f}s",
                version + (" (serving)" if last else ""),
                f"{m.get('streamrec_model_swaps_total', 0):.0f}" if last else "",
                f"{m.get('streamrec_model_refusals_total', 0):.0f}" if last else "",
                f"{rounds:.0f}" if last else "",
                f"{tr.get('streamrec_trainer_gate_decisions_total{decision=promoted}', 0):.0f}" if last else "",
                f"{tr.get('streamrec_trainer_gate_decisions_total{decision=rejected}', 0):.0f}" if last else "",
                gate if last else "",
            )
        users = Table(title="latest recommendations (and why)", show_header=True)
        users.add_column("user")
        users.add_column("intent", justify="right")
        users.add_column("top items")
        for u in list(stats.order):
            intent = stats.intent.get(u)
            users.add_row(u, "-" if intent is None else f"{intent:.0%}", describe(stats.latest.get(u, []), titles))
    return Group(head, models, users)


def run(seconds: float | None) -> int:
    from rich.live import Live

    from streamrec.client import RecommendationSubscriber
    from streamrec.devtools import localkafka
    from streamrec.devtools.simulator import ShopSimulator

    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    started_kafka = False
    if settings.bootstrap_servers:
        bootstrap = settings.bootstrap_servers
    else:
        state = localkafka.start(
            settings.kafka_dir.resolve(), libs=settings.kafka_libs.expanduser(), heap=settings.kafka_heap
        )
        bootstrap, started_kafka = state.bootstrap, True
    env = _env(settings, bootstrap)
    procs: list[subprocess.Popen] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        subprocess.run(_cli("topics", "create"), env=env, check=True, stdout=subprocess.DEVNULL)
        ensure_model(settings, env)
        logs = settings.data_dir / "demo-logs"
        logs.mkdir(exist_ok=True)
        with open(logs / "worker.log", "wb") as out:  # the child keeps its own copy of the fd
            worker = subprocess.Popen(_cli("worker"), env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append(worker)
        url = f"http://127.0.0.1:{settings.web_port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                print(f"worker exited; see {logs / 'worker.log'}", file=sys.stderr)
                return 1
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        trainer_env = dict(env)
        trainer_env.update(
            {
                "STREAMREC_RETRAIN_INTERVAL_S": os.environ.get("DEMO_RETRAIN_INTERVAL_S", "60"),
                "STREAMREC_RETRAIN_MIN_EVENTS": os.environ.get("DEMO_RETRAIN_MIN_EVENTS", "2000"),
                "STREAMREC_RETRAIN_TIME_BUDGET_S": os.environ.get("DEMO_RETRAIN_BUDGET_S", "30"),
                "STREAMREC_RETRAIN_HOLDOUT_USERS": os.environ.get("DEMO_RETRAIN_HOLDOUT_USERS", "200"),
                # the simulator's clock starts in the past: keep its events in the training log
                "STREAMREC_TRAINLOG_MAX_AGE_S": os.environ.get("STREAMREC_TRAINLOG_MAX_AGE_S", "1e9"),
            }
        )
        with open(logs / "trainer.log", "wb") as out:  # the child keeps its own copy of the fd
            trainer = subprocess.Popen(_cli("trainer"), env=trainer_env, stdout=out, stderr=subprocess.STDOUT)
        procs.append(trainer)
        trainer_url = f"http://127.0.0.1:{settings.trainer_web_port}/metrics"
        sim = ShopSimulator(seed=SIM_SEED, n_items=SIM_ITEMS, n_users=SIM_USERS)
        titles = {c.item_id: c.title for c in sim.catalog()}
        titler = threading.Thread(
            target=follow_titles, args=(bootstrap, settings.topic_catalog, titles, stop, settings), daemon=True
        )
        titler.start()
        stats = LiveStats()
        sub = RecommendationSubscriber(bootstrap, topic=settings.topic_recommendations)
        sub.wait_ready()

        def consume() -> None:
            while not stop.is_set():
                rec = sub.poll(0.5)
                if rec is not None:
                    stats.on_rec(rec)

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        with open(logs / "simulator.log", "wb") as out:
            simulator = subprocess.Popen(
                _cli(
                    "simulate",
                    "--rate",
                    os.environ.get("DEMO_RATE", "300"),
                    "--seed",
                    str(SIM_SEED),
                    "--items",
                    str(SIM_ITEMS),
                    "--users",
                    str(SIM_USERS),
                    "--new-item-rate",
                    "0.002",
                    *(["--drift", drift] if (drift := os.environ.get("DEMO_DRIFT", "20000")) not in ("", "0") else []),
                ),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(simulator)
        t0 = time.monotonic()
        last = (t0, 0.0, 0.0)
        rates: dict[str, float] = {}
        with Live(_render(stats, titles, rates, 0), refresh_per_second=2, transient=False) as live:
            while not stop.is_set() and (seconds is None or time.monotonic() - t0 < seconds):
                time.sleep(1.0)
                with contextlib.suppress(OSError):
                    stats.metrics = _scrape(url + "/metrics")
                with contextlib.suppress(OSError):
                    stats.trainer = _scrape_labelled(trainer_url)
                now = time.monotonic()
                ev = stats.metrics.get("streamrec_events_in_total", 0.0)
                rc = stats.metrics.get("streamrec_recommendations_out_total", 0.0)
                rates = {"events": (ev - last[1]) / (now - last[0]), "recs": (rc - last[2]) / (now - last[0])}
                last = (now, ev, rc)
                live.update(_render(stats, titles, rates, now - t0))
        stop.set()
        reader.join(5)
        titler.join(5)
        sub.close()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop.set()
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        if started_kafka:
            localkafka.stop(settings.kafka_dir.resolve())
        print("demo stopped: worker, trainer, simulator" + (" and Kafka" if started_kafka else "") + " shut down")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamrec.devtools.demo")
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args(argv)
    seconds = args.seconds
    if seconds is None and os.environ.get("DEMO_SECONDS"):
        try:
            seconds = float(os.environ["DEMO_SECONDS"])
        except ValueError:
            print(f"DEMO_SECONDS={os.environ['DEMO_SECONDS']!r}: expected a number of seconds", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.WARNING)
    try:
        return run(seconds)
    except Exception as exc:  # the demo's last line should say what broke, not dump a traceback
        from streamrec.errors import StreamrecError

        if isinstance(exc, (StreamrecError, subprocess.CalledProcessError)):
            print(f"demo failed: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())

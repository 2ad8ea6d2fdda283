"""How long a new producer holds its first events: `EventProducer` (idempotent) against a plain one.

A fresh idempotent librdkafka producer asks the broker for a producer id before it sends anything;
its first messages wait in its queue meanwhile. This script creates N fresh producers of each kind
in turn (the plain librdkafka producer with the same settings but ``enable.idempotence=false`` is
the baseline), sends 100 events from each at 100/s right after creating it, and measures when a
consumer (a separate thread, subscribed before) receives each one. Table: the first event's delay
and the worst delay over the first 0.1 s and after the first 0.5 s, median over the N producers.

It is why `bench/pipeline.py` keeps one warmed producer for all its latency phases (issue #12:
this hold was the "0.4 s tail" of the earlier runs), and why the README says to keep one
`EventProducer` per process. Starts a local Kafka unless STREAMREC_BOOTSTRAP_SERVERS is set.
The last line is one JSON object.

    .venv/bin/python bench/producer_start.py [--producers 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from streamrec.client import EventProducer  # noqa: E402
from streamrec.config import Settings  # noqa: E402
from streamrec.devtools import localkafka  # noqa: E402
from streamrec.schemas import ShopEvent  # noqa: E402


def one_producer(bootstrap: str, topic: str, idempotent: bool, arrived: dict[str, float], tag: str) -> list[float]:
    """Delays (ms) of 100 events sent at 100/s by a producer created just before the first."""
    producer = EventProducer(bootstrap, events_topic=topic, config={"linger.ms": 0, "enable.idempotence": idempotent})
    sent: dict[str, float] = {}
    t0 = time.perf_counter()
    for i in range(100):
        delay = t0 + i / 100 - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        eid = f"{tag}-{i}"
        now = time.time()
        producer.send(
            ShopEvent(event_id=eid, user_id=f"u{i}", session_id="s", item_id="i", type="view", ts=int(now * 1000))
        )
        sent[eid] = now
    producer.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(e in arrived for e in sent):
        time.sleep(0.05)
    return [(arrived.get(e, float("nan")) - s) * 1000 for e, s in sent.items()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--producers", type=int, default=5, help="fresh producers of each kind")
    args = ap.parse_args()
    if not 1 <= args.producers <= 50:
        print(f"--producers: expected 1..50, got {args.producers}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="streamrec-prodstart-"))
    bootstrap = os.environ.get("STREAMREC_BOOTSTRAP_SERVERS")
    started = None
    if not bootstrap:
        started = work / "kafka"
        bootstrap = localkafka.start(started, libs=Settings().kafka_libs.expanduser()).bootstrap
    try:
        topic = f"prodstart-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the topic exists
        admin.create_topics([NewTopic(topic, 4, 1)])[topic].result()
        arrived: dict[str, float] = {}
        done = threading.Event()
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": topic,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,
            }
        )
        consumer.subscribe([topic])

        def consume() -> None:
            while not done.is_set():
                m = consumer.poll(0.05)
                if m is not None and not m.error():
                    arrived[json.loads(m.value())["event_id"]] = time.time()

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        # one throw-away producer so that the topic and the consumer are warm for both kinds
        one_producer(bootstrap, topic, False, arrived, "warm")
        rows: dict[str, list[list[float]]] = {"plain": [], "idempotent": []}
        for k in range(args.producers):  # interleaved, so that drift hits both kinds alike
            for kind in ("plain", "idempotent"):
                rows[kind].append(one_producer(bootstrap, topic, kind == "idempotent", arrived, f"{kind}{k}"))
        done.set()
        t.join(2)
        consumer.close()
    finally:
        if started is not None:
            localkafka.stop(started)
    out: dict[str, float] = {}
    print(f"\n{args.producers} fresh producers of each kind, 100 events each at 100/s from creation:\n")
    print("| producer | first event, ms | worst of the first 0.1 s, ms | worst after 0.5 s, ms |")
    print("|---|---:|---:|---:|")
    for kind, runs in rows.items():
        first = float(np.median([r[0] for r in runs]))
        early = float(np.median([max(r[:10]) for r in runs]))
        late = float(np.median([max(r[50:]) for r in runs]))
        label = "EventProducer (idempotent, the default)" if kind == "idempotent" else "plain (baseline)"
        print(f"| {label} | {first:,.1f} | {early:,.1f} | {late:,.1f} |")
        out |= {
            f"{kind}_first_ms": round(first, 1),
            f"{kind}_early_max_ms": round(early, 1),
            f"{kind}_late_max_ms": round(late, 1),
        }
    out["idempotent_over_plain_first"] = round(out["idempotent_first_ms"] / max(out["plain_first_ms"], 0.1), 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

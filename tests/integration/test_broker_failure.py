"""Broker failure under load: the broker is SIGKILLed mid-stream, stays down 20 s, and comes back
on the same data dir (and so the same ports). Producer, worker and subscriber reconnect on their
own; every event sent gets its recommendation; the worker logs the outage in a few lines."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from streamrec.client import EventProducer, RecommendationSubscriber
from streamrec.config import Settings
from streamrec.devtools import localkafka
from streamrec.devtools.pacing import Pacer
from streamrec.schemas import ShopEvent
from streamrec.streams.topics import create_topics
from tests.integration.worker_harness import start_worker, tagged_settings

RATE = 20.0  # events per second, steady
DOWN_S = 20.0


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.mark.slow
def test_broker_killed_under_load_every_event_answered_and_outage_logged_once(sim_model, shop, tmp_path):
    kafka_dir = tmp_path / "kafka"
    libs = Settings().kafka_libs.expanduser()
    broker = localkafka.start(kafka_dir, libs=libs, heap="384m", timeout=180)
    tag = f"drill-{uuid.uuid4().hex[:8]}"
    settings = tagged_settings(broker.bootstrap, tag, tmp_path / "data")
    w = None
    try:
        create_topics(settings)
        items = [c.item_id for c in shop.catalog() if c.in_stock]
        with EventProducer.from_settings(settings) as producer:
            for item in shop.catalog():
                producer.send_catalog(item)
        w = start_worker(settings, sim_model, tmp_path)
        w.wait_healthy()

        sent: list[str] = []
        got: list[str] = []
        stop_sending = threading.Event()
        stop_reading = threading.Event()
        errors: list[BaseException] = []

        sub = RecommendationSubscriber.from_settings(settings)
        sub.wait_ready(timeout=120)

        def read() -> None:
            try:
                while not stop_reading.is_set():
                    rec = sub.poll(0.5)
                    if rec is not None:
                        got.append(rec.event_id)
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)

        def send(producer: EventProducer) -> None:
            # one event per user: each event is the only one of its user in any batch, so each
            # gets a recommendation of its own (events of one user in one batch share one list)
            try:
                pacer = Pacer(RATE)
                n = 0
                while not stop_sending.is_set():
                    pacer.wait()
                    e = ShopEvent(
                        event_id=f"{tag}-{n}",
                        user_id=f"{tag}-u{n}",
                        session_id="s",
                        item_id=items[n % len(items)],
                        type="view",
                        ts=int(time.time() * 1000),
                    )
                    producer.send(e)
                    sent.append(e.event_id)
                    n += 1
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        producer = EventProducer.from_settings(settings, config={"message.timeout.ms": 600_000})
        reader = threading.Thread(target=read, daemon=True)
        sender = threading.Thread(target=send, args=(producer,), daemon=True)
        reader.start()
        sender.start()
        time.sleep(8)  # steady load before the crash
        assert localkafka.kill(kafka_dir) == broker.pid
        killed_at = len(sent)
        gauge_down = []
        deadline = time.monotonic() + DOWN_S
        while time.monotonic() < deadline:  # the worker stays up and says the broker is gone
            _status, text = w.get("/metrics", timeout=10)
            gauge_down.append(metric_value(text, "streamrec_kafka_available"))
            time.sleep(1)
        again = localkafka.start(kafka_dir, libs=libs, heap="384m", timeout=180)
        assert again.bootstrap == broker.bootstrap  # same ports: the running clients find it again
        time.sleep(8)  # steady load after the restart
        stop_sending.set()
        sender.join(30)
        producer.flush(timeout=300)  # everything queued during the outage is delivered
        assert not errors, errors
        assert len(sent) > killed_at > 0

        deadline = time.monotonic() + 180
        while set(got) < set(sent) and time.monotonic() < deadline and w.proc.poll() is None:
            time.sleep(1)
        stop_reading.set()
        reader.join(30)
        sub.close()
        missing = set(sent) - set(got)
        assert not missing, (
            f"{len(missing)} of {len(sent)} events never answered, e.g. {sorted(missing)[:5]}\n{w.log()[-3000:]}"
        )
        assert set(got) == set(sent) and len(set(got)) == len(sent)  # exactly: nothing lost, nothing foreign

        assert w.proc.poll() is None  # the worker never crashed
        _status, text = w.get("/metrics")
        assert 0.0 in gauge_down and metric_value(text, "streamrec_kafka_available") == 1.0
        log = w.log()
        assert log.count("kafka unavailable") == 1 and log.count("kafka available again") == 1, log[-3000:]
        # one line down, reminders, one line back: not thousands of client errors
        assert len(log.splitlines()) < 400, f"{len(log.splitlines())} log lines"
    finally:
        if w is not None:
            w.stop()
        localkafka.stop(kafka_dir)

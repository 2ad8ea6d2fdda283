"""`streamrec trainer` as a real process against the real broker: the training log survives a
SIGKILL with every event exactly once, and a promoted version is announced on the model-updates
topic (read back by a plain consumer), as is a rollback with `streamrec models promote`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streamrec.client import EventProducer
from streamrec.config import Settings
from streamrec.devtools.simulator import ShopSimulator
from streamrec.model.registry import ModelRegistry
from streamrec.model.trainlog import parse_segment_name
from streamrec.schemas import CatalogItem, ModelUpdate, ShopEvent
from streamrec.streams.topics import create_topics
from tests.integration.conftest import SIM
from tests.integration.worker_harness import settings_env


def start_trainer(settings: Settings, log_path: Path, *args: str, **env: str) -> subprocess.Popen:
    e = settings_env(settings, STREAMREC_TRAINER_WEB_PORT="0", **env)
    fh = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "streamrec.cli", "trainer", *args], env=e, stdout=fh, stderr=subprocess.STDOUT
    )


def metrics_url(log_path: Path, proc: subprocess.Popen, timeout: float = 90) -> str:
    """The /metrics URL the trainer logs at start (it binds an ephemeral port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"trainer metrics url=(\S+)", log_path.read_text(errors="replace"))
        if m:
            return m.group(1)
        assert proc.poll() is None, log_path.read_text()[-4000:]
        time.sleep(0.2)
    raise AssertionError("trainer never served /metrics:\n" + log_path.read_text()[-4000:])


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def logged_ids(trainlog: Path) -> list[str]:
    """Event ids in the complete segments, read straight from the files (not through TrainLog,
    which would clean up the running trainer's temp files)."""
    ids: list[str] = []
    for p in sorted(trainlog.glob("*.parquet")):
        if parse_segment_name(p.name):
            ids.extend(pq.read_table(p, columns=["event_id"]).column("event_id").to_pylist())
    return ids


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow  # two trainer processes and a SIGKILL: 30-50 s on this machine
def test_sigkill_mid_segment_then_restart_logs_every_event_once(kafka_settings: Settings, tmp_path: Path) -> None:
    s = kafka_settings
    create_topics(s)
    sim = ShopSimulator(seed=5, n_items=60, n_users=40, id_prefix=f"k{uuid.uuid4().hex[:6]}")
    events = list(sim.events(3000))
    raw = Producer(s.confluent_config())
    with EventProducer.from_settings(s) as producer:
        for k, e in enumerate(events[:2000]):
            producer.send(e)
            if k % 100 == 0:  # a redelivered event: same event_id, logged once
                producer.send(e)
        producer.flush()
    trainlog = s.trainlog_dir
    log_path = tmp_path / "trainer.log"
    env = {
        "STREAMREC_TRAINLOG_SEGMENT_EVENTS": "40",
        "STREAMREC_TRAINLOG_SEGMENT_S": "0.3",
        "STREAMREC_RETRAIN_INTERVAL_S": "100000",
        "STREAMREC_TRAINLOG_MAX_AGE_S": "1e9",
    }  # simulated event times lie in the past
    first = start_trainer(s, log_path, **env)
    try:
        deadline = time.monotonic() + 120
        while len(list(trainlog.glob("*.parquet"))) < 8:  # well into the stream, far from its end
            assert first.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "no segments written:\n" + log_path.read_text()[-4000:]
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    partial = logged_ids(trainlog)
    assert 0 < len(partial) < 2000 and len(partial) == len(set(partial))

    # More traffic while it is down, with malformed records the workers would dead-letter.
    with EventProducer.from_settings(s) as producer:
        for e in events[2000:]:
            producer.send(e)
        producer.flush()
    for bad in (b"{not json", b'{"event_id": "x"}', b"\xff\xfe"):
        raw.produce(s.topic_events, key=b"u", value=bad)
    raw.flush(30)

    log_path = tmp_path / "trainer-restarted.log"
    second = start_trainer(s, log_path, **env)
    try:
        url = metrics_url(log_path, second)
        deadline = time.monotonic() + 120
        want = {e.event_id for e in events}
        while True:
            ids = logged_ids(trainlog)
            if len(set(ids)) >= len(want) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert len(ids) == len(set(ids)), "an event was logged twice"
        assert set(ids) == want, f"missing {len(want - set(ids))}, unexpected {len(set(ids) - want)}"
        # the gauges follow a segment's write (the files above can be read a moment earlier)
        deadline = time.monotonic() + 30
        while (m := scrape(url))["streamrec_trainer_log_rows"] != len(want) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert m["streamrec_trainer_malformed_total"] >= 3
        assert m["streamrec_trainer_log_rows"] == len(want)
        assert not list(trainlog.glob(".*.tmp"))
    finally:
        stop(second)
    assert second.returncode == 0, log_path.read_text()[-4000:]


def read_updates(settings: Settings, n: int, timeout: float) -> list[ModelUpdate]:
    """A plain, group-less consumer of the model-updates topic, from the beginning."""
    c = Consumer(settings.confluent_config() | {"group.id": f"t-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    c.assign([TopicPartition(settings.topic_model_updates, 0, OFFSET_BEGINNING)])
    out: list[ModelUpdate] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            assert msg.key() == b"current"
            out.append(ModelUpdate.from_bytes(msg.value()))
    finally:
        c.close()
    return out


COLOURS, TOOLS = ("green", "red", "blue", "grey"), ("hose", "rake", "pot", "lamp")


@pytest.mark.slow  # trains a model (session fixture) and runs a retraining round
def test_trainer_adapts_promotes_and_announces_then_rollback_announces(
    kafka_settings: Settings, sim_model: Path, tmp_path: Path
) -> None:
    """The catalog has grown by 400 items of another kind, so the current version knows less than
    half of it: once the trainer has read the catalog it adapts the version's text channel to the
    catalog (no training) and announces that version; then its first round promotes a fine-tune of
    it."""
    s = kafka_settings
    create_topics(s)
    reg = ModelRegistry(s.registry_dir)
    first = reg.register(sim_model)
    reg.promote(first)
    sim = ShopSimulator(**SIM, id_prefix=f"p{uuid.uuid4().hex[:6]}")
    with EventProducer.from_settings(s) as producer:
        for rec in sim.stream(3000):
            (producer.send if isinstance(rec, ShopEvent) else producer.send_catalog)(rec)
        for item in sim.catalog():
            producer.send_catalog(item)
        for k in range(400):
            producer.send_catalog(
                CatalogItem(
                    item_id=f"garden-{k}",
                    title=f"{COLOURS[k % 4]} garden {TOOLS[k // 4 % 4]} {k}",
                    category="garden",
                    brand="Verde",
                    price=9.0,
                    in_stock=True,
                    updated_ts=1_767_225_600_000,
                )
            )
        producer.flush()
    log_path = tmp_path / "trainer.log"
    proc = start_trainer(
        s,
        log_path,
        STREAMREC_RETRAIN_INTERVAL_S="10",  # the catalog is read well before the first round
        STREAMREC_RETRAIN_MIN_EVENTS="500",
        STREAMREC_RETRAIN_TIME_BUDGET_S="8",
        STREAMREC_RETRAIN_GATE_TOLERANCE="1.0",
        STREAMREC_RETRAIN_HOLDOUT_USERS="60",
        STREAMREC_TRAINLOG_SEGMENT_S="0.5",
        STREAMREC_TRAINLOG_MAX_AGE_S="1e9",
    )
    try:
        url = metrics_url(log_path, proc)
        adapted, update = read_updates(s, 2, timeout=300)
        assert proc.poll() is None, log_path.read_text()[-4000:]
        assert adapted.metrics == {"adapted": 1.0} and adapted.version not in (first, update.version)
        meta = reg.list()
        by_name = {v.version: v for v in meta}
        assert by_name[adapted.version].metrics["adapted_from"] == first
        assert 0.3 < by_name[adapted.version].metrics["catalog_known_share"] < 0.5  # about 300 of 700
        assert update.version == reg.current_version()
        assert Path(update.path) == reg.version_path(update.version).resolve()
        assert {"holdout_ndcg@10", "holdout_hr@10", "current_ndcg@10", "current_hr@10"} <= set(update.metrics)
        gate = by_name[update.version].metrics["gate"]
        assert gate["promoted"] and gate["base_version"] == adapted.version
        assert gate["candidate"]["ndcg@10"] == update.metrics["holdout_ndcg@10"]
        m = scrape(url)
        assert m["streamrec_trainer_adapted_total"] == 1
        assert m['streamrec_trainer_gate_decisions_total{decision="promoted"}'] >= 1
        assert m['streamrec_trainer_gate_metric{metric="ndcg@10",model="current"}'] == pytest.approx(
            update.metrics["current_ndcg@10"]
        )
        decisions = (s.data_dir / "trainer" / "decisions.jsonl").read_text().splitlines()
        assert json.loads(decisions[0])["version"] == update.version
    finally:
        stop(proc)

    env = settings_env(s)
    res = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "models", "promote", first],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert reg.current_version() == first
    updates = read_updates(s, 10, timeout=15)
    assert updates[-1].version == first and updates[-1].metrics["rollback"] == 1.0
    bad = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "models", "promote", "v9999-nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "v9999-nope" in bad.stderr and "Traceback" not in bad.stderr


def _users_logged(trainlog: Path) -> list[str]:
    users: list[str] = []
    for p in sorted(trainlog.glob("*.parquet")):
        if parse_segment_name(p.name):
            users.extend(pq.read_table(p, columns=["user_id"]).column("user_id").to_pylist())
    return users


def test_delete_user_purges_the_trainers_log(kafka_settings: Settings, tmp_path: Path) -> None:
    s = kafka_settings
    create_topics(s)
    tag = uuid.uuid4().hex[:6]
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    t0 = int(time.time() * 1000) - 60_000

    def event(user: str, i: int) -> ShopEvent:
        return ShopEvent(
            event_id=f"{user}-{i}", user_id=user, session_id="s", item_id=f"i{i % 5}", type="view", ts=t0 + i
        )

    log_path = tmp_path / "trainer.log"
    proc = start_trainer(
        s,
        log_path,
        STREAMREC_TRAINLOG_SEGMENT_EVENTS="10",
        STREAMREC_TRAINLOG_SEGMENT_S="0.2",
        STREAMREC_RETRAIN_INTERVAL_S="100000",
    )
    try:
        with EventProducer.from_settings(s) as producer:
            for i in range(30):
                producer.send(event(alice, i))
                producer.send(event(bob, i))
            producer.flush()
            deadline = time.monotonic() + 90
            while sorted(set(_users_logged(s.trainlog_dir))) != [alice, bob] or len(_users_logged(s.trainlog_dir)) < 60:
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "events never logged:\n" + log_path.read_text()[-4000:]
                time.sleep(0.2)
            producer.delete_user(alice)
            producer.flush()
            deadline = time.monotonic() + 60
            while alice in _users_logged(s.trainlog_dir):
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "alice never purged:\n" + log_path.read_text()[-4000:]
                time.sleep(0.2)
            # a replay of alice's old events (new ids, times before the deletion) is not logged again
            for i in range(30, 40):
                producer.send(event(alice, i))
                producer.send(event(bob, i))
            producer.flush()
            deadline = time.monotonic() + 60
            while _users_logged(s.trainlog_dir).count(bob) < 40:
                assert time.monotonic() < deadline, "replay never logged:\n" + log_path.read_text()[-4000:]
                time.sleep(0.2)
    finally:
        stop(proc)
    users = _users_logged(s.trainlog_dir)
    assert alice not in users and users.count(bob) == 40
    assert "user purged from the training log" in log_path.read_text()

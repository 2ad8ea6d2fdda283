"""The CLI against real Kafka: kafka up/status/down, topics create, simulate -> 1000 events that an
independent consumer (Kafka's own console consumer from the jars) reads back as valid JSON."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streamrec.config import Settings
from streamrec.schemas import CatalogItem, ShopEvent

STREAMREC = [sys.executable, "-m", "streamrec.cli"]


def run_cli(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*STREAMREC, *args], env=env, capture_output=True, text=True, timeout=timeout)


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(
        {
            "STREAMREC_BOOTSTRAP_SERVERS": settings.resolved_bootstrap(),
            "STREAMREC_TOPIC_EVENTS": settings.topic_events,
            "STREAMREC_TOPIC_CATALOG": settings.topic_catalog,
            "STREAMREC_TOPIC_RECOMMENDATIONS": settings.topic_recommendations,
            "STREAMREC_TOPIC_DLQ": settings.topic_dlq,
            "STREAMREC_TOPIC_MODEL_UPDATES": settings.topic_model_updates,
            "STREAMREC_DATA_DIR": str(settings.data_dir),
            "STREAMREC_PARTITIONS": str(settings.partitions),
        }
    )
    env.update(extra)
    return env


def console_consume(settings: Settings, topic: str, n: int, timeout_ms: int = 30000) -> list[str]:
    libs = settings.kafka_libs.expanduser()
    out = subprocess.run(
        [
            "java",
            "-Xmx256m",
            "-cp",
            f"{libs}/*",
            "org.apache.kafka.tools.consumer.ConsoleConsumer",
            "--bootstrap-server",
            settings.resolved_bootstrap(),
            "--topic",
            topic,
            "--from-beginning",
            "--max-messages",
            str(n),
            "--timeout-ms",
            str(timeout_ms),
        ],
        capture_output=True,
        text=True,
        timeout=timeout_ms / 1000 + 60,
    )
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_topics_create_then_simulate_1000_events(kafka_settings):
    env = cli_env(kafka_settings)
    first = run_cli(["topics", "create"], env)
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    again = run_cli(["topics", "create"], env)
    assert again.returncode == 0 and "created" not in again.stdout

    sim = run_cli(["simulate", "--events", "1000", "--items", "100", "--users", "50", "--seed", "3"], env)
    assert sim.returncode == 0, sim.stderr
    assert "sent 1000 events" in sim.stdout

    lines = console_consume(kafka_settings, kafka_settings.topic_events, 1000)
    assert len(lines) == 1000
    events = [ShopEvent.from_bytes(line.encode()) for line in lines]  # every one valid JSON + contract
    assert len({e.event_id for e in events}) == 1000
    catalog = console_consume(kafka_settings, kafka_settings.topic_catalog, 100)
    assert len(catalog) == 100 and all(CatalogItem.from_bytes(c.encode()) for c in catalog)


def test_bad_cli_values_exit_non_zero_without_traceback(kafka_settings, tmp_path):
    env = cli_env(kafka_settings)
    for args, needle in [
        (["simulate", "--events", "-5"], "--events"),
        (["replay", "--sequences", str(tmp_path / "missing.txt")], "missing.txt"),
        (["topics", "create", "--partitions", "zero"], "--partitions"),
    ]:
        res = run_cli(args, env)
        assert res.returncode != 0
        assert needle in res.stderr and "Traceback" not in res.stderr
    bad_env = cli_env(kafka_settings, STREAMREC_PARTITIONS="many")
    res = run_cli(["topics", "create"], bad_env)
    assert res.returncode == 2 and "STREAMREC_PARTITIONS" in res.stderr and "Traceback" not in res.stderr


def test_replay_small_dataset(kafka_settings, tmp_path):
    (tmp_path / "seq.txt").write_text("u1 1 2 3\nu2 2 3 4 5\n")
    (tmp_path / "text.tsv").write_text("item_id\ttitle\n1\tRose Serum\n2\tCherry Lip Balm\n3\tClay Mask\n")
    env = cli_env(kafka_settings)
    assert run_cli(["topics", "create"], env).returncode == 0
    res = run_cli(["replay", "--sequences", str(tmp_path / "seq.txt"), "--item-text", str(tmp_path / "text.tsv")], env)
    assert res.returncode == 0, res.stderr
    lines = console_consume(kafka_settings, kafka_settings.topic_events, 7)
    events = [ShopEvent.from_bytes(x.encode()) for x in lines]
    assert [e.item_id for e in events if e.user_id == "u2"] == ["2", "3", "4", "5"]


def test_kafka_up_status_down(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env["STREAMREC_DATA_DIR"] = str(tmp_path / "d")
    up = run_cli(["kafka", "up"], env)
    try:
        assert up.returncode == 0, up.stderr
        bootstrap = up.stdout.strip().splitlines()[-1]
        assert bootstrap.startswith("127.0.0.1:")
        status = run_cli(["kafka", "status"], env)
        assert status.returncode == 0 and "running" in status.stdout and bootstrap in status.stdout
        # other commands find the local broker through its state file
        topics = run_cli(["topics", "create"], env)
        assert topics.returncode == 0, topics.stderr
    finally:
        down = run_cli(["kafka", "down"], env)
    assert down.returncode == 0 and "stopped" in down.stdout
    after = run_cli(["kafka", "status"], env)
    assert after.returncode == 1 and "not running" in after.stdout


def test_kafka_up_with_configured_broker_starts_nothing(kafka_bootstrap, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update({"STREAMREC_DATA_DIR": str(tmp_path), "STREAMREC_BOOTSTRAP_SERVERS": kafka_bootstrap})
    res = run_cli(["kafka", "up"], env)
    assert res.returncode == 0 and "nothing started" in res.stdout
    assert not (Path(tmp_path) / "kafka" / "state.json").exists()

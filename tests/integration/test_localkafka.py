"""A crashed local broker comes back on the ports its data dir recorded, with its data, and a
client created before the crash reconnects to it on its own."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from streamrec.config import Settings
from streamrec.devtools import localkafka


@pytest.mark.slow
def test_kafka_up_after_sigkill_restarts_on_the_recorded_ports(tmp_path):
    kafka_dir = tmp_path / "d" / "kafka"
    state = localkafka.start(
        kafka_dir,
        libs=Settings().kafka_libs.expanduser(),
        heap="384m",
        timeout=180,
        extra_props={"num.io.threads": "2"},  # what bench/pipeline.py --broker-prop / --broker-jvm pass on
        jvm_options=("-XX:TieredStopAtLevel=1",),
    )
    assert "\nnum.io.threads=2\n" in (kafka_dir / "server.properties").read_text()
    cmdline = (Path("/proc") / str(state.pid) / "cmdline").read_bytes().split(b"\0")
    assert b"-XX:TieredStopAtLevel=1" in cmdline
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env["STREAMREC_DATA_DIR"] = str(tmp_path / "d")
    try:
        producer = Producer(
            {
                "bootstrap.servers": state.bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "message.timeout.ms": 300_000,
            }
        )
        producer.produce(topic, key=b"k", value=b"before")
        assert producer.flush(60) == 0
        assert localkafka.kill(kafka_dir) == state.pid
        assert not localkafka.broker_reachable(state.bootstrap, timeout=2)
        assert (kafka_dir / "state.json").is_file()  # a crash leaves its stale state file behind

        up = subprocess.run(
            [sys.executable, "-m", "streamrec.cli", "--log-level", "WARNING", "kafka", "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip().splitlines()[-1] == state.bootstrap  # the same port as before the crash
        after = localkafka.read_state(kafka_dir)
        assert after is not None and after.pid != state.pid and after.controller == state.controller

        # the producer made before the crash reconnects by itself; the data dir kept the topic
        producer.produce(topic, key=b"k", value=b"after")
        assert producer.flush(120) == 0
        consumer = Consumer(
            {"bootstrap.servers": state.bootstrap, "group.id": f"g-{topic}", "auto.offset.reset": "earliest"}
        )
        consumer.subscribe([topic])
        seen: list[bytes] = []
        for _ in range(240):
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                seen.append(msg.value())
            if len(seen) == 2:
                break
        consumer.close()
        assert seen == [b"before", b"after"]
    finally:
        localkafka.stop(kafka_dir)

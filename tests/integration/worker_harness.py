"""Start real `streamrec worker` processes for integration tests, and feed them a shop's records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from streamrec.config import Settings
from streamrec.devtools.localkafka import free_port
from streamrec.devtools.simulator import ShopSimulator
from streamrec.devtools.tagged import tagged_settings
from streamrec.streams.topics import create_topics

__all__ = ["tagged_settings"]  # re-exported for the tests


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    for name in (
        "bootstrap_servers",
        "topic_events",
        "topic_catalog",
        "topic_recommendations",
        "topic_dlq",
        "topic_model_updates",
        "topic_deletions",
        "topic_catalog_dlq",
        "topic_profiles",
        "app_id",
        "partitions",
        "data_dir",
        "top_k",
    ):
        value = getattr(settings, name)
        env[f"STREAMREC_{name.upper()}"] = str(value)
    env["STREAMREC_BOOTSTRAP_SERVERS"] = settings.resolved_bootstrap()
    env["STREAMREC_DEVICE"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class WorkerProcess:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            return self._get_quiet(path, timeout)
        except OSError as exc:  # say why: a dead worker's log, not only "connection refused"
            state = "running" if self.proc.poll() is None else f"exited with {self.proc.returncode}"
            raise AssertionError(f"GET {self.url}{path}: {exc} (worker {state}):\n{self.log()[-4000:]}") from exc

    def _get_quiet(self, path: str, timeout: float) -> tuple[int, str]:
        """(status, body); connection errors raise OSError (wait_healthy retries on them)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_healthy(self, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                status, body = self._get_quiet("/health", timeout=2)
                if status == 200:
                    health = json.loads(body)
                    # another process on our port (a port handed out twice) must not pass for us
                    assert health.get("pid") == self.proc.pid, (
                        f"port {self.port} answered by pid {health.get('pid')}, not worker {self.proc.pid}"
                    )
                    return health
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"worker not healthy after {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


_ports_given: set[int] = set()


def unused_port() -> int:
    """A free port never handed out before in this process: two workers started back to back
    must not be given the same one (the OS may return a just-closed port again)."""
    while True:
        port = free_port()
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def start_worker(
    settings: Settings, model_dir: Path | None, log_dir: Path, *, port: int | None = None, **extra_env: str
) -> WorkerProcess:
    """A `streamrec worker` serving ``model_dir``, or (None) the registry's current version."""
    port = port or unused_port()
    env = settings_env(settings, STREAMREC_WEB_PORT=str(port), **extra_env)
    log_path = log_dir / f"worker-{port}-{int(time.time() * 1000)}.log"
    with open(log_path, "wb") as out:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamrec.cli", "worker", *(["--model", str(model_dir)] if model_dir else [])],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return WorkerProcess(proc, port, log_path)


@contextmanager
def running_worker(settings: Settings, model_dir: Path | None, log_dir: Path, **kwargs: Any) -> Iterator[WorkerProcess]:
    """:func:`start_worker` (same arguments), healthy on entry, stopped on exit."""
    w = start_worker(settings, model_dir, log_dir, **kwargs)
    try:
        w.wait_healthy()
        yield w
    finally:
        w.stop()


def shop_producer(settings: Settings, shop: ShopSimulator, **config: Any) -> Producer:
    """Create ``settings``' topics; a raw producer (random partitioner, 20 ms linger, then
    ``config``) that has queued ``shop``'s catalog on the catalog topic, ready for the events."""
    create_topics(settings)
    raw = Producer(
        {"bootstrap.servers": settings.resolved_bootstrap(), "partitioner": "murmur2_random", "linger.ms": 20, **config}
    )
    for item in shop.catalog():
        raw.produce(settings.topic_catalog, key=item.item_id.encode(), value=item.to_bytes())
    return raw


def produce_waiting(producer: Producer, topic: str, key: bytes, value: bytes, wait: float = 0.05) -> None:
    """``producer.produce``; while its local queue is full (BufferError), serve it for ``wait`` s and retry."""
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            return
        except BufferError:
            producer.poll(wait)


def changelog(settings) -> dict[bytes, list[bytes | None]]:
    """Every record of the users table's changelog, values per key in offset order."""
    topic = f"{settings.app_id}-users-changelog"
    c = Consumer(
        {
            "bootstrap.servers": settings.resolved_bootstrap(),
            "group.id": uuid.uuid4().hex,
            "enable.auto.commit": False,
            # under exactly_once a partition ends with a transaction marker, never delivered as a
            # message: the end is then known from the end-of-partition event
            "enable.partition.eof": True,
        }
    )
    out: dict[bytes, list[bytes | None]] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=15)[1] for tp in tps}
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        todo = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + 90
        while todo and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF and msg.offset() >= ends[msg.partition()]:
                    todo.discard(msg.partition())
                continue
            # the table's keys are JSON strings in the changelog (b'"alice"'): keyed by user id here
            key = msg.key() or b""
            out.setdefault(key[1:-1] if key[:1] == b'"' else key, []).append(msg.value())
            if msg.offset() + 1 >= ends[msg.partition()]:
                todo.discard(msg.partition())
        assert not todo, f"changelog partitions {todo} not read to their end"
    finally:
        c.close()
    return out


def state_of(value: bytes) -> dict:
    data = json.loads(value)
    return json.loads(data) if isinstance(data, str) else data

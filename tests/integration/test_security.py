"""SASL_SSL for real: a broker of its own with a SCRAM-SHA-512 listener and a CA made here.

Every client connects through that listener with the ``STREAMREC_SASL_*`` / ``STREAMREC_SSL_*``
settings only: the CLI (``topics create``, ``tail``), the producer, the subscriber, and a real
worker (Faust/aiokafka for events and the catalog reader). A wrong password fails fast with one
clear line instead of hanging.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamrec.client import EventProducer, RecommendationSubscriber
from streamrec.config import Settings
from streamrec.devtools import localkafka
from streamrec.devtools.tls import make_test_pki
from streamrec.errors import KafkaAuthError
from streamrec.schemas import ShopEvent
from tests.integration.worker_harness import settings_env, start_worker, tagged_settings

USER, PASSWORD = "streamrec-test", "s3cret-for-tests-only"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[localkafka.BrokerState, Path]]:
    root = tmp_path_factory.mktemp("secure-kafka")
    pki = make_test_pki(root / "pki")
    kafka_dir = root / "kafka"
    state = localkafka.start(
        kafka_dir,
        libs=Settings().kafka_libs.expanduser(),
        heap="384m",
        timeout=180,
        sasl_ssl=localkafka.SaslSslListener(pki.server_keystore, {USER: PASSWORD}),
    )
    try:
        yield state, pki.ca_cert
    finally:
        localkafka.stop(kafka_dir)


def secure_settings(secure_broker, data_dir: Path, *, password: str = PASSWORD) -> Settings:
    state, ca = secure_broker
    return tagged_settings(
        state.sasl_ssl_bootstrap,
        f"sec-{uuid.uuid4().hex[:8]}",
        data_dir,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=USER,
        sasl_password=password,
        ssl_cafile=ca,
    )


def security_env(settings: Settings) -> dict[str, str]:
    """Only the STREAMREC_* settings: what an operator would export."""
    return settings_env(
        settings,
        STREAMREC_SECURITY_PROTOCOL=settings.security_protocol,
        STREAMREC_SASL_MECHANISM=str(settings.sasl_mechanism),
        STREAMREC_SASL_USERNAME=str(settings.sasl_username),
        STREAMREC_SASL_PASSWORD=settings.sasl_password.get_secret_value(),
        STREAMREC_SSL_CAFILE=str(settings.ssl_cafile),
    )


def cli(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "--log-level", "WARNING", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_broker_listens_with_tls_and_scram_only_on_its_secure_port(secure_broker):
    state, _ = secure_broker
    # a plaintext client on the SASL_SSL port gets nothing: the port really speaks TLS
    assert not localkafka.broker_reachable(state.sasl_ssl_bootstrap, timeout=3)
    assert localkafka.recorded_ports(Path(state.data_dir))["sasl_ssl"] == int(state.sasl_ssl_bootstrap.split(":")[1])


def test_cli_producer_and_subscriber_through_sasl_ssl(secure_broker, data_dir):
    settings = secure_settings(secure_broker, data_dir)
    env = security_env(settings)
    res = cli(["topics", "create"], env)
    assert res.returncode == 0, res.stderr
    assert f"{settings.topic_events}: created" in res.stdout
    assert f"{settings.topic_deletions}: created" in res.stdout

    events = [
        ShopEvent(
            event_id=f"e{i}",
            user_id=f"u{i % 3}",
            session_id="s",
            item_id=f"i{i}",
            type="view",
            ts=1_760_000_000_000 + i,
        )
        for i in range(5)
    ]
    with EventProducer.from_settings(settings) as producer:
        for e in events:
            producer.send(e)
        producer.delete_user("u0")
    res = cli(["tail", "--topic", settings.topic_events, "--from-beginning", "--max", "5", "--seconds", "90"], env)
    assert res.returncode == 0, res.stderr
    assert sorted(json.loads(line.split(" ", 2)[2])["event_id"] for line in res.stdout.splitlines()) == sorted(
        e.event_id for e in events
    )
    res = cli(["tail", "--topic", settings.topic_deletions, "--from-beginning", "--max", "1", "--seconds", "90"], env)
    assert res.returncode == 0 and '"user_id":"u0"' in res.stdout, res.stderr


def test_wrong_password_fails_fast_with_one_clear_line(secure_broker, data_dir):
    bad = secure_settings(secure_broker, data_dir, password="not-the-password")
    res = cli(["topics", "create"], security_env(bad), timeout=120)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("streamrec topics: error: Kafka at") and "invalid credentials" in last, res.stderr
    assert "Traceback" not in res.stderr
    # the library clients raise KafkaAuthError instead of waiting out their (long) timeouts
    producer = EventProducer.from_settings(bad)
    producer.send_catalog(
        {
            "item_id": "x",
            "title": "t",
            "category": "c",
            "brand": "b",
            "price": 1.0,
            "in_stock": True,
            "updated_ts": 1_760_000_000_000,
        }
    )
    with pytest.raises(KafkaAuthError, match="invalid credentials"):
        producer.flush(timeout=300)
    with pytest.raises(KafkaAuthError):
        producer.close(timeout=0.1)  # raises again, and releases the client (it stops reconnecting)
    with RecommendationSubscriber.from_settings(bad) as sub, pytest.raises(KafkaAuthError, match="invalid credentials"):
        sub.wait_ready(timeout=300)


def test_untrusted_certificate_fails_fast(secure_broker, data_dir, tmp_path):
    other_ca = make_test_pki(tmp_path / "other").ca_cert  # a CA that did not sign the broker's cert
    bad = secure_settings(secure_broker, data_dir).model_copy(update={"ssl_cafile": other_ca})
    res = cli(["topics", "create"], security_env(bad), timeout=120)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert "certificate verify failed" in last and "STREAMREC_SSL_CAFILE" in last, res.stderr


@pytest.mark.slow
def test_worker_and_catalog_reader_through_sasl_ssl(secure_broker, data_dir, sim_model, shop, tmp_path):
    settings = secure_settings(secure_broker, data_dir)
    env = security_env(settings)
    assert cli(["topics", "create"], env).returncode == 0
    catalog = shop.catalog()
    with EventProducer.from_settings(settings) as producer:
        for item in catalog:
            producer.send_catalog(item)
    extra = {k: v for k, v in env.items() if k.startswith(("STREAMREC_SASL", "STREAMREC_SSL", "STREAMREC_SECURITY"))}
    w = start_worker(settings, sim_model, tmp_path, **extra)
    try:
        health = w.wait_healthy()
        assert health["catalog_items"] == len(catalog)  # the catalog reader (aiokafka) read it all
        item = next(c.item_id for c in catalog if c.in_stock)
        event = ShopEvent(
            event_id="sec-1", user_id="alice", session_id="s1", item_id=item, type="view", ts=int(time.time() * 1000)
        )
        with RecommendationSubscriber.from_settings(settings, user_ids={"alice"}) as sub:
            sub.wait_ready(timeout=120)
            with EventProducer.from_settings(settings) as producer:
                producer.send(event)
            deadline = time.monotonic() + 120
            rec = None
            while rec is None and time.monotonic() < deadline:
                rec = sub.poll(1.0)
        assert rec is not None and rec.event_id == "sec-1" and len(rec.items) == settings.top_k, w.log()[-3000:]
    finally:
        w.stop()
    # the same worker with a wrong password exits at once with one line, not a hang
    bad = dict(extra, STREAMREC_SASL_PASSWORD="wrong")
    w = start_worker(settings, sim_model, tmp_path, **bad)
    try:
        assert w.proc.wait(120) == 2
        assert "error: Kafka at" in w.log() and "invalid credentials" in w.log()
    finally:
        w.kill()

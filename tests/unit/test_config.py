from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from streamrec.config import Settings, load_settings
from streamrec.errors import ConfigError


def test_env_and_overrides(monkeypatch):
    monkeypatch.setenv("STREAMREC_PARTITIONS", "3")
    monkeypatch.setenv("STREAMREC_TRIGGER_TYPES", "purchase,add_to_cart")
    s = load_settings(top_k=5)
    assert s.partitions == 3 and s.top_k == 5
    assert s.trigger_types == ("purchase", "add_to_cart")
    assert load_settings(partitions=7).partitions == 7  # flag beats env


def test_bad_value_names_setting_and_value(monkeypatch):
    monkeypatch.setenv("STREAMREC_PARTITIONS", "lots")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "STREAMREC_PARTITIONS" in str(info.value) and "lots" in str(info.value)
    monkeypatch.delenv("STREAMREC_PARTITIONS")
    with pytest.raises(ConfigError, match="bogus"):
        load_settings(trigger_types="view,bogus")


def test_security_passes_through_and_secret_hidden():
    s = Settings(
        bootstrap_servers="b:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="shop",
        sasl_password="s3cret",
        ssl_cafile="/ca.pem",
    )
    conf = s.confluent_config()
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.password"] == "s3cret"
    assert conf["ssl.ca.location"] == "/ca.pem"
    assert "s3cret" not in repr(s)


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.partitions = 9  # type: ignore[misc]


def test_bootstrap_from_local_state(tmp_path, monkeypatch):
    monkeypatch.delenv("STREAMREC_BOOTSTRAP_SERVERS", raising=False)
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "state.json").write_text('{"bootstrap": "127.0.0.1:4242"}')
    assert Settings(data_dir=tmp_path).resolved_bootstrap() == "127.0.0.1:4242"
    assert Settings(data_dir=tmp_path, bootstrap_servers="x:1").resolved_bootstrap() == "x:1"


def test_event_types_have_one_home() -> None:
    import streamrec.config as config
    import streamrec.model.sasrec as sasrec
    from streamrec import schemas

    assert config.EVENT_TYPES is schemas.EVENT_TYPES
    assert Settings().trigger_types == schemas.EVENT_TYPES
    assert list(sasrec.EVENT_TYPE_IDS) == list(schemas.EVENT_TYPES)


def test_librdkafka_log_lines_go_to_python_logging_not_stderr(caplog, capfd):
    """A client built from the settings (or a shop's client, through ConnectionWatch) hands
    librdkafka's own log lines to the ``kafka.librdkafka`` logger; none reach stderr raw."""
    import socket
    import time

    from confluent_kafka import Producer

    from streamrec.client.connection import LIBRDKAFKA_LOGGER, ConnectionWatch

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf = Settings(bootstrap_servers=f"127.0.0.1:{port}").confluent_config()
    assert conf["logger"].name == LIBRDKAFKA_LOGGER
    assert ConnectionWatch("x").install({})["logger"].name == LIBRDKAFKA_LOGGER
    caplog.set_level(logging.DEBUG, logger=LIBRDKAFKA_LOGGER)
    producer = Producer(conf | {"client.id": "log-routing-test"})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(r.name == LIBRDKAFKA_LOGGER for r in caplog.records):
        producer.poll(0.2)
    lines = [r for r in caplog.records if r.name == LIBRDKAFKA_LOGGER]
    assert lines, "no librdkafka log line reached Python logging"
    assert any("Connection refused" in r.getMessage() or "FAIL" in r.getMessage() for r in lines)
    del producer
    assert "|FAIL|" not in capfd.readouterr().err

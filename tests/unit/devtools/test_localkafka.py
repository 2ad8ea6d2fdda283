"""The local broker keeps its ports per data dir (no Kafka needed: only the port bookkeeping)."""

from __future__ import annotations

import json
import re
import socket

import pytest

from streamrec.devtools import localkafka
from streamrec.errors import KafkaRuntimeError


def test_new_data_dir_gets_free_ports_then_keeps_them(tmp_path):
    first = localkafka._choose_ports(tmp_path, port=None, sasl_ssl=False)
    assert set(first) == {"plaintext", "controller"} and first["plaintext"] != first["controller"]
    (tmp_path / localkafka.PORTS_FILE).write_text(json.dumps(first))
    again = localkafka._choose_ports(tmp_path, port=None, sasl_ssl=True)
    assert {k: again[k] for k in first} == first  # the recorded ones come back
    assert "sasl_ssl" in again  # a listener the data dir did not have yet gets a new port


def test_recorded_port_taken_by_another_process_is_a_clear_error(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        (tmp_path / localkafka.PORTS_FILE).write_text(json.dumps({"plaintext": taken, "controller": 1}))
        with pytest.raises(KafkaRuntimeError, match=f"port {taken} .plaintext. recorded in .*ports.json is in use"):
            localkafka._choose_ports(tmp_path, port=None, sasl_ssl=False)


def test_damaged_ports_file_is_ignored(tmp_path):
    (tmp_path / localkafka.PORTS_FILE).write_text("{not json")
    assert localkafka.recorded_ports(tmp_path) == {}
    (tmp_path / localkafka.PORTS_FILE).write_text(json.dumps({"plaintext": 70000, "controller": "x"}))
    assert localkafka.recorded_ports(tmp_path) == {}


@pytest.mark.parametrize(
    ("props", "jvm", "names"),
    [
        ({"Num.IO": "2"}, (), "'Num.IO'"),
        ({"num.io.threads": "2\nlisteners=PLAINTEXT://0.0.0.0:1"}, (), "num.io.threads"),
        ({"log.dirs": "x" * 1001}, (), "log.dirs"),
        ({}, ("-Xmx1g; rm -rf /",), "'-Xmx1g; rm -rf /'"),
        ({}, ("XX:+UseG1GC",), "'XX:+UseG1GC'"),
    ],
)
def test_broker_options_that_would_change_more_than_one_setting_are_refused(tmp_path, props, jvm, names):
    with pytest.raises(ValueError, match=re.escape(names)):
        localkafka.start(tmp_path / "kafka", libs=tmp_path / "libs", extra_props=props, jvm_options=jvm)
    assert not (tmp_path / "kafka").exists()  # refused before anything was written or started

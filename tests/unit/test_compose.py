"""Static checks of docker-compose.yml and the Dockerfile (no Docker engine needed).

The compose file is parsed with PyYAML (anchors and ``<<`` merges resolved) and checked against
the code it runs: every ``STREAMREC_*`` variable must be a real :class:`Settings` field with a
valid value, and every command a streamrec service runs must be accepted by the CLI's parser.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamrec.cli import build_parser
from streamrec.config import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

STREAMREC_SERVICES = ("topics", "trainer", "worker", "simulator")


def _load_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


COMPOSE = _load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE.get("services") or {}


def _env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (compose allows a mapping or a list of NAME=value)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {k: v for k, v in pairs}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def _depends(service: dict[str, Any]) -> dict[str, str]:
    """``depends_on`` as {service: condition} (the short list form means service_started)."""
    dep = service.get("depends_on") or {}
    if isinstance(dep, list):
        return {name: "service_started" for name in dep}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in dep.items()}


_SHELL_SPLIT = re.compile(r"&&|\|\||;|\n|\(|\)|\bthen\b|\belse\b|\bdo\b")


def _streamrec_invocations(name: str) -> list[list[str]]:
    """The argument lists that service ``name`` passes to the ``streamrec`` CLI.

    Services either use the image's ``ENTRYPOINT ["streamrec"]`` (their ``command`` is the
    argument list) or run a ``sh -c`` script, whose ``streamrec ...`` calls are picked out.
    """
    svc = SERVICES[name]
    entrypoint = _as_list(svc.get("entrypoint"))
    command = _as_list(svc.get("command"))
    if not entrypoint or entrypoint == ["streamrec"]:
        return [command]
    if Path(entrypoint[0]).name in ("sh", "bash") and "-c" in entrypoint + command[:1]:
        script = command[0] if entrypoint[-1] == "-c" else command[command.index("-c") + 1]
        calls = []
        for segment in _SHELL_SPLIT.split(script):
            words = shlex.split(segment.strip())
            if words and words[0] == "streamrec":
                calls.append(words[1:])
        return calls
    raise AssertionError(f"{name}: unexpected entrypoint {entrypoint!r}")


INVOCATIONS = [
    pytest.param(name, args, id=f"{name}:{' '.join(args[:2])}")
    for name in STREAMREC_SERVICES
    if name in SERVICES
    for args in _streamrec_invocations(name)
]


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:  # noqa: SLF001 - argparse has no public accessor
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return set(action.choices)
    return set()


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending)
    out = []
    for line in lines:
        if not line:
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


# --------------------------------------------------------------------------------------------
# compose


def test_services_exist() -> None:
    missing = {"kafka", *STREAMREC_SERVICES} - set(SERVICES)
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_kafka_is_kraft_single_node() -> None:
    kafka = SERVICES["kafka"]
    assert str(kafka["image"]).startswith("apache/kafka:"), kafka["image"]
    env = _env(kafka)
    roles = {r.strip() for r in env["KAFKA_PROCESS_ROLES"].split(",")}
    assert roles == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert [v.split("@")[0] for v in voters] == [node_id], "single node: itself as the only voter"
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert f"{controller}://" in env["KAFKA_LISTENERS"]
    assert controller not in env["KAFKA_ADVERTISED_LISTENERS"], "controllers are not advertised"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", f"{key}={env[key]!r}: a single broker needs 1"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    # every listener named in LISTENERS / ADVERTISED has a security protocol
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for key in ("KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS"):
        for listener in env[key].split(","):
            assert listener.split("://")[0] in protocols, f"{listener} missing from the protocol map"


def test_kafka_healthcheck_uses_broker_api_versions() -> None:
    test = SERVICES["kafka"]["healthcheck"]["test"]
    text = test if isinstance(test, str) else " ".join(test)
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in text
    assert "--bootstrap-server" in text


def _advertised(kafka_env: dict[str, str]) -> dict[str, str]:
    """{listener name: host:port} from KAFKA_ADVERTISED_LISTENERS."""
    out = {}
    for item in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","):
        name, _, address = item.partition("://")
        out[name] = address
    return out


def test_bootstrap_servers_point_at_the_internal_listener() -> None:
    kafka = SERVICES["kafka"]
    advertised = _advertised(_env(kafka))
    hostnames = {"kafka", str(kafka.get("hostname", "kafka"))}
    internal = {addr for addr in advertised.values() if addr.rsplit(":", 1)[0] in hostnames}
    assert len(internal) == 1, f"expected one listener advertised as the kafka service: {advertised}"
    for name in STREAMREC_SERVICES:
        env = _env(SERVICES[name])
        assert env.get("STREAMREC_BOOTSTRAP_SERVERS") in internal, (
            f"{name}: STREAMREC_BOOTSTRAP_SERVERS={env.get('STREAMREC_BOOTSTRAP_SERVERS')!r}, "
            f"the internal listener is {internal}"
        )


def test_external_listener_is_published_on_the_host() -> None:
    kafka = SERVICES["kafka"]
    advertised = _advertised(_env(kafka))
    host_side = [a for a in advertised.values() if a.rsplit(":", 1)[0] in ("localhost", "127.0.0.1")]
    assert host_side, f"no listener for host clients in {advertised}"
    port = host_side[0].rsplit(":", 1)[1]
    assert any(str(p).split(":")[-2:] == [port, port] for p in kafka.get("ports", [])), kafka.get("ports")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_env_names_are_settings_fields(name: str) -> None:
    env = _env(SERVICES[name])
    fields = set(Settings.model_fields)
    for var in env:
        if name == "kafka" and (var.startswith("KAFKA_") or var == "CLUSTER_ID"):
            continue
        assert var.startswith("STREAMREC_"), f"{name}: {var} is not a STREAMREC_* setting"
        field = var.removeprefix("STREAMREC_").lower()
        assert field in fields, f"{name}: {var} is not a field of streamrec.config.Settings"


@pytest.mark.parametrize("name", STREAMREC_SERVICES)
def test_env_values_are_valid_settings(name: str) -> None:
    env = _env(SERVICES[name])
    values = {var.removeprefix("STREAMREC_").lower(): val for var, val in env.items()}
    settings = Settings(**values)  # raises ValidationError on a bad value
    assert str(settings.data_dir) == "/data"


def test_dependency_order() -> None:
    for name in ("topics", "worker"):
        assert _depends(SERVICES[name]).get("kafka") == "service_healthy", name
    worker = _depends(SERVICES["worker"])
    assert worker.get("topics") == "service_completed_successfully"
    assert worker.get("trainer") == "service_completed_successfully"
    sim = _depends(SERVICES["simulator"])
    assert sim.get("worker") in ("service_started", "service_healthy")
    assert sim.get("topics") == "service_completed_successfully"
    for one_shot in ("topics", "trainer"):
        assert str(SERVICES[one_shot].get("restart", "no")) == "no", one_shot


def test_worker_web_and_data_volume() -> None:
    worker = SERVICES["worker"]
    env = _env(worker)
    port = env["STREAMREC_WEB_PORT"]
    assert env["STREAMREC_WEB_HOST"] == "0.0.0.0", "the port is published: bind every interface"
    assert any(str(p).split(":")[-2:] == [port, port] for p in worker.get("ports", []))
    check = " ".join(_as_list(worker["healthcheck"]["test"]))
    assert f":{port}/health" in check
    assert not worker["healthcheck"].get("disable")
    assert "streamrec-data" in (COMPOSE.get("volumes") or {})
    for name in ("trainer", "worker"):
        mounts = [str(v) for v in SERVICES[name].get("volumes", [])]
        assert "streamrec-data:/data" in mounts, f"{name} must share the data volume: {mounts}"


def test_trainer_trains_on_the_dataset_it_writes() -> None:
    calls = {args[0]: args for args in _streamrec_invocations("trainer") if args}
    assert {"simulate", "train"} <= set(calls), calls
    sim, train = calls["simulate"], calls["train"]
    out = sim[sim.index("--write-dataset") + 1]
    assert train[train.index("--sequences") + 1] == f"{out}/sequences.txt"
    assert train[train.index("--item-text") + 1] == f"{out}/item_text.tsv"
    script = " ".join(_as_list(SERVICES["trainer"]["command"]))
    assert "/data/models/current" in script, "trainer must skip training when a model exists"


def _localise(args: list[str], root: Path) -> list[str]:
    """Map container paths under /data to ``root`` and create the input files they name, so that
    arguments typed as existing files parse here."""
    out = []
    for arg in args:
        if arg == "/data" or arg.startswith("/data/"):
            local = root / arg.removeprefix("/").removeprefix("data").lstrip("/")
            if local.suffix:
                local.parent.mkdir(parents=True, exist_ok=True)
                local.touch()
            arg = str(local)
        out.append(arg)
    return out


@pytest.mark.parametrize(("name", "args"), INVOCATIONS)
def test_commands_are_accepted_by_the_cli(name: str, args: list[str], tmp_path: Path) -> None:
    parser = build_parser()
    assert args, f"{name}: no command"
    sub = next((a for a in args if not a.startswith("-")), None)
    if sub not in _subcommands(parser):
        pytest.skip(f"`streamrec {sub}` is not in the CLI yet (its package has not landed); "
                    f"cannot check {name}'s command {args!r}")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            ns = parser.parse_args(_localise(args, tmp_path))
    except SystemExit:
        pytest.fail(f"{name}: `streamrec {' '.join(args)}` rejected by the CLI: {stderr.getvalue().strip()}")
    assert ns.command == sub


def test_every_streamrec_service_uses_the_image_and_data_dir() -> None:
    images = {str(SERVICES[n].get("image")) for n in STREAMREC_SERVICES}
    assert len(images) == 1, f"one streamrec image for every role: {images}"
    for name in STREAMREC_SERVICES:
        assert SERVICES[name].get("build"), f"{name}: no build section"


def test_compose_build_extras_default_to_none() -> None:
    for name in STREAMREC_SERVICES:
        build = SERVICES[name]["build"]
        extras = str((build.get("args") or {}).get("EXTRAS", ""))
        # compose interpolation: ${EXTRAS:-} / ${EXTRAS-} resolve to "" when EXTRAS is unset
        resolved = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", extras)
        assert resolved == "", f"{name}: EXTRAS defaults to {resolved!r}, expected none (faiss-cpu)"


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_entrypoint_cmd_and_healthcheck() -> None:
    assert DOCKERFILE.is_file()
    instr = _dockerfile_instructions()
    final = instr[max(i for i, (w, _) in enumerate(instr) if w == "FROM"):]
    words = dict(final)  # last occurrence wins, as in Docker
    assert json.loads(words["ENTRYPOINT"]) == ["streamrec"]
    assert json.loads(words["CMD"]) == ["worker"]
    health = words["HEALTHCHECK"]
    assert "/health" in health and "STREAMREC_WEB_PORT" in health and "python" in health
    assert "curl" not in health, "python:*-slim has no curl"
    user = words["USER"]
    assert user not in ("root", "0"), "the image must not run as root"
    env_text = " ".join(arg for w, arg in final if w == "ENV")
    assert "STREAMREC_DATA_DIR=/data" in env_text
    assert "/data" in words["VOLUME"]
    for var in re.findall(r"\b(STREAMREC_[A-Z0-9_]+)=", env_text):
        assert var.removeprefix("STREAMREC_").lower() in Settings.model_fields, var
    bases = [a for w, a in instr if w == "FROM"]
    assert bases and all(a.startswith("python:") and "-slim" in a for a in bases), bases
    assert ("ARG", "PYTHON_VERSION=3.11") in instr or all("3.11-slim" in a for a in bases)


def test_dockerfile_extras_default_to_none() -> None:
    args = [a for w, a in _dockerfile_instructions() if w == "ARG" and a.split("=")[0] == "EXTRAS"]
    assert args, "Dockerfile declares no EXTRAS build arg"
    for arg in args:
        _, _, default = arg.partition("=")
        assert default.strip("\"'") == "", f"ARG {arg}: EXTRAS must default to nothing (faiss-cpu)"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "gpu" in pyproject["project"]["optional-dependencies"]


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh")
def test_dockerfile_extras_expand_to_pip_requirement() -> None:
    """`.${EXTRAS:+[$EXTRAS]}` as written in the RUN lines: '.' by default, '.[gpu]' for gpu."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    exprs = set(re.findall(r'"(\.\$\{EXTRAS[^"]*)"', text))
    assert exprs, "the pip install lines should install \".${EXTRAS:+[$EXTRAS]}\""
    for expr in exprs:
        for extras, expected in (("", "."), ("gpu", ".[gpu]")):
            got = subprocess.run(
                ["sh", "-c", f'printf %s "{expr}"'], env={"EXTRAS": extras},
                capture_output=True, text=True, check=True,
            ).stdout
            assert got == expected, f"{expr} with EXTRAS={extras!r} -> {got!r}"


def test_dockerignore_keeps_local_state_out() -> None:
    entries = {line.strip().lstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for required in (".venv", ".cache", "data", ".git", ".pytest_cache", ".env"):
        assert required in entries, f".dockerignore should exclude {required}"
    assert "streamrec" not in entries and "pyproject.toml" not in entries

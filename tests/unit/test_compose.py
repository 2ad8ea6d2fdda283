"""docker-compose.yml: valid Compose, and wired the way the code expects (no Docker engine needed).

The file is validated against the Compose Specification's JSON Schema (vendored in
``tests/vendor/compose-spec/``), which catches misspelt keys and malformed values. The checks
below are the ones the schema cannot make: that the services start in an order that works
(healthchecks behind every ``service_healthy``, one-shots behind ``service_completed_successfully``),
that the ports and the data volume line up with the settings, that every ``STREAMREC_*``
variable is a real :class:`~streamrec.config.Settings` field with a valid value, and that every
command a service runs is accepted by the CLI's parser.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from streamrec.cli import build_parser
from streamrec.config import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_SPEC = REPO / "tests" / "vendor" / "compose-spec" / "compose_spec.json"

STREAMREC_SERVICES = ("topics", "bootstrap-model", "trainer", "worker", "simulator")


def _load_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)  # anchors and `<<` merges resolved


COMPOSE = _load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE.get("services") or {}


def _spec_errors(doc: dict[str, Any]) -> list[str]:
    spec = json.loads(COMPOSE_SPEC.read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(spec)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (compose allows a mapping or a list of NAME=value)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return dict(pairs)
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
        return dict.fromkeys(dep, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in dep.items()}


def _published(service: dict[str, Any], port: str) -> bool:
    """Whether ``port`` is published on the host under the same number."""
    return any(str(p).split(":")[-2:] == [port, port] for p in service.get("ports", []))


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
    for action in parser._actions:  # argparse has no public accessor for its subcommands
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


# --------------------------------------------------------------------------------------------
# the specification


def test_compose_file_matches_the_compose_specification() -> None:
    errors = _spec_errors(COMPOSE)
    assert not errors, "docker-compose.yml is not valid Compose:\n" + "\n".join(errors)


def test_the_specification_catches_a_misspelt_key() -> None:
    """The validation above can fail: a typo or a wrong condition is reported with its path."""
    bad = copy.deepcopy(COMPOSE)
    bad["services"]["worker"]["helthcheck"] = bad["services"]["worker"].pop("healthcheck")
    bad["services"]["topics"]["depends_on"] = {"kafka": {"condition": "service_heathy"}}
    errors = _spec_errors(bad)
    assert any("services/worker" in e and "helthcheck" in e for e in errors), errors
    assert any("services/topics/depends_on" in e for e in errors), errors


def test_services_exist() -> None:
    missing = {"kafka", *STREAMREC_SERVICES} - set(SERVICES)
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


# --------------------------------------------------------------------------------------------
# start order and healthchecks


def test_every_wait_can_end() -> None:
    """A ``service_healthy`` dependency has a healthcheck (else compose waits for ever); a
    ``service_completed_successfully`` one is a one-shot (a restarting service never completes)."""
    for name, svc in SERVICES.items():
        for dep, condition in _depends(svc).items():
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
            target = SERVICES[dep]
            if condition == "service_healthy":
                check = target.get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert str(target.get("restart", "no")) == "no", (
                    f"{name} waits for {dep} to complete, but {dep} restarts ({target.get('restart')})"
                )


def test_dependency_order() -> None:
    for name in ("topics", "worker"):
        assert _depends(SERVICES[name]).get("kafka") == "service_healthy", name
    worker = _depends(SERVICES["worker"])
    assert worker.get("topics") == "service_completed_successfully"
    assert worker.get("bootstrap-model") == "service_completed_successfully"
    trainer = _depends(SERVICES["trainer"])  # long-running: fine-tunes the bootstrapped model
    assert trainer.get("bootstrap-model") == "service_completed_successfully"
    assert trainer.get("topics") == "service_completed_successfully"
    assert str(SERVICES["trainer"].get("restart")) == "unless-stopped"
    assert str(SERVICES["bootstrap-model"].get("restart", "no")) == "no"
    sim = _depends(SERVICES["simulator"])
    assert sim.get("worker") in ("service_started", "service_healthy")
    assert sim.get("topics") == "service_completed_successfully"


def test_worker_healthcheck_probes_its_published_web_port() -> None:
    worker = SERVICES["worker"]
    env = _env(worker)
    port = env["STREAMREC_WEB_PORT"]
    assert env["STREAMREC_WEB_HOST"] == "0.0.0.0", "the port is published: bind every interface"
    assert _published(worker, port), worker.get("ports")
    assert f":{port}/health" in " ".join(_as_list(worker["healthcheck"]["test"]))


# --------------------------------------------------------------------------------------------
# Kafka: one broker that containers and the host can both reach


def _advertised(kafka_env: dict[str, str]) -> dict[str, str]:
    """{listener name: host:port} from KAFKA_ADVERTISED_LISTENERS."""
    return dict(item.split("://", 1) for item in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","))


def test_kafka_single_node_settings() -> None:
    env = _env(SERVICES["kafka"])
    assert [v.split("@")[0] for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")] == [env["KAFKA_NODE_ID"]]
    for key, value in env.items():  # one broker cannot hold more than one replica
        if key.endswith(("_REPLICATION_FACTOR", "_MIN_ISR")):
            assert value == "1", f"{key}={value!r}: a single broker needs 1"
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for key in ("KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS"):
        for listener in env[key].split(","):
            assert listener.split("://")[0] in protocols, f"{listener} missing from the protocol map"


def test_bootstrap_servers_point_at_the_internal_listener() -> None:
    kafka = SERVICES["kafka"]
    advertised = _advertised(_env(kafka))
    hostnames = {"kafka", str(kafka.get("hostname", "kafka"))}
    internal = {addr for addr in advertised.values() if addr.rsplit(":", 1)[0] in hostnames}
    assert len(internal) == 1, f"expected one listener advertised as the kafka service: {advertised}"
    for name in STREAMREC_SERVICES:
        got = _env(SERVICES[name]).get("STREAMREC_BOOTSTRAP_SERVERS")
        assert got in internal, f"{name}: STREAMREC_BOOTSTRAP_SERVERS={got!r}, the internal listener is {internal}"


def test_external_listener_is_published_on_the_host() -> None:
    kafka = SERVICES["kafka"]
    host_side = [a for a in _advertised(_env(kafka)).values() if a.rsplit(":", 1)[0] in ("localhost", "127.0.0.1")]
    assert host_side, "no listener for host clients"
    assert _published(kafka, host_side[0].rsplit(":", 1)[1]), kafka.get("ports")


# --------------------------------------------------------------------------------------------
# settings, volumes, commands


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_env_names_are_settings_fields(name: str) -> None:
    fields = set(Settings.model_fields)
    for var in _env(SERVICES[name]):
        if name == "kafka" and (var.startswith("KAFKA_") or var == "CLUSTER_ID"):
            continue
        assert var.startswith("STREAMREC_"), f"{name}: {var} is not a STREAMREC_* setting"
        assert var.removeprefix("STREAMREC_").lower() in fields, (
            f"{name}: {var} is not a field of streamrec.config.Settings"
        )


@pytest.mark.parametrize("name", STREAMREC_SERVICES)
def test_env_values_are_valid_settings(name: str) -> None:
    values = {var.removeprefix("STREAMREC_").lower(): val for var, val in _env(SERVICES[name]).items()}
    settings = Settings(**values)  # raises ValidationError on a bad value
    assert str(settings.data_dir) == "/data"


def test_model_and_worker_share_the_data_volume() -> None:
    assert "streamrec-data" in (COMPOSE.get("volumes") or {})
    for name in STREAMREC_SERVICES:  # the trainer writes the model the worker serves
        mounts = [str(v) for v in SERVICES[name].get("volumes", [])]
        assert "streamrec-data:/data" in mounts, f"{name} must mount the data volume at /data: {mounts}"


def test_bootstrap_trains_on_the_dataset_it_writes() -> None:
    calls = {args[0]: args for args in _streamrec_invocations("bootstrap-model") if args}
    assert {"simulate", "train"} <= set(calls), calls
    sim, train = calls["simulate"], calls["train"]
    out = sim[sim.index("--write-dataset") + 1]
    assert train[train.index("--sequences") + 1] == f"{out}/sequences.txt"
    assert train[train.index("--item-text") + 1] == f"{out}/item_text.tsv"


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
        pytest.skip(
            f"`streamrec {sub}` is not in the CLI yet (its package has not landed); "
            f"cannot check {name}'s command {args!r}"
        )
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            ns = parser.parse_args(_localise(args, tmp_path))
    except SystemExit:
        pytest.fail(f"{name}: `streamrec {' '.join(args)}` rejected by the CLI: {stderr.getvalue().strip()}")
    assert ns.command == sub


def test_streamrec_services_build_one_image_without_extras() -> None:
    images = {str(SERVICES[n].get("image")) for n in STREAMREC_SERVICES}
    assert len(images) == 1, f"one streamrec image for every role: {images}"
    for name in STREAMREC_SERVICES:
        extras = str((SERVICES[name]["build"].get("args") or {}).get("EXTRAS", ""))
        # compose interpolation: ${EXTRAS:-} / ${EXTRAS-} resolve to "" when EXTRAS is unset
        resolved = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", extras)
        assert resolved == "", f"{name}: EXTRAS defaults to {resolved!r}, expected none (faiss-cpu)"


def _bootstrap_check() -> str:
    """The shell condition with which bootstrap-model decides that a model is already current,
    unescaped as compose does (``$$`` -> ``$``)."""
    script = _as_list(SERVICES["bootstrap-model"]["command"])[0]
    m = re.match(r"\s*if (.+?); then ", script)
    assert m, f"bootstrap-model should start with 'if <model is current>; then ... exit 0; fi': {script!r}"
    return m.group(1).replace("$$", "$")


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh")
def test_bootstrap_check_matches_the_registry_layout(tmp_path: Path) -> None:
    """The skip-training check, run by sh against registries built by ModelRegistry: false for
    an empty registry, a registered but never promoted version, and a CURRENT naming a missing
    version; true once a version is promoted (the bug was a test for models/current)."""
    from streamrec.model.checkpoint import REQUIRED
    from streamrec.model.registry import ModelRegistry

    check = _bootstrap_check()

    def model_present(data: Path) -> bool:
        cmd = check.replace("/data/", f"{data}/")
        assert "/data/" not in cmd.replace(str(data), "")
        return subprocess.run(["sh", "-c", cmd], capture_output=True).returncode == 0

    data = tmp_path / "data"
    reg = ModelRegistry(data / "models")
    assert reg.root == Settings(data_dir=data).registry_dir
    assert not model_present(data)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in REQUIRED:
        (ckpt / name).write_text("{}")
    version = reg.register(ckpt)
    assert not model_present(data), "registered is not current"
    reg.promote(version)
    assert reg.current_version() == version and model_present(data)
    shutil.rmtree(reg.versions_dir / version)
    assert reg.current_version() is None and not model_present(data), "CURRENT names a missing version"

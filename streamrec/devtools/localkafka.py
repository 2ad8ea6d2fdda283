"""A real single-node Apache Kafka (KRaft broker+controller) on 127.0.0.1, without Docker.

The jars come from Maven Central through ``infra/kafka/pom.xml`` (``make kafka-jars``); this
module formats a KRaft data dir, starts ``kafka.Kafka`` in its own process group on free ports,
waits until an admin client sees it, and records ``state.json`` (bootstrap, pid) so that other
commands find it. Used by ``streamrec kafka up|down|status`` and by the test suite.

The ports are chosen once per data dir and recorded in ``ports.json``: a broker restarted on the
same data dir (after ``down``, or after a crash that left a stale ``state.json``) listens on the
same ports again, so that running clients reconnect to it instead of losing it for good.

Optionally (:class:`SaslSslListener`) the broker also opens a ``SASL_SSL`` listener with
SCRAM-SHA-512 users and a PEM server certificate: the security drills run every client through it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streamrec.errors import KafkaRuntimeError

log = logging.getLogger(__name__)

POM_RELATIVE = Path("infra") / "kafka" / "pom.xml"

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


@dataclass(frozen=True)
class BrokerState:
    """What ``state.json`` records about a running local broker."""

    bootstrap: str
    controller: str
    pid: int
    data_dir: str
    log_file: str
    #: ``host:port`` of the SASL_SSL listener, when the broker has one.
    sasl_ssl_bootstrap: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


@dataclass(frozen=True)
class SaslSslListener:
    """A SASL_SSL listener (SCRAM-SHA-512) beside the plaintext one.

    ``keystore_pem`` holds the server's PKCS#8 private key (unencrypted) followed by its
    certificate chain, PEM (Kafka's ``ssl.keystore.type=PEM``). ``users`` maps SCRAM user names to
    passwords; they are created (or updated) through the plaintext listener each time the broker
    starts, as ``kafka-configs --alter --add-config SCRAM-SHA-512=[...]`` would.
    """

    keystore_pem: Path
    users: Mapping[str, str] = field(default_factory=dict)


PORTS_FILE = "ports.json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """True when 127.0.0.1:``port`` can be bound now (SO_REUSEADDR, as the JVM binds it: sockets
    of a killed broker left in TIME_WAIT do not count as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def recorded_ports(kafka_dir: Path) -> dict[str, int]:
    """The ports this data dir's broker used (``{}`` for a new data dir)."""
    try:
        data = json.loads((kafka_dir / PORTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: int(v) for k, v in data.items() if isinstance(v, int) and 0 < v < 65536}


def _choose_ports(kafka_dir: Path, *, port: int | None, sasl_ssl: bool) -> dict[str, int]:
    """The recorded ports of ``kafka_dir`` (new free ones for a new data dir, or for a listener it
    did not have yet); ``port`` overrides the plaintext one. A recorded port that another process
    holds now is an error: silently moving would strand the clients that know the old one."""
    ports = recorded_ports(kafka_dir)
    if port:
        ports["plaintext"] = port
    wanted = ["plaintext", "controller"] + (["sasl_ssl"] if sasl_ssl else [])
    for name in wanted:
        if name in ports:
            if not port_free(ports[name]):
                raise KafkaRuntimeError(
                    f"port {ports[name]} ({name}) recorded in {kafka_dir / PORTS_FILE} is in use by another "
                    "process; stop it, or delete that file to start on new ports"
                )
        else:
            ports[name] = free_port()
    return ports


def find_pom(start: Path | None = None) -> Path | None:
    """The repo's Kafka pom: searched from ``start`` (cwd) upwards, then beside the package."""
    candidates = []
    here = (start or Path.cwd()).resolve()
    candidates += [p / POM_RELATIVE for p in (here, *here.parents)]
    candidates.append(Path(__file__).resolve().parents[2] / POM_RELATIVE)  # the repo root
    return next((c for c in candidates if c.is_file()), None)


def jars_present(libs: Path) -> bool:
    return libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")) and any(libs.glob("log4j-core-*.jar"))


def ensure_jars(libs: Path, *, pom: Path | None = None) -> Path:
    """Make sure the Kafka runtime jars are in ``libs`` (resolving them with Maven if not)."""
    if jars_present(libs):
        return libs
    pom = pom or find_pom()
    if pom is None:
        raise KafkaRuntimeError(
            f"Kafka jars not found in {libs} and no {POM_RELATIVE} to fetch them with; "
            "run `make kafka-jars` in the streamrec checkout or set STREAMREC_KAFKA_LIBS"
        )
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaRuntimeError("Maven (mvn) is needed to fetch the Kafka jars; install it (apt-get install maven)")
    libs.mkdir(parents=True, exist_ok=True)
    log.info("fetching Kafka jars with Maven into %s", libs)
    proc = subprocess.run(
        [mvn, "-B", "-q", "-f", str(pom), f"-Dkafka.libs={libs}", "package"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not jars_present(libs):
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise KafkaRuntimeError(f"Maven could not fetch the Kafka jars (exit {proc.returncode}): {tail}")
    return libs


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaRuntimeError(
            "Java is needed to run Kafka; install OpenJDK 17+ (apt-get install openjdk-17-jre-headless)"
        )
    return java


def _cluster_id() -> str:
    """A random KRaft cluster id (URL-safe base64; may start with "-", so pass it as ``--cluster-id=``)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_state(kafka_dir: Path) -> BrokerState | None:
    """The recorded broker, if its process is still alive."""
    path = kafka_dir / "state.json"
    if not path.is_file():
        return None
    try:
        state = BrokerState(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None
    return state if _pid_alive(state.pid) else None


def broker_reachable(
    bootstrap: str, *, timeout: float = 5.0, config: dict[str, str | int | float | bool] | None = None
) -> bool:
    """True when an admin client gets cluster metadata from ``bootstrap`` within ``timeout``."""
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:  # cheap TCP probe first: keeps librdkafka from logging connection refusals
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=min(timeout, 2.0)).close()
    except (OSError, ValueError):
        return False
    conf: dict[str, str | int | float | bool] = {
        "bootstrap.servers": bootstrap,
        "socket.timeout.ms": int(timeout * 1000),
        "log_level": 0,
    }
    conf.update(config or {})
    try:
        md = AdminClient(conf).list_topics(timeout=timeout)
    except Exception:  # noqa: BLE001 - a probe: any client error means "not reachable"
        return False
    return bool(md.brokers)


_PROP_KEY = re.compile(r"[a-z][a-z0-9._-]{0,199}")
_JVM_OPTION = re.compile(r"-[A-Za-z][A-Za-z0-9:+=._/-]{0,199}")


def check_broker_options(props: Mapping[str, str], jvm_options: tuple[str, ...]) -> None:
    """``ValueError`` naming the first property or JVM option :func:`start` would not pass on:
    a key that is not a Kafka property name, a value with a line break or over 1,000 characters,
    a JVM option that is not one ``-X...`` word (no spaces, no shell characters).

    >>> check_broker_options({"num.io.threads": "2"}, ("-XX:TieredStopAtLevel=1",))
    >>> check_broker_options({"num.io.threads": "2\\nlisteners=x"}, ())
    Traceback (most recent call last):
    ...
    ValueError: broker property num.io.threads: a value must be one line of at most 1000 characters
    """
    for key, value in props.items():
        if not _PROP_KEY.fullmatch(key):
            raise ValueError(f"broker property {key!r}: not a property name (lower case, digits, '.', '_', '-')")
        if "\n" in value or "\r" in value or len(value) > 1000:
            raise ValueError(f"broker property {key}: a value must be one line of at most 1000 characters")
    for opt in jvm_options:
        if not _JVM_OPTION.fullmatch(opt):
            raise ValueError(f"broker JVM option {opt!r}: expected one word such as -XX:TieredStopAtLevel=1")


def start(
    kafka_dir: Path,
    *,
    libs: Path,
    heap: str = "768m",
    port: int | None = None,
    timeout: float = 90.0,
    sasl_ssl: SaslSslListener | None = None,
    extra_props: dict[str, str] | None = None,
    jvm_options: tuple[str, ...] = (),
) -> BrokerState:
    """Format (first time) and start a broker; return once an admin client sees it.

    The broker runs in its own session (it outlives this process) until :func:`stop`. It listens
    on the ports recorded in the data dir (see the module docstring); ``port`` sets the plaintext
    one. With ``sasl_ssl`` it also opens a SASL_SSL listener and creates its SCRAM users.
    ``extra_props`` are added to (and override) its ``server.properties``; ``jvm_options`` go to its
    JVM (``bench/pipeline.py --broker-prop`` / ``--broker-jvm`` measure them).
    """
    check_broker_options(extra_props or {}, jvm_options)
    existing = read_state(kafka_dir)
    if existing is not None:
        if broker_reachable(existing.bootstrap, timeout=5):
            return existing
        raise KafkaRuntimeError(
            f"a local broker (pid {existing.pid}) is recorded in {kafka_dir} but does not answer; "
            "run `streamrec kafka down` first"
        )
    ensure_jars(libs)
    kafka_dir.mkdir(parents=True, exist_ok=True)
    ports = _choose_ports(kafka_dir, port=port, sasl_ssl=sasl_ssl is not None)
    port, cport = ports["plaintext"], ports["controller"]
    (kafka_dir / PORTS_FILE).write_text(json.dumps(ports, indent=2, sort_keys=True))
    logs = kafka_dir / "logs"
    log_file = kafka_dir / "kafka.log"
    props = kafka_dir / "server.properties"
    listeners = [f"PLAINTEXT://127.0.0.1:{port}", f"CONTROLLER://127.0.0.1:{cport}"]
    advertised = [f"PLAINTEXT://127.0.0.1:{port}"]
    protocol_map = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
    security: list[str] = []
    if sasl_ssl is not None:
        sport = ports["sasl_ssl"]
        listeners.append(f"SASL_SSL://127.0.0.1:{sport}")
        advertised.append(f"SASL_SSL://127.0.0.1:{sport}")
        protocol_map.append("SASL_SSL:SASL_SSL")
        security = [
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.ssl.keystore.type=PEM",
            f"listener.name.sasl_ssl.ssl.keystore.location={Path(sasl_ssl.keystore_pem).resolve()}",
            "listener.name.sasl_ssl.ssl.client.auth=none",
        ]
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{cport}",
                f"listeners={','.join(listeners)}",
                f"advertised.listeners={','.join(advertised)}",
                "controller.listener.names=CONTROLLER",
                f"listener.security.protocol.map={','.join(protocol_map)}",
                "inter.broker.listener.name=PLAINTEXT",
                *security,
                f"log.dirs={logs}",
                "num.partitions=1",
                "auto.create.topics.enable=true",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=24",
                "log.segment.bytes=67108864",
                *(f"{k}={v}" for k, v in (extra_props or {}).items()),
                "",
            ]
        )
    )
    (kafka_dir / "log4j2.properties").write_text(_LOG4J2.format(log=log_file))
    java = _java()
    cp = f"{libs}/*"
    jvm = [
        java,
        f"-Xmx{heap}",
        f"-Xms{heap}",
        "-XX:+UseG1GC",
        *jvm_options,
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={kafka_dir / 'log4j2.properties'}",
        "-cp",
        cp,
    ]
    if not (logs / "meta.properties").is_file():
        # The quorum is static (controller.quorum.voters), so re-formatting is never needed;
        # format only once per data dir (--ignore-formatted keeps re-runs harmless).
        fmt = subprocess.run(
            [
                *jvm,
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                f"--cluster-id={_cluster_id()}",
                "-c",
                str(props),
            ],
            capture_output=True,
            text=True,
        )
        if fmt.returncode != 0:
            raise KafkaRuntimeError(f"kafka storage format failed: {(fmt.stdout + fmt.stderr)[-2000:]}")
    with open(kafka_dir / "kafka.out", "ab") as out:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [*jvm, "kafka.Kafka", str(props)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state = BrokerState(
        bootstrap=f"127.0.0.1:{port}",
        controller=f"127.0.0.1:{cport}",
        pid=proc.pid,
        data_dir=str(kafka_dir),
        log_file=str(log_file),
        sasl_ssl_bootstrap=f"127.0.0.1:{ports['sasl_ssl']}" if sasl_ssl is not None else None,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (kafka_dir / "kafka.out").read_text(errors="replace")[-3000:]
            raise KafkaRuntimeError(f"Kafka exited with code {proc.returncode} while starting: {tail}")
        if broker_reachable(state.bootstrap, timeout=2):
            if sasl_ssl is not None and sasl_ssl.users:
                try:
                    _upsert_scram_users(state.bootstrap, sasl_ssl.users, timeout=max(10.0, deadline - time.monotonic()))
                except KafkaRuntimeError:
                    _terminate(proc.pid, timeout=10)
                    raise
            (kafka_dir / "state.json").write_text(state.to_json())
            log.info("kafka up bootstrap=%s pid=%s", state.bootstrap, proc.pid)
            return state
        time.sleep(0.5)
    _terminate(proc.pid, timeout=10)
    raise KafkaRuntimeError(
        f"Kafka did not answer on {state.bootstrap} within {timeout:.0f}s; see {kafka_dir}/kafka.out"
    )


def _upsert_scram_users(bootstrap: str, users: Mapping[str, str], *, timeout: float) -> None:
    """Create or update SCRAM-SHA-512 credentials (what ``kafka-configs --alter`` does)."""
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialAlteration,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(user, info, password.encode("utf-8")) for user, password in users.items()
    ]
    deadline = time.monotonic() + timeout
    while True:
        try:
            for fut in admin.alter_user_scram_credentials(upserts, request_timeout=10).values():
                fut.result()
            return
        except Exception as exc:  # noqa: BLE001  # the metadata quorum may still be settling right after start
            if time.monotonic() > deadline:
                raise KafkaRuntimeError(f"could not create the SCRAM users {sorted(users)}: {exc}") from None
            time.sleep(0.5)


def kill(kafka_dir: Path) -> int | None:
    """SIGKILL the recorded broker (a crash, for drills); ``state.json`` is left behind, stale,
    as a real crash leaves it. Returns the pid killed, or None if none ran."""
    state = read_state(kafka_dir)
    if state is None:
        return None
    try:
        os.killpg(state.pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if os.waitpid(state.pid, os.WNOHANG)[0] == state.pid:
                break
        except ChildProcessError:
            if not _pid_alive(state.pid):
                break
        time.sleep(0.1)
    return state.pid


def _terminate(pid: int, *, timeout: float) -> bool:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # reap if it is our child
            if done == pid:
                return True
        except ChildProcessError:
            pass
        if not _pid_alive(pid):
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return False


def stop(kafka_dir: Path, *, timeout: float = 30.0) -> bool:
    """Stop the recorded broker with SIGTERM (SIGKILL after ``timeout``). False if none ran."""
    path = kafka_dir / "state.json"
    state = read_state(kafka_dir)
    if state is None:
        path.unlink(missing_ok=True)
        return False
    clean = _terminate(state.pid, timeout=timeout)
    path.unlink(missing_ok=True)
    if not clean:
        log.warning("kafka pid=%s did not stop within %.0fs and was killed", state.pid, timeout)
    return True

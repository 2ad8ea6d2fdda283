"""Child `streamrec` processes of the benchmark scripts (pipeline, freshness, catalog_scale).

One place for what every script that runs a real worker does the same way: the child's
environment (the bench's ``Settings`` as ``STREAMREC_*`` variables, nothing inherited from the
caller's own ``STREAMREC_*``), the launch with its output in a log file, the wait for ``/health``,
the stop (SIGTERM, then kill), and a model trained with ``streamrec train``. What each script
measures stays in the script.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamrec.config import Settings

#: The ``Settings`` fields every bench worker gets as ``STREAMREC_<FIELD>`` (a script adds its own).
FIELDS = (
    "topic_events",
    "topic_catalog",
    "topic_recommendations",
    "topic_dlq",
    "topic_model_updates",
    "app_id",
    "partitions",
    "data_dir",
)


def tagged_settings(bootstrap: str, tag: str, data_dir: Path, **overrides: Any) -> Settings:
    """``streamrec.devtools.tagged.tagged_settings`` with 4 partitions (a bench worker's default)."""
    from streamrec.devtools.tagged import tagged_settings as tagged

    return tagged(bootstrap, tag, data_dir, **({"partitions": 4} | overrides))


def worker_env(
    settings: Settings, fields: Sequence[str] = FIELDS, *, base: Mapping[str, str] | None = None, **extra: str
) -> dict[str, str]:
    """The environment of a child process on ``settings``: this process's environment less its
    ``STREAMREC_*`` variables, then ``base``, then ``fields`` of ``settings``, the broker and
    ``STREAMREC_DEVICE=cpu``, then ``extra`` (a later one wins)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(base or {})
    for name in fields:
        env[f"STREAMREC_{name.upper()}"] = str(getattr(settings, name))
    env["STREAMREC_BOOTSTRAP_SERVERS"] = settings.resolved_bootstrap()
    env["STREAMREC_DEVICE"] = "cpu"
    env.update(extra)
    return env


def launch(
    command: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    *,
    append: bool = False,
    entry: Sequence[str] = ("-m", "streamrec.cli"),
) -> subprocess.Popen:
    """``python -m streamrec.cli *command`` (or ``python *entry *command``), its stdout and stderr
    into ``log`` (appended to with ``append``, else truncated)."""
    with open(log, "ab" if append else "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, *entry, *command],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def wait_healthy(
    proc: subprocess.Popen, port: int, log: Path, timeout: float = 300, since: float | None = None
) -> float:
    """Wait until the worker's ``/health`` on ``port`` answers 200 (ready); the seconds from
    ``since`` (a ``time.perf_counter()`` value; default: now) to then. Exits the script (naming
    ``log``) when the process exits first or ``timeout`` seconds from ``since`` pass; a worker
    that never got ready is killed, not left running."""
    t0 = time.perf_counter() if since is None else since
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:  # not listening yet, or 503 while it loads
            pass
        time.sleep(0.5)
    proc.kill()
    proc.wait(30)
    raise SystemExit(f"worker not ready after {timeout:.0f}s; see {log}")


def stop(proc: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM ``proc`` (if still running), ``grace`` seconds to shut down cleanly, then kill."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def train_model(
    sequences: Path,
    item_text: Path,
    out: Path,
    seconds: float,
    *,
    cli_opts: Sequence[str] = (),
    train_opts: Sequence[str] = (),
) -> Path:
    """``streamrec train`` for ``seconds`` into ``out`` (``cli_opts`` before the subcommand,
    ``train_opts`` after it); returns ``out``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "streamrec.cli",
            "--log-level",
            "WARNING",
            *cli_opts,
            "train",
            "--sequences",
            str(sequences),
            "--item-text",
            str(item_text),
            "--out",
            str(out),
            "--time-budget",
            str(seconds),
            "--no-progress",
            *train_opts,
        ],
        check=True,
    )
    return out

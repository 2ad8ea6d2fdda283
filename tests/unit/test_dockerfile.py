"""Static checks of the Dockerfile and .dockerignore (no Docker engine needed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from streamrec.config import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


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


def test_dockerfile_entrypoint_cmd_and_healthcheck() -> None:
    assert DOCKERFILE.is_file()
    instr = _dockerfile_instructions()
    final = instr[max(i for i, (w, _) in enumerate(instr) if w == "FROM") :]
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
    assert exprs, 'the pip install lines should install ".${EXTRAS:+[$EXTRAS]}"'
    for expr in exprs:
        for extras, expected in (("", "."), ("gpu", ".[gpu]")):
            got = subprocess.run(
                ["sh", "-c", f'printf %s "{expr}"'],
                env={"EXTRAS": extras},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert got == expected, f"{expr} with EXTRAS={extras!r} -> {got!r}"


def test_dockerignore_keeps_local_state_out() -> None:
    entries = {
        line.strip().lstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".cache", "data", ".git", ".pytest_cache", ".env"):
        assert required in entries, f".dockerignore should exclude {required}"
    assert "streamrec" not in entries and "pyproject.toml" not in entries

"""Shared fixtures. Integration tests run against a real Kafka broker: the one named by
STREAMREC_BOOTSTRAP_SERVERS (``make test`` starts one), else one this session starts and stops."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="no CUDA device visible")
    for item in items:
        if "tests/integration" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real broker for the whole test session."""
    configured = os.environ.get("STREAMREC_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    from streamrec.config import Settings
    from streamrec.devtools import localkafka

    libs = Settings().kafka_libs.expanduser()
    kafka_dir = tmp_path_factory.mktemp("kafka")
    state = localkafka.start(kafka_dir, libs=libs)
    try:
        yield state.bootstrap
    finally:
        localkafka.stop(kafka_dir)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """``unique("events")`` -> ``"events-3f2a9c1b"``: fresh topic/group/app ids per test."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, unique: Callable[[str], str], data_dir: Path):
    """Settings with this test's own topic names, app id and data dir, on the session broker."""
    from tests.integration.worker_harness import tagged_settings

    return tagged_settings(kafka_bootstrap, unique("t"), data_dir)


@pytest.fixture(scope="session")
def beauty_dir() -> Path:
    """The real Amazon Beauty data (../shared/data/beauty, or $STREAMREC_BENCH_DATA)."""
    d = Path(os.environ.get("STREAMREC_BENCH_DATA", REPO.parent / "shared" / "data" / "beauty"))
    if not (d / "sequences.txt").is_file():
        pytest.skip(f"Beauty data not found at {d} (set STREAMREC_BENCH_DATA)")
    return d

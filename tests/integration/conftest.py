from __future__ import annotations

import sys
from pathlib import Path

import pytest

from streamrec.devtools.simulator import ShopSimulator, write_dataset

SIM = dict(seed=7, n_items=300, n_users=120)


@pytest.fixture(scope="session")
def sim_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained on the simulator's shop (same seed as the catalog the tests send),
    with a purchase-intent model trained on the same shop's typed events (``events.csv``)."""
    import subprocess

    d = tmp_path_factory.mktemp("simmodel")
    seq, text = write_dataset(ShopSimulator(**SIM), d / "data", n_events=8000)
    out = d / "model"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamrec.cli",
            "--device",
            "cpu",
            "train",
            "--sequences",
            str(seq),
            "--item-text",
            str(text),
            "--events",
            str(seq.parent / "events.csv"),
            "--out",
            str(out),
            "--time-budget",
            "25",
            "--no-progress",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture
def shop() -> ShopSimulator:
    return ShopSimulator(**SIM, id_prefix="test")

"""bench/pipeline.py: the runs ``--workers`` and ``--compare-env`` ask for, and its refusals (no broker needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

pipeline = pytest.importorskip("pipeline")


def test_workers_runs_alternate_and_have_their_own_topics() -> None:
    runs = pipeline.variants(["at_least_once"], [], 2, [1, 2])
    assert [v.workers for v in runs] == [1, 2, 2, 1]  # the order reversed every other time
    assert len({v.key for v in runs}) == 4  # each run its own topics and consumer group
    assert runs[1].name == "at_least_once, 2 workers #1" and runs[0].name == "at_least_once #1"
    # one worker only: the runs as before (no suffix)
    assert [v.key for v in pipeline.variants(["at_least_once", "exactly_once"], [], 1, [1])] == [
        "at_least_once",
        "exactly_once",
    ]


def test_compare_env_runs_alternate_with_and_without_the_settings() -> None:
    runs = pipeline.variants(["at_least_once"], [], 2, [1], "STREAMREC_X=1 STREAMREC_Y=2")
    assert [v.env for v in runs] == ["", "STREAMREC_X=1 STREAMREC_Y=2", "STREAMREC_X=1 STREAMREC_Y=2", ""]
    assert len({v.key for v in runs}) == 4
    assert runs[1].name == "at_least_once, STREAMREC_X=1 STREAMREC_Y=2 #1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers: expected distinct counts of 1..4"),
        (["--workers", "2,2"], "--workers: expected distinct counts"),
        (["--workers", "x"], "--workers: expected distinct counts"),
        (["--workers", "1,2", "--insights", "on"], "--workers, --insights and --compare-env: give one"),
        (["--compare-env", "STREAMREC_X=1", "--insights", "on"], "--workers, --insights and --compare-env: give one"),
        (["--compare-env", "DIRECT_PRODUCE=false"], "--compare-env: expected STREAMREC_NAME=VALUE"),
        (["--compare-env", "STREAMREC_PROCESSING_GUARANTEE=exactly_once"], "--compare-env: expected"),
        (["--warmup-rounds", "0"], "--warmup-rounds: expected 1..10, got 0"),
    ],
)
def test_bad_workers_exit_2_naming_the_value(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "pipeline.py"), *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr

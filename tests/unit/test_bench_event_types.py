"""bench/event_types.py runs end to end on a tiny dataset and ends with its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_event_types_bench_tiny() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "event_types.py"),
            "--n-items",
            "60",
            "--n-users",
            "80",
            "--n-events",
            "3000",
            "--epochs",
            "1",
            "--seeds",
            "0,1",
            "--config",
            '{"use_text": false}',
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert "| B: types stripped" in out.stdout
    res = json.loads(lines[-1])
    for k in (
        "ndcg10_types_excl_seen",
        "ndcg10_no_types_excl_seen",
        "ndcg10_types_incl_seen",
        "ndcg10_no_types_incl_seen",
    ):
        assert 0.0 <= res[k] <= 1.0
    assert res["seeds"] == [0, 1] and res["epochs"] == 1

"""bench/augment.py runs end to end on a tiny dataset and ends with its JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.unit.model.conftest import make_interactions, write_sequences

REPO = Path(__file__).resolve().parents[2]


def test_augment_bench_tiny(tmp_path: Path) -> None:
    write_sequences(tmp_path / "sequences.txt", make_interactions(60))
    env = os.environ | {"STREAMREC_BENCH_DATA": str(tmp_path)}
    argv = [sys.executable, str(REPO / "bench" / "augment.py"), "--epochs", "1", "--variants", "crop+mask,contrastive"]
    out = subprocess.run(
        [*argv, "--text-cache", str(tmp_path / "cache")], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    assert set(res["val_ndcg_at_10"]) == {"crop+mask", "contrastive"} and res["epochs"] == 1
    assert any(line.startswith("| crop+mask ") for line in lines)
    assert "test" not in "\n".join(lines[1:]).lower()  # a validation-only experiment (line 0: the data path)
    bad = subprocess.run([*argv[:-2], "--variants", "none,flip"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "flip" in bad.stderr and "Traceback" not in bad.stderr

"""``streamrec worker`` whose model stage costs nothing: ``bench/pipeline.py --loop-bound``.

The worker runs as usual (Kafka, Faust, RocksDB, the changelog, the model thread hand-off, the
answers on the recommendations topic), but ``Pipeline.score`` / ``score_explained`` return the
same 20 items for every user instead of encoding and searching. What such a worker drains is the
bound that no change to the model or the index can lift: the cost of everything else.
Bench-only; never imported by the package.

    python bench/free_model_worker.py [streamrec CLI arguments]   (as ``python -m streamrec.cli``)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamrec.cli import main
from streamrec.streams.pipeline import Pipeline

FIXED = [(f"free-{i:02d}", 1.0 - i / 100, ("popular", None)) for i in range(20)]


def _count(self: Pipeline, fresh_events: list[Any]) -> None:
    for ev in fresh_events:  # as the real stage does: popularity counts every new event
        self.scorer.popularity.add(ev.item_id, ev.type, ts_ms=ev.ts)


def score(self: Pipeline, states: list[Any], fresh_events: list[Any], model: Any = None) -> list[Any]:
    _count(self, fresh_events)
    return [[(i, s) for i, s, _ in FIXED] for _ in states]


def score_explained(self: Pipeline, states: list[Any], fresh_events: list[Any], model: Any = None) -> Any:
    _count(self, fresh_events)
    return [list(FIXED) for _ in states], [None for _ in states]


Pipeline.score = score  # type: ignore[method-assign]
Pipeline.score_explained = score_explained  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())

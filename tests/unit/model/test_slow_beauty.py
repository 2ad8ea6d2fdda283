"""A few epochs on a slice of Amazon Beauty must beat popularity (full ranking, test split)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DATA = Path(os.environ.get("STREAMREC_BENCH_DATA", REPO.parent / "shared" / "data" / "beauty"))
TEXT_CACHE = REPO / ".cache" / "streamrec" / "text-cache"  # shared text cache, reused if present


@pytest.mark.slow
def test_beats_popularity_on_beauty_slice():
    if not (DATA / "sequences.txt").is_file():
        pytest.skip(f"Beauty data not found at {DATA} (set STREAMREC_BENCH_DATA)")
    from streamrec.model.data import encode, leave_one_out, read_item_text, read_sequences
    from streamrec.model.evaluate import popularity_score_fn, rank_all
    from streamrec.model.train import TrainSettings, train

    data = read_sequences(DATA / "sequences.txt").subset(range(8000))  # ~1/3 of the users
    text = read_item_text(DATA / "item_text.tsv") if (DATA / "item_text.tsv").is_file() else {}
    res = train(
        data,
        item_text=text,
        config=dict(d_model=64),
        settings=TrainSettings(
            max_epochs=8, patience=3, time_budget=100, device="cpu", progress=False, text_cache=str(TEXT_CACHE)
        ),
    )
    split = leave_one_out(encode(data, res.vocab))
    pop = rank_all(
        popularity_score_fn(split.test_inputs, len(res.vocab)), split.test_inputs, split.test_targets, len(res.vocab)
    )
    model = res.metrics["test"]
    assert model["ndcg@10"] > pop["ndcg@10"] and model["hr@10"] > pop["hr@10"], (model, pop)

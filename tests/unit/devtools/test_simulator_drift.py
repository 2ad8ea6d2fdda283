"""Simulator drift: deterministic, the default traffic untouched, tastes and popularity really
move at each phase, new items trend, and a stale model measurably loses to a retrained one."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from streamrec.devtools.simulator import ShopSimulator
from streamrec.schemas import CatalogItem, ShopEvent

KW = {"seed": 4, "n_items": 150, "n_users": 80}


def test_drift_is_deterministic_and_leaves_the_first_phase_as_default() -> None:
    a = list(ShopSimulator(**KW, drift_every=1000).stream(2500))
    assert a == list(ShopSimulator(**KW, drift_every=1000).stream(2500))
    plain = list(ShopSimulator(**KW).stream(2500))
    assert a[:1000] == plain[:1000]  # nothing drifts before the first phase ends
    assert a != plain


def test_each_phase_lists_trending_items_before_the_next_event() -> None:
    recs = list(ShopSimulator(**KW, drift_every=1000, drift_new_items=5).stream(3000))
    events_before = 0
    listed: list[tuple[int, str]] = []
    for r in recs:
        if isinstance(r, CatalogItem):
            listed.append((events_before, r.item_id))
        else:
            events_before += 1
    assert [n for n, _ in listed] == [1000] * 5 + [2000] * 5
    new_ids = {i for _, i in listed}
    phase1 = [r for r in recs if isinstance(r, ShopEvent)][1000:2000]
    share = sum(e.item_id in new_ids for e in phase1) / len(phase1)
    assert share > 0.05, f"trending items got {share:.1%} of the next phase's events"
    with pytest.raises(ValueError, match="drift_every"):
        ShopSimulator(**KW, drift_every=-1)


def _top_category_changed(events: list[ShopEvent], cat: dict[str, str], half: int) -> float:
    """Share of users (with 10+ views in each half) whose most viewed category changed."""
    first: dict[str, Counter] = {}
    second: dict[str, Counter] = {}
    for k, e in enumerate(events):
        if e.type == "view":
            (first if k < half else second).setdefault(e.user_id, Counter())[cat[e.item_id]] += 1
    users = [u for u in first if sum(first[u].values()) >= 10 and sum(second.get(u, Counter()).values()) >= 10]
    assert len(users) >= 20
    return sum(first[u].most_common(1)[0][0] != second[u].most_common(1)[0][0] for u in users) / len(users)


def test_tastes_move_to_other_categories() -> None:
    sim = ShopSimulator(**KW, drift_every=3000, drift_new_items=0)
    cat = {it.item_id: it.category for it in sim.catalog()}
    drifted = _top_category_changed(list(sim.events(6000)), cat, 3000)
    plain = _top_category_changed(list(ShopSimulator(**KW).events(6000)), cat, 3000)
    assert drifted > 0.8 and drifted > plain + 0.3, (drifted, plain)


def test_cli_accepts_drift(tmp_path: Path) -> None:
    from streamrec.cli import main

    assert (
        main(
            [
                "simulate",
                "--write-dataset",
                str(tmp_path),
                "--events",
                "300",
                "--items",
                "40",
                "--users",
                "20",
                "--drift",
                "100",
                "--drift-new-items",
                "3",
            ]
        )
        == 0
    )
    text = (tmp_path / "item_text.tsv").read_text().splitlines()
    assert len(text) == 1 + 40 + 2 * 3  # header, catalog, two shifts of 3 items


@pytest.mark.slow  # two real training rounds (~35 s)
def test_a_stale_model_loses_to_a_retrained_one_under_drift(tmp_path: Path) -> None:
    """Round 1 trains on phase 0; phase 1 arrives; round 2 fine-tunes, and the gate scores the
    stale version and the candidate on the same phase-1 hold-out."""
    import torch

    from streamrec.model.registry import ModelRegistry
    from streamrec.model.retrain import RetrainConfig, retrain
    from streamrec.model.trainlog import TrainLog

    torch.set_num_threads(1)
    n = 8000
    sim = ShopSimulator(seed=3, n_items=200, n_users=300, id_prefix="d", drift_every=n)
    recs = list(sim.stream(2 * n))
    base_text = {it.item_id: it.text() for it in sim.catalog()}
    text = base_text | {r.item_id: r.text() for r in recs if isinstance(r, CatalogItem)}
    events = [r for r in recs if isinstance(r, ShopEvent)]
    log = TrainLog(tmp_path / "log", topic="shop.events")
    log.append(0, 0, n - 1, list(enumerate(events[:n])))
    reg = ModelRegistry(tmp_path / "models")
    cfg = RetrainConfig(
        time_budget_s=12, holdout_users=300, device="cpu", seed=1, val_users=64, max_epochs=200, patience=20
    )
    first = retrain(log.read(), reg, base_text, cfg)  # the trending items are not listed yet
    assert first.promoted
    log.append(0, n, 2 * n - 1, [(n + k, e) for k, e in enumerate(events[n:])])
    second = retrain(log.read(), reg, text, RetrainConfig(**{**cfg.__dict__, "time_budget_s": 8}))
    stale, fresh = second.current, second.candidate
    assert fresh["ndcg@10"] > stale["ndcg@10"] + 0.01, second.reason
    assert fresh["hr@10"] > stale["hr@10"] + 0.01, second.reason
    assert second.promoted

"""One retraining round: sequences from the log, the time-based hold-out, the window, the gate,
and real rounds on simulator traffic (a bootstrap, a deliberately worse candidate the gate
refuses, a fine-tune the gate promotes into the registry)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from streamrec.devtools.simulator import ShopSimulator
from streamrec.model.data import Interactions
from streamrec.model.registry import ModelRegistry, data_cut_ms
from streamrec.model.retrain import (
    Decision,
    RetrainConfig,
    adapt_current,
    append_decision,
    gate,
    retrain,
    sequences_from_log,
    split_holdout,
    training_window,
)
from streamrec.model.trainlog import TrainLog


def _table(rows: list[tuple[str, str, str, int]]) -> pa.Table:
    u, i, t, ts = zip(*rows)
    return pa.table({"user_id": list(u), "item_id": list(i), "type": list(t), "ts": list(ts)})


def test_sequences_keep_interest_and_collapse_repeats() -> None:
    t = _table(
        [
            ("a", "x", "view", 1),
            ("b", "y", "view", 2),
            ("a", "x", "purchase", 3),
            ("a", "z", "remove_from_cart", 4),
            ("a", "w", "view", 5),
            ("a", "x", "view", 6),
        ]
    )
    seqs = sequences_from_log(t)
    assert seqs == {"a": [("x", "purchase", 3), ("w", "view", 5), ("x", "view", 6)], "b": [("y", "view", 2)]}


def test_holdout_takes_the_latest_interaction_of_the_most_recent_users() -> None:
    seqs = {
        "old": [("a", "view", 1), ("b", "view", 2)],
        "new": [("a", "view", 3), ("c", "view", 9)],
        "mid": [("b", "view", 4), ("c", "view", 5), ("d", "view", 6)],
        "one": [("z", "view", 100)],
    }  # a single interaction has no history to predict from
    train, ho = split_holdout(seqs, 2)
    assert ho.users == ["new", "mid"] and ho.targets == ["c", "d"]
    assert ho.histories[1] == [("b", "view", 4), ("c", "view", 5)]
    assert train["new"] == [("a", "view", 3)] and train["mid"][-1][0] == "c"  # targets never trained on
    assert train["old"] == seqs["old"] and train["one"] == seqs["one"]


def test_window_is_recent_users_plus_a_replay_sample() -> None:
    day = 86_400_000
    seqs = {f"old{k}": [("a", "view", k), ("b", "view", k + 1)] for k in range(10)}
    seqs |= {f"new{k}": [("c", "view", 5 * day + k)] for k in range(3)}
    rng = np.random.default_rng(0)
    w = training_window(seqs, window_s=86400, replay_ratio=1.0, rng=rng)
    assert sorted(u for u in w.users if u.startswith("new")) == ["new0", "new1", "new2"]
    assert sum(u.startswith("old") for u in w.users) == 3
    none = training_window(seqs, window_s=86400, replay_ratio=0.0, rng=rng)
    assert sorted(none.users) == ["new0", "new1", "new2"]
    full = training_window(seqs, window_s=86400, replay_ratio=0.0, rng=rng, full=True)
    assert len(full) == 13


def test_gate_tolerance() -> None:
    cur = {"ndcg@10": 0.100, "hr@10": 0.200}
    assert gate({"ndcg@10": 0.100, "hr@10": 0.200}, cur, 0.0)[0]
    assert gate({"ndcg@10": 0.096, "hr@10": 0.196}, cur, 0.005)[0]
    ok, reason = gate({"ndcg@10": 0.120, "hr@10": 0.190}, cur, 0.005)
    assert not ok and "hr@10" in reason and "ndcg@10 0.1200 vs 0.1000" in reason
    assert not gate({"ndcg@10": 0.090, "hr@10": 0.300}, cur, 0.005)[0]
    assert gate({"ndcg@10": 0.0, "hr@10": 0.0}, None, 0.005) == (True, "no current version")
    with pytest.raises(ValueError, match="tolerance"):
        gate(cur, cur, -0.1)


def test_decision_flat_metrics_and_file(tmp_path: Path) -> None:
    d = Decision(
        promoted=False,
        reason="r",
        mode="finetune",
        candidate={"ndcg@10": 0.1, "hr@10": 0.2, "users": 5},
        current={"ndcg@10": 0.3, "hr@10": 0.4},
        tolerance=0.01,
        holdout_users=5,
        train_users=9,
        train_events=40,
        added_items=2,
        train_seconds=1.5,
        base_version="v0001-20260101T000000Z",
    )
    flat = d.flat_metrics()
    assert flat["holdout_ndcg@10"] == 0.1 and flat["current_hr@10"] == 0.4 and flat["full"] == 0.0
    assert all(isinstance(v, float) for v in flat.values())
    append_decision(tmp_path / "d.jsonl", d)
    append_decision(tmp_path / "d.jsonl", d)
    lines = (tmp_path / "d.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["current"]["ndcg@10"] == 0.3


def shuffle_items(data: Interactions, rng: np.random.Generator) -> Interactions:
    """Every item token moved to a random place in a random sequence: popularity survives,
    every sequential signal is destroyed."""
    flat = np.array([i for s in data.items for i in s], dtype=object)
    rng.shuffle(flat)
    out, k = Interactions(), 0
    for u, s, t in zip(data.users, data.items, data.types):
        out.users.append(u)
        out.items.append([str(x) for x in flat[k : k + len(s)]])
        out.types.append(list(t))
        k += len(s)
    return out


@pytest.fixture(scope="module")
def sim_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, dict[str, str | None]]:
    sim = ShopSimulator(seed=3, n_items=200, n_users=300, id_prefix="rt")
    log = TrainLog(tmp_path_factory.mktemp("log"), topic="shop.events")
    events = list(sim.events(15000))
    for k in range(0, len(events), 1000):
        chunk = events[k : k + 1000]
        log.append(0, k, k + len(chunk) - 1, [(k + j, e) for j, e in enumerate(chunk)])
    return log.read(), {it.item_id: it.text() for it in sim.catalog()}


@pytest.mark.slow  # ~30 s: three real training rounds
def test_rounds_bootstrap_refuse_a_worse_candidate_then_promote(sim_log, tmp_path: Path, capsys) -> None:
    import torch

    torch.set_num_threads(1)
    table, text = sim_log
    reg = ModelRegistry(tmp_path / "models")
    cfg = RetrainConfig(
        time_budget_s=12,
        holdout_users=300,
        tolerance=0.005,
        device="cpu",
        seed=1,
        val_users=64,
        max_epochs=200,
        patience=20,
        keep=2,
    )
    boot = retrain(table, reg, text, cfg)  # empty registry: a full retrain, promoted
    assert boot.promoted and boot.mode == "full" and boot.current is None
    # the simulator's sessions end in purchases or not: the first version gets an intent model
    assert boot.intent.startswith("retrained"), boot.intent
    assert (reg.current_path() / "intent.json").is_file()
    assert reg.current_version() == boot.version
    assert boot.candidate["ndcg@10"] > 0.08  # random over 200 items: ~0.02

    worse = retrain(table, reg, text, RetrainConfig(**{**cfg.__dict__, "time_budget_s": 5}), transform=shuffle_items)
    assert not worse.promoted, worse.reason
    assert worse.current["ndcg@10"] - worse.candidate["ndcg@10"] > cfg.tolerance
    assert worse.version is None and reg.current_version() == boot.version
    assert len(reg.list()) == 1, "a rejected candidate is not registered"

    lenient = RetrainConfig(**{**cfg.__dict__, "time_budget_s": 3, "tolerance": 1.0})
    ft = retrain(table, reg, text, lenient)
    assert ft.promoted and ft.mode == "finetune" and ft.base_version == boot.version
    assert ft.intent.startswith(("retrained", "carried (hold-out")), ft.intent  # never dropped
    assert reg.current_version() == ft.version != boot.version
    stored = reg.list()[-1].metrics["gate"]
    assert stored["candidate"]["ndcg@10"] == ft.candidate["ndcg@10"]
    assert stored["current"]["ndcg@10"] == ft.current["ndcg@10"]
    # which deletions the version predates: its data's newest event and the wall time it was cut
    meta = reg.list()[-1].metrics
    assert meta["trained_until_ts"] == max(table.column("ts").to_pylist())
    assert meta["data_cut_ts"] <= reg.list()[-1].created_ts * 1000
    assert [v.version for v in reg.versions_trained_before(meta["data_cut_ts"])][-1] == ft.version
    import argparse

    from streamrec.config import Settings
    from streamrec.model.cli import cmd_models_list

    settings = Settings(data_dir=tmp_path)
    capsys.readouterr()
    assert cmd_models_list(argparse.Namespace(json=True), settings) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["holdout_ndcg@10"] for v in listed] == [boot.candidate["ndcg@10"], ft.candidate["ndcg@10"]]
    # the same hold-out: the current version scored now as the candidate of the first round did
    assert ft.current["ndcg@10"] == pytest.approx(boot.candidate["ndcg@10"], abs=1e-6)


@pytest.mark.slow  # ~25 s: two short training rounds
def test_a_version_with_transitions_keeps_them_in_its_rounds(sim_log, tmp_path: Path) -> None:
    """The term is off by default; once the current version serves it (a shop trained it with
    --transitions), the trainer's rounds fit it again instead of dropping it."""
    import shutil

    import torch

    from streamrec.model.checkpoint import load_checkpoint
    from streamrec.model.transitions import Transitions

    torch.set_num_threads(1)
    table, text = sim_log
    reg = ModelRegistry(tmp_path / "models")
    cfg = RetrainConfig(
        time_budget_s=3, holdout_users=300, tolerance=1.0, device="cpu", seed=1, val_users=64, max_epochs=200, keep=3
    )
    assert retrain(table, reg, text, cfg).promoted

    def settings_of_current() -> dict:
        return json.loads((reg.require_current() / "train_settings.json").read_text())

    assert settings_of_current()["transitions"] is False
    with_table = tmp_path / "with-table"
    shutil.copytree(reg.require_current(), with_table)
    n = load_checkpoint(with_table)[0].config.n_items
    Transitions(np.zeros(n + 2, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), weight=1.0).save(with_table)
    reg.promote(reg.register(with_table))
    ft = retrain(table, reg, text, cfg)
    assert ft.promoted and ft.mode == "finetune"
    assert settings_of_current()["transitions"] is True


@pytest.mark.gpu
def test_a_round_trains_and_gates_on_cuda(sim_log, tmp_path: Path) -> None:
    from streamrec.model.checkpoint import load_checkpoint

    table, text = sim_log
    reg = ModelRegistry(tmp_path / "models")
    d = retrain(
        table,
        reg,
        text,
        RetrainConfig(
            time_budget_s=5, holdout_users=100, device="cuda", seed=1, val_users=64, max_epochs=50, patience=10
        ),
    )
    assert d.promoted and d.candidate["ndcg@10"] > 0.05
    settings = json.loads((reg.current_path() / "train_settings.json").read_text())
    assert settings["device_used"].startswith("cuda")
    model, vocab = load_checkpoint(reg.current_path(), device="cpu")  # serves anywhere
    assert len(vocab) == model.config.n_items >= 200


def test_a_version_from_another_shop_is_adapted_to_the_catalog_once(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Before its first round the trainer fits a foreign model's text channel to the shop's
    catalog (``adapt_current``): a new version, promoted, with the base's weights and data cut;
    not again for that version, and never for a model that knows the catalog."""
    import torch

    from streamrec.model.checkpoint import load_checkpoint, read_metrics
    from streamrec.model.text import TextEncoder

    reg = ModelRegistry(tmp_path / "registry")
    base = reg.register(tiny_checkpoint)
    reg.promote(base)
    own = {f"i{i}": f"lipstick shade {i}" for i in range(1, 25)}  # the catalog it was trained on
    assert adapt_current(reg, own, below=0.5, text_cache=None, device="cpu") is None
    titles = [f"{c} {k} for the garden" for c in ("green", "red", "blue", "grey") for k in ("hose", "rake", "pot")]
    shop = {f"g{k}": t for k, t in enumerate(titles)} | {"i1": "red lipstick", "g99": None}
    new = adapt_current(reg, shop, below=0.5, text_cache=None, device="cpu")
    assert new is not None and reg.current_version() == new
    before, vocab0 = load_checkpoint(reg.version_path(base))
    after, vocab1 = load_checkpoint(reg.version_path(new))
    assert vocab1.ids == vocab0.ids and torch.equal(after.id_emb.weight, before.id_emb.weight)
    want = torch.from_numpy(TextEncoder(device="cpu").encode([*titles, "red lipstick"])).float()
    # the shop's titles, with the known item's title as the model holds it
    want[-1] = before.text_emb[vocab0.row("i1")]
    assert torch.allclose(after.text_mean, want.mean(0), atol=1e-4)
    m = read_metrics(reg.version_path(new))
    assert m["adapted_from"] == base and m["catalog_titles"] == 13 and m["catalog_known_share"] == round(1 / 13, 4)
    assert m["data_cut_ts"] == data_cut_ms(reg.list()[0])  # the base's weights: the base's cut
    assert adapt_current(reg, shop, below=0.5, text_cache=None, device="cpu") is None  # adapted already
    reg.promote(base)
    assert adapt_current(reg, shop, below=0.05, text_cache=None, device="cpu") is None  # knows enough

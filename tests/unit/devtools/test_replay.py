"""Replaying a dataset: its catalog; interleaved traffic that keeps each user's order."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.datafiles import read_item_text, read_sequences
from streamrec.devtools.replay import catalog_from_dataset, dataset_items, replay_events, run_replay
from streamrec.schemas import CatalogItem
from tests.unit.fakes import FakeProducer


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


# -- catalog and events ----------------------------------------------------------------------------


def test_item_without_title_is_kept_visibly_empty() -> None:
    items = catalog_from_dataset(["7", "8", "7"], {"7": "Rose Lip Balm"})
    assert [i.item_id for i in items] == ["7", "8"]
    assert items[0].title == "Rose Lip Balm" and items[0].text() == "Rose Lip Balm"
    assert items[1].title == "" and items[1].text() == ""
    for it in items:
        assert CatalogItem.from_bytes(it.to_bytes()) == it


def test_long_titles_are_cut_to_the_contract_limit() -> None:
    assert catalog_from_dataset(["1"], {"1": "a" * 2000})[0].title == "a" * 512


def test_dataset_items_order() -> None:
    assert dataset_items({"u": ["3", "1"], "v": ["1", "2"]}, {"9": "x", "1": "y"}) == ["3", "1", "2", "9"]


def test_replay_interleaves_and_keeps_each_users_order() -> None:
    seqs = {"a": ["1", "2", "3", "4"], "b": ["5"], "c": ["6", "7"]}
    evs = list(replay_events(seqs, start_ts=1_800_000_000_000, step_ms=10))
    assert [(e.user_id, e.item_id) for e in evs] == [
        ("a", "1"),
        ("b", "5"),
        ("c", "6"),
        ("a", "2"),
        ("c", "7"),
        ("a", "3"),
        ("a", "4"),
    ]
    assert [e.ts for e in evs] == [1_800_000_000_000 + 10 * k for k in range(7)]
    for user, seq in seqs.items():
        assert [e.item_id for e in evs if e.user_id == user] == seq
    assert len({e.event_id for e in evs}) == 7 and {e.type for e in evs} == {"purchase"}
    assert {e.session_id for e in evs if e.user_id == "c"} == {"replay-3"}


def test_replay_without_interleave_and_other_types() -> None:
    seqs = {"a": ["1", "2"], "b": ["3"]}
    evs = list(replay_events(seqs, interleave=False, event_type="view", id_prefix="r9"))
    assert [(e.user_id, e.item_id, e.type) for e in evs] == [("a", "1", "view"), ("a", "2", "view"), ("b", "3", "view")]
    assert evs[0].event_id == "r9-1-1"
    with pytest.raises(ValueError, match="event_type"):
        list(replay_events(seqs, event_type="click"))
    with pytest.raises(ValueError, match=r"2000\.\.2100"):
        list(replay_events(seqs, start_ts=0))


def test_typed_tokens_set_the_event_type() -> None:
    seqs = {"a": ["1", "2:add_to_cart", "2:purchase", "x:y"]}
    evs = list(replay_events(seqs))
    assert [(e.item_id, e.type) for e in evs] == [
        ("1", "purchase"),
        ("2", "add_to_cart"),
        ("2", "purchase"),
        ("x:y", "purchase"),
    ]
    assert dataset_items(seqs) == ["1", "2", "x:y"]


def test_run_replay_sends_catalog_then_paced_events() -> None:
    seqs = {"a": ["1", "2", "3"], "b": ["2", "4"]}
    prod = FakeProducer()
    now = iter(range(1_900_000_000_000, 1_900_000_001_000))
    n = run_replay(
        prod, seqs, {"1": "One", "2": "Two"}, rate=None, max_events=4, event_type="view", clock=lambda: next(now)
    )
    assert n == 4 and prod.flushes == 1
    catalog = [r for r in prod.sent if isinstance(r, CatalogItem)]
    assert [c.item_id for c in catalog] == ["1", "2", "3", "4"] and prod.sent[:4] == catalog
    assert [c.title for c in catalog] == ["One", "Two", "", ""]
    evs = prod.sent[4:]
    assert [(e.user_id, e.item_id) for e in evs] == [("a", "1"), ("b", "2"), ("a", "2"), ("b", "4")]
    assert all(e.ts >= 1_900_000_000_000 for e in evs)


def test_reads_the_beauty_dataset(beauty_dir: Path) -> None:
    seqs = read_sequences(beauty_dir / "sequences.txt")
    texts = read_item_text(beauty_dir / "item_text.tsv")
    assert len(seqs) == 22_363 and sum(map(len, seqs.values())) == 198_502
    catalog = catalog_from_dataset(dataset_items(seqs, texts), texts)
    assert len(catalog) == 12_101 and sum(not c.title for c in catalog) == 97


# -- typed events (the Taobao layout) -------------------------------------------------------------


def test_typed_replay_keeps_types_times_and_sessions():
    from streamrec.devtools.replay import run_typed_replay
    from streamrec.typed_events import by_user, parse_lines

    t = 1_511_544_000
    users = by_user(
        parse_lines(
            [
                "user_id,item_id,category_id,behavior,ts",
                f"u1,i1,c9,pv,{t}",
                f"u2,i2,c8,cart,{t + 5}",
                f"u1,i1,c9,buy,{t + 10}",
                f"u1,i3,c7,fav,{t + 10 + 31 * 60}",  # more than 30 min later: a new session
            ]
        )
    )
    prod = FakeProducer()
    n = run_typed_replay(prod, users, rate=None, max_events=None, id_prefix="tb")
    cats = [x for x in prod.sent if isinstance(x, CatalogItem)]
    evs = [x for x in prod.sent if not isinstance(x, CatalogItem)]
    assert n == 4 and {(c.item_id, c.category) for c in cats} == {("i1", "c9"), ("i2", "c8"), ("i3", "c7")}
    assert [(e.user_id, e.item_id, e.type, e.ts) for e in evs] == [
        ("u1", "i1", "view", t * 1000),
        ("u2", "i2", "add_to_cart", (t + 5) * 1000),
        ("u1", "i1", "purchase", (t + 10) * 1000),
        ("u1", "i3", "view", (t + 10 + 31 * 60) * 1000),
    ]
    assert [e.session_id for e in evs] == ["tb-u1-s1", "tb-u2-s1", "tb-u1-s1", "tb-u1-s2"]
    assert len({e.event_id for e in evs}) == 4

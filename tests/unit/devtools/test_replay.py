"""Replaying a dataset: strict, clear parsing; interleaved traffic that keeps each user's order."""

from __future__ import annotations

from pathlib import Path

import pytest

import streamrec.devtools.replay as replay
from streamrec.devtools.replay import (
    catalog_from_dataset,
    dataset_items,
    read_item_text,
    read_sequences,
    replay_events,
    run_replay,
)
from streamrec.schemas import CatalogItem, ShopEvent
from tests.unit.fakes import FakeProducer



def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


# -- reading ------------------------------------------------------------------------------------


def test_read_sequences(tmp_path: Path) -> None:
    p = write(tmp_path, "seq.txt", "1 1 2 3\n\n2 4 1\r\nuser-x sku-1 sku-2\n")
    assert read_sequences(p) == {"1": ["1", "2", "3"], "2": ["4", "1"], "user-x": ["sku-1", "sku-2"]}


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("1 1 2\n2\n", 2, "got only '2'"),
        ("1 1 2\n2 " + "x" * 129 + "\n", 2, "item id"),
        ("1 1 2\nusér 1\n", 2, "user id"),
        ("1 1 2\n2 3\n1 4\n", 3, "already had a line (1)"),
        ("1 1 2\n2 :purchase " + "y" * 129 + ":view\n", 2, "item id 'yyy"),
    ],
)
def test_read_sequences_errors_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    p = write(tmp_path, "seq.txt", text)
    with pytest.raises(ValueError) as exc:
        read_sequences(p)
    assert f"{p}:{line}:" in str(exc.value) and words in str(exc.value)


def test_read_sequences_bounds_and_encoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"seq.txt:2: not UTF-8"):
        read_sequences(write(tmp_path, "seq.txt", b"1 1 2\n2 \xff\xfe\n"))
    monkeypatch.setattr(replay, "MAX_LINE_CHARS", 10)
    assert read_sequences(write(tmp_path, "ok.txt", "1 2 3 4 56\r\n7 8 9 10 1\n")) == {
        "1": ["2", "3", "4", "56"], "7": ["8", "9", "10", "1"]}
    with pytest.raises(ValueError, match=r"long.txt:1: line longer than 10 bytes"):
        read_sequences(write(tmp_path, "long.txt", "1 2 3 4 5 6 7 8 9\n"))


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="sequences file .*nope.txt"):
        read_sequences(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="item text file"):
        read_item_text(tmp_path)  # a directory is not a file either


def test_read_item_text(tmp_path: Path) -> None:
    p = write(tmp_path, "t.tsv", "item_id\ttitle\n1\tOPI  Nail Lacquer\t0.5 oz\n2\t\n3\n\n4\tBB Cream\n")
    assert read_item_text(p) == {"1": "OPI Nail Lacquer 0.5 oz", "2": "", "3": "", "4": "BB Cream"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("1\tfoo\n", "t.tsv:1: expected the header"),
        ("", "t.tsv: empty file"),
        ("item_id\ttitle\n1\ta\n1\tb\n", "t.tsv:3: item '1' has a second title line"),
        ("item_id\ttitle\nbad id\ta\n", "t.tsv:2: item id 'bad id'"),
    ],
)
def test_read_item_text_errors(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        read_item_text(write(tmp_path, "t.tsv", text))


def test_long_titles_are_cut_to_the_contract_limit(tmp_path: Path) -> None:
    texts = read_item_text(write(tmp_path, "t.tsv", "item_id\ttitle\n1\t" + "a" * 2000 + "\n"))
    assert len(texts["1"]) == 512
    assert catalog_from_dataset(["1"], texts)[0].title == texts["1"]


# -- catalog and events ----------------------------------------------------------------------------


def test_item_without_title_is_kept_visibly_empty() -> None:
    items = catalog_from_dataset(["7", "8", "7"], {"7": "Rose Lip Balm"})
    assert [i.item_id for i in items] == ["7", "8"]
    assert items[0].title == "Rose Lip Balm" and items[0].text() == "Rose Lip Balm"
    assert items[1].title == "" and items[1].text() == ""
    for it in items:
        assert CatalogItem.from_bytes(it.to_bytes()) == it


def test_dataset_items_order() -> None:
    assert dataset_items({"u": ["3", "1"], "v": ["1", "2"]}, {"9": "x", "1": "y"}) == ["3", "1", "2", "9"]


def test_replay_interleaves_and_keeps_each_users_order() -> None:
    seqs = {"a": ["1", "2", "3", "4"], "b": ["5"], "c": ["6", "7"]}
    evs = list(replay_events(seqs, start_ts=1_800_000_000_000, step_ms=10))
    assert [(e.user_id, e.item_id) for e in evs] == [
        ("a", "1"), ("b", "5"), ("c", "6"), ("a", "2"), ("c", "7"), ("a", "3"), ("a", "4")]
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
    with pytest.raises(ValueError, match="2000..2100"):
        list(replay_events(seqs, start_ts=0))


def test_typed_tokens_set_the_event_type() -> None:
    seqs = {"a": ["1", "2:add_to_cart", "2:purchase", "x:y"]}
    evs = list(replay_events(seqs))
    assert [(e.item_id, e.type) for e in evs] == [
        ("1", "purchase"), ("2", "add_to_cart"), ("2", "purchase"), ("x:y", "purchase")]
    assert dataset_items(seqs) == ["1", "2", "x:y"]


def test_run_replay_sends_catalog_then_paced_events() -> None:
    seqs = {"a": ["1", "2", "3"], "b": ["2", "4"]}
    prod = FakeProducer()
    now = iter(range(1_900_000_000_000, 1_900_000_001_000))
    n = run_replay(prod, seqs, {"1": "One", "2": "Two"}, rate=None, max_events=4, event_type="view",
                   clock=lambda: next(now))
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

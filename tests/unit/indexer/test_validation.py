"""Inputs are bounded the same way by every implementation."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.indexer import ItemIndex

from .conftest import ALL_KINDS, DIM, make_index


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_bad_inputs_raise_value_error(kind):
    ix = make_index(kind)
    ok = np.ones((1, DIM), np.float32)
    bad_calls = [  # (call, what the message says)
        (lambda: ix.upsert(["a"], np.ones((1, DIM + 1))), "vectors must have shape"),  # wrong dim
        (lambda: ix.upsert(["a", "b"], ok), "vectors must have shape"),  # count mismatch
        (lambda: ix.upsert(["a"], np.full((1, DIM), np.nan)), "vectors must be finite"),  # NaN
        (lambda: ix.upsert(["a"], np.full((1, DIM), np.inf)), "vectors must be finite"),
        (lambda: ix.upsert(["x" * 129], ok), "item id must be"),  # id too long
        (lambda: ix.upsert([""], ok), "item id must be"),
        (lambda: ix.upsert([7], ok), "item id must be"),  # not a str
        (lambda: ix.upsert("ab", np.ones((2, DIM))), "not a single string"),  # a bare string is not a list of ids
        (lambda: ix.upsert(["a"], ok, in_stock=[True, False]), "in_stock must be"),
        (lambda: ix.search(ok, 0), "k must be"),
        (lambda: ix.search(ok, 1001), "k must be"),
        (lambda: ix.search(ok, 2.5), "k must be"),
        (lambda: ix.search(np.full((1, DIM), np.nan), 5), "queries must be finite"),
        (lambda: ix.search(np.ones((2, DIM)), 5, exclude=[set()]), "one collection of ids per query"),
        (lambda: ix.remove("abc"), "not a single string"),
    ]
    for call, words in bad_calls:
        with pytest.raises(ValueError, match=words):
            call()
    ix.upsert(["x" * 128], ok.astype(np.float64))  # bound itself is fine; float64 converted
    assert len(ix.search(ok[0], 1000)[0]) == 1


def test_constructor_and_rebuild_checks():
    with pytest.raises(ValueError, match="dim must be"):
        ItemIndex(0)
    with pytest.raises(ValueError, match="kind must be one of"):
        ItemIndex(8, kind="lsh")
    with pytest.raises(ValueError, match="hnsw_m must be"):
        ItemIndex(8, hnsw_m=0)
    ix = ItemIndex(8, device="cpu")
    with pytest.raises(ValueError, match="duplicates"):
        ix.rebuild(["a", "a"], np.ones((2, 8)), background=False)

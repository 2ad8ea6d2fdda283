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
    bad_calls = [
        lambda: ix.upsert(["a"], np.ones((1, DIM + 1))),  # wrong dim
        lambda: ix.upsert(["a", "b"], ok),  # count mismatch
        lambda: ix.upsert(["a"], np.full((1, DIM), np.nan)),  # NaN
        lambda: ix.upsert(["a"], np.full((1, DIM), np.inf)),
        lambda: ix.upsert(["x" * 129], ok),  # id too long
        lambda: ix.upsert([""], ok),
        lambda: ix.upsert([7], ok),  # not a str
        lambda: ix.upsert("ab", np.ones((2, DIM))),  # a bare string is not a list of ids
        lambda: ix.upsert(["a"], ok, in_stock=[True, False]),
        lambda: ix.search(ok, 0),
        lambda: ix.search(ok, 1001),
        lambda: ix.search(ok, 2.5),
        lambda: ix.search(np.full((1, DIM), np.nan), 5),
        lambda: ix.search(np.ones((2, DIM)), 5, exclude=[set()]),  # one set per query
        lambda: ix.remove("abc"),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()
    ix.upsert(["x" * 128], ok.astype(np.float64))  # bound itself is fine; float64 converted
    assert len(ix.search(ok[0], 1000)[0]) == 1


def test_constructor_and_rebuild_checks():
    with pytest.raises(ValueError):
        ItemIndex(0)
    with pytest.raises(ValueError):
        ItemIndex(8, kind="lsh")
    with pytest.raises(ValueError):
        ItemIndex(8, hnsw_m=0)
    ix = ItemIndex(8, device="cpu")
    with pytest.raises(ValueError, match="duplicates"):
        ix.rebuild(["a", "a"], np.ones((2, 8)), background=False)

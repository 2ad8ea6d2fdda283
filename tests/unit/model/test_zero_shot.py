"""Zero-shot items: text projection by default; optionally an id embedding borrowed from the
trained items with the closest titles."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.model.inference import Recommender
from tests.unit.model.conftest import item_title


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_new_item_with_a_known_title_lands_next_to_that_item(tiny_checkpoint):
    with_knn = Recommender.load(tiny_checkpoint, device="cpu", impute_neighbors=10)
    text_only = Recommender.load(tiny_checkpoint, device="cpu")  # the default: text projection only
    known = with_knn.add_items([("i7", None)])[0]
    twin = with_knn.add_items([("twin-of-7", item_title(7))])[0]
    plain = text_only.add_items([("twin-of-7", item_title(7))])[0]
    assert cos(twin, known) > cos(plain, known)
    assert cos(twin, known) > 0.8


def test_new_item_without_text_gets_the_default_vector(tiny_checkpoint):
    rec = Recommender.load(tiny_checkpoint, device="cpu")
    a, b = rec.add_items([("mystery-1", None), ("mystery-2", "")])
    assert np.allclose(a, b) and np.isfinite(a).all()


def test_bad_imputation_options_are_refused(tiny_checkpoint):
    with pytest.raises(ValueError, match="impute"):
        Recommender.load(tiny_checkpoint, device="cpu", impute_neighbors=-1)

"""HR/NDCG on a hand-worked example; seen-item exclusion; baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamrec.model.data import Encoded
from streamrec.model.evaluate import (
    cooccurrence_score_fn,
    metrics_from_ranks,
    popularity_score_fn,
    rank_all,
)


def test_metrics_hand_worked():
    # ranks 0, 3, 7, 25 -> HR@5 = 2/4; NDCG@5 = (1 + 1/log2(5)) / 4
    m = metrics_from_ranks(np.array([0, 3, 7, 25]))
    assert m["hr@5"] == pytest.approx(0.5)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 4)
    assert m["hr@10"] == pytest.approx(0.75)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(9)) / 4)
    assert m["hr@20"] == pytest.approx(0.75)


def test_rank_all_fixed_scores_and_seen_exclusion():
    # 6 items; scores fall with the row number: item 1 best ... item 6 worst.
    scores = torch.tensor([0.0, 6, 5, 4, 3, 2, 1])

    def fn(items, types):
        return scores.expand(len(items), -1).clone()

    inputs = Encoded([[1, 2], [6]], [[1, 1], [1]])
    targets = np.array([3, 2])
    # keep seen: user0 target 3 has rank 2, user1 target 2 has rank 1
    m = rank_all(fn, inputs, targets, 6, exclude_seen=False, ks=(1, 2, 3))
    assert m["hr@1"] == 0 and m["hr@2"] == 0.5 and m["hr@3"] == 1.0
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(3)) / 2)
    # exclude seen: user0's items 1 and 2 drop out -> target 3 at rank 0
    m = rank_all(fn, inputs, targets, 6, exclude_seen=True, ks=(1, 2))
    assert m["hr@1"] == 0.5 and m["hr@2"] == 1.0
    assert 0 < m["coverage@10"] <= 1


def test_baselines_score_shapes():
    train = Encoded([[1, 2, 3], [1, 2], [2, 3]], [[1] * 3, [1] * 2, [1] * 2])
    pop = popularity_score_fn(train, 4)([[1]], [[1]])
    assert pop.shape == (1, 5) and pop[0, 2] == 3
    co = cooccurrence_score_fn(train, 4)([[1]], [[1]])
    assert co[0, 2] > co[0, 3] > co[0, 4]

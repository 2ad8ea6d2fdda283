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
    text_similarity_score_fn,
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


def test_text_similarity_recency_weighted_and_zero_rows():
    # 4 items in 2-d: 1 = x, 2 = y, 3 = mostly x, 4 = no text (zeros).
    emb = torch.tensor([[0.0, 0], [1, 0], [0, 1], [0.9, 0.1], [0, 0]])
    fn = text_similarity_score_fn(emb, decay=math.log(2))  # weights halve per step of age
    s = fn([[1, 2], [2, 1], []], [[1, 1], [1, 1], []])
    assert s.shape == (3, 5)
    # history [1, 2]: the newest (2 = y) weighs 1, the older (1 = x) 0.5 -> q ~ (0.5, 1)
    q = torch.nn.functional.normalize(torch.tensor([0.5, 1.0]), dim=0)
    assert s[0, 2] == pytest.approx(float(q[1]), abs=1e-6)
    assert s[0, 2] > s[0, 1]  # recency: y beats x
    assert s[1, 1] > s[1, 2]  # reversed history: x beats y
    assert torch.all(s[:, 4] == 0) and torch.all(s[2] == 0)  # no text / no history: 0
    with pytest.raises(ValueError, match="decay"):
        text_similarity_score_fn(emb, decay=-1.0)


def test_rank_all_candidates_restrict_the_ranking():
    scores = torch.tensor([0.0, 6, 5, 4, 3, 2, 1])

    def fn(items, types):
        return scores.expand(len(items), -1).clone()

    inputs = Encoded([[6], [6]], [[1], [1]])
    targets = np.array([4, 1])
    # all 6 items: target 4 has rank 3 -> miss at 1
    assert rank_all(fn, inputs, targets, 6, ks=(1,))["hr@1"] == 0.5
    # catalog {3, 4, 5}: target 4 ranks 1 (after 3); target 1 is outside -> a miss even at 10
    m = rank_all(fn, inputs, targets, 6, ks=(2, 10), catalog_rows=np.array([3, 4, 5]))
    assert m["hr@2"] == 0.5 and m["hr@10"] == 0.5
    # catalog {4, 5}: target 4 first
    m = rank_all(fn, Encoded([[6]], [[1]]), targets[:1], 6, ks=(1,), catalog_rows=np.array([4, 5]))
    assert m["hr@1"] == 1.0
    with pytest.raises(ValueError, match="catalog_rows"):
        rank_all(fn, inputs, targets, 6, catalog_rows=np.array([0, 7]))

"""Fuzzing the contract parser: every message is either valid or a SchemaError with a one-line
reason; nothing else is ever raised (hypothesis explores valid messages and near misses)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

from streamrec.devtools.fuzz import MUTATIONS, FuzzMessage, catalog_messages, fuzz_batch, messages
from streamrec.errors import SchemaError
from streamrec.schemas import TS_MIN_MS, CatalogItem, ShopEvent

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def classify(contract, m: FuzzMessage) -> str | None:
    """None when the message parsed; else the reason. Any other exception fails the test."""
    try:
        contract.from_bytes(m.raw)
    except SchemaError as exc:
        reason = exc.reason
    else:
        return None
    assert reason and "\n" not in reason and len(reason) <= 2048, reason
    return reason


def check(contract, m: FuzzMessage) -> None:
    reason = classify(contract, m)
    if m.must_fail is True:
        assert reason is not None, f"{m.kind}: accepted {m.raw[:200]!r}"
    elif m.must_fail is False:
        assert reason is None, f"{m.kind}: refused ({reason}) {m.raw[:200]!r}"


@FUZZ
@given(messages())
def test_event_parser_classifies_every_fuzzed_message(m):
    check(ShopEvent, m)


@FUZZ
@given(catalog_messages())
def test_catalog_parser_classifies_every_fuzzed_message(m):
    check(CatalogItem, m)


def test_seeded_batch_covers_every_mutation_and_is_reproducible():
    batch = fuzz_batch(3000, seed=3, big_share=0.01)
    kinds = Counter(m.kind for m in batch)
    assert set(kinds) == {"valid", *MUTATIONS}
    assert batch == fuzz_batch(3000, seed=3, big_share=0.01)
    refused = 0
    for m in batch:
        check(ShopEvent, m)
        refused += classify(ShopEvent, m) is not None
    # the counts add up: every message is either accepted or refused, and the valid ones all pass
    assert kinds["valid"] <= len(batch) - refused


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_each_mutation_yields_bytes(name):
    import random

    from streamrec.devtools.fuzz import mutate, valid_event

    rng = random.Random(name)
    for _ in range(50):
        m = mutate(valid_event(rng), name, rng)
        assert isinstance(m.raw, bytes)
        check(ShopEvent, m)


def test_seeded_catalog_batch_is_classified():
    from streamrec.devtools.fuzz import catalog_fuzz_batch

    batch = catalog_fuzz_batch(500, seed=4)
    assert batch == catalog_fuzz_batch(500, seed=4)
    for m in batch:
        check(CatalogItem, m)
    assert {m.kind for m in batch} >= {"valid", "truncated", "not_utf8", "wrong_type"}


def test_catalog_batch_with_given_texts_reuses_them_for_valid_items():
    from streamrec.devtools.fuzz import catalog_fuzz_batch

    texts = [
        {"title": "Red Lipstick", "brand": "Tiny", "category": "makeup", "description": None},
        {"title": "Green Tea", "brand": "Leaf", "category": "tea", "description": "loose leaves"},
    ]
    known = {
        CatalogItem.from_dict(dict(t, item_id="x", price=1.0, in_stock=True, updated_ts=TS_MIN_MS)).text()
        for t in texts
    }
    batch = catalog_fuzz_batch(300, seed=5, texts=texts)
    for m in batch:
        check(CatalogItem, m)
    valid = [CatalogItem.from_bytes(m.raw) for m in batch if m.kind == "valid"]
    assert len(valid) > 50 and {v.text() for v in valid} == known

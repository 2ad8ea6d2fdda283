"""Contracts: bounds, clear reasons, and the committed JSON Schemas agree with the Python models."""

from __future__ import annotations

import base64
import json

import jsonschema
import pytest

from streamrec.errors import SchemaError
from streamrec.schemas import (
    CONTRACTS,
    MAX_MESSAGE_BYTES,
    CatalogItem,
    DeadLetter,
    ModelUpdate,
    Profile,
    Recommendation,
    ShopEvent,
    UserDeletion,
    committed_schema,
    json_schema,
)

TS = 1_760_000_000_000
GOOD_EVENT = {"event_id": "e1", "user_id": "u1", "session_id": "s1", "item_id": "sku-1", "type": "view", "ts": TS}

VALID = {
    ShopEvent: [GOOD_EVENT, {**GOOD_EVENT, "type": "purchase", "price": 9.5, "quantity": 2}],
    CatalogItem: [
        {
            "item_id": "sku-1",
            "title": "Rose Serum",
            "category": "skincare",
            "brand": "Lumina",
            "price": 12.0,
            "in_stock": True,
            "updated_ts": TS,
        },
        {
            "item_id": "sku-2",
            "title": "",
            "category": "unknown",
            "brand": "",
            "price": 0,
            "in_stock": False,
            "description": "d" * 100,
            "updated_ts": TS,
        },
    ],
    Recommendation: [
        {
            "user_id": "u1",
            "items": [{"item_id": "a", "score": 1.5}],
            "model_version": "v1",
            "event_id": "e1",
            "event_ts": TS,
            "produced_ts": TS + 3,
        },
        {
            "user_id": "u1",
            "items": [
                {"item_id": "a", "score": 1.5, "reason": {"kind": "similar_to", "item_id": "b"}},
                {"item_id": "c", "score": 0.5, "reason": {"kind": "popular"}},
                {"item_id": "d", "score": 0.1, "reason": {"kind": "new_item"}},
            ],
            "model_version": "v1",
            "event_id": "e1",
            "event_ts": TS,
            "produced_ts": TS + 3,
            "purchase_intent": 0.25,
        },
    ],
    DeadLetter: [
        {
            "topic": "shop.events",
            "partition": 0,
            "offset": 7,
            "reason": "not JSON",
            "original": base64.b64encode(b"\xff").decode(),
        }
    ],
    ModelUpdate: [
        {"version": "v0001", "path": "/data/models/v0001", "metrics": {"ndcg_at_10": 0.05}, "created_ts": TS}
    ],
    UserDeletion: [{"user_id": "u1", "requested_ts": TS}],
    Profile: [
        {
            "user_id": "u1",
            "categories": [{"name": "shoes", "weight": 3.5}],
            "brands": [],
            "event_id": "e1",
            "updated_ts": TS,
            "produced_ts": TS + 1,
        },
        {
            "user_id": "u1",
            "categories": [],
            "brands": [{"name": "Acme", "weight": 0.0}],
            "purchase_intent": 1.0,
            "event_id": "e1",
            "updated_ts": TS,
            "produced_ts": TS + 1,
        },
    ],
}

INVALID = {
    ShopEvent: [
        {**GOOD_EVENT, "type": "zoom"},  # unknown event type
        {**GOOD_EVENT, "user_id": "u" * 129},  # id too long
        {**GOOD_EVENT, "user_id": ""},  # empty id
        {**GOOD_EVENT, "user_id": "has space"},  # whitespace in id
        {**GOOD_EVENT, "ts": 5},  # timestamp out of range
        {**GOOD_EVENT, "ts": "1760000000000"},  # wrong type
        {**GOOD_EVENT, "price": -1},
        {**GOOD_EVENT, "quantity": 0},
        {**GOOD_EVENT, "extra": 1},  # unknown field
        {k: v for k, v in GOOD_EVENT.items() if k != "item_id"},  # missing field
    ],
    CatalogItem: [{**VALID[CatalogItem][0], "title": "t" * 513}, {**VALID[CatalogItem][0], "in_stock": "yes"}],
    Recommendation: [
        {**VALID[Recommendation][0], "items": [{"item_id": "a", "score": 1}] * 1001},
        {**VALID[Recommendation][0], "purchase_intent": 1.5},
        {**VALID[Recommendation][0], "items": [{"item_id": "a", "score": 1.0, "reason": {"kind": "because"}}]},
    ],
    Profile: [
        {**VALID[Profile][0], "categories": [{"name": "x", "weight": -1.0}]},
        {**VALID[Profile][0], "categories": [{"name": "x", "weight": 1.0}] * 1001},
        {k: v for k, v in VALID[Profile][0].items() if k != "user_id"},
    ],
    UserDeletion: [
        {"user_id": "u1"},
        {"user_id": "", "requested_ts": TS},
        {"user_id": "u1", "requested_ts": 5},
        {"user_id": "u1", "requested_ts": TS, "reason": "gdpr"},
    ],
}


def test_old_recommendations_still_parse_and_new_fields_are_optional():
    """Additive change: a message of the previous version parses, and the new fields default to None."""
    old = Recommendation.from_dict(VALID[Recommendation][0])
    assert old.purchase_intent is None and old.items[0].reason is None
    assert b"purchase_intent" not in old.to_bytes() and b"reason" not in old.to_bytes()


def test_outbound_readers_ignore_unknown_fields():
    """Consumers built against this version keep working when a later version adds a field."""
    rec = Recommendation.from_dict({**VALID[Recommendation][1], "future_field": 1})
    assert rec.purchase_intent == 0.25 and rec.items[0].reason.item_id == "b"
    jsonschema.validate({**VALID[Recommendation][1], "future_field": 1}, committed_schema(Recommendation))


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.__name__)
def test_committed_schema_matches_model(contract):
    assert committed_schema(contract) == json_schema(contract), (
        "schema file is stale: run `python -m streamrec.schemas`"
    )


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.__name__)
def test_valid_examples_pass_both(contract):
    schema = committed_schema(contract)
    for example in VALID[contract]:
        jsonschema.validate(example, schema)
        obj = contract.from_dict(example)
        assert contract.from_bytes(obj.to_bytes()) == obj


@pytest.mark.parametrize("contract", list(INVALID), ids=lambda c: c.__name__)
def test_invalid_examples_fail_both(contract):
    schema = committed_schema(contract)
    for example in INVALID[contract]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(example, schema)
        with pytest.raises(SchemaError):
            contract.from_dict(example)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[1, 2]", "JSON object"),
        (None, "empty"),
        (b"x" * (MAX_MESSAGE_BYTES + 1), "exceeds"),
        (json.dumps({**GOOD_EVENT, "type": "zoom"}).encode(), "type"),
    ],
)
def test_bad_bytes_give_one_line_reason(raw, reason):
    with pytest.raises(SchemaError) as info:
        ShopEvent.from_bytes(raw)
    assert reason in info.value.reason
    assert "\n" not in info.value.reason


def test_dead_letter_keeps_original_bytes():
    raw = b"\x00\xffgarbage"
    dl = DeadLetter.wrap(topic="t", partition=1, offset=2, reason="not JSON", original=raw)
    back = DeadLetter.from_bytes(dl.to_bytes())
    assert back.original_bytes() == raw and back.reason == "not JSON"


def test_catalog_text_joins_fields():
    item = CatalogItem.from_dict(VALID[CatalogItem][0])
    assert "Rose Serum" in item.text() and "Lumina" in item.text()


def test_dead_letter_of_any_message_fits_a_default_kafka_message():
    """A dead letter must always be sendable: producers refuse values over 1,000,000 bytes by
    default, and a dead letter the worker cannot send would stop it."""
    dl = DeadLetter.wrap(topic="t" * 255, partition=1, offset=2**40, reason="r" * 5000, original=b"\xff" * 3_000_000)
    raw = dl.to_bytes()
    assert len(raw) <= DeadLetter.max_bytes <= 1_000_000
    back = DeadLetter.from_bytes(raw)
    assert back.reason.endswith("(original truncated from 3000000 to 524288 bytes)") and len(back.reason) == 2048
    assert back.original_bytes() == b"\xff" * 524_288


def test_recommendation_bytes_parse_back_to_the_same_recommendation():
    from streamrec.schemas import Recommendation, ScoredItem, recommendation_bytes

    items = [("i1", 0.5), ("sku-7~!", -1.25e-7), ("x" * 128, 3.0), ("i2", 1e300)]
    raw = recommendation_bytes(
        user_id="u1",
        items=items,
        model_version="v0001-x",
        event_id="e1",
        event_ts=1_700_000_000_000,
        produced_ts=1_700_000_000_005,
    )
    expected = Recommendation(
        user_id="u1",
        items=[ScoredItem(item_id=i, score=s) for i, s in items],
        model_version="v0001-x",
        event_id="e1",
        event_ts=1_700_000_000_000,
        produced_ts=1_700_000_000_005,
    )
    assert Recommendation.from_bytes(raw) == expected
    assert json.loads(raw) == json.loads(expected.to_bytes())


def test_recommendation_bytes_with_reasons_and_intent_parse_back():
    from streamrec.schemas import recommendation_bytes

    raw = recommendation_bytes(
        user_id="u1",
        items=[("a", 1.5), ("c", 0.5), ("d", 0.1)],
        model_version="v1",
        event_id="e1",
        event_ts=TS,
        produced_ts=TS + 3,
        reasons=[("similar_to", "b"), ("popular", None), ("new_item", None)],
        purchase_intent=0.25,
    )
    assert Recommendation.from_bytes(raw) == Recommendation.from_dict(VALID[Recommendation][1])
    jsonschema.validate(json.loads(raw), committed_schema(Recommendation))

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
    Recommendation,
    ShopEvent,
    committed_schema,
    json_schema,
)

TS = 1_760_000_000_000
GOOD_EVENT = {"event_id": "e1", "user_id": "u1", "session_id": "s1", "item_id": "sku-1", "type": "view", "ts": TS}

VALID = {
    ShopEvent: [GOOD_EVENT, {**GOOD_EVENT, "type": "purchase", "price": 9.5, "quantity": 2}],
    CatalogItem: [{"item_id": "sku-1", "title": "Rose Serum", "category": "skincare", "brand": "Lumina",
                   "price": 12.0, "in_stock": True, "updated_ts": TS},
                  {"item_id": "sku-2", "title": "", "category": "unknown", "brand": "", "price": 0,
                   "in_stock": False, "description": "d" * 100, "updated_ts": TS}],
    Recommendation: [{"user_id": "u1", "items": [{"item_id": "a", "score": 1.5}], "model_version": "v1",
                      "event_id": "e1", "event_ts": TS, "produced_ts": TS + 3}],
    DeadLetter: [{"topic": "shop.events", "partition": 0, "offset": 7, "reason": "not JSON",
                  "original": base64.b64encode(b"\xff").decode()}],
    ModelUpdate: [{"version": "v0001", "path": "/data/models/v0001", "metrics": {"ndcg_at_10": 0.05},
                   "created_ts": TS}],
}

INVALID = {
    ShopEvent: [
        {**GOOD_EVENT, "type": "zoom"},                 # unknown event type
        {**GOOD_EVENT, "user_id": "u" * 129},            # id too long
        {**GOOD_EVENT, "user_id": ""},                   # empty id
        {**GOOD_EVENT, "user_id": "has space"},          # whitespace in id
        {**GOOD_EVENT, "ts": 5},                         # timestamp out of range
        {**GOOD_EVENT, "ts": "1760000000000"},           # wrong type
        {**GOOD_EVENT, "price": -1},
        {**GOOD_EVENT, "quantity": 0},
        {**GOOD_EVENT, "extra": 1},                      # unknown field
        {k: v for k, v in GOOD_EVENT.items() if k != "item_id"},  # missing field
    ],
    CatalogItem: [{**VALID[CatalogItem][0], "title": "t" * 513}, {**VALID[CatalogItem][0], "in_stock": "yes"}],
    Recommendation: [{**VALID[Recommendation][0], "items": [{"item_id": "a", "score": 1}] * 1001}],
}


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

"""Event contracts (no I/O). JSON Schema files beside this module serve shops in other languages."""

from __future__ import annotations

import json
from importlib import resources

from streamrec.schemas.base import MAX_MESSAGE_BYTES, TS_MAX_MS, TS_MIN_MS, Contract
from streamrec.schemas.contracts import (
    CONTRACTS,
    EVENT_TYPES,
    CatalogItem,
    DeadLetter,
    EventType,
    ModelUpdate,
    Profile,
    Reason,
    Recommendation,
    ScoredItem,
    ShopEvent,
    UserDeletion,
    recommendation_bytes,
)

__all__ = [
    "CONTRACTS",
    "EVENT_TYPES",
    "MAX_MESSAGE_BYTES",
    "TS_MAX_MS",
    "TS_MIN_MS",
    "CatalogItem",
    "Contract",
    "DeadLetter",
    "EventType",
    "ModelUpdate",
    "Profile",
    "Reason",
    "Recommendation",
    "ScoredItem",
    "ShopEvent",
    "UserDeletion",
    "committed_schema",
    "json_schema",
    "recommendation_bytes",
]


def json_schema(contract: type[Contract]) -> dict:
    """The JSON Schema (draft 2020-12) generated from the Python model."""
    schema = contract.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://streamrec.dev/schemas/{contract.schema_file}"
    return schema


def committed_schema(contract: type[Contract]) -> dict:
    """The JSON Schema file shipped in this package for ``contract``."""
    text = resources.files(__package__).joinpath(contract.schema_file).read_text("utf-8")
    return json.loads(text)


def write_schemas() -> None:  # pragma: no cover - developer tool: python -m streamrec.schemas
    from pathlib import Path

    here = Path(__file__).parent
    for c in CONTRACTS:
        (here / c.schema_file).write_text(json.dumps(json_schema(c), indent=2, sort_keys=True) + "\n")
        print("wrote", here / c.schema_file)

"""The five wire contracts. Field names are the JSON names every client relies on.

>>> e = ShopEvent(event_id="e1", user_id="u1", session_id="s1", item_id="i9",
...               type="view", ts=1_700_000_000_000)
>>> ShopEvent.from_bytes(e.to_bytes()) == e
True
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal, get_args

from pydantic import Field

from streamrec.schemas.base import Contract, Id, LongText, ShortText, TimestampMs

#: The event types of the contract: the one place they are named (settings, CLI, model import them).
EventType = Literal["view", "add_to_cart", "remove_from_cart", "purchase"]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
MAX_RECOMMENDED_ITEMS = 1000
#: Original bytes kept in a dead letter (Kafka's default max message size); beyond it, truncated.
MAX_ORIGINAL_BYTES = 1_048_576
MAX_ORIGINAL_B64 = 4 * ((MAX_ORIGINAL_BYTES + 2) // 3)
Price = Annotated[float, Field(ge=0, le=1e9)]


class ShopEvent(Contract):
    """One user interaction. Topic ``shop.events``, key = ``user_id``."""

    schema_file = "shop_event.schema.json"
    event_id: Id
    user_id: Id
    session_id: Id
    item_id: Id
    type: EventType
    ts: TimestampMs
    price: Price | None = None
    quantity: Annotated[int, Field(ge=1, le=10_000)] | None = None


class CatalogItem(Contract):
    """An item as the shop lists it. Topic ``shop.catalog`` (compacted), key = ``item_id``."""

    schema_file = "catalog_item.schema.json"
    item_id: Id
    title: ShortText
    category: ShortText
    brand: ShortText
    price: Price
    in_stock: bool
    description: LongText | None = None
    updated_ts: TimestampMs

    def text(self) -> str:
        """The text the model embeds for this item (what makes zero-shot items recommendable)."""
        parts = [self.title, self.brand, self.category]
        if self.description:
            parts.append(self.description[:1000])
        return " | ".join(p for p in parts if p)


class ScoredItem(Contract):
    item_id: Id
    score: float


class Recommendation(Contract):
    """What the shop receives. Topic ``shop.recommendations``, key = ``user_id``."""

    schema_file = "recommendation.schema.json"
    user_id: Id
    items: Annotated[list[ScoredItem], Field(max_length=MAX_RECOMMENDED_ITEMS)]
    model_version: Annotated[str, Field(min_length=1, max_length=128)]
    event_id: Id
    event_ts: TimestampMs
    produced_ts: TimestampMs


class DeadLetter(Contract):
    """A message the worker refused. Topic ``shop.events.dlq``; ``original`` is base64 bytes."""

    schema_file = "dead_letter.schema.json"
    max_bytes = 1_500_000
    topic: Annotated[str, Field(min_length=1, max_length=255)]
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    reason: Annotated[str, Field(min_length=1, max_length=2048)]
    original: Annotated[str, Field(max_length=MAX_ORIGINAL_B64)]

    @classmethod
    def wrap(cls, *, topic: str, partition: int, offset: int, reason: str, original: bytes | None) -> "DeadLetter":
        original = original or b""
        if len(original) > MAX_ORIGINAL_BYTES:
            reason = f"{reason} (original truncated from {len(original)} to {MAX_ORIGINAL_BYTES} bytes)"
            original = original[:MAX_ORIGINAL_BYTES]
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            reason=reason[:2048] or "unknown",
            original=base64.b64encode(original).decode("ascii"),
        )

    def original_bytes(self) -> bytes:
        return base64.b64decode(self.original)


class ModelUpdate(Contract):
    """A new model version is ready. Topic ``streamrec.model-updates`` (compacted)."""

    schema_file = "model_update.schema.json"
    version: Annotated[str, Field(min_length=1, max_length=128)]
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    metrics: Annotated[dict[str, float], Field(max_length=256)]
    created_ts: TimestampMs


CONTRACTS: tuple[type[Contract], ...] = (ShopEvent, CatalogItem, Recommendation, DeadLetter, ModelUpdate)

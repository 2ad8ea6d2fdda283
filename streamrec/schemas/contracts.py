"""The wire contracts. Field names are the JSON names every client relies on.

>>> e = ShopEvent(event_id="e1", user_id="u1", session_id="s1", item_id="i9",
...               type="view", ts=1_700_000_000_000)
>>> ShopEvent.from_bytes(e.to_bytes()) == e
True
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Annotated, Literal, get_args

import orjson
from pydantic import ConfigDict, Field

from streamrec.schemas.base import Contract, Id, LongText, ShortText, TimestampMs

#: The event types of the contract: the one place they are named (settings, CLI, model import them).
EventType = Literal["view", "add_to_cart", "remove_from_cart", "purchase"]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
MAX_RECOMMENDED_ITEMS = 1000
#: Original bytes kept in a dead letter; beyond it, truncated (the reason says so). 512 KiB, so that
#: the dead letter (base64: 4/3 of that, plus the reason) stays under the 1,000,000-byte message
#: limit of Kafka producers' defaults: a bigger one could not be sent, and the worker would stop.
MAX_ORIGINAL_BYTES = 524_288
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


ReasonKind = Literal["similar_to", "popular", "new_item"]
#: Most entries of each list in a Profile.
MAX_PROFILE_ENTRIES = 1000


class Outbound(Contract):
    """A contract streamrec produces and shops consume: readers ignore fields they do not know
    (the schema allows additional properties), so that adding an optional field later does not
    break a consumer built against this version. Producers still send only declared fields."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class Reason(Outbound):
    """Why an item was recommended: ``similar_to`` names the history item whose vector is closest
    (inner product) to it; ``popular`` is the popularity fill-in; ``new_item`` a catalog item the
    model has never seen in training, scored from its text."""

    kind: ReasonKind
    item_id: Id | None = None


class ScoredItem(Outbound):
    item_id: Id
    score: float
    reason: Reason | None = None  # optional (added in 0.2); older producers leave it out


class Recommendation(Outbound):
    """What the shop receives. Topic ``shop.recommendations``, key = ``user_id``."""

    schema_file = "recommendation.schema.json"
    user_id: Id
    items: Annotated[list[ScoredItem], Field(max_length=MAX_RECOMMENDED_ITEMS)]
    model_version: Annotated[str, Field(min_length=1, max_length=128)]
    event_id: Id
    event_ts: TimestampMs
    produced_ts: TimestampMs
    #: P(a purchase happens later in this session), when the model has an intent model.
    purchase_intent: Annotated[float, Field(ge=0.0, le=1.0)] | None = None


class WeightedName(Outbound):
    name: ShortText
    weight: Annotated[float, Field(ge=0.0)]


class Profile(Outbound):
    """A user's interests. Topic ``shop.profiles`` (compacted), key = ``user_id``.

    Weights are decayed event-type-weighted counts at ``updated_ts`` (the user's latest event),
    highest first; at most the worker's ``profile_max_entries`` per list."""

    schema_file = "profile.schema.json"
    user_id: Id
    categories: Annotated[list[WeightedName], Field(max_length=MAX_PROFILE_ENTRIES)]
    brands: Annotated[list[WeightedName], Field(max_length=MAX_PROFILE_ENTRIES)]
    purchase_intent: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    event_id: Id
    updated_ts: TimestampMs
    produced_ts: TimestampMs


#: reason -> its JSON object, shared by every message that gives that reason (the worker's
#: reasons repeat: a few kinds and the users' history items); bounded, emptied when full
_REASON_OBJECTS: dict[tuple[str, str | None], dict[str, str]] = {}
_REASON_OBJECTS_MAX = 100_000


def _reason_object(r: tuple[str, str | None]) -> dict[str, str]:
    if type(r) is not tuple:  # e.g. a [kind, item_id] list read back from JSON
        r = (r[0], r[1])
    obj = _REASON_OBJECTS.get(r)
    if obj is None:
        if len(_REASON_OBJECTS) >= _REASON_OBJECTS_MAX:
            _REASON_OBJECTS.clear()
        obj = {"kind": r[0]} if r[1] is None else {"kind": r[0], "item_id": r[1]}
        _REASON_OBJECTS[(r[0], r[1])] = obj
    return obj


def recommendation_bytes(
    *,
    user_id: str,
    items: Sequence[tuple[str, float]],
    model_version: str,
    event_id: str,
    event_ts: int,
    produced_ts: int,
    reasons: Sequence[tuple[str, str | None] | None] | None = None,
    purchase_intent: float | None = None,
) -> bytes:
    """A :class:`Recommendation`'s wire bytes, built without the pydantic objects (the worker's hot
    path: one message per triggering event). The worker's own values are already valid (ids come
    from validated events and the catalog), so this only encodes; ``tests/unit/schemas`` checks
    that the bytes parse back to the same ``Recommendation``.

    >>> Recommendation.from_bytes(recommendation_bytes(user_id="u", items=[("i1", 0.5)], model_version="v1",
    ...     event_id="e", event_ts=1_700_000_000_000, produced_ts=1_700_000_000_001)).items[0].item_id
    'i1'
    """
    if reasons is None:
        out_items = [{"item_id": i, "score": s} for i, s in items]
    else:  # (kind, item_id or None) per item, as the scorer gives them; None: no reason
        known = _REASON_OBJECTS.get
        try:
            out_items = [
                {"item_id": i, "score": s}
                if r is None
                else {"item_id": i, "score": s, "reason": known(r) or _reason_object(r)}
                for (i, s), r in zip(items, reasons)
            ]
        except TypeError:  # a reason given as a list (unhashable): the slow way
            out_items = [
                {"item_id": i, "score": s} if r is None else {"item_id": i, "score": s, "reason": _reason_object(r)}
                for (i, s), r in zip(items, reasons)
            ]
    msg = {
        "user_id": user_id,
        "items": out_items,
        "model_version": model_version,
        "event_id": event_id,
        "event_ts": event_ts,
        "produced_ts": produced_ts,
    }
    if purchase_intent is not None:
        msg["purchase_intent"] = purchase_intent
    return orjson.dumps(msg)


class DeadLetter(Contract):
    """A message the worker refused. Topic ``shop.events.dlq``; ``original`` is base64 bytes."""

    schema_file = "dead_letter.schema.json"
    max_bytes = 1_000_000  # MAX_ORIGINAL_B64 + reason + fields: about 702 KB at most
    topic: Annotated[str, Field(min_length=1, max_length=255)]
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    reason: Annotated[str, Field(min_length=1, max_length=2048)]
    original: Annotated[str, Field(max_length=MAX_ORIGINAL_B64)]

    @classmethod
    def wrap(cls, *, topic: str, partition: int, offset: int, reason: str, original: bytes | None) -> DeadLetter:
        original = original or b""
        note = ""
        if len(original) > MAX_ORIGINAL_BYTES:
            note = f" (original truncated from {len(original)} to {MAX_ORIGINAL_BYTES} bytes)"
            original = original[:MAX_ORIGINAL_BYTES]
        reason = (reason or "unknown")[: 2048 - len(note)] + note  # the note survives a long reason
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            reason=reason,
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


class UserDeletion(Contract):
    """Erase everything streamrec keeps about a user (the right to erasure).

    Topic ``shop.user-deletions``, key = ``user_id``, partitioned like the events topic so that the
    worker that owns the user's state receives it. ``requested_ts`` is when the shop asked (epoch
    ms); events of the user that arrive later start the user afresh.
    """

    schema_file = "user_deletion.schema.json"
    user_id: Id
    requested_ts: TimestampMs


CONTRACTS: tuple[type[Contract], ...] = (
    ShopEvent,
    CatalogItem,
    Recommendation,
    DeadLetter,
    ModelUpdate,
    UserDeletion,
    Profile,
)

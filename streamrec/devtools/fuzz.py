"""Near-miss invalid messages mixed with valid ones, for fuzzing the contract parser and the worker.

A *mutation* takes a valid message (a dict) and a ``random.Random`` and returns the bytes of a
message that is almost right: a field of the wrong type, an id one character too long, unicode
where ASCII is required, a huge number, deep nesting, truncated JSON, bytes that are not UTF-8,
a 1 MiB value, a missing or an extra field. Each mutation also says whether its result must be
refused (``True``), or may be valid or not (``None``: e.g. an id exactly at its length limit).

Two front ends share the mutations:

* :func:`messages` / :func:`catalog_messages` are ``hypothesis`` strategies (property tests:
  hypothesis explores and shrinks);
* :func:`fuzz_batch` draws ``n`` messages from a seeded ``random.Random`` (drills that push
  thousands of messages through a real worker, reproducibly, without hypothesis' engine).

>>> batch = fuzz_batch(50, seed=1)
>>> len(batch), sum(1 for m in batch if m.must_fail is False) > 0
(50, True)
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamrec.schemas import EVENT_TYPES, TS_MAX_MS, TS_MIN_MS

MIB = 1024 * 1024


@dataclass(frozen=True)
class FuzzMessage:
    """One message to send: its bytes, what made it, and whether it must be refused."""

    raw: bytes
    kind: str  #: "valid" or the mutation's name
    must_fail: bool | None  #: False: must parse; True: must be refused; None: either is right


# --------------------------------------------------------------------------------------------
# valid messages

_ID_CHARS = string.ascii_letters + string.digits + "-_.:@!~"


def _id(rng: random.Random, prefix: str = "") -> str:
    return prefix + "".join(rng.choice(_ID_CHARS) for _ in range(rng.randint(1, 24)))


def valid_event(
    rng: random.Random,
    *,
    user_ids: list[str] | None = None,
    item_ids: list[str] | None = None,
    serial: int | None = None,
) -> dict[str, Any]:
    """A valid :class:`~streamrec.schemas.ShopEvent` as a dict (optional fields sometimes set)."""
    event: dict[str, Any] = {
        "event_id": f"fz-{serial}" if serial is not None else _id(rng, "e-"),
        "user_id": rng.choice(user_ids) if user_ids else _id(rng, "u-"),
        "session_id": _id(rng, "s-"),
        "item_id": rng.choice(item_ids) if item_ids else _id(rng, "i-"),
        "type": rng.choice(EVENT_TYPES),
        "ts": rng.randint(TS_MIN_MS, TS_MAX_MS),
    }
    if rng.random() < 0.3:
        event["price"] = round(rng.uniform(0, 1000), 2)
    if rng.random() < 0.2:
        event["quantity"] = rng.randint(1, 10_000)
    return event


_TEXT_FIELDS = ("title", "brand", "category", "description")


def valid_catalog_item(rng: random.Random, *, texts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A valid :class:`~streamrec.schemas.CatalogItem` as a dict. With ``texts`` (catalog items
    as dicts) its title, brand, category and description are those of one of them: the text a
    worker embeds is then one it has embedded before (a text-cache hit, not a MiniLM call)."""
    item: dict[str, Any] = {
        "item_id": _id(rng, "sku-"),
        "title": _id(rng),
        "category": _id(rng),
        "brand": _id(rng),
        "price": round(rng.uniform(0, 1000), 2),
        "in_stock": rng.random() < 0.8,
        "updated_ts": rng.randint(TS_MIN_MS, TS_MAX_MS),
    }
    if texts:
        like = rng.choice(texts)
        item.update({f: like[f] for f in _TEXT_FIELDS if like.get(f) is not None})
    elif rng.random() < 0.3:
        item["description"] = " ".join(_id(rng) for _ in range(rng.randint(1, 20)))
    return item


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------------------------
# mutations: (valid dict, rng) -> (bytes, must_fail)

Mutation = Callable[[dict[str, Any], random.Random], tuple[bytes, bool | None]]

_EVENT_OPTIONAL = frozenset({"price", "quantity"})
_CATALOG_OPTIONAL = frozenset({"description"})


def _optional(msg: dict[str, Any]) -> frozenset[str]:
    """The optional fields of the contract ``msg`` is a valid example of."""
    return _CATALOG_OPTIONAL if "updated_ts" in msg else _EVENT_OPTIONAL


_WRONG_VALUES: list[Any] = [None, True, 0, -1, 1.5, "", "x", [], {}, [1, 2], {"a": 1}, "1760000000000"]


def wrong_type(msg: dict[str, Any], rng: random.Random) -> tuple[bytes, bool | None]:
    field = rng.choice(sorted(msg))
    value = rng.choice([v for v in _WRONG_VALUES if type(v) is not type(msg[field])])
    must_fail: bool | None = True
    if field == "price" and isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        must_fail = False  # a JSON integer where a float is expected ("price": 3) is still a price
    elif value is None and field in _optional(msg):
        must_fail = False  # null for an optional field means "not given"
    return _dump({**msg, field: value}), must_fail


def boundary_length(msg: dict[str, Any], rng: random.Random) -> tuple[bytes, bool | None]:
    id_fields = [f for f in sorted(msg) if f.endswith("_id")]
    field = rng.choice(id_fields)
    n = rng.choice([0, 128, 129, 1000])
    return _dump({**msg, field: "a" * n}), n != 128  # 128 characters is the limit: still valid


# "\uff58" is a fullwidth x (a confusable on purpose)
_UNICODE = ["é", "ü", "日本", "🛒", "\u200b", "\u202e", "\ud800", "\x00", "\n", " ", "\uff58", "\ufeff"]


def unicode_id(msg: dict[str, Any], rng: random.Random) -> tuple[bytes, bool | None]:
    field = rng.choice([f for f in sorted(msg) if f.endswith("_id")])
    value = msg[field][: rng.randint(0, 10)] + rng.choice(_UNICODE) + msg[field][:5]
    # ids are printable ASCII: any of these characters must be refused
    try:
        raw = _dump({**msg, field: value})
    except UnicodeEncodeError:  # a lone surrogate: send it JSON-escaped instead
        raw = json.dumps({**msg, field: value}).encode("ascii")
    return raw, True


def huge_number(msg: dict[str, Any], rng: random.Random) -> tuple[bytes, bool | None]:
    numeric = [f for f in sorted(msg) if isinstance(msg[f], (int, float)) and not isinstance(msg[f], bool)]
    field = rng.choice(numeric or sorted(msg))
    literal = rng.choice(
        [
            "1" + "0" * 30,
            "-" + "9" * 25,
            "1e308",
            "1e400",
            "-1e400",
            "NaN",
            "Infinity",
            str(2**63),
            str(-(2**63) - 1),
            "1" * 5000,
            "0.0000000000000000000001e-400",
        ]
    )
    text = _dump({**msg, field: 0}).decode("utf-8")
    key = json.dumps(field)
    text = text.replace(f"{key}:0", f"{key}:{literal}", 1)
    # a number that underflows to 0.0 is a valid price (>= 0); every other case is out of range
    return text.encode("utf-8"), None if literal.startswith("0.") else True


def deep_nesting(msg: dict[str, Any], rng: random.Random) -> tuple[bytes, bool | None]:
    depth = rng.choice([50, 500, 5000, 50_000])
    field = rng.choice(sorted(msg))
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    text = _dump({**msg, field: "__HOLE__"}).decode("utf-8")
    text = text.replace('"__HOLE__"', opener * depth + "1" + closer * depth, 1)
    return text.encode("utf-8"), True


def truncated(msg: dict[str, Any], rng: random.Random) -> tuple[bytes, bool | None]:
    raw = _dump(msg)
    return raw[: rng.randint(0, len(raw) - 1)], True


def not_utf8(msg: dict[str, Any], rng: random.Random) -> tuple[bytes, bool | None]:
    raw = bytearray(_dump(msg))
    bad = rng.choice([b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
    # inside a string value (so that only the encoding is wrong, not the JSON structure)
    at = raw.index(b'"', raw.index(b":") + 1) + 1
    raw[at:at] = bad
    return bytes(raw), True


def mib_value(msg: dict[str, Any], rng: random.Random) -> tuple[bytes, bool | None]:
    field = rng.choice(sorted(msg))
    return _dump({**msg, field: "x" * MIB}), True


def missing_field(msg: dict[str, Any], rng: random.Random) -> tuple[bytes, bool | None]:
    field = rng.choice(sorted(msg))
    return _dump({k: v for k, v in msg.items() if k != field}), field not in _optional(msg)


def extra_field(msg: dict[str, Any], rng: random.Random) -> tuple[bytes, bool | None]:
    return _dump({**msg, rng.choice(["extra", "user", "__proto__", "Type", ""]): 1}), True


def not_an_object(msg: dict[str, Any], rng: random.Random) -> tuple[bytes, bool | None]:
    return rng.choice([b"", b"null", b"[]", b"1", b'"x"', b"true", _dump([msg]), b"\x00" * 16]), True


MUTATIONS: dict[str, Mutation] = {
    f.__name__: f
    for f in (
        wrong_type,
        boundary_length,
        unicode_id,
        huge_number,
        deep_nesting,
        truncated,
        not_utf8,
        mib_value,
        missing_field,
        extra_field,
        not_an_object,
    )
}


def mutate(msg: dict[str, Any], name: str, rng: random.Random) -> FuzzMessage:
    raw, must_fail = MUTATIONS[name](msg, rng)
    return FuzzMessage(raw, name, must_fail)


def fuzz_batch(
    n: int,
    *,
    seed: int = 0,
    valid_share: float = 0.5,
    user_ids: list[str] | None = None,
    item_ids: list[str] | None = None,
    big_share: float = 0.002,
) -> list[FuzzMessage]:
    """``n`` messages from a seeded generator: about ``valid_share`` valid events (event ids
    ``fz-<i>``, unique), the rest near misses spread over every mutation. 1 MiB messages are rare
    (``big_share``) so that a large batch stays small on the wire."""
    rng = random.Random(seed)
    names = [m for m in MUTATIONS if m != "mib_value"]
    out = []
    for i in range(n):
        event = valid_event(rng, user_ids=user_ids, item_ids=item_ids, serial=i)
        r = rng.random()
        if r < valid_share:
            out.append(FuzzMessage(_dump(event), "valid", False))
        elif r < valid_share + big_share:
            out.append(mutate(event, "mib_value", rng))
        else:
            out.append(mutate(event, rng.choice(names), rng))
    return out


def catalog_fuzz_batch(
    n: int, *, seed: int = 0, valid_share: float = 0.5, texts: list[dict[str, Any]] | None = None
) -> list[FuzzMessage]:
    """``n`` catalog messages (valid items and near misses) from a seeded generator, no 1 MiB ones
    (``texts``: see :func:`valid_catalog_item`)."""
    rng = random.Random(seed)
    names = [m for m in MUTATIONS if m != "mib_value"]
    out = []
    for _ in range(n):
        item = valid_catalog_item(rng, texts=texts)
        if rng.random() < valid_share:
            out.append(FuzzMessage(_dump(item), "valid", False))
        else:
            out.append(mutate(item, rng.choice(names), rng))
    return out


# --------------------------------------------------------------------------------------------
# hypothesis strategies


def _strategy(make_valid: Callable[[random.Random], dict[str, Any]]) -> Any:
    from hypothesis import strategies as st

    def build(rng: random.Random, name: str | None) -> FuzzMessage:
        msg = make_valid(rng)
        if name is None:
            return FuzzMessage(_dump(msg), "valid", False)
        return mutate(msg, name, rng)

    return st.builds(build, st.randoms(use_true_random=False), st.none() | st.sampled_from(sorted(MUTATIONS)))


def messages() -> Any:
    """Hypothesis strategy of :class:`FuzzMessage` for the events topic (valid and near misses)."""
    return _strategy(valid_event)


def catalog_messages() -> Any:
    """Hypothesis strategy of :class:`FuzzMessage` for the catalog topic."""
    return _strategy(valid_catalog_item)

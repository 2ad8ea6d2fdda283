"""Wire format shared by every contract: UTF-8 JSON, bounded fields, strict validation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from streamrec.errors import SchemaError

#: Largest message any contract accepts on the wire (bytes). Bigger payloads are refused before
#: parsing so that a hostile producer cannot make a worker allocate without bound.
MAX_MESSAGE_BYTES = 64 * 1024
#: Earliest / latest accepted timestamp, epoch milliseconds (2000-01-01 .. 2100-01-01).
TS_MIN_MS = 946_684_800_000
TS_MAX_MS = 4_102_444_800_000

#: External ids (users, items, events, sessions): 1..128 printable characters, no whitespace.
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[!-~]+$")]
ShortText = Annotated[str, StringConstraints(max_length=512)]
LongText = Annotated[str, StringConstraints(max_length=8192)]
TimestampMs = Annotated[int, Field(ge=TS_MIN_MS, le=TS_MAX_MS, description="epoch milliseconds")]

M = TypeVar("M", bound="Contract")


class Contract(BaseModel):
    """Base of all wire contracts: unknown fields are refused, values are never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    #: File name of the committed JSON Schema for this contract.
    schema_file: ClassVar[str] = ""
    #: Largest accepted message of this contract on the wire, bytes.
    max_bytes: ClassVar[int] = MAX_MESSAGE_BYTES

    def to_bytes(self) -> bytes:
        """Serialise to compact UTF-8 JSON (optional fields that are unset are left out)."""
        return self.model_dump_json(exclude_none=True).encode("utf-8")

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def from_bytes(cls: type[M], raw: bytes | bytearray | memoryview | str | None) -> M:
        """Parse and validate one message; raise :class:`SchemaError` with a one-line reason."""
        if raw is None:
            raise SchemaError("empty message (null value)")
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        raw = bytes(raw)
        if len(raw) > cls.max_bytes:
            raise SchemaError(f"message of {len(raw)} bytes exceeds {cls.max_bytes}")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first: Mapping[str, Any] = exc.errors()[0] if exc.errors() else {}
            if first.get("type") == "json_invalid":
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as uexc:
                    raise SchemaError(f"not UTF-8: {uexc.reason} at byte {uexc.start}") from None
                raise SchemaError(f"not JSON: {first.get('ctx', {}).get('error', 'invalid')}") from None
            if first.get("type") == "model_type":
                raise SchemaError(f"expected a JSON object for {cls.__name__}") from None
            raise SchemaError(describe(exc, cls.__name__)) from None

    @classmethod
    def from_dict(cls: type[M], data: object) -> M:
        if not isinstance(data, dict):
            raise SchemaError(f"expected a JSON object for {cls.__name__}, got {type(data).__name__}")
        try:
            # strict=True on the model, but JSON has no int/float split for "price": 3 is fine.
            return cls.model_validate_json(json.dumps(data))
        except ValidationError as exc:
            raise SchemaError(describe(exc, cls.__name__)) from None
        except ValueError as exc:  # e.g. a number too large for JSON re-encoding
            raise SchemaError(f"invalid {cls.__name__}: {exc}") from None


def describe(exc: ValidationError, name: str) -> str:
    """One line naming each bad field, e.g. ``type: Input should be 'view', ... (got 'zoom')``."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or name
        got = err.get("input")
        shown = repr(got)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        if err["type"] == "missing":
            parts.append(f"{loc}: missing")
        else:
            parts.append(f"{loc}: {err['msg']} (got {shown})")
    more = len(exc.errors()) - 5
    if more > 0:
        parts.append(f"and {more} more")
    return f"invalid {name}: " + "; ".join(parts)

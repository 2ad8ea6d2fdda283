"""The stream's error policy: one decision per (stage, error)."""

from __future__ import annotations

import asyncio
import json

import pytest
from faust.exceptions import ValueDecodeError

from streamrec.errors import SchemaError
from streamrec.streams.policy import Action, Stage, decide


@pytest.mark.parametrize(
    ("stage", "exc", "action", "reason"),
    [
        (Stage.PARSE, SchemaError("bad type"), Action.DEAD_LETTER, "bad type"),
        (Stage.PARSE, RuntimeError("bug"), Action.RAISE, "parser bug: RuntimeError: bug"),
        (Stage.STATE, ValueError("shape"), Action.RESET, "stored state does not decode: ValueError: shape"),
        (Stage.STATE, ValueDecodeError("json"), Action.RESET, "stored state does not decode: ValueDecodeError: json"),
        (Stage.STATE, OSError("disk"), Action.DEAD_LETTER, "processing failed: OSError: disk"),
        (Stage.APPLY, KeyError("x"), Action.DEAD_LETTER, "processing failed: KeyError: 'x'"),
        (Stage.SCORE, RuntimeError("oom"), Action.DEAD_LETTER, "scoring failed: RuntimeError: oom"),
        (
            Stage.PRODUCE,
            ConnectionError("down"),
            Action.RAISE,
            "cannot produce (batch will be redelivered): ConnectionError: down",
        ),
        (Stage.APPLY, asyncio.CancelledError(), Action.RAISE, "apply: CancelledError: "),
    ],
)
def test_decide(stage, exc, action, reason):
    d = decide(stage, exc)
    assert (d.action, d.reason) == (action, reason)


def test_a_json_decode_error_resets():
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads("{")
    assert decide(Stage.STATE, info.value).action is Action.RESET

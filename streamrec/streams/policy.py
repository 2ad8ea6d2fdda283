"""The stream's error policy, in one place: for a failure at a stage, dead-letter, reset or raise.

The batch handler (:mod:`streamrec.streams.agents`) asks :func:`decide` whenever something fails
and does what the :class:`Decision` says:

- ``DEAD_LETTER``: the event goes to the dead-letter topic with ``reason`` and its original bytes;
  the stream carries on.
- ``RESET``: a user's stored state no longer decodes (written by an older release, or damaged):
  that user starts from an empty state, with a warning and ``streamrec_state_resets_total``;
  the event itself is processed normally.
- ``RAISE``: the worker cannot go on safely (it cannot produce, or it is being cancelled); the
  error propagates, offsets stay uncommitted and the batch is redelivered after a restart.

>>> from streamrec.errors import SchemaError
>>> decide(Stage.PARSE, SchemaError("missing field user_id"))
Decision(action=<Action.DEAD_LETTER: 'dead_letter'>, reason='missing field user_id')
>>> decide(Stage.STATE, ValueError("bad history")).action
<Action.RESET: 'reset'>
>>> decide(Stage.SCORE, RuntimeError("boom")).reason
'scoring failed: RuntimeError: boom'
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from faust.exceptions import DecodeError

from streamrec.errors import SchemaError


class Stage(str, enum.Enum):
    PARSE = "parse"  # decoding and validating the event's bytes
    STATE = "state"  # reading and decoding the user's stored state
    APPLY = "apply"  # applying the event to the state
    SCORE = "score"  # model + index for the batch
    PRODUCE = "produce"  # sending recommendations / dead letters, writing state


class Action(str, enum.Enum):
    DEAD_LETTER = "dead_letter"
    RESET = "reset"
    RAISE = "raise"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


#: What a stored state that no longer decodes raises (JSON errors are ValueErrors; Faust wraps
#: a value its serializer cannot read in a DecodeError).
STATE_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    DecodeError,
)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def decide(stage: Stage, exc: BaseException) -> Decision:
    """What to do about ``exc`` raised at ``stage``, and why."""
    if not isinstance(exc, Exception):  # cancellation, KeyboardInterrupt, SystemExit
        return Decision(Action.RAISE, f"{stage.value}: {_describe(exc)}")
    if stage is Stage.PARSE:
        if isinstance(exc, SchemaError):
            return Decision(Action.DEAD_LETTER, exc.reason)
        return Decision(Action.RAISE, f"parser bug: {_describe(exc)}")
    if stage is Stage.STATE:
        if isinstance(exc, STATE_DECODE_ERRORS):
            return Decision(Action.RESET, f"stored state does not decode: {_describe(exc)}")
        return Decision(Action.DEAD_LETTER, f"processing failed: {_describe(exc)}")
    if stage is Stage.APPLY:  # a bug must not stop the stream
        return Decision(Action.DEAD_LETTER, f"processing failed: {_describe(exc)}")
    if stage is Stage.SCORE:  # the batch's triggering events go to the DLQ, states are kept
        return Decision(Action.DEAD_LETTER, f"scoring failed: {_describe(exc)}")
    return Decision(Action.RAISE, f"cannot produce (batch will be redelivered): {_describe(exc)}")

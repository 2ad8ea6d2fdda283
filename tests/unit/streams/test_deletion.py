"""The right to erasure in the worker's logic (memory store, no broker): a UserDeletion removes
the user's state with a changelog tombstone on the user's partition; later events start afresh."""

from __future__ import annotations

from streamrec.schemas import UserDeletion
from streamrec.serving.state import UserState
from tests.unit.streams.test_agents import TS, harness  # noqa: F401 - the fixture


def pending_changelog(h) -> list[tuple[object, int, object]]:
    """(key, partition, value) of each queued changelog write since the last call."""
    pending = h.app.producer.buffer.pending
    out = []
    while not pending.empty():
        fut = pending.get_nowait()
        out.append((fut.message.key, fut.message.partition, fut.message.value))
    return out


async def test_deletion_tombstones_the_user_and_later_events_start_from_empty(harness):  # noqa: F811
    h = harness
    await h.handler.handle(
        [
            h.shop("alice", 1, "purchase", n=1, partition=1),
            h.shop("alice", 2, n=2, partition=1),
            h.shop("bob", 3, n=3, partition=0),
        ]
    )
    assert h.users.get("alice") is not None
    h.recommendations()
    pending_changelog(h)

    req = UserDeletion(user_id="alice", requested_ts=TS + 10)
    erased = await h.handler.delete_user(h.event(req.to_bytes(), partition=1, key=b"alice"))
    assert erased == "alice"
    assert h.users.get("alice") is None and h.users.get("bob") is not None
    [(key, partition, value)] = pending_changelog(h)
    assert partition == 1 and value is None and b"alice" in (key if isinstance(key, bytes) else str(key).encode())
    assert h.pipeline.metrics.value("streamrec_user_deletions_total") == 1
    assert h.dead_letters() == []

    await h.handler.handle([h.shop("alice", 4, n=4, partition=1)])
    state = UserState.from_json(h.users.get("alice"))
    assert [x[0] for x in state.history] == ["i4"] and state.purchased == set()  # nothing from before
    [rec] = h.recommendations()
    assert rec.user_id == "alice"


async def test_deleting_an_unknown_user_still_writes_a_tombstone(harness):  # noqa: F811
    h = harness
    pending_changelog(h)
    req = UserDeletion(user_id="never-seen", requested_ts=TS)
    assert await h.handler.delete_user(h.event(req.to_bytes(), partition=0, key=b"never-seen")) == "never-seen"
    [(_, partition, value)] = pending_changelog(h)
    assert partition == 0 and value is None


async def test_malformed_deletion_request_goes_to_the_dead_letter_topic(harness):  # noqa: F811
    h = harness
    bad = h.event(b'{"user_id": "alice"}', partition=0, key=b"alice")
    assert await h.handler.delete_user(bad) is None
    [dl] = h.dead_letters()
    assert dl.original_bytes() == b'{"user_id": "alice"}' and "requested_ts" in dl.reason
    assert h.pipeline.metrics.value("streamrec_user_deletions_total") == 0


def test_state_codec_reads_damaged_bytes_as_bytes_and_json_as_before():
    from faust.serializers import codecs

    from streamrec.streams.tables import register_state_codec

    codec = codecs.get_codec(register_state_codec())
    state = {"h": [["i1", "view", 1, "e1"]], "p": [], "s": "s", "r": None}
    raw = codec.dumps(state)
    assert raw == codecs.get_codec("json").dumps(state)  # the same bytes as Faust's json codec
    assert codec.loads(raw) == state
    assert codec.loads(b"\x00\xffnot json") == b"\x00\xffnot json"  # no exception: recovery goes on


def test_users_changelog_and_store_use_the_state_codec(harness):  # noqa: F811
    from streamrec.streams.tables import STATE_CODEC, USERS_CHANGELOG_CONFIG

    users = harness.users
    assert users.changelog_topic.value_serializer == STATE_CODEC
    assert users.changelog_topic.config == USERS_CHANGELOG_CONFIG
    assert users.data._decode_value(b"\x00\xffdamaged") == b"\x00\xffdamaged"  # restored as it is

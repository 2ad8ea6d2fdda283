"""The events agent's work, as plain objects testable without a broker.

:class:`BatchHandler` takes one batch of Faust events: parse each message, load and update each
user's state once, score the batch in one model + index call, publish one recommendation per
triggering user, then write each touched user's state once, bound to that user's own event.
Failures go through :func:`streamrec.streams.policy.decide` (dead-letter, reset or raise).

The sinks are Faust channels: topics in the worker (under exactly_once wrapped so that each
message joins the transaction of the current event: :mod:`streamrec.streams.transactions`, hence
:func:`as_current` before each send), in-memory ``app.channel()`` in unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Private: Faust has no public setter for the current event. Checked against faust-streaming
# 0.15.3 (faust/streams.py: ``_current_event: ContextVar[weakref.ref[EventT]]``, read by
# ``faust.current_event()``); tests/unit/streams/test_internals.py fails if it moves or changes.
from faust.streams import _current_event

from streamrec.errors import SchemaError
from streamrec.schemas import DeadLetter, ShopEvent, UserDeletion, recommendation_bytes
from streamrec.serving.scorer import ServingModel
from streamrec.serving.state import UserState
from streamrec.streams.pipeline import Pipeline
from streamrec.streams.policy import Action, Decision, Stage, decide
from streamrec.streams.tables import purge_local

log = logging.getLogger(__name__)

#: How long the events agent waits for the catalog before scoring with what is loaded.
CATALOG_READY_TIMEOUT_S = 300.0


def as_current(event: Any) -> None:
    """Make ``event`` Faust's current event.

    Faust picks the table partition (store and changelog) from the *current* event. Inside a
    ``take_events`` batch that is the last event of the batch, so each user's update is bound to
    its own event first; otherwise a user's state could land in another partition's changelog
    and be lost on recovery.
    """
    _current_event.set(weakref.ref(event))


@dataclass
class Prepared:
    """One batch parsed and applied to its users' states, its scoring submitted to the model
    thread (``scoring``); what :meth:`BatchHandler.finish` publishes and writes."""

    batch: list[Any]
    states: dict[str, UserState] = field(default_factory=dict)
    answer: dict[str, ShopEvent] = field(default_factory=dict)  # user -> latest triggering event
    source: dict[str, Any] = field(default_factory=dict)  # user -> the Faust event of its latest message
    fresh: list[ShopEvent] = field(default_factory=list)
    #: users whose state was taken from the batch still in flight: user -> that batch's state
    #: object, whose ``latest`` and ``profile_sent`` its publish sets after this batch was prepared
    carried: dict[str, UserState] = field(default_factory=dict)
    model: ServingModel | None = None
    scoring: asyncio.Future[Any] | None = None


class BatchHandler:
    """Handles the events agent's batches (see the module docstring).

    ``users`` is the per-user table (``get`` and item assignment, JSON-able values);
    ``recommendations``, ``dead_letters`` and ``profiles`` are channels with ``send(key=, value=)``
    (bytes). With ``insights`` each recommendation carries a reason per item and the session's
    purchase intent; every user touched by a batch gets one Profile message on ``profiles``.
    """

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        users: Any,
        recommendations: Any,
        dead_letters: Any,
        profiles: Any = None,
        insights: bool = True,
        now_ms: Callable[[], int] = Pipeline.now_ms,
    ) -> None:
        self.pipeline = pipeline
        self.users = users
        self.recommendations = recommendations
        self.dead_letters = dead_letters
        self.profiles = profiles
        self.insights = insights
        self.now_ms = now_ms
        #: Held while a batch is prepared or handled, and while a deletion runs (which first
        #: waits for the batch in flight): a user erased while a batch holds the user's state in
        #: memory would otherwise be written back when the batch ends.
        self.lock = asyncio.Lock()
        #: overlapped batches (see :func:`consume_events`): the batch being scored and published
        self._inflight: tuple[Prepared, asyncio.Task[None]] | None = None

    # -- the policy --------------------------------------------------------------------------

    async def on_error(self, stage: Stage, exc: BaseException, event: Any, *, user: str | None = None) -> Decision:
        """Apply the error policy: dead-letter ``event`` or raise; a RESET is the caller's to do."""
        decision = decide(stage, exc)
        msg = event.message
        if decision.action is Action.RAISE:
            log.error(
                "stream error stage=%s topic=%s partition=%s offset=%s reason=%s",
                stage.value,
                msg.topic,
                msg.partition,
                msg.offset,
                decision.reason,
            )
            raise exc
        if decision.action is Action.RESET:
            self.pipeline.metrics.state_resets.inc()
            log.warning(
                "user state reset user=%s topic=%s partition=%s offset=%s reason=%s",
                user,
                msg.topic,
                msg.partition,
                msg.offset,
                decision.reason,
            )
        else:
            if stage in (Stage.STATE, Stage.APPLY):  # parse errors are bad input; scoring logs once per batch
                log.error("event failed stage=%s user=%s", stage.value, user, exc_info=exc)
            await self.dead_letter(event, decision.reason)
        return decision

    async def dead_letter(self, event: Any, reason: str) -> None:
        """Send ``event``'s original bytes to the dead-letter topic with ``reason``."""
        msg = event.message
        self.pipeline.metrics.dlq.inc()
        log.warning(
            "dead-letter topic=%s partition=%s offset=%s reason=%s", msg.topic, msg.partition, msg.offset, reason
        )
        dl = DeadLetter.wrap(
            topic=msg.topic, partition=msg.partition, offset=msg.offset, reason=reason, original=msg.value
        )
        as_current(event)  # exactly_once: the dead letter joins this event's transaction
        await self.dead_letters.send(key=msg.key, value=dl.to_bytes())

    # -- the batch ---------------------------------------------------------------------------

    async def load_state(self, user_id: str, event: Any) -> UserState | None:
        """The user's stored state (bound to ``event``'s partition); None when it was dead-lettered."""
        as_current(event)
        try:
            return UserState.from_json(self.users.get(user_id))
        except Exception as exc:  # noqa: BLE001 - the error policy decides
            decision = await self.on_error(Stage.STATE, exc, event, user=user_id)
            return UserState() if decision.action is Action.RESET else None

    async def handle(self, batch: list[Any]) -> None:
        """Parse, update each user's state in memory, score once, publish, then write each
        touched user's state once (bound to that user's own event, see :func:`as_current`)."""
        await self.finish(await self.prepare(batch))

    async def prepare(self, batch: list[Any], overlay: dict[str, UserState] | None = None) -> Prepared:
        """Parse ``batch``, apply each event to its user's state (loaded once) and submit the
        scoring to the model thread; the returned :class:`Prepared` is for :meth:`finish`.

        ``overlay``: the states of a batch still in flight (prepared, not yet written). A user of
        that batch starts from a copy of its state there, as if read back from the table, not
        from the table, which does not have that batch's events yet."""
        pipeline = self.pipeline
        metrics = pipeline.metrics
        metrics.events_in.inc(len(batch))
        metrics.batches.inc()
        metrics.batch_size.observe(len(batch))
        p = Prepared(batch=batch)
        states, answer, source, fresh = p.states, p.answer, p.source, p.fresh
        t_parse = t_state = 0.0
        for event in batch:
            t0 = time.perf_counter()
            try:
                ev = ShopEvent.from_bytes(event.message.value)
            except Exception as exc:  # noqa: BLE001 - the error policy decides
                await self.on_error(Stage.PARSE, exc, event)
                continue
            finally:
                t_parse += time.perf_counter() - t0
            state = states.get(ev.user_id)
            if state is None:
                t0 = time.perf_counter()
                prev = overlay.get(ev.user_id) if overlay else None
                if prev is not None:
                    state = UserState.from_json(prev.to_json())  # a copy, as the table would return it
                    p.carried[ev.user_id] = prev
                else:
                    state = await self.load_state(ev.user_id, event)
                t_state += time.perf_counter() - t0
                if state is None:
                    continue
            try:
                if pipeline.apply_event(state, ev):
                    fresh.append(ev)
            except Exception as exc:  # noqa: BLE001 - the error policy decides
                await self.on_error(Stage.APPLY, exc, event, user=ev.user_id)
                continue
            states[ev.user_id] = state
            source[ev.user_id] = event
            if ev.type in pipeline.trigger_types:
                answer[ev.user_id] = ev
        metrics.stage_seconds.labels(stage="parse").observe(t_parse)
        metrics.stage_seconds.labels(stage="state_read").observe(t_state)
        # one model for the whole batch (see Pipeline.model); the model thread runs one call at
        # a time, in order, so this batch is scored after the one in flight
        p.model = model = pipeline.model
        score = pipeline.score_explained if self.insights else pipeline.score
        p.scoring = pipeline.submit(score, [states[u] for u in answer], fresh, model)
        return p

    async def finish(self, p: Prepared) -> None:
        """Publish ``p``'s recommendations and profiles, then write each touched user's state."""
        for user, prev in p.carried.items():  # what the previous batch's publish set
            state = p.states.get(user)
            if state is not None:
                state.latest, state.profile_sent = prev.latest, prev.profile_sent
        try:
            await self.publish(p)
        finally:  # state changes are kept even when scoring fails (those events went to the DLQ)
            with self.pipeline.metrics.stage("state_write"):
                for user, state in p.states.items():
                    as_current(p.source[user])
                    self.users[user] = state.to_json()
        wait_backlog = getattr(self.users, "wait_backlog", None)  # a broker taking no writes pauses us
        if wait_backlog is not None:
            await wait_backlog()

    async def publish(self, p: Prepared) -> None:
        """Wait for ``p``'s scoring, send the recommendations (and the profiles)."""
        pipeline = self.pipeline
        metrics = pipeline.metrics
        states, answer, source, fresh = p.states, p.answer, p.source, p.fresh
        events = list(answer.values())
        lists: Sequence[Sequence[tuple[str, float, tuple[str, str | None] | None]]]
        intents: list[float | None]
        model = p.model
        assert model is not None and p.scoring is not None, "publish() takes a prepared batch"
        try:
            with metrics.stage("score"):
                if self.insights:
                    lists, intents = await p.scoring
                else:
                    plain = await p.scoring
                    lists, intents = [[(i, s, None) for i, s in r] for r in plain], [None] * len(plain)
        except Exception as exc:
            log.error("scoring failed users=%d", len(events), exc_info=exc)
            for ev in events:
                await self.on_error(Stage.SCORE, exc, source[ev.user_id], user=ev.user_id)
            return
        now = self.now_ms()
        version = model.version
        send = self.recommendations.send
        with metrics.stage("produce"):
            for ev, recs, intent in zip(events, lists, intents):
                # reasons come from the scorer (kinds) and the user's validated history (ids)
                pairs = [(i, s) for i, s, _ in recs]
                reasons = [r for _, _, r in recs] if self.insights else None
                value = recommendation_bytes(
                    user_id=ev.user_id,
                    items=pairs,
                    model_version=version,
                    event_id=ev.event_id,
                    event_ts=ev.ts,
                    produced_ts=now,
                    reasons=reasons,
                    purchase_intent=intent,
                )
                as_current(source[ev.user_id])  # exactly_once: sent in this event's transaction
                try:
                    await send(key=ev.user_id.encode(), value=value)
                except Exception as exc:  # noqa: BLE001 - the error policy decides
                    await self.on_error(Stage.PRODUCE, exc, source[ev.user_id], user=ev.user_id)
                metrics.observe_latency_ms(max(0, now - ev.ts))
                # kept for GET /users/{id}/recommendations (and the profile's purchase_intent);
                # tuples are stored as JSON arrays: [item, score] and [kind, item_id or null]
                latest: dict[str, Any] = {
                    "items": pairs,
                    "model_version": version,
                    "event_id": ev.event_id,
                    "produced_ts": now,
                }
                if self.insights:  # added keys only: [item, score] pairs keep their shape
                    latest["reasons"] = reasons
                    if intent is not None:
                        latest["purchase_intent"] = intent
                states[ev.user_id].latest = latest
            metrics.recommendations_out.inc(len(events))
            await self.publish_profiles(states, source, fresh, now)

    async def publish_profiles(
        self, states: dict[str, UserState], source: dict[str, Any], fresh: list[ShopEvent], now: int
    ) -> None:
        """A Profile for each user with a new event in the batch, when one is due (see
        :meth:`Pipeline.profile_due`: a new ranking at once, the same ranking at most every
        ``profile_publish_s``), keyed by user (compacted topic)."""
        if self.profiles is None:
            return
        for user in dict.fromkeys(e.user_id for e in fresh):
            state = states.get(user)
            if state is None or not state.history:
                continue
            value = self.pipeline.profile_due(user, state, event_id=state.history[-1][3], now_ms=now)
            if value is None:
                continue
            as_current(source[user])  # exactly_once: sent in this event's transaction
            try:
                await self.profiles.send(key=user.encode(), value=value)
            except Exception as exc:  # noqa: BLE001 - the error policy decides
                await self.on_error(Stage.PRODUCE, exc, source[user], user=user)

    # -- overlapped batches ------------------------------------------------------------------

    @property
    def inflight_states(self) -> dict[str, UserState] | None:
        """The states of the batch in flight (prepared, not yet written), if any."""
        return self._inflight[0].states if self._inflight is not None else None

    def start(self, p: Prepared, ack: Callable[[Any], Any]) -> None:
        """Finish ``p`` in the background (the batch in flight), then ``await ack(event)`` each of
        its events. At most one batch is in flight: :meth:`wait_inflight` first."""
        assert self._inflight is None, "wait_inflight() before starting the next batch"
        task = asyncio.ensure_future(self._finish_and_ack(p, ack))
        task.add_done_callback(_log_failure)
        self._inflight = (p, task)

    async def _finish_and_ack(self, p: Prepared, ack: Callable[[Any], Any]) -> None:
        await self.finish(p)
        for event in p.batch:
            await ack(event)

    async def wait_inflight(self) -> None:
        """Wait until the batch in flight is published, written and acknowledged; raises what it
        raised (its events stay unacknowledged then, so they are delivered again)."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await inflight[1]

    # -- the right to erasure ---------------------------------------------------------------

    async def delete_user(self, event: Any) -> str | None:
        """Erase the user a :class:`UserDeletion` message names: ``del users[id]`` writes a
        tombstone to the changelog (bound to this message's partition, which is the user's: the
        deletions topic is partitioned like the events topic) and the local RocksDB copy is
        compacted away. Later events of the user start from an empty state. A malformed request
        goes to the dead-letter topic. Returns the erased user id."""
        try:
            req = UserDeletion.from_bytes(event.message.value)
        except SchemaError as exc:
            await self.on_error(Stage.PARSE, exc, event)
            return None
        async with self.lock:
            await self.wait_inflight()  # its states are written before the user is erased
            as_current(event)
            with contextlib.suppress(KeyError):  # nothing stored here; the tombstone was written all the same
                del self.users[req.user_id]
            await self.pipeline.run(purge_local, self.users, req.user_id)
        self.pipeline.metrics.user_deletions.inc()
        msg = event.message
        log.info(
            "user erased user=%s requested_ts=%d topic=%s partition=%s offset=%s",
            req.user_id,
            req.requested_ts,
            msg.topic,
            msg.partition,
            msg.offset,
        )
        return req.user_id


def _log_failure(task: asyncio.Task[None]) -> None:
    """Log at once, in one line, a batch in flight that failed: its error, with the traceback,
    is raised (and logged by Faust's agent) when the next batch waits for it."""
    exc = None if task.cancelled() else task.exception()
    if exc is not None:
        log.error("batch failed; its events stay unacknowledged reason=%s: %s", type(exc).__name__, exc)


async def consume_deletions(stream: Any, handler: BatchHandler) -> None:
    """The deletions agent's body: one :class:`UserDeletion` at a time."""
    async for event in stream.events():
        await handler.delete_user(event)


async def consume_events(
    stream: Any,
    handler: BatchHandler,
    *,
    batch_max: int,
    within_s: float,
    catalog_timeout_s: float = CATALOG_READY_TIMEOUT_S,
    overlap: bool = False,
) -> None:
    """The events agent's body: wait for the catalog, then hand batches to ``handler``.

    With ``overlap`` (at_least_once only), batch N+1 is taken, parsed and applied on the event
    loop while batch N is scored on the model thread, and N+1's scoring is queued right behind
    N's, so the loop publishes N while N+1 is scored. Batches still finish one after another, in
    order. A batch's events are acknowledged only once it is published and its states written:
    each event's message gets one more reference here (Faust's ``Message.incref``), which
    ``take_events`` does not release (it releases its own when the next batch is taken) and the
    finished batch does (``stream.ack``). So the committed offsets never pass an event whose
    recommendation was not handed to the producer, as without overlap. Faust internals relied on
    (faust-streaming 0.15.3): ``take_events`` acks a batch's events when the next one is taken,
    and a message's offset is committable when its reference count reaches zero
    (``Message.ack``; ``tests/unit/streams/test_internals.py``)."""
    ready = handler.pipeline.catalog_ready
    log.info("events agent waiting for the catalog")
    if not ready.is_set():
        try:
            await asyncio.wait_for(ready.wait(), catalog_timeout_s)
        except TimeoutError:
            log.warning("catalog not caught up after %.0fs; scoring with what is loaded", catalog_timeout_s)
    log.info("events agent consuming batch_max=%d within_s=%s overlap=%s", batch_max, within_s, overlap)
    if not overlap:
        async for batch in stream.take_events(batch_max, within=within_s):
            async with handler.lock:
                await handler.handle(batch)
        return
    try:
        async for batch in stream.take_events(batch_max, within=within_s):
            for event in batch:
                event.message.incref()  # released by the finished batch (see above)
            async with handler.lock:
                prepared = await handler.prepare(batch, overlay=handler.inflight_states)
                await handler.wait_inflight()
                handler.start(prepared, stream.ack)
    finally:
        # a stopping worker finishes the batch in flight (a few ms); unfinished, it is redelivered
        with contextlib.suppress(Exception):
            await handler.wait_inflight()

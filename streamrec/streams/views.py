"""The worker's HTTP views: ``/health``, ``/metrics``, ``/users/{id}/recommendations``,
``/users/{id}/profile``.

The bodies are plain functions of the pipeline (testable without a web server or a broker);
:func:`register_views` wires them to Faust's web server.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from streamrec.serving.state import UserState
from streamrec.streams.pipeline import Pipeline

log = logging.getLogger(__name__)


def health_body(pipeline: Pipeline) -> tuple[dict[str, Any], int]:
    ready = pipeline.catalog_ready.is_set()
    return {
        "status": "ok" if ready else "starting",
        "pid": os.getpid(),
        "model_version": pipeline.model_version,
        "model_swaps": int(pipeline.metrics.value("streamrec_model_swaps_total")),
        "model_refusals": int(pipeline.metrics.value("streamrec_model_refusals_total")),
        "model_swap_pending": pipeline.swap_pending,
        "catalog_items": len(pipeline.model.index),
        "catalog_ready": ready,
    }, 200 if ready else 503


#: most ``name[]`` parameters one /metrics request may name, and the longest name read
MAX_METRIC_NAMES, MAX_METRIC_NAME_LEN = 64, 200


def metric_names(query: Any) -> list[str]:
    """The ``name[]`` query parameters of a /metrics request (Prometheus's filter; none: every
    metric), bounded: at most ``MAX_METRIC_NAMES`` names of at most ``MAX_METRIC_NAME_LEN``
    characters are read."""
    getall = getattr(query, "getall", None)
    raw = getall("name[]", []) if getall is not None else []
    return [str(n)[:MAX_METRIC_NAME_LEN] for n in raw[:MAX_METRIC_NAMES]]


def metrics_text(pipeline: Pipeline, consumer_lag: dict[str, int] | None = None, names: Sequence[str] = ()) -> str:
    """/metrics: every metric, or only the samples ``names`` (a poll that wants one counter
    then costs the worker's event loop a fraction of a full scrape)."""
    pipeline.refresh_gauges()
    return pipeline.metrics.render(model_version=pipeline.model_version, consumer_lag=consumer_lag, names=names)


def user_recommendations_body(stored: Any, user_id: str) -> tuple[dict[str, Any], int]:
    """The latest list sent to ``user_id``, from the user's ``stored`` table value."""
    if not 1 <= len(user_id) <= 128:
        return {"error": "user id must be 1..128 characters"}, 400
    try:
        state = UserState.from_json(stored)
    except (TypeError, ValueError):  # reset by the next event of this user (see streams.policy)
        state = UserState()
    if state.latest is None:
        return {"user_id": user_id, "error": "no recommendation yet"}, 404
    return {"user_id": user_id, **state.latest}, 200


def user_profile_body(pipeline: Pipeline, stored: Any, user_id: str) -> tuple[dict[str, Any], int]:
    """``user_id``'s interest profile (the same message :class:`BatchHandler` publishes)."""
    if not 1 <= len(user_id) <= 128:
        return {"error": "user id must be 1..128 characters"}, 400
    try:
        state = UserState.from_json(stored)
    except (TypeError, ValueError):  # reset by the next event of this user (see streams.policy)
        state = UserState()
    if not state.history:
        return {"user_id": user_id, "error": "no events yet"}, 404
    prof = pipeline.profile_of(user_id, state, event_id=state.history[-1][3], now_ms=pipeline.now_ms())
    return prof.to_dict(), 200


async def consumer_lag(app: Any, topic: str) -> dict[str, int]:
    """Best effort: end offset minus position for each assigned partition of ``topic``."""
    try:
        consumer = app.consumer
        lag = {}
        for tp in sorted(consumer.assignment()):
            if tp.topic != topic:
                continue
            high = consumer.highwater(tp)
            pos = await consumer.position(tp)
            if high is not None and pos is not None and high >= 0:
                lag[f"{tp.topic}/{tp.partition}"] = max(0, int(high) - int(pos))
        return lag
    except Exception:  # pragma: no cover - metrics must never fail the view
        log.debug("consumer lag unavailable", exc_info=True)
        return {}


def register_views(app: Any, pipeline: Pipeline, users: Any, *, events_topic: str) -> None:
    """Wire the views to ``app``'s web server (per-user reads go to the partition owner)."""

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        body, status = health_body(pipeline)
        return web.json(body, status=status)

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        names = metric_names(request.query)
        lag = await consumer_lag(app, events_topic) if not names or "streamrec_consumer_lag" in names else None
        text = metrics_text(pipeline, lag, names)
        return web.text(text, content_type="text/plain", headers={"X-Prometheus-Format": "0.0.4"})

    @app.page("/users/{user_id}/recommendations")
    @app.table_route(table=users, match_info="user_id")
    async def user_recommendations(web: Any, request: Any, user_id: str) -> Any:
        stored = users.get(user_id) if 1 <= len(user_id) <= 128 else None
        body, status = user_recommendations_body(stored, user_id)
        return web.json(body, status=status)

    @app.page("/users/{user_id}/profile")
    @app.table_route(table=users, match_info="user_id")
    async def user_profile(web: Any, request: Any, user_id: str) -> Any:
        stored = users.get(user_id) if 1 <= len(user_id) <= 128 else None
        body, status = user_profile_body(pipeline, stored, user_id)
        return web.json(body, status=status)

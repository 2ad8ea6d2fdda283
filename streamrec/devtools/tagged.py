"""Settings of a throwaway deployment on a shared broker: topics and an app id of its own.

Tests and benchmarks start many workers on one broker; each gets ``tagged_settings(bootstrap,
tag, data_dir)`` so that no two share a topic, a consumer group or a state directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamrec.config import Settings


def tagged_settings(bootstrap: str, tag: str, data_dir: Path, *, partitions: int = 2, **overrides: Any) -> Settings:
    """Settings on ``bootstrap`` whose topics are named after ``tag`` (``<tag>.events``,
    ``.catalog``, ``.recs``, ``.dlq``, ``.models``, ``.deletions``, ``.catalog-dlq``,
    ``.profiles``), app id ``tag``, ``partitions`` per topic, state under ``data_dir``;
    ``overrides`` (any ``Settings`` field) on top."""
    fields: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "topic_events": f"{tag}.events",
        "topic_catalog": f"{tag}.catalog",
        "topic_recommendations": f"{tag}.recs",
        "topic_dlq": f"{tag}.dlq",
        "topic_model_updates": f"{tag}.models",
        "topic_deletions": f"{tag}.deletions",
        "topic_catalog_dlq": f"{tag}.catalog-dlq",
        "topic_profiles": f"{tag}.profiles",
        "app_id": tag,
        "partitions": partitions,
        "data_dir": data_dir,
    }
    return Settings(**(fields | overrides))

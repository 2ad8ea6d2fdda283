"""One typed, frozen settings object for every entry point.

Values come from (highest first): explicit overrides (CLI flags), ``STREAMREC_*`` environment
variables, a ``.env`` file in the working directory, then the defaults below. Only entry points
(CLI, worker, bench scripts) build a :class:`Settings`; library classes take plain keyword
arguments.

>>> s = Settings(bootstrap_servers="kafka:9092", partitions=3)
>>> s.topic_events, s.partitions
('shop.events', 3)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from streamrec.errors import ConfigError
from streamrec.schemas import EVENT_TYPES, EventType

if TYPE_CHECKING:
    from streamrec.serving.profile import ProfileWeights


_TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,200}$"


class Settings(BaseSettings):
    """Everything an operator can set. Each field maps to ``STREAMREC_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", env_file=".env", extra="ignore", frozen=True)

    # --- Kafka connection -------------------------------------------------------------------
    bootstrap_servers: str | None = Field(
        None,
        description="Kafka bootstrap servers, host:port[,host:port]. Unset: the local broker "
        "started by `streamrec kafka up`, else 127.0.0.1:9092.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    # --- topics -----------------------------------------------------------------------------
    topic_events: str = Field("shop.events", pattern=_TOPIC_PATTERN)
    topic_catalog: str = Field("shop.catalog", pattern=_TOPIC_PATTERN)
    topic_recommendations: str = Field("shop.recommendations", pattern=_TOPIC_PATTERN)
    topic_dlq: str = Field("shop.events.dlq", pattern=_TOPIC_PATTERN)
    topic_model_updates: str = Field("streamrec.model-updates", pattern=_TOPIC_PATTERN)
    topic_catalog_dlq: str = Field(
        "shop.catalog.dlq",
        pattern=_TOPIC_PATTERN,
        description="refused catalog items with reasons",
    )
    topic_deletions: str = Field(
        "shop.user-deletions",
        pattern=_TOPIC_PATTERN,
        description="user deletion requests (right to erasure), key user_id",
    )
    topic_profiles: str = Field("shop.profiles", pattern=_TOPIC_PATTERN)
    partitions: int = Field(4, ge=1, le=1024, description="partitions of the keyed topics")
    replication_factor: int = Field(1, ge=1, le=16)

    kafka_libs: Path = Field(
        Path.home() / ".cache" / "streamrec" / "kafka-libs",
        description="where the Apache Kafka jars for `streamrec kafka up` are kept",
    )
    kafka_heap: str = Field("768m", pattern=r"^[0-9]+[mMgG]$", description="local broker JVM heap")

    # --- storage and compute -----------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="registry, worker state, local Kafka")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    torch_threads: int = Field(
        0, ge=0, le=256, description="torch threads in the worker; 0: all cores but one (the event loop's)"
    )

    text_cache_dir: Path | None = Field(
        None,
        description="MiniLM title-vector cache (RocksDB dir) shared by the worker, train and "
        "evaluate; unset: DATA_DIR/text-cache",
    )
    text_cache_max_items: int = Field(
        2_000_000,
        ge=1,
        le=1_000_000_000,
        description="most title vectors kept in the text cache (about 1.6 KB each on disk); the oldest-used go first",
    )

    # --- worker -----------------------------------------------------------------------------
    app_id: str = Field("streamrec", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    web_port: int = Field(6066, ge=0, le=65535)
    web_host: str = "127.0.0.1"
    batch_max: int = Field(256, ge=1, le=10_000, description="events per scoring batch")
    batch_within_s: float = Field(0.005, gt=0, le=10, description="max wait to fill a batch")
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="Faust processing guarantee; exactly_once makes state, recommendations "
        "and offsets one Kafka transaction per commit (readers must use isolation.level=read_committed)",
    )
    commit_interval_s: float = Field(
        1.0, gt=0, le=60, description="how often the worker commits offsets (and, exactly_once, its transactions)"
    )
    direct_produce: bool = Field(
        True,
        description="at_least_once: send recommendations and profiles through librdkafka instead of "
        "Faust's producer (the worker's offsets still commit only after they are acknowledged)",
    )
    direct_changelog: bool = Field(
        True,
        description="with direct_produce: the users table's changelog goes through the same librdkafka "
        "producer instead of Faust's (false: Faust's producer, as under exactly_once)",
    )
    direct_linger_ms: int = Field(
        2,
        ge=0,
        le=1000,
        description="the librdkafka producer of recommendations and profiles waits this long to fill a "
        "request (adds at most this to an answer's latency)",
    )
    overlap_batches: bool = Field(
        False,
        description="at_least_once: take and parse the next batch while one is scored, and publish a "
        "batch while the next is scored (each batch is still acknowledged only once published). Off: "
        "on 2 cores the two Python threads contend for the GIL and the worker drained less (bench/RESULTS.md)",
    )
    gc_freeze: bool = Field(
        True,
        description="once the catalog is loaded, move every object alive then (model, catalog, libraries) out "
        "of Python's cyclic garbage collector, whose full collections otherwise scan them all (a pause "
        "of every thread; streamrec_gc_pause_seconds)",
    )
    fetch_min_bytes: int = Field(
        16_384,
        ge=1,
        le=16 * 1024 * 1024,
        description="the worker's event consumer asks the broker to wait for this many bytes ...",
    )
    fetch_max_wait_ms: int = Field(
        20, ge=0, le=1500, description="... or this many milliseconds, whichever comes first (aiokafka fetch)"
    )
    changelog_linger_ms: int = Field(
        10,
        ge=0,
        le=1000,
        description="Faust's producer (the users table's changelog; exactly_once: every output) waits this "
        "long to fill a request; the offset commit flushes it first, so no state is lost by waiting",
    )
    changelog_batch_bytes: int = Field(
        262_144,
        ge=1024,
        le=16 * 1024 * 1024,
        description="largest record batch per partition of Faust's producer (aiokafka max_batch_size)",
    )
    top_k: int = Field(10, ge=1, le=1000, description="items per recommendation")
    history_len: int = Field(50, ge=1, le=1000, description="interactions kept per user")
    purchased_max: int = Field(500, ge=0, le=100_000, description="purchased items kept per user")
    trigger_types: Annotated[tuple[EventType, ...], NoDecode] = EVENT_TYPES  # comma-separated

    # --- user insights (issue #15) ------------------------------------------------------------
    recommendation_insights: bool = Field(
        True,
        description="put purchase_intent and per-item reasons in recommendations (false: the "
        "previous message shape, for consumers that still refuse unknown fields)",
    )
    profile_weight_view: float = Field(1.0, ge=0, le=1e6, description="profile weight of a view")
    profile_weight_cart: float = Field(3.0, ge=0, le=1e6, description="profile weight of an add_to_cart")
    profile_weight_purchase: float = Field(5.0, ge=0, le=1e6, description="profile weight of a purchase")
    profile_half_life_hours: float = Field(168.0, gt=0, le=1e6, description="profile weights halve after this long")
    profile_max_entries: int = Field(20, ge=1, le=1000, description="categories (and brands) kept per user")
    profile_publish_s: float = Field(
        60.0,
        ge=0,
        le=7 * 24 * 3600,
        description="a user's profile is sent on shop.profiles when its ranking changes, and with an unchanged "
        "ranking at most this often (0: after every batch with a new event of the user)",
    )

    # --- index ------------------------------------------------------------------------------
    index_kind: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    index_exact_max: int = Field(50_000, ge=0, description="auto: exact search up to this size")
    hnsw_m: int = Field(32, ge=4, le=256)
    hnsw_ef_construction: int = Field(200, ge=8, le=4096)
    hnsw_ef_search: int = Field(128, ge=8, le=4096)
    hnsw_storage: Literal["flat", "fp16", "sq8"] = Field(
        "flat", description="how HNSW stores the item vectors: float32 (flat), fp16 or 8-bit"
    )
    ivf_nlist: int = Field(1024, ge=1, le=1_000_000)
    ivf_nprobe: int = Field(64, ge=1, le=1_000_000)
    flat_blas_min_queries: int = Field(
        12,
        ge=1,
        le=1_000_000,
        description="exact search through FAISS: batches of this many queries or more use one BLAS product",
    )
    index_exact_backend: Literal["auto", "numpy", "torch", "faiss"] = Field(
        "auto",
        description="how an exact CPU index is searched: one matrix product over FAISS's vectors through "
        "numpy's BLAS or torch's (auto: the faster on this CPU, timed once at the first search), or FAISS's "
        "own search (the fastest depends on the CPU: bench/flat_blas.py)",
    )

    # --- trainer (`streamrec trainer`: training log, retraining cadence, gate) ----------------
    retrain_interval_s: float = Field(300.0, gt=0, le=7 * 86400, description="seconds between retraining checks")
    retrain_min_events: int = Field(
        1000, ge=1, le=1_000_000_000, description="new logged events needed before a retrain"
    )
    retrain_time_budget_s: float = Field(
        120.0, gt=0, le=7 * 86400, description="training time budget of one retrain (seconds)"
    )
    retrain_window_s: float = Field(
        86400.0, gt=0, description="'recent' users: active within this many seconds of the newest event"
    )
    retrain_replay_ratio: float = Field(
        1.0, ge=0, le=100, description="older users replayed per recent user in a fine-tune window"
    )
    retrain_holdout_users: int = Field(
        1000,
        ge=10,
        le=1_000_000,
        description="most recently active users whose latest interaction is the gate's hold-out",
    )
    retrain_gate_tolerance: float = Field(
        0.005, ge=0, le=1, description="promote unless NDCG@10 or HR@10 is worse than current by more (absolute)"
    )
    retrain_full_every: int = Field(
        0, ge=0, le=1_000_000, description="every Nth retrain trains from scratch (0: only `trainer --full`)"
    )
    trainlog_max_age_s: float = Field(
        7 * 86400.0, gt=0, description="training-log segments whose newest event is older are deleted"
    )
    trainlog_max_bytes: int = Field(
        1 << 30, ge=1 << 16, description="training-log size cap; the oldest segments go first"
    )
    trainlog_segment_events: int = Field(
        5000, ge=1, le=10_000_000, description="events per training-log segment (at most)"
    )
    trainlog_segment_s: float = Field(
        5.0, gt=0, le=3600, description="a partly filled segment is written after this many seconds"
    )
    trainer_web_port: int = Field(6067, ge=0, le=65535, description="trainer's /metrics port")
    trainer_adapt_below: float = Field(
        0.5,
        ge=0,
        le=1,
        description="the trainer fits the current version's text channel to the catalog's titles when "
        "the version holds less than this share of them (a model from another shop; 0: never)",
    )
    registry_keep: int = Field(
        20, ge=1, le=100_000, description="trainer keeps this many newest versions (plus current)"
    )

    @field_validator("trigger_types", mode="before")
    @classmethod
    def _split_types(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return tuple(t.strip() for t in v.split(",") if t.strip())
        return v

    # -- derived helpers -----------------------------------------------------------------------

    @property
    def kafka_dir(self) -> Path:
        """Where `streamrec kafka up` keeps the local broker's data, log and state file."""
        return self.data_dir / "kafka"

    def profile_weights(self) -> ProfileWeights:
        """The interest-profile settings as the pure code takes them."""
        from streamrec.serving.profile import ProfileWeights

        return ProfileWeights(
            view=self.profile_weight_view,
            add_to_cart=self.profile_weight_cart,
            purchase=self.profile_weight_purchase,
            half_life_s=self.profile_half_life_hours * 3600.0,
            max_entries=self.profile_max_entries,
        )

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def text_cache_path(self) -> Path:
        return self.text_cache_dir or self.data_dir / "text-cache"

    @property
    def trainlog_dir(self) -> Path:
        """The trainer's durable training log (Parquet segments)."""
        return self.data_dir / "trainlog"

    @property
    def trainer_group(self) -> str:
        """The trainer's consumer group, independent of the workers' (``<app id>-trainer``)."""
        return f"{self.app_id}-trainer"

    def resolved_bootstrap(self) -> str:
        """The broker to talk to: the setting, else the local broker's state file, else :9092."""
        if self.bootstrap_servers:
            return self.bootstrap_servers
        state = self.kafka_dir / "state.json"
        if state.is_file():
            try:
                return str(json.loads(state.read_text())["bootstrap"])
            except (ValueError, KeyError):
                pass
        return "127.0.0.1:9092"

    def confluent_config(self) -> dict[str, Any]:
        """librdkafka (confluent-kafka) client settings: bootstrap plus SASL/SSL pass-through, and
        librdkafka's log lines routed to Python logging (:func:`streamrec.client.connection.route_logs`)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.resolved_bootstrap(),
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_cafile:
            conf["ssl.ca.location"] = str(self.ssl_cafile)
        if self.ssl_certfile:
            conf["ssl.certificate.location"] = str(self.ssl_certfile)
        if self.ssl_keyfile:
            conf["ssl.key.location"] = str(self.ssl_keyfile)
        from streamrec.client.connection import route_logs  # needs confluent_kafka, as the caller does

        return route_logs(conf)


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment plus ``overrides`` (``None`` values are ignored).

    Raises :class:`ConfigError` naming each bad setting and its value, so that entry points can
    print one clear line instead of a traceback.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except SettingsError as exc:
        raise ConfigError(f"invalid settings: {exc}") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            env = f"STREAMREC_{field.upper()}"
            value = clean.get(field, os.environ.get(env, err.get("input")))
            problems.append(f"{field} ({env}) = {value!r}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None

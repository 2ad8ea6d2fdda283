"""``streamrec worker``: load the current model, then run the Faust worker."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from streamrec.config import Settings

log = logging.getLogger(__name__)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a stream worker (consumes events, publishes recommendations)")
    p.add_argument("--web-port", type=int, help="HTTP port for /health, /metrics, /users/... (STREAMREC_WEB_PORT)")
    p.add_argument("--model", help="serve this checkpoint dir instead of the registry's current model")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "trainer",
        help="log the event stream durably and retrain the model on a cadence (own consumer group <app id>-trainer)",
    )
    p.add_argument(
        "--full", action="store_true", help="start with a full retrain from scratch right away (then the usual cadence)"
    )
    p.add_argument(
        "--metrics-port", type=int, help="HTTP port of /metrics (STREAMREC_TRAINER_WEB_PORT; 0: any free port)"
    )
    p.set_defaults(func=cmd_trainer)
    _announce_promotions(sub)


def _announce_promotions(sub: argparse._SubParsersAction) -> None:
    """``streamrec models promote`` (owned by the model package, which knows no Kafka) also
    announces the version on the model-updates topic: wrap its handler here."""
    models = sub.choices.get("models")
    if models is None:
        return
    for action in models._actions:
        if isinstance(action, argparse._SubParsersAction):
            promote = action.choices.get("promote")
            if promote is not None:
                promote.add_argument(
                    "--no-announce",
                    action="store_true",
                    help="only switch the registry's CURRENT (no ModelUpdate on Kafka)",
                )
                promote.set_defaults(func=cmd_models_promote)


def cmd_models_promote(args: argparse.Namespace, settings: Settings) -> int:
    """Make VERSION current, then publish a ModelUpdate (a rollback is a promote of an old one)."""
    from streamrec.errors import KafkaRuntimeError
    from streamrec.model.registry import ModelRegistry
    from streamrec.streams.model_updates import publish, update_for

    registry = ModelRegistry(settings.registry_dir)
    registry.promote(args.version)
    print(f"current model: {args.version}")
    if args.no_announce:
        return 0
    update = update_for(registry, args.version)
    update = update.model_copy(update={"metrics": {**update.metrics, "rollback": 1.0}})
    try:
        publish(settings, update)
    except KafkaRuntimeError as exc:
        raise KafkaRuntimeError(
            f"{exc} (the registry's CURRENT is {args.version}; rerun to announce, or restart the workers)"
        ) from None
    print(f"announced on {settings.topic_model_updates}: {args.version} ({update.path})")
    return 0


def cmd_trainer(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from streamrec.streams.trainer import Trainer, serve_metrics

    if args.metrics_port is not None:
        if not 0 <= args.metrics_port <= 65535:
            raise ValueError(f"--metrics-port {args.metrics_port}: must be 0..65535")
        settings = settings.model_copy(update={"trainer_web_port": args.metrics_port})
    for name in ("aiokafka", "faust", "kafka"):
        logging.getLogger(name).setLevel(logging.WARNING)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    trainer = Trainer(settings, full_first=args.full)
    server = serve_metrics(trainer.metrics, settings.web_host, settings.trainer_web_port)
    try:
        trainer.run(stop)
    finally:
        server.shutdown()
    return 0


def check_credentials(settings: Settings, *, timeout: float = 20.0) -> None:
    """Fail fast on a refused password or certificate (aiokafka and Faust would retry for ever).

    Raises :class:`~streamrec.errors.KafkaAuthError`; a broker that is merely not up yet is only
    logged, and the worker waits for it as before.
    """
    from streamrec.client.connection import ConnectionWatch
    from streamrec.errors import KafkaAuthError
    from streamrec.streams.topics import admin_client, cluster_metadata

    watch = ConnectionWatch(settings.resolved_bootstrap())
    try:
        cluster_metadata(admin_client(settings, watch), watch, timeout=timeout)
    except KafkaAuthError:
        raise
    except Exception as exc:  # noqa: BLE001  # not reachable yet: Faust keeps trying, as without this check
        log.warning("kafka not reachable yet bootstrap=%s reason=%s", settings.resolved_bootstrap(), exc)


def build_worker(settings: Settings, *, model_path: str | None = None) -> tuple[Any, Any]:
    """Load the model (clear error if there is none) and build the app; returns (app, pipeline).

    Threads and log levels are set here, once per process (see :mod:`streamrec.streams.tuning`).
    """
    from streamrec.model.inference import Recommender
    from streamrec.model.registry import ModelRegistry
    from streamrec.model.text import TextEncoder
    from streamrec.model.textcache import TextCache
    from streamrec.serving.swap import VersionLoader
    from streamrec.streams.app import create_app, saved_or_new_index
    from streamrec.streams.tuning import (
        compute_threads,
        quiet_third_party_loggers,
        set_compute_threads,
    )

    set_compute_threads(compute_threads(settings.torch_threads))
    quiet_third_party_loggers()
    path: str | Path
    version: str | None
    if model_path:
        path, version = model_path, None
    else:
        registry = ModelRegistry(settings.registry_dir)
        path = registry.require_current()
        version = registry.current_version()
    # one text cache for the serving version and every version hot-swapped in
    cache = TextCache(
        settings.text_cache_path, encoder=TextEncoder(device=settings.device), max_items=settings.text_cache_max_items
    )
    recommender = Recommender.load(path, device=settings.device, version=version, text_cache=cache)
    loader = VersionLoader.with_text_cache(cache, device=settings.device)
    index = saved_or_new_index(settings, recommender)
    log.info("model loaded version=%s dim=%d path=%s", recommender.version, recommender.dim, path)
    return create_app(settings, recommender=recommender, index=index, loader=loader)


def disable_spinner(worker: Any) -> None:
    """Turn off Faust's terminal spinner.

    At a log level of WARNING or above, Faust's worker (faust-streaming 0.15.3,
    ``faust.worker.Worker._setup_spinner_handler``) adds a DEBUG handler for its spinner and sets
    the ROOT logger to DEBUG, so every ``log.debug`` call in aiokafka, Faust and mode builds a
    record on the hot path (about 5 % of the event loop in bench/RESULTS.md's profile). Without a
    spinner (``worker.spinner`` None, as Faust itself does below WARNING) the root keeps the level
    asked for. tests/unit/streams/test_internals.py checks this Faust behaviour.
    """
    worker.spinner = None


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from faust.worker import Worker

    if args.web_port is not None:
        settings = settings.model_copy(update={"web_port": args.web_port})
    check_credentials(settings)
    app, _ = build_worker(settings, model_path=args.model)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    worker = Worker(app, loglevel=level, redirect_stdouts=False)
    disable_spinner(worker)
    worker.execute_from_commandline()
    return 0  # pragma: no cover - execute_from_commandline exits

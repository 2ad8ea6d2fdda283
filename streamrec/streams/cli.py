"""``streamrec worker``: load the current model, then run the Faust worker."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from streamrec.config import Settings

log = logging.getLogger(__name__)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a stream worker (consumes events, publishes recommendations)")
    p.add_argument("--web-port", type=int, help="HTTP port for /health, /metrics, /users/... (STREAMREC_WEB_PORT)")
    p.add_argument("--model", help="serve this checkpoint dir instead of the registry's current model")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("trainer", help="log the event stream durably and retrain the model on a cadence "
                                       "(own consumer group <app id>-trainer)")
    p.add_argument("--full", action="store_true",
                   help="start with a full retrain from scratch right away (then the usual cadence)")
    p.add_argument("--metrics-port", type=int,
                   help="HTTP port of /metrics (STREAMREC_TRAINER_WEB_PORT; 0: any free port)")
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
                promote.add_argument("--no-announce", action="store_true",
                                     help="only switch the registry's CURRENT (no ModelUpdate on Kafka)")
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
        raise KafkaRuntimeError(f"{exc} (the registry's CURRENT is {args.version}; rerun to announce, "
                                "or restart the workers)") from None
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


def build_worker(settings: Settings, *, model_path: str | None = None) -> tuple[Any, Any]:
    """Load the model (clear error if there is none) and build the app; returns (app, pipeline)."""
    import os

    import torch

    from streamrec.indexer import ItemIndex
    from streamrec.model.inference import Recommender
    from streamrec.model.registry import ModelRegistry
    from streamrec.streams.app import create_app

    threads = settings.torch_threads or max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    if model_path:
        path, version = model_path, None
    else:
        registry = ModelRegistry(settings.registry_dir)
        path = registry.require_current()
        version = registry.current_version()
    recommender = Recommender.load(path, device=settings.device, version=version)
    index = ItemIndex(
        recommender.dim, kind=settings.index_kind, exact_max=settings.index_exact_max,
        hnsw_m=settings.hnsw_m, hnsw_ef_construction=settings.hnsw_ef_construction,
        hnsw_ef_search=settings.hnsw_ef_search, ivf_nlist=settings.ivf_nlist,
        ivf_nprobe=settings.ivf_nprobe, device=settings.device,
    )
    log.info("model loaded version=%s dim=%d path=%s", recommender.version, recommender.dim, path)
    return create_app(settings, recommender=recommender, index=index)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from faust.worker import Worker

    if args.web_port is not None:
        settings = settings.model_copy(update={"web_port": args.web_port})
    app, _ = build_worker(settings, model_path=args.model)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    worker = Worker(app, loglevel=level, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0  # pragma: no cover - execute_from_commandline exits

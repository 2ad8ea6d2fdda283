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


def build_worker(settings: Settings, *, model_path: str | None = None) -> tuple[Any, Any]:
    """Load the model (clear error if there is none) and build the app; returns (app, pipeline).

    Threads and log levels are set here, once per process (see :mod:`streamrec.streams.tuning`).
    """
    from streamrec.indexer import ItemIndex
    from streamrec.model.inference import Recommender
    from streamrec.model.registry import ModelRegistry
    from streamrec.streams.app import create_app
    from streamrec.streams.tuning import compute_threads, quiet_third_party_loggers, set_compute_threads

    set_compute_threads(compute_threads(settings.torch_threads))
    quiet_third_party_loggers()
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
    app, _ = build_worker(settings, model_path=args.model)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    worker = Worker(app, loglevel=level, redirect_stdouts=False)
    disable_spinner(worker)
    worker.execute_from_commandline()
    return 0  # pragma: no cover - execute_from_commandline exits

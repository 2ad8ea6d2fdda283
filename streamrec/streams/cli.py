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
    except Exception as exc:  # not reachable yet: Faust keeps trying, as without this check
        log.warning("kafka not reachable yet bootstrap=%s reason=%s", settings.resolved_bootstrap(), exc)


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
    check_credentials(settings)
    app, _ = build_worker(settings, model_path=args.model)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    worker = Worker(app, loglevel=level, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0  # pragma: no cover - execute_from_commandline exits

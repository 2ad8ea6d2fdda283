"""The ``streamrec`` command line: one entry point, subcommands per role.

Errors the user can fix (bad flag values, missing files, unreachable Kafka) print one line that
names the bad value and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from streamrec import __version__
from streamrec.argtypes import existing_file, non_negative_int, positive_float, positive_int
from streamrec.config import Settings, load_settings
from streamrec.errors import StreamrecError
from streamrec.schemas import EVENT_TYPES

log = logging.getLogger("streamrec.cli")

Handler = Callable[[argparse.Namespace, Settings], int]


# --------------------------------------------------------------------------------------------
# helpers


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


# --------------------------------------------------------------------------------------------
# kafka / topics


def cmd_kafka(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.devtools import localkafka

    if args.action == "jars":
        libs = localkafka.ensure_jars(settings.kafka_libs.expanduser())
        print(libs)
        return 0
    if args.action == "up":
        if settings.bootstrap_servers:
            print(f"STREAMREC_BOOTSTRAP_SERVERS is set: using {settings.bootstrap_servers}, nothing started")
            return 0
        started = localkafka.start(
            settings.kafka_dir.resolve(), libs=settings.kafka_libs.expanduser(), heap=settings.kafka_heap
        )
        print(started.bootstrap)
        return 0
    if args.action == "down":
        stopped = localkafka.stop(settings.kafka_dir.resolve())
        print("stopped" if stopped else "not running")
        return 0
    # status
    state = localkafka.read_state(settings.kafka_dir.resolve())
    if state is None:
        print("not running")
        return 1
    ok = localkafka.broker_reachable(state.bootstrap, timeout=5)
    print(f"{'running' if ok else 'not answering'} bootstrap={state.bootstrap} pid={state.pid}")
    return 0 if ok else 1


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.streams.topics import create_topics, topic_specs

    if args.action == "list":
        for spec in topic_specs(settings):
            print(f"{spec.name}\tpartitions={spec.partitions}\t{spec.config}\t{spec.purpose}")
        return 0
    for name, status in create_topics(settings).items():
        print(f"{name}: {status}")
    return 0


# --------------------------------------------------------------------------------------------
# simulator / replay / tail


def _stop_on_signals() -> threading.Event:
    """SIGINT/SIGTERM set the returned event, so runners stop cleanly and flush."""
    import signal

    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.client import EventProducer
    from streamrec.devtools.simulator import ShopSimulator, run_simulation, write_dataset

    sim = ShopSimulator(
        seed=args.seed,
        n_items=args.items,
        n_users=args.users,
        new_item_rate=args.new_item_rate,
        drift_every=args.drift or 0,
        drift_new_items=args.drift_new_items,
        id_prefix=args.id_prefix or f"run{int(time.time())}",
    )
    if args.write_dataset:
        seq, text = write_dataset(sim, args.write_dataset, n_events=args.events or 20_000, with_types=args.with_types)
        print(f"wrote {seq}, {text} and {seq.parent / 'events.csv'}")
        return 0
    if args.events is None and args.duration is None:
        print("simulating until Ctrl-C (use --events or --duration to stop earlier)", file=sys.stderr)
    stop = _stop_on_signals()
    with EventProducer.from_settings(settings) as producer:
        sent = run_simulation(
            producer,
            sim,
            rate=args.rate,
            duration=args.duration,
            max_events=args.events,
            send_catalog=not args.no_catalog,
            stop=stop,
        )
    print(f"sent {sent} events to {settings.topic_events} via {settings.resolved_bootstrap()}")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.client import EventProducer
    from streamrec.datafiles import read_item_text, read_sequences
    from streamrec.devtools.replay import run_replay, run_typed_replay

    if (args.sequences is None) == (args.typed_events is None):
        raise ValueError("give exactly one of --sequences FILE or --typed-events FILE")
    if args.typed_events is not None:
        from streamrec.typed_events import by_user, read_events

        users = by_user(read_events(args.typed_events))
        stop = _stop_on_signals()
        with EventProducer.from_settings(settings) as producer:
            sent = run_typed_replay(
                producer,
                users,
                rate=args.rate,
                max_events=args.events,
                duration=args.duration,
                send_catalog=not args.no_catalog,
                keep_time=not args.restamp,
                stop=stop,
            )
        print(f"replayed {sent} events from {args.typed_events} to {settings.topic_events}")
        return 0
    sequences = read_sequences(args.sequences)
    texts = read_item_text(args.item_text) if args.item_text else {}
    stop = _stop_on_signals()
    with EventProducer.from_settings(settings) as producer:
        sent = run_replay(
            producer,
            sequences,
            texts,
            rate=args.rate,
            max_events=args.events,
            event_type=args.event_type,
            duration=args.duration,
            send_catalog=not args.no_catalog,
            stop=stop,
        )
    print(f"replayed {sent} events from {args.sequences} to {settings.topic_events}")
    return 0


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    """Print what arrives on a topic (one JSON line each) — a tiny kcat for shops and demos."""
    import uuid

    from confluent_kafka import Consumer

    from streamrec.client.connection import ConnectionWatch

    conf = settings.confluent_config()
    watch = ConnectionWatch(conf["bootstrap.servers"])
    watch.install(conf)
    conf.update(
        {
            "group.id": f"streamrec-tail-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if args.from_beginning else "latest",
            "enable.auto.commit": False,
        }
    )
    consumer = Consumer(conf)
    topic = args.topic or settings.topic_events
    consumer.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        while args.max is None or seen < args.max:
            if deadline is not None and time.monotonic() > deadline:
                break
            msg = consumer.poll(0.5)
            watch.check()
            if msg is None or msg.error():
                continue
            seen += 1
            value = msg.value() or b""
            key = (msg.key() or b"").decode("utf-8", "replace")
            print(f"{msg.partition()}@{msg.offset()} key={key} {value.decode('utf-8', 'replace')}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    print(f"{seen} messages from {topic}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamrec", description="Streaming recommendations for online shops.")
    parser.add_argument("--version", action="version", version=f"streamrec {__version__}")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (STREAMREC_BOOTSTRAP_SERVERS)")
    parser.add_argument("--data-dir", type=Path, help="data directory (STREAMREC_DATA_DIR)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="torch/faiss device (STREAMREC_DEVICE)")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("STREAMREC_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("kafka", help="run a local single-node Kafka (no Docker needed)")
    p.add_argument("action", choices=["up", "down", "status", "jars"])
    p.set_defaults(func=cmd_kafka)

    p = sub.add_parser("topics", help="create (idempotent) or list streamrec's topics")
    p.add_argument("action", choices=["create", "list"])
    p.add_argument("--partitions", type=positive_int, help="partitions of keyed topics (STREAMREC_PARTITIONS)")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("simulate", help="a synthetic shop emitting catalog and events")
    p.add_argument("--events", type=positive_int, help="stop after this many events")
    p.add_argument("--duration", type=positive_float, help="stop after this many seconds")
    p.add_argument("--rate", type=positive_float, help="events per second (default: as fast as possible)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--items", type=positive_int, default=500, help="catalog size")
    p.add_argument("--users", type=positive_int, default=200, help="number of shoppers")
    p.add_argument("--no-catalog", action="store_true", help="do not emit the catalog first")
    p.add_argument(
        "--new-item-rate",
        type=float,
        default=0.0,
        help="chance per event that a brand-new catalog item appears (zero-shot drill)",
    )
    p.add_argument(
        "--drift",
        type=positive_int,
        metavar="EVENTS",
        help="every EVENTS events tastes shift to other categories/brands, popularity is "
        "re-ranked and new items trend (a stale model loses to a retrained one)",
    )
    p.add_argument(
        "--drift-new-items",
        type=non_negative_int,
        default=10,
        metavar="N",
        help="with --drift: trending new items listed at each shift (default 10)",
    )
    p.add_argument("--id-prefix", help="event id prefix (default: run<unix time>, unique per run)")
    p.add_argument(
        "--write-dataset",
        type=Path,
        metavar="DIR",
        help="write sequences.txt + item_text.tsv + events.csv (typed, timestamped) for training instead of producing",
    )
    p.add_argument("--with-types", action="store_true", help="with --write-dataset: item:type tokens")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("replay", help="replay a real dataset (sequences + item text, or typed events) as events")
    p.add_argument("--sequences", type=existing_file)
    p.add_argument(
        "--typed-events",
        type=existing_file,
        metavar="CSV",
        help="typed events with timestamps (user_id,item_id,category_id,behavior,ts; the "
        "Taobao layout) instead of --sequences: sent in time order with their own "
        "types, timestamps and 30-minute sessions; the catalog carries the categories",
    )
    p.add_argument(
        "--restamp",
        action="store_true",
        help="with --typed-events: stamp events with the send time instead of their own",
    )
    p.add_argument("--item-text", type=existing_file)
    p.add_argument("--rate", type=positive_float)
    p.add_argument("--events", type=positive_int, help="stop after this many events")
    p.add_argument("--duration", type=positive_float, help="stop after this many seconds")
    p.add_argument("--no-catalog", action="store_true", help="do not emit the catalog first")
    p.add_argument("--event-type", default="purchase", choices=list(EVENT_TYPES))
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("tail", help="print messages arriving on a topic")
    p.add_argument("--topic", help="topic (default: the events topic)")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--max", type=positive_int, help="stop after this many messages")
    p.add_argument("--seconds", type=positive_float, help="stop after this many seconds")
    p.set_defaults(func=cmd_tail)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands owned by the model and streams packages."""
    import importlib

    for name in ("streamrec.model.cli", "streamrec.streams.cli"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # pragma: no cover - only while a package is being built
            if exc.name != name:
                raise
            log.debug("commands of %s unavailable: %s", name, exc)
            continue
        module.add_commands(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        overrides = {
            "bootstrap_servers": args.bootstrap_servers,
            "data_dir": args.data_dir,
            "device": args.device,
            "partitions": getattr(args, "partitions", None),
        }
        settings = load_settings(**overrides)
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (StreamrecError, ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"streamrec {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

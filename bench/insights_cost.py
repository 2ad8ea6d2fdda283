"""What reasons, purchase intent and profile messages cost on the worker's compute path.

Usage (from the repo root)::

    STREAMREC_BENCH_DATA=../shared/data/beauty .venv/bin/python bench/insights_cost.py --model DIR \
        [--events 20000] [--categories 100]

Beauty's first events (users interleaved) through the worker's own code without Kafka (state
update, model + index, messages); every batch is scored both ways, the order alternating from
batch to batch, so that a loaded machine's changing load hits both alike. Beauty's items have no
category or brand, so its profiles are empty and never sent; ``--categories N`` gives each item a
pseudo category (and brand) so that the profile messages are measured too. The end-to-end
comparison is ``bench/pipeline.py --insights off,on``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pipeline import beauty_events, data_dir  # noqa: E402

from streamrec.datafiles import read_item_text, read_sequences  # noqa: E402
from streamrec.devtools.replay import catalog_from_dataset, dataset_items  # noqa: E402
from streamrec.schemas import ShopEvent  # noqa: E402


def synthetic_group(item_id: str, n: int, *, salt: str) -> str:
    """A stable pseudo category (or brand) out of ``n`` for an item (Beauty has none)."""
    return f"{salt}{zlib.crc32((salt + item_id).encode()) % n}"


def insights_cost(model: Path, catalog, events: list[ShopEvent], batch: int, categories: int = 0) -> dict[str, float]:
    """The cost of reasons, purchase intent and profile messages on the worker's compute path,
    measured on a loaded machine: every batch is scored both ways (without: ``score`` and plain
    items; with: ``score_explained``, items with reasons, the intent, and the Profile messages the
    worker sends: ``Pipeline.profile_due`` per user with a new event, the event time as the
    clock), the order alternating from batch to batch so that a load change hits both alike.
    ``categories`` > 0 gives each item one of that many pseudo categories and ten times as many
    pseudo brands (counted into the profiles outside the timed part), so profiles are not empty."""
    from streamrec.indexer import ItemIndex
    from streamrec.model.inference import Recommender
    from streamrec.schemas import recommendation_bytes
    from streamrec.serving.state import UserState
    from streamrec.streams.pipeline import Pipeline

    rec = Recommender.load(model, device="cpu")
    p = Pipeline(
        recommender=rec,
        index=ItemIndex(rec.dim),
        top_k=10,
        history_len=50,
        purchased_max=500,
        trigger_types=("view", "add_to_cart", "remove_from_cart", "purchase"),
    )
    p.apply_catalog([(c.item_id, c) for c in catalog])
    states: dict[str, UserState] = {}

    def plain(items: list) -> None:
        for (_st, ev), recs in zip(items, p.score([s for s, _ in items], [])):
            recommendation_bytes(
                user_id=ev.user_id,
                items=recs,
                model_version="bench",
                event_id=ev.event_id,
                event_ts=ev.ts,
                produced_ts=ev.ts,
            )

    def reasons(items: list) -> None:
        lists = p.scorer.recommend_explained([s for s, _ in items])
        for (_st, ev), recs in zip(items, lists):
            recommendation_bytes(
                user_id=ev.user_id,
                items=[(i, s) for i, s, _ in recs],
                model_version="bench",
                event_id=ev.event_id,
                event_ts=ev.ts,
                produced_ts=ev.ts,
                reasons=[r for _, _, r in recs],
                purchase_intent=0.5,
            )

    def intent(items: list) -> None:
        p.scorer.intent([s for s, _ in items])

    sent = [0]
    due = getattr(p, "profile_due", None)  # None: a version that sent one per user with a new event

    def profiles(items: list) -> None:
        for st, ev in items:
            if due is None:
                p.profile_of(ev.user_id, st, event_id=ev.event_id, now_ms=ev.ts).to_bytes()
                sent[0] += 1
            elif due(ev.user_id, st, event_id=ev.event_id, now_ms=ev.ts) is not None:
                sent[0] += 1

    t = {"without": 0.0, "reasons": 0.0, "intent": 0.0, "profiles": 0.0}
    n = 0
    for k, start in enumerate(range(0, len(events), batch)):
        answer = {}
        for ev in events[start : start + batch]:
            st = states.setdefault(ev.user_id, UserState())
            p.apply_event(st, ev)
            if categories:
                st.profile.update(
                    category=synthetic_group(ev.item_id, categories, salt="c"),
                    brand=synthetic_group(ev.item_id, 10 * categories, salt="b"),
                    type=ev.type,
                    ts_ms=ev.ts,
                    weights=p.profile_weights,
                )
            answer[ev.user_id] = (st, ev)
        items = list(answer.values())
        p.score([], events[start : start + batch])  # popularity, once
        # Python's full collections traverse every live object (all the users' states here) and
        # land in whichever timed call happens to allocate at that moment; frozen objects are not
        # traversed, so each call pays only for the garbage it makes itself
        gc.freeze()
        order = [("without", plain), ("reasons", reasons), ("intent", intent), ("profiles", profiles)]
        for name, fn in order if k % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn(items)
            t[name] += time.perf_counter() - t0
        n += len(items)
    with_all = t["reasons"] + t["intent"] + t["profiles"]
    return {
        "users_scored": n,
        "without_per_s": n / t["without"],
        "with_per_s": n / with_all,
        "cost": 1.0 - t["without"] / with_all,
        "reasons_share": (t["reasons"] - t["without"]) / with_all,
        "intent_share": t["intent"] / with_all,
        "profiles_share": t["profiles"] / with_all,
        "profile_messages": sent[0],
        "us_per_user": (with_all - t["without"]) / n * 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        required=True,
        help="checkpoint dir trained on Beauty (an intent model beside it makes the intent part count)",
    )
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument(
        "--categories",
        type=int,
        default=0,
        help="give items this many pseudo categories (and 10x brands) so that profiles are not empty (Beauty has none)",
    )
    args = ap.parse_args()
    d = data_dir()
    if not (d / "sequences.txt").is_file():
        print(f"Beauty data not found at {d} (set STREAMREC_BENCH_DATA)", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    sequences = read_sequences(d / "sequences.txt")
    texts = read_item_text(d / "item_text.tsv")
    catalog = catalog_from_dataset(dataset_items(sequences, texts), texts)
    events = [
        e.model_copy(update={"ts": 1_767_225_600_000 + k})
        for k, e in enumerate(beauty_events(sequences, args.events, prefix="bench"))
    ]
    c = insights_cost(Path(args.model), catalog, events, args.batch, args.categories)
    print(
        f"| compute path, batch {args.batch:d}, {c['users_scored']:d} users scored, "
        f"{args.categories} pseudo categories | users/s |"
    )
    print("|---|---:|")
    print(f"| without reasons, intent, profiles | {c['without_per_s']:,.0f} |")
    print(f"| with reasons, intent, profiles | {c['with_per_s']:,.0f} |")
    print(
        f"cost: {c['cost']:.1%} of the compute path's time (reasons {c['reasons_share']:.1%}, "
        f"purchase intent {c['intent_share']:.1%}, profile messages {c['profiles_share']:.1%}); "
        f"{c['us_per_user']:.1f} µs per scored user; {c['profile_messages']:d} profile messages"
    )
    print(json.dumps({k: round(v, 4) for k, v in c.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

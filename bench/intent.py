"""Purchase intent and interest profiles on the Taobao sample (issue #15), all in one run.

Usage (from the repo root; about a minute on one CPU thread)::

    .venv/bin/python bench/intent.py [--seed 0] [--with-user-vector]

Data: ``$STREAMREC_BENCH_DATA/taobao/user_behavior.csv`` (default ``../shared/data``, also
``/work/shared/data``); skipped with a clear message when absent.

Purchase intent. Sessions are runs of a user's events without a 30-minute gap. Time split (UTC
days): sessions that start on the last two days (2017-12-02, 2017-12-03) are the test set;
sessions that start and end before 2017-12-02 train; the few that straddle the cut are neither
(they still count in their users' past-session features, as anything earlier would in a live
worker). Model selection (logistic vs one hidden layer) is decided on a validation day
(sessions of 2017-12-01, models fitted on the days before), never on test; the chosen kind is
then refitted on all training sessions.

Scoring and masking: one example at every event of a session that is not itself a purchase;
its features come only from that event and the ones before it (the same incremental counters the
worker keeps, :mod:`streamrec.serving.session`), and its label is 1 when a purchase occurs later
in the same session. A purchase is therefore never an input of its own label: prefixes that end
at a purchase are not scored, and events after the last purchase of a session are negatives.

Compared in the same run: the base rate (training positive rate as a constant), the counts-only
logistic baseline of the issue (log1p of views, carts, favs, session length, time since the
session started) and the shipped model (all features of ``FEATURE_NAMES``: the baseline's plus
repeats, carted items, the last event's type and the user's past sessions and purchases).

Interest profile. A profile per user from every event before the last day (2017-12-03), with
the worker's default weights and decay (:class:`streamrec.serving.profile.ProfileWeights`),
predicts the categories of that user's last-day purchases: hit@5 = share of last-day purchase
events whose category is in the user's top 5 (profiles shorter than 5 are filled with the
popular categories). Baseline: the global top-5 categories by the same weighted counts over the
same earlier events.

The last line is one JSON object with the headline numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamrec.model.intent import (  # noqa: E402
    fit_intent, intent_examples, log_loss, pr_auc, roc_auc,
)
from streamrec.serving.profile import InterestProfile, ProfileWeights  # noqa: E402
from streamrec.serving.session import BASELINE_FEATURES, FEATURE_NAMES, columns  # noqa: E402
from streamrec.typed_events import by_user, read_events  # noqa: E402


def day_ms(s: str) -> int:
    return int(datetime.strptime(s, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() * 1000)


TEST_FROM = day_ms("2017-12-02")
VAL_FROM = day_ms("2017-12-01")
LAST_DAY = day_ms("2017-12-03")


def data_file() -> Path | None:
    cands = []
    if os.environ.get("STREAMREC_BENCH_DATA"):
        cands.append(Path(os.environ["STREAMREC_BENCH_DATA"]))
    cands += [REPO.parent / "shared" / "data", REPO.parents[1] / "shared" / "data", Path("/work/shared/data")]
    for c in cands:
        f = c / "taobao" / "user_behavior.csv"
        if f.is_file():
            return f
    return None


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"roc_auc": roc_auc(y, p), "pr_auc": pr_auc(y, p), "log_loss": log_loss(y, p)}


def profile_hits(users: dict, weights: ProfileWeights) -> dict[str, float]:
    """hit@5 of last-day purchase categories: the user's profile vs global category popularity."""
    pop: dict[str, float] = {}
    profiles: dict[str, InterestProfile] = {}
    for u, seq in users.items():
        prof = InterestProfile()
        for e in seq:
            if e.ts_ms >= LAST_DAY:
                break
            prof.update(category=e.category, brand=None, type=e.type, ts_ms=e.ts_ms, weights=weights)
            pop[e.category] = pop.get(e.category, 0.0) + weights.of(e.type)
        profiles[u] = prof
    popular = [c for c, _ in sorted(pop.items(), key=lambda kv: (-kv[1], kv[0]))[:5]]
    hit_prof = hit_pop = hit_prof_only = n = 0
    users_with = set()
    for u, seq in users.items():
        bought = [e.category for e in seq if e.ts_ms >= LAST_DAY and e.type == "purchase"]
        if not bought:
            continue
        users_with.add(u)
        top = [c for c, _ in profiles[u].top("categories", now_ms=LAST_DAY, n=5, half_life_s=weights.half_life_s)]
        filled = top + [c for c in popular if c not in top][: 5 - len(top)]
        for c in bought:
            n += 1
            hit_prof += c in filled
            hit_prof_only += c in top
            hit_pop += c in popular
    return {"purchases": n, "users": len(users_with), "profile_hit_at_5": hit_prof / max(n, 1),
            "profile_only_hit_at_5": hit_prof_only / max(n, 1), "popularity_hit_at_5": hit_pop / max(n, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(1)
    f = data_file()
    if f is None:
        print("taobao data not found (set STREAMREC_BENCH_DATA to the folder holding taobao/)")
        return 0
    t0 = time.monotonic()
    users = by_user(read_events(f))
    ex = intent_examples(users)  # what the worker sees: a favourite arrives as a view
    ex_fav = intent_examples(users, favorites=True)  # the baseline counts favourites apart
    assert np.array_equal(ex.y, ex_fav.y) and np.array_equal(ex.ts_ms, ex_fav.ts_ms)
    train = ex.select(ex.session_end_ms < TEST_FROM)
    test = ex.select(ex.session_start_ms >= TEST_FROM)
    train_fav = ex_fav.select(ex.session_end_ms < TEST_FROM)
    test_fav = ex_fav.select(ex.session_start_ms >= TEST_FROM)
    fit_part = ex.select(ex.session_end_ms < VAL_FROM)
    val = ex.select((ex.session_start_ms >= VAL_FROM) & (ex.session_end_ms < TEST_FROM))
    print(f"data {f}: {len(users)} users; examples train {len(train.y)} (pos {train.y.mean():.3f}), "
          f"test {len(test.y)} (pos {test.y.mean():.3f}), sessions in test "
          f"{len(set(zip(test.user, test.session_start_ms.tolist())))}")

    base_cols = columns(BASELINE_FEATURES)
    all_cols = list(range(len(FEATURE_NAMES)))
    # model selection on the validation day only
    val_scores = {}
    for hidden in (0, 16):
        m = fit_intent(fit_part.x, fit_part.y, feature_names=FEATURE_NAMES, hidden=hidden,
                       steps=args.steps, seed=args.seed)
        val_scores[hidden] = metrics(val.y, m.predict(val.x))
        print(f"validation hidden={hidden}: " + ", ".join(f"{k} {v:.4f}" for k, v in val_scores[hidden].items()))
    hidden = min(val_scores, key=lambda h: val_scores[h]["log_loss"])

    base_rate = float(train.y.mean())
    baseline = fit_intent(train_fav.x[:, base_cols], train.y, feature_names=BASELINE_FEATURES, hidden=0,
                          steps=args.steps, seed=args.seed)
    with_favs = fit_intent(train_fav.x, train.y, feature_names=FEATURE_NAMES, hidden=hidden,
                           steps=args.steps, seed=args.seed)
    model = fit_intent(train.x[:, all_cols], train.y, feature_names=FEATURE_NAMES, hidden=hidden,
                       steps=args.steps, seed=args.seed)
    rows = {
        "base rate": metrics(test.y, np.full(len(test.y), base_rate)),
        "counts-only logistic (baseline)": metrics(test.y, baseline.predict(test_fav.x[:, base_cols])),
        f"session+user features ({'logistic' if hidden == 0 else f'MLP {hidden}'}), shipped":
            metrics(test.y, model.predict(test.x)),
        "same, favourites apart (not seen by a worker)": metrics(test.y, with_favs.predict(test_fav.x)),
    }
    print()
    print(f"| {'purchase intent, test (last two days)':<52} | ROC AUC | PR AUC | log loss |")
    print(f"|{'-' * 54}|--------:|-------:|---------:|")
    for name, m in rows.items():
        print(f"| {name:<52} | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} | {m['log_loss']:.4f} |")

    weights = ProfileWeights()
    prof = profile_hits(users, weights)
    print()
    print(f"interest profile: {prof['purchases']} last-day purchases of {prof['users']} users")
    print("| categories of last-day purchases | hit@5 |")
    print("|---|---:|")
    print(f"| profile (earlier days), filled with popular | {prof['profile_hit_at_5']:.4f} |")
    print(f"| profile alone | {prof['profile_only_hit_at_5']:.4f} |")
    print(f"| global category popularity | {prof['popularity_hit_at_5']:.4f} |")
    print(f"\n{time.monotonic() - t0:.0f} s")
    mname = list(rows)[2]
    out = {
        "model": "logistic" if hidden == 0 else f"mlp{hidden}",
        "model_roc_auc": round(rows[mname]["roc_auc"], 4), "model_pr_auc": round(rows[mname]["pr_auc"], 4),
        "model_log_loss": round(rows[mname]["log_loss"], 4),
        "baseline_roc_auc": round(rows["counts-only logistic (baseline)"]["roc_auc"], 4),
        "baseline_pr_auc": round(rows["counts-only logistic (baseline)"]["pr_auc"], 4),
        "baseline_log_loss": round(rows["counts-only logistic (baseline)"]["log_loss"], 4),
        "base_rate_log_loss": round(rows["base rate"]["log_loss"], 4),
        "base_rate_pr_auc": round(rows["base rate"]["pr_auc"], 4),
        "test_examples": int(len(test.y)), "test_positive_rate": round(float(test.y.mean()), 4),
        "favs_apart_roc_auc": round(rows[list(rows)[3]]["roc_auc"], 4),
        "favs_apart_log_loss": round(rows[list(rows)[3]]["log_loss"], 4),
        "profile_hit_at_5": round(prof["profile_hit_at_5"], 4),
        "profile_only_hit_at_5": round(prof["profile_only_hit_at_5"], 4),
        "popularity_hit_at_5": round(prof["popularity_hit_at_5"], 4),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

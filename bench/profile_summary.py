"""Summarise py-spy raw profiles (``py-spy record --format raw --threads --idle``) per thread.

For each thread: its share of the samples, the share spent idle (waiting in epoll/select/a lock or
a queue), and the functions with the largest inclusive share (a function counted once per
sample however deep it recurses), or with ``--self`` the leaf frames. ``bench/pipeline.py --profile DIR`` writes
such files.

    .venv/bin/python bench/profile_summary.py DIR/at_least_once-drain.txt [--top 15]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

#: frames that mean "this thread is waiting, not working"
IDLE = (
    "epoll",
    "select (",
    "poll (selectors",
    "wait (threading",
    "_worker (concurrent",
    "get (queue",
    "acquire",
    "sleep",
    "run_forever (asyncio/base_events.py)",
)
IDLE_RE = re.compile(r"\b(select|poll|epoll|wait|_wait_for_tstate_lock|get|sleep)\b \(")


def parse(path: Path) -> tuple[dict[str, int], dict[str, Counter], dict[str, Counter], dict[str, int]]:
    samples: dict[str, int] = defaultdict(int)
    inclusive: dict[str, Counter] = defaultdict(Counter)
    self_time: dict[str, Counter] = defaultdict(Counter)
    idle: dict[str, int] = defaultdict(int)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0]
        samples[thread] += n
        leaf = frames[-1]
        self_time[thread][re.sub(r":\d+\)$", ")", leaf)] += n
        if "(idle)" in stack or any(k in leaf for k in IDLE):
            idle[thread] += n
        seen = set()
        for f in frames[1:]:
            name = re.sub(r":\d+\)$", ")", f)  # drop line numbers
            if name not in seen:
                seen.add(name)
                inclusive[thread][name] += n
    return samples, inclusive, self_time, idle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--self", action="store_true", help="rank by self time (the sampled leaf frame)")
    ap.add_argument("--grep", help="only show functions matching this regex")
    args = ap.parse_args()
    for f in args.files:
        samples, inclusive, self_time, idle = parse(Path(f))
        total = sum(samples.values())
        print(f"== {f}: {total} samples")
        for thread, n in sorted(samples.items(), key=lambda kv: -kv[1]):
            if n < 0.01 * total:
                continue
            print(f"-- {thread}: {n} samples, idle {100 * idle[thread] / n:.1f} %")
            rows = (self_time if args.self else inclusive)[thread].most_common()
            if args.grep:
                rows = [r for r in rows if re.search(args.grep, r[0])]
            for name, c in rows[: args.top]:
                print(f"   {100 * c / n:5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

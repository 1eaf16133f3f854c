#!/usr/bin/env python3
"""Summarises a FLAME_NCCL_TIMELINE file (Note [collective timeline] in dist/collective_timeline.h).

Splits the file into DDP steps (a step starts at the issue of "DDP bucket 0"), skips the first
steps (warm-up), and prints, for each bucket, the median time of each mark relative to the moment
the last bucket was issued, which is when backward's last gradient was complete: negative times
fall inside backward, positive ones after it. Waits named "collective <n>" (older than the
communicator's last 64 collectives) are left out.
"""
import argparse
import statistics
import sys

MARKS = ["issue", "begin", "staged", "gathered", "end", "wait"]


def read_steps(path):
    steps = []
    with open(path) as lines:
        for number, line in enumerate(lines, 1):
            fields = line.rstrip("\n").split("\t")
            try:
                ms, what = float(fields[0]), fields[3]
                mark = fields[2]
            except (IndexError, ValueError):
                print(f"{path}:{number}: skipped, not '<ms>\\t<stream>\\t<mark>\\t<what>': {line!r}", file=sys.stderr)
                continue
            if ms < 0 or (not what.startswith("DDP bucket ") and what != "all"):
                continue
            if mark == "issue" and what == "DDP bucket 0":
                steps.append({})
            if steps:
                steps[-1].setdefault((what, mark), ms)
    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("timeline", help="a <path>.rank<r> file that FLAME_NCCL_TIMELINE=<path> wrote")
    parser.add_argument("--skip", type=int, default=20, help="steps to leave out at the start (default 20)")
    args = parser.parse_args()
    steps = read_steps(args.timeline)[args.skip:]
    if not steps:
        sys.exit(f"{args.timeline}: no DDP step after the first {args.skip}")
    buckets = sorted({what for step in steps for (what, _) in step if what != "all"}, key=lambda w: int(w.split()[-1]))
    last = buckets[-1]
    print(f"{len(steps)} steps; ms relative to the issue of {last} (the end of backward's gradients)")
    print(f"{'bucket':14}" + "".join(f"{m:>10}" for m in MARKS))
    for what in buckets + ["all"]:
        row = f"{what:14}"
        for mark in MARKS:
            values = [s[(what, mark)] - s[(last, "issue")] for s in steps if (what, mark) in s and (last, "issue") in s]
            row += f"{statistics.median(values):10.3f}" if values else f"{'':>10}"
        print(row)
    durations = [s[(last, "issue")] - s[("DDP bucket 0", "issue")] for s in steps if (last, "issue") in s]
    print(f"from the issue of DDP bucket 0 to that of {last}: {statistics.median(durations):.3f} ms (median)")


if __name__ == "__main__":
    main()

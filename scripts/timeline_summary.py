#!/usr/bin/env python3
"""Summarises a FLAME_NCCL_TIMELINE file (Note [collective timeline] in dist/collective_timeline.h).

Usage: scripts/timeline_summary.py <timeline>.rank0 [--skip N]

Splits the file into DDP steps (a step starts at the issue of "DDP bucket 0"), skips the first N
steps (default 20, warm-up), and prints, for each bucket, the median time of each mark relative to
the moment the last bucket was issued, which is when backward's last gradient was complete: so
negative times fall inside backward, positive ones after it.
"""
import statistics
import sys


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit(__doc__)
    path, skip = args[0], 20
    if len(args) == 3 and args[1] == "--skip":
        skip = int(args[2])
    steps = []
    for line in open(path):
        ms, stream, mark, what = line.rstrip("\n").split("\t")
        if not what.startswith("DDP bucket ") and what != "all":
            continue
        if mark == "issue" and what == "DDP bucket 0":
            steps.append({})
        if steps:
            steps[-1].setdefault((what, mark), float(ms))
    steps = steps[skip:]
    if not steps:
        sys.exit(f"{path}: no DDP step after the first {skip}")
    buckets = sorted({what for step in steps for (what, _) in step if what != "all"}, key=lambda w: int(w.split()[-1]))
    last = buckets[-1]
    marks = ["issue", "begin", "staged", "gathered", "end", "wait"]
    print(f"{len(steps)} steps; ms relative to the issue of {last} (the end of backward's gradients)")
    print(f"{'bucket':14}" + "".join(f"{m:>10}" for m in marks))
    for what in buckets + ["all"]:
        row = f"{what:14}"
        for mark in marks:
            values = [s[(what, mark)] - s[(last, "issue")] for s in steps if (what, mark) in s and (last, "issue") in s]
            row += f"{statistics.median(values):10.3f}" if values else f"{'':>10}"
        print(row)
    durations = [s[(last, "issue")] - s[("DDP bucket 0", "issue")] for s in steps if (last, "issue") in s]
    print(f"from the issue of DDP bucket 0 to that of {last}: {statistics.median(durations):.3f} ms (median)")


if __name__ == "__main__":
    main()

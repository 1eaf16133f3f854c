#!/usr/bin/env python3
"""Reads a TensorBoard event file written by FLAME with TensorBoard's own loader.

    tensorboard_read.py FILE

Loads FILE with tensorboard.backend.event_processing.event_accumulator.EventAccumulator (which checks
every frame's CRCs) and prints one JSON object on stdout:

    {"file_version": 2.0, "scalars": {"<tag>": [[step, value, wall_time], ...], ...}}

Exits 1, with the reason on stderr, when FILE holds no events or cannot be read.
tests/launch/metrics_test.cpp (TensorBoardPython) runs it and checks the output.
"""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator


def main(argv):
    if len(argv) != 2:
        print("usage: tensorboard_read.py FILE", file=sys.stderr)
        return 1
    # 0: keep every event (the default keeps a sample of 10,000 scalars per tag).
    accumulator = event_accumulator.EventAccumulator(argv[1], size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    if accumulator.file_version is None and not accumulator.Tags()["scalars"]:
        print(f"tensorboard_read: no events read from {argv[1]}", file=sys.stderr)
        return 1
    scalars = {
        tag: [[event.step, event.value, event.wall_time] for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }
    print(json.dumps({"file_version": accumulator.file_version, "scalars": scalars}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

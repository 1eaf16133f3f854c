#!/usr/bin/env bash
# Exact resume after a stop signal (Note [exact resume], Note [stop requests] in
# launch/train/trainer.h), on the CPU:
#   resume_test.sh FLAME_TRAIN FLAME_PREP WORK_DIR NP SIGNAL
# NP 0 runs flame-train as one plain process; NP >= 1 under `mpirun -np NP`. The signal goes to
# the flame-train processes themselves (as Slurm delivers it to every task; whether mpirun forwards
# a signal differs between Open MPI builds). The test
#   1. trains an uninterrupted reference run;
#   2. starts the same run again, sends SIGNAL once its first checkpoint is complete, and expects
#      exit status 85 with a checkpoint written after the step it stopped at;
#   3. resumes it with --resume auto and expects it to finish;
#   4. compares: summary.json's final_loss and every logged loss after the resume step must be
#      identical (the same JSON text) to the reference run's;
#   5. checks that every evaluation covered all 255 test samples, whatever NP (255 is odd, so two
#      ranks get 128 and 127).
set -euo pipefail
train=$1 prep=$2 work=$3 np=$4 signal=$5
rm -rf "$work"
mkdir -p "$work"
cd "$work"
"$prep" synthetic --out data/train --kind images --samples 2048 --seed 11 >/dev/null
"$prep" synthetic --out data/test --kind images --samples 255 --seed 12 >/dev/null
cat >run.toml <<'TOML'
[model]
name = "mlp"
[data]
train = "data/train"
test = "data/test"
workers = 1
[train]
batch_size = 16
steps = 400
seed = 5
device = "cpu"
[optimizer]
name = "adamw"
lr = 1e-3
weight_decay = 0.01
[schedule]
name = "warmup_cosine"
warmup_steps = 20
[eval]
every_steps = 100
[checkpoint]
every_steps = 25
keep_last = 2
[log]
every_steps = 5
progress = false
TOML

# The config's absolute path makes the command lines of this test's processes unique: the pkill
# below must not reach another test's flame-train (CTest runs the variants of this test in parallel).
config=$PWD/run.toml
launch() {  # launch LOG_DIR EXTRA_ARGS... (in the background; sets $pid)
  local dir=$1
  shift
  if [ "$np" -eq 0 ]; then
    "$train" "$config" --set "log.dir=$dir" "$@" >"$dir.out" 2>&1 &
  else
    mpirun --allow-run-as-root --oversubscribe -np "$np" "$train" "$config" --set "log.dir=$dir" "$@" >"$dir.out" 2>&1 &
  fi
  pid=$!
}
fail() {
  echo "resume_test: $*" >&2
  for f in *.out; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done
  exit 1
}

launch reference
wait "$pid" || fail "the reference run failed"

launch interrupted
for _ in $(seq 1 600); do
  [ -e interrupted/checkpoints/step-00000025/COMPLETE ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
[ -e interrupted/checkpoints/step-00000025/COMPLETE ] || fail "no checkpoint appeared before the run ended"
if [ "$np" -eq 0 ]; then
  kill "-$signal" "$pid"
else
  pkill "-$signal" -f "^$train $config --set log.dir=interrupted" || fail "no flame-train rank to signal"
fi
status=0
wait "$pid" || status=$?
[ "$status" -eq 85 ] || fail "expected exit status 85 after SIG$signal, got $status"
grep -q "stopped after step" interrupted.out || fail "no 'stopped after step' message"
stopped_at=$(python3 -c 'import json; print(json.load(open("interrupted/summary.json"))["steps"])')
[ "$stopped_at" -lt 400 ] || fail "the run was not stopped early (it reached step $stopped_at)"
[ -e "interrupted/checkpoints/$(printf 'step-%08d' "$stopped_at")/COMPLETE" ] || fail "no checkpoint at step $stopped_at"

mv interrupted.out interrupted-first.out
launch interrupted --resume auto
wait "$pid" || fail "the resumed run failed"
grep -q "resumed from .*step-$(printf '%08d' "$stopped_at")" interrupted.out || fail "the run did not resume from step $stopped_at"

python3 - "$stopped_at" <<'PY'
import json, sys
stopped_at = int(sys.argv[1])
def losses(path):
    out = {}
    for line in open(path):
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = json.dumps(record["loss"])
    return out
reference, resumed = losses("reference/metrics.jsonl"), losses("interrupted/metrics.jsonl")
later = sorted(step for step in reference if step > stopped_at)
assert later, "no logged step after the resume"
for step in later:
    assert resumed.get(step) == reference[step], f"step {step}: loss {resumed.get(step)} != {reference[step]}"
a = json.load(open("reference/summary.json"))
b = json.load(open("interrupted/summary.json"))
assert json.dumps(a["final_loss"]) == json.dumps(b["final_loss"]), (a["final_loss"], b["final_loss"])
assert a["steps"] == b["steps"] == 400
assert json.dumps(a["test_accuracy"]) == json.dumps(b["test_accuracy"])
evaluated = [json.loads(line)["test_samples"] for line in open("reference/metrics.jsonl") if "test_samples" in line]
assert evaluated and all(n == 255 for n in evaluated), f"evaluations covered {evaluated} samples, not 255"
print(f"resume_test: stopped at step {stopped_at}; {len(later)} later losses and the final loss "
      f"{a['final_loss']} identical")
PY

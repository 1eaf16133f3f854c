# shellcheck shell=bash
# Sourced by the Slurm tests (tests/cluster/*_test.sh): prerequisites, the local cluster's
# environment, the tiny data set and config, job polling and the diagnostics printed on failure.
# Not a test itself. A test that cannot run here (not root, no Slurm) exits 77: CTest's skip.

slurm_test_source_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly slurm_test_source_dir
readonly local_slurm="$slurm_test_source_dir/../../cluster/local_slurm.sh"
export PATH="$PATH:/usr/sbin:/sbin"

# A job's output file and id, for the diagnostics; set by the tests.
job_output=""
job_id=""

skip() {
  echo "SKIP: $*"
  exit 77
}

diagnostics() {
  echo "==== diagnostics ====" >&2
  if [ -n "$job_output" ] && [ -f "$job_output" ]; then
    echo "---- job output $job_output ----" >&2
    tail -n 60 "$job_output" >&2
  fi
  if [ -n "$job_id" ]; then
    echo "---- scontrol show job $job_id ----" >&2
    timeout 10 scontrol show job "$job_id" >&2 2>&1 || true
  fi
  echo "---- squeue / sinfo ----" >&2
  timeout 10 squeue >&2 2>&1 || true
  timeout 10 sinfo >&2 2>&1 || true
  local log
  for log in slurmctld slurmd; do
    echo "---- last lines of $FLAME_SLURM_DIR/log/$log.log ----" >&2
    tail -n 20 "$FLAME_SLURM_DIR/log/$log.log" >&2 2>/dev/null || true
  done
}

fail() {
  echo "FAIL: $*" >&2
  diagnostics
  exit 1
}

# slurm_prerequisites: exits 77 unless this machine can run the local cluster.
slurm_prerequisites() {
  [ "$(id -u)" -eq 0 ] || skip "not root: the local Slurm cluster (cluster/local_slurm.sh) runs as root"
  local tool
  for tool in slurmctld slurmd sbatch srun scontrol squeue scancel munged; do
    command -v "$tool" >/dev/null || skip "no $tool: install Debian's slurmctld slurmd slurm-client munge"
  done
}

# slurm_test_init FLAME_TRAIN FLAME_PREP WORK_DIR: checks the arguments and the cluster, sets
# flame_train, flame_prep and work (emptied), and the cluster's environment (SLURM_CONF).
slurm_test_init() {
  if [ $# -ne 3 ]; then
    echo "usage: $0 FLAME_TRAIN FLAME_PREP WORK_DIR" >&2
    exit 2
  fi
  slurm_prerequisites
  flame_train=$(realpath "$1")
  flame_prep=$(realpath "$2")
  work=$(realpath -m "$3")
  [ -x "$flame_train" ] || fail "no flame-train binary at $1"
  [ -x "$flame_prep" ] || fail "no flame-prep binary at $2"
  eval "$(bash "$local_slurm" env)"
  timeout 10 sinfo -h >/dev/null 2>&1 ||
    fail "the local Slurm cluster does not answer (SLURM_CONF=$SLURM_CONF): the fixture test" \
      "slurm_cluster_start starts it, or run 'cluster/local_slurm.sh start'"
  rm -rf "$work"
  mkdir -p "$work"
  # One BLAS thread per rank: two ranks share CI's two cores, and every run of a test computes alike.
  export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
}

# make_tiny_dataset: $work/data/{train,test}, synthetic Fashion-MNIST-shaped images (1x28x28, 10
# classes).
make_tiny_dataset() {
  "$flame_prep" synthetic --kind images --samples 2048 --seed 1 --out "$work/data/train" >/dev/null ||
    fail "flame-prep synthetic (train) failed"
  "$flame_prep" synthetic --kind images --samples 512 --seed 2 --out "$work/data/test" >/dev/null ||
    fail "flame-prep synthetic (test) failed"
}

# write_tiny_config FILE STEPS LOG_DIR: an MLP config that checkpoints every 10 steps.
write_tiny_config() {
  cat >"$1" <<EOF
[model]
name = "mlp"

[data]
train = "$work/data/train"
test = "$work/data/test"
workers = 1

[train]
batch_size = 32
steps = $2
seed = 7
device = "cpu"

[optimizer]
name = "adamw"
lr = 1e-3

[eval]
batch_size = 256

[checkpoint]
every_steps = 10
keep_last = 2

[log]
dir = "$3"
every_steps = 5
tensorboard = false
progress = false
EOF
}

# sbatch_wait SECONDS SBATCH_ARGUMENTS...: runs `sbatch --wait --parsable -o "$job_output"
# SBATCH_ARGUMENTS...` (job options, then the batch script) and waits for the job's end. sbatch
# --wait exits with the job's exit status; SECONDS bounds it so that a stuck job cannot hang the
# test. Sets job_id (sbatch's output is kept in $work/sbatch.out) and fails the test unless the job
# was submitted, finished within SECONDS and exited 0.
sbatch_wait() {
  local limit=$1 status started=$SECONDS
  shift
  [ -n "$job_output" ] || fail "sbatch_wait: set job_output first"
  timeout "$limit" sbatch --wait --parsable -o "$job_output" "$@" >"$work/sbatch.out"
  status=$?
  job_id=$(head -n 1 "$work/sbatch.out")
  echo "job ${job_id:-?}: sbatch --wait exited with $status after $((SECONDS - started)) s"
  [ -n "$job_id" ] || fail "sbatch did not submit the job (it exited with $status)"
  [ "$status" -ne 124 ] || fail "job $job_id did not finish within $limit s"
  [ "$status" -eq 0 ] || fail "job $job_id failed: sbatch --wait exited with $status"
}

# job_field JOB FIELD: FIELD's value in `scontrol show job JOB` (JobState, Restarts, ExitCode, ...).
job_field() {
  timeout 10 scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

# expect_job_field JOB FIELD VALUE: fails the test unless the job's FIELD is VALUE.
expect_job_field() {
  local value
  value=$(job_field "$1" "$2")
  [ "$value" = "$3" ] || fail "job $1's $2 is '$value', expected '$3'"
}

# summary_value FILE KEY: KEY's value in a summary.json exactly as written (a number's text, not
# reparsed), or fails the test.
summary_value() {
  python3 - "$1" "$2" <<'EOF' || fail "no '$2' in $1"
import json, sys
with open(sys.argv[1]) as f:
    summary = json.load(f, parse_float=str, parse_int=str)
print(summary[sys.argv[2]])
EOF
}

# is_finite NUMBER_TEXT: exit 0 when the text is a finite number.
is_finite() {
  python3 -c 'import math, sys; sys.exit(0 if math.isfinite(float(sys.argv[1])) else 1)' "$1" 2>/dev/null
}

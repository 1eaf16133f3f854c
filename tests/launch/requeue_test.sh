#!/usr/bin/env bash
# SIGUSR1 that reaches one rank only still requeues the Slurm job (Note [stop requests] in
# launch/train/trainer.h): the ranks agree on which signal came, and rank 0 requeues. On the CPU,
# under `mpirun -np 2`, with SLURM_JOB_ID set and a stand-in `scontrol` on PATH that records its
# arguments:
#   requeue_test.sh FLAME_TRAIN FLAME_PREP WORK_DIR
# The signal goes to rank 1 alone. Expected: exit status 85, a checkpoint of the stopping step, and
# `scontrol requeue 4242` run once.
set -euo pipefail
train=$1 prep=$2 work=$3
rm -rf "$work"
mkdir -p "$work/bin"
cd "$work"
"$prep" synthetic --out data/train --kind images --samples 512 --seed 3 >/dev/null
cat >"$work/bin/scontrol" <<SH
#!/usr/bin/env bash
echo "\$@" >>"$work/scontrol.calls"
SH
chmod +x "$work/bin/scontrol"
config=$PWD/run.toml
cat >"$config" <<'TOML'
[model]
name = "mlp"
[data]
train = "data/train"
workers = 1
[train]
batch_size = 16
steps = 1000000
device = "cpu"
[checkpoint]
every_steps = 20
keep_last = 2
[log]
every_steps = 5
progress = false
tensorboard = false
TOML

fail() {
  echo "requeue_test: $*" >&2
  tail -n 20 run.out >&2 || true
  exit 1
}

SLURM_JOB_ID=4242 PATH="$work/bin:$PATH" mpirun --allow-run-as-root --oversubscribe -np 2 -x SLURM_JOB_ID -x PATH \
  "$train" "$config" --set log.dir=run >run.out 2>&1 &
pid=$!
for _ in $(seq 1 1200); do
  [ -e run/checkpoints/step-00000020/COMPLETE ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
[ -e run/checkpoints/step-00000020/COMPLETE ] || fail "no checkpoint appeared before the run ended"
rank1=""
for candidate in $(pgrep -f "^$train $config" || true); do
  if tr '\0' '\n' <"/proc/$candidate/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1"; then rank1=$candidate; fi
done
[ -n "$rank1" ] || fail "rank 1's process was not found"
kill -USR1 "$rank1"
status=0
wait "$pid" || status=$?
[ "$status" -eq 85 ] || fail "expected exit status 85 after SIGUSR1 on rank 1, got $status"
grep -q "stopped after step .* by SIGUSR1" run.out || fail "no 'stopped after step ... by SIGUSR1' message"
[ -e scontrol.calls ] || fail "scontrol was not run: the job would not be requeued"
[ "$(cat scontrol.calls)" = "requeue 4242" ] || fail "scontrol ran with '$(cat scontrol.calls)', expected 'requeue 4242' once"
echo "requeue_test: SIGUSR1 on rank 1 stopped both ranks and rank 0 requeued job 4242"

#!/usr/bin/env bash
# The requeue flow on the local Slurm cluster, through cluster/train_single_node.sbatch: a 2-task CPU
# job is sent SIGUSR1 once its first checkpoint exists; flame-train checkpoints, requeues the job and
# exits 85; the requeued job resumes from the checkpoint and must end with exactly the final loss of
# an uninterrupted run (the same config under plain mpirun).
#   slurm_requeue_test.sh FLAME_TRAIN FLAME_PREP WORK_DIR
# Exit: 0 passed, 1 failed (with diagnostics), 77 skipped (not root, no Slurm).
set -uo pipefail
source "$(dirname "$0")/slurm_test_lib.sh"
slurm_test_init "$@"

readonly steps=60
readonly template="$slurm_test_source_dir/../../cluster/train_single_node.sbatch"
make_tiny_dataset
write_tiny_config "$work/cfg.toml" "$steps" "$work/run"

# The uninterrupted reference, outside Slurm (an enclosing allocation's variables would make mpirun
# launch through it).
started=$SECONDS
env -u SLURM_JOB_ID -u SLURM_JOBID mpirun --allow-run-as-root --oversubscribe -np 2 \
  "$flame_train" "$work/cfg.toml" --set train.device=cpu --set "log.dir=$work/reference" --resume none \
  >"$work/reference.out" 2>&1 || { cat "$work/reference.out" >&2; fail "the reference run failed"; }
reference_loss=$(summary_value "$work/reference/summary.json" final_loss) || exit 1
is_finite "$reference_loss" || fail "the reference final_loss is '$reference_loss'"
echo "reference run: final_loss $reference_loss after $((SECONDS - started)) s"

# The template as a user submits it, shrunk to this machine: no GPU, 2 tasks of 1 CPU.
job_output=$work/job.out
started=$SECONDS
job_id=$(FLAME_TRAIN=$flame_train sbatch --parsable --gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1 \
  -J flame-slurm-requeue -o "$job_output" "$template" "$work/cfg.toml" --set train.device=cpu) ||
  fail "sbatch of $template failed"
echo "job $job_id submitted"

# The first complete checkpoint, then SIGUSR1 to every task of the job's steps.
# The directory is polled every 50 ms (the run takes seconds), the job's state once a second.
deadline=$((SECONDS + 90))
polls=0
until compgen -G "$work/run/checkpoints/step-*/COMPLETE" >/dev/null; do
  if ((polls++ % 20 == 0)); then
    state=$(job_field "$job_id" JobState)
    case $state in
      PENDING | CONFIGURING | RUNNING) ;;
      *) fail "job $job_id is $state before writing its first checkpoint" ;;
    esac
  fi
  ((SECONDS < deadline)) || fail "no checkpoint under $work/run/checkpoints within 90 s"
  sleep 0.05
done
first_checkpoint=$(compgen -G "$work/run/checkpoints/step-*/COMPLETE" | head -n 1)
scancel --signal=USR1 "$job_id" || fail "scancel --signal=USR1 $job_id failed"
echo "signalled job $job_id after $((SECONDS - started)) s, at ${first_checkpoint%/COMPLETE}"

# Wait for the requeue and the second run's end. Slurm holds a requeued job for about two minutes
# before it may start again; the test lifts that hold (StartTime=now) so that it stays short.
deadline=$((SECONDS + 150))
while :; do
  state=$(job_field "$job_id" JobState)
  restarts=$(job_field "$job_id" Restarts)
  case $state in
    COMPLETED) break ;;
    PENDING)
      [ "${restarts:-0}" -ge 1 ] && timeout 10 scontrol update "JobId=$job_id" StartTime=now 2>/dev/null
      ;;
    RUNNING | CONFIGURING | COMPLETING | REQUEUED | REQUEUE_FED | REQUEUE_HOLD) ;;
    *) fail "job $job_id ended $state (restarts ${restarts:-?}) instead of completing after the requeue" ;;
  esac
  ((SECONDS < deadline)) ||
    fail "job $job_id ($state, restarts ${restarts:-?}) did not complete within 150 s of the signal"
  sleep 0.25
done
echo "job $job_id completed after $((SECONDS - started)) s"

# The signal led to a requeue and the second run resumed from a checkpoint.
[ "$(job_field "$job_id" Restarts)" -ge 1 ] ||
  fail "job $job_id completed without a requeue: the run ended before SIGUSR1 took effect," \
    "or flame-train did not requeue it"
expect_job_field "$job_id" ExitCode 0:0
grep -q "attempt 2," "$job_output" || fail "the job output shows no second attempt"
grep -q "resumed from" "$job_output" ||
  fail "the job output shows no 'resumed from': the requeued run did not resume"
grep -m 1 "resumed from" "$job_output"

# And it ends exactly where the uninterrupted run does.
final_loss=$(summary_value "$work/run/summary.json" final_loss) || exit 1
world_size=$(summary_value "$work/run/summary.json" world_size) || exit 1
summary_steps=$(summary_value "$work/run/summary.json" steps) || exit 1
[ "$world_size" = 2 ] || fail "world_size is $world_size, expected 2"
[ "$summary_steps" = "$steps" ] || fail "the summary counts $summary_steps steps, expected $steps"
[ "$final_loss" = "$reference_loss" ] ||
  fail "the requeued job's final_loss $final_loss differs from the uninterrupted run's $reference_loss"
echo "PASS: job $job_id: signalled, requeued, resumed; final_loss $final_loss equals the reference"

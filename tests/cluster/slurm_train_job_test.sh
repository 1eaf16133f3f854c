#!/usr/bin/env bash
# flame-train as a 2-task CPU job on the local Slurm cluster: `sbatch --wait -n 2` of a batch script
# that runs `srun --mpi=pmix flame-train`; the job must complete with exit 0 and leave a summary
# with a finite final loss from 2 ranks after the configured steps.
#   slurm_train_job_test.sh FLAME_TRAIN FLAME_PREP WORK_DIR
# Exit: 0 passed, 1 failed (with diagnostics), 77 skipped (not root, no Slurm).
set -uo pipefail
source "$(dirname "$0")/slurm_test_lib.sh"
slurm_test_init "$@"

readonly steps=30
make_tiny_dataset
write_tiny_config "$work/cfg.toml" "$steps" "$work/run"
cat >"$work/job.sh" <<EOF
#!/bin/bash
srun --mpi=pmix "$flame_train" "$work/cfg.toml" --set train.device=cpu
EOF

job_output=$work/job.out
sbatch_wait 240 -n 2 -J flame-slurm-train "$work/job.sh"
# The controller's record agrees (no accounting database here: scontrol shows a finished job for
# 5 s at least).
expect_job_field "$job_id" JobState COMPLETED
expect_job_field "$job_id" ExitCode 0:0
[ -f "$job_output" ] || fail "no job output file $job_output"

summary=$work/run/summary.json
[ -f "$summary" ] || fail "flame-train wrote no $summary"
final_loss=$(summary_value "$summary" final_loss) || exit 1
world_size=$(summary_value "$summary" world_size) || exit 1
summary_steps=$(summary_value "$summary" steps) || exit 1
is_finite "$final_loss" || fail "final_loss is '$final_loss', not a finite number"
[ "$world_size" = 2 ] || fail "world_size is $world_size, expected the job's 2 tasks"
[ "$summary_steps" = "$steps" ] || fail "the summary counts $summary_steps steps, expected $steps"
echo "PASS: job $job_id: 2 ranks, $steps steps, final_loss $final_loss"

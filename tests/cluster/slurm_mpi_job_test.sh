#!/usr/bin/env bash
# The local cluster's MPI path, without flame-train: `sbatch --wait -n 2` of a batch script that runs
# an MPI GoogleTest suite (collectives_test: all-reduce sums checked against closed forms) as
# `srun --mpi=pmix`, so both ranks find each other through Slurm's PMIx. The job must exit 0, its
# ranks must be PMIx ranks 0 and 1, and the suite must pass.
#   slurm_mpi_job_test.sh MPI_TEST_PROGRAM WORK_DIR
# Exit: 0 passed, 1 failed (with diagnostics), 77 skipped (not root, no Slurm).
set -uo pipefail
source "$(dirname "$0")/slurm_test_lib.sh"
if [ $# -ne 2 ]; then
  echo "usage: $0 MPI_TEST_PROGRAM WORK_DIR" >&2
  exit 2
fi
slurm_prerequisites
program=$(realpath "$1")
work=$(realpath -m "$2")
eval "$(bash "$local_slurm" env)"
rm -rf "$work"
mkdir -p "$work"
cat >"$work/job.sh" <<SCRIPT
#!/bin/bash
srun --mpi=pmix bash -c 'echo "pmix rank \$PMIX_RANK of \$SLURM_NTASKS"; exec "$program"'
SCRIPT

job_output=$work/job.out
sbatch_wait 120 -n 2 -J flame-slurm-mpi "$work/job.sh"
expect_job_field "$job_id" JobState COMPLETED
ranks=$(sed -n 's/^pmix rank \([0-9]*\) of 2$/\1/p' "$job_output" | sort | tr '\n' ' ')
[ "$ranks" = "0 1 " ] || fail "the job's tasks reported PMIx ranks '$ranks', expected '0 1 '"
grep -q '^\[  PASSED  \]' "$job_output" || fail "the MPI suite did not pass on rank 0"
grep -q '^\[  FAILED  \]\|^\[rank 1\] FAILED' "$job_output" && fail "the MPI suite failed"
echo "PASS: job $job_id: collectives_test passed as 2 srun --mpi=pmix tasks"

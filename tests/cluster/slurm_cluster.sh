#!/usr/bin/env bash
# The Slurm tests' fixture: `slurm_cluster.sh start` brings the local cluster up before them,
# `slurm_cluster.sh stop` takes it down after them (cluster/local_slurm.sh; its logs stay in
# ${FLAME_SLURM_DIR:-/tmp/flame-slurm}/log). Exit 77 (skipped) where the cluster cannot run.
set -uo pipefail
source "$(dirname "$0")/slurm_test_lib.sh"
case ${1:-} in
  start | stop) ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
slurm_prerequisites
started=$SECONDS
bash "$local_slurm" "$1" || exit 1
echo "local_slurm.sh $1: $((SECONDS - started)) s"
if [ "$1" = start ]; then
  # The cluster must run a 2-task step, which every Slurm test needs.
  eval "$(bash "$local_slurm" env)"
  # shellcheck disable=SC2016  # expanded by the tasks
  ranks=$(timeout 60 srun -n 2 bash -c 'echo $SLURM_PROCID' | sort | tr '\n' ' ')
  [ "$ranks" = "0 1 " ] || fail "srun -n 2 on the fresh cluster printed ranks '$ranks', expected '0 1 '"
fi

#!/usr/bin/env bash
# Builds and runs the experiments of this folder on the 2-GPU machine (issue 5; results in
# docs/PERFORMANCE.md, "tenth run"). Plain nvcc, NCCL, cuBLAS and MPI: not part of the CMake build.
# Usage (on nvidia-h200-x2, from the repository root): bench/experiments/run.sh [all|tail|peer]
# (tail: only the DDP step's tail emulation; peer: only the peer copies split over streams)
set -uo pipefail
which=${1:-all}
cd "$(dirname "$0")" || exit 1
export NCCL_NVLS_ENABLE=0
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bin=$(mktemp -d /tmp/flame-experiments.XXXXXX)
[ "$which" = tail ] || nvcc -O2 -arch=sm_90 -o "$bin/peer_copy_streams" peer_copy_streams.cu || exit 1
if [ "$which" = peer ]; then
  echo "== peer copies over NVLink, split into chunks on several streams"
  timeout 60 "$bin/peer_copy_streams"
  exit $?
fi
mpi_flags=$(mpicxx --showme:compile) mpi_libs=$(mpicxx --showme:link)
for program in allreduce_beside_gemm ddp_tail_emulation; do
  # shellcheck disable=SC2086
  nvcc -O2 -arch=sm_90 -o "$bin/$program" "$program.cu" $mpi_flags $mpi_libs -lnccl -lcublas || exit 1
done
nvcc -O2 -arch=sm_90 -o "$bin/gemm_sm_target_sweep" gemm_sm_target_sweep.cu -lcublas -lcublasLt || exit 1
on2() { timeout 60 mpirun -np 2 -x NCCL_NVLS_ENABLE=0 "$@" 2>&1 | grep '^{'; }

echo "== all-reduce beside the GEMMs: MODE MIB CARVE [MAXCTAS] [ADDBLOCKS]"
[ "$which" = tail ] || for args in "nccl 64 0" "nccl 64 32" "nccl 64 16 16" "nccl 64 8 8" "sym 64 0" "sym 64 8" "ce 64 0 0 264" \
            "ce 64 0 0 66" "nccl 16 32" "sym 16 8" "ce 16 0 0 66"; do
  # shellcheck disable=SC2086
  on2 "$bin/allreduce_beside_gemm" $args
done
echo "== the DDP step's tail: MODE CARVE [ADDBLOCKS] [CHUNKS] [BATCH]"
# TAIL_CASES="nccl 32;hyb50 16" runs only those cases (separated by ';').
if [ -n "${TAIL_CASES:-}" ]; then
  IFS=';' read -r -a tail_cases <<<"$TAIL_CASES"
  for args in "${tail_cases[@]}"; do
    # shellcheck disable=SC2086
    on2 "$bin/ddp_tail_emulation" $args
  done
else for args in "nccl 0" "nccl 32" "ce 0 264" "hybrid 0 264" "nccl 32 0 2" "nccl 32 0 4" "rsce 32" "rsce1 32" \
            "gather 0" "gathers 0" "gatherf 0" "nccl 32 0 1 1024" "gather 0 0 1 1024" "gathers 0 0 1 1024" \
            "gatherf 0 0 1 1024" "hyb50 32" "hyb50 16" "hyb35 16" "hyb65 16" "hyb50 8" "gatherb 0" "gatherbf 0" \
            "gatherb 0 0 1 1024" "gatherbf 0 0 1 1024" "gatherbfg 0" "gatherbfg 0 0 1 1024"; do
  # shellcheck disable=SC2086
  on2 "$bin/ddp_tail_emulation" $args
done
fi
echo "== GEMMs under an SM target, alone"
[ "$which" = tail ] || "$bin/gemm_sm_target_sweep"
echo "== peer copies over NVLink, split into chunks on several streams"
[ "$which" = tail ] || timeout 60 "$bin/peer_copy_streams"

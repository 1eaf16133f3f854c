#!/usr/bin/env bash
# The one script run on the GPU machine (docs: ../shared/DEVICE.md, "How to work there"):
# configure (Release, sm_90, Ninja), build with all cores, run the cuda and cpu tests, the mpi
# tests when 2+ GPUs are present, then the benchmarks (the data loader's first, on Fashion-MNIST from
# .data/fashion-mnist and a synthetic 2 GiB token set; allreduce_bench under mpirun -np 2 when 2+
# GPUs are present) and the PyTorch reference in the same run.
# Logs go to $OUT (./gpu-out when unset): build.log, test.log, bench.jsonl (every JSON line,
# FLAME's and torch's), bench.log, device.txt, summary.txt, and with 2+ GPUs timeline-mlp.rank0/1
# (the collective timeline of the mlp's copy-engine step, summarised in summary.txt). The summary
# is printed last.
#
# Debian packages missing on the GPU machine travel in .debs/ (carry it): each is unpacked with
# dpkg -x into /tmp/flame-prefix, which CMake then searches.
#
# Environment: OUT; BUILD_DIR (default build-gpu); FLAME_GPU_CHECK_SLOW=1 also runs tests
# labelled slow; FLAME_GPU_CHECK_SKIP_TESTS=1 goes straight to the benchmarks;
# FLAME_GPU_CHECK_SKIP_BENCH=1 runs no benchmark (both: build only, e.g. before scripts/ddp_sweep.sh).
# Exit status: 0 when the build, every test run and every benchmark program succeeded.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=${BUILD_DIR:-$root/build-gpu}
jobs=$(nproc)
prefix=/tmp/flame-prefix
tmp=$(mktemp -d /tmp/flame-gpu-check.XXXXXX)
start_time=$(date +%s)

# NVLink multicast stays off on the shared multi-GPU machines, for every process started here.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
# Fashion-MNIST staged by scripts/stage_gpu_data.sh (the GPU machine has no Debian package of it).
if [ -d "$root/.data/fashion-mnist" ]; then export FLAME_FASHION_MNIST_DIR="$root/.data/fashion-mnist"; fi
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

: >"$out/build.log"
: >"$out/test.log"
: >"$out/bench.jsonl"
: >"$out/bench.log"
status=0
summary=()
note() { summary+=("$*"); }
section() { printf '\n===== %s =====\n' "$*"; }

# --- device ------------------------------------------------------------------------------
gpu_count=0
if command -v nvidia-smi >/dev/null 2>&1; then
  gpu_count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv >"$out/device.txt" 2>&1 || true
fi
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cores: $jobs"
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -n 1
} >>"$out/device.txt"
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
note "device: ${gpu_name:-no GPU found} x${gpu_count}, $(date -u +%Y-%m-%d), $jobs cores"

# --- carried packages --------------------------------------------------------------------
prefix_path=""
if [ -d "$root/.debs" ] && compgen -G "$root/.debs/*.deb" >/dev/null; then
  mkdir -p "$prefix"
  for deb in "$root"/.debs/*.deb; do
    dpkg -x "$deb" "$prefix" || { echo "gpu_check: cannot unpack $deb" | tee -a "$out/build.log"; status=1; }
  done
  prefix_path="$prefix/usr;$prefix/usr/lib/x86_64-linux-gnu/cmake"
  export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:$prefix/usr/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # Debian's multiarch headers (e.g. openssl/configuration.h) sit under include/x86_64-linux-gnu.
  export CPATH="$prefix/usr/include/x86_64-linux-gnu:$prefix/usr/include${CPATH:+:$CPATH}"
  export LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}"
  debs=("$root"/.debs/*.deb)
  note "carried packages: ${#debs[@]} .deb unpacked into $prefix"
fi

# --- configure and build -----------------------------------------------------------------
section "configure" | tee -a "$out/build.log"
configure_args=(-S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90
  -DFLAME_REQUIRE_CUDA=ON)  # the GPU machine must never fall back to a CPU-only build
[ -n "$prefix_path" ] && configure_args+=("-DCMAKE_PREFIX_PATH=$prefix_path")
built=0
if cmake "${configure_args[@]}" 2>&1 | tee -a "$out/build.log"; then
  section "build (-j $jobs)" | tee -a "$out/build.log"
  build_start=$(date +%s)
  # -k 0: keep building the other targets past a failure, so what did build is still run.
  if cmake --build "$build" -j "$jobs" -- -k 0 2>&1 | tee -a "$out/build.log"; then
    note "build: ok ($(( $(date +%s) - build_start )) s)"
  else
    note "build: FAILED, partly built (see build.log)"
    status=1
  fi
  built=1
else
  note "configure: FAILED (see build.log); nothing built, tested or benchmarked"
  status=1
fi

# --- tests -------------------------------------------------------------------------------
# run_label LABEL EXTRA_CTEST_ARGS...: runs the tests labelled exactly LABEL, adds a summary line.
run_label() {
  local label=$1
  shift
  local log="$tmp/ctest_$label.log"
  section "ctest -L $label $*" | tee -a "$out/test.log"
  ctest --test-dir "$build" -L "^${label}\$" --output-on-failure --timeout 300 "$@" 2>&1 | tee "$log" >>"$out/test.log"
  local rc=$?
  local total=0 failed=0 skipped
  local line
  # ctest ends with "100% tests passed out of N" or "P% tests passed, F tests failed out of N".
  line=$(grep -E '[0-9]+% tests passed(, [0-9]+ tests? failed)? out of [0-9]+' "$log" | tail -n 1)
  if [ -n "$line" ]; then
    total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")
    if grep -qE 'tests? failed' <<<"$line"; then
      failed=$(sed -E 's/.* ([0-9]+) tests? failed out of.*/\1/' <<<"$line")
    fi
  fi
  skipped=$(grep -c '(Skipped)' "$log" || true)
  if [ "$total" -eq 0 ] && grep -q 'No tests were found' "$log"; then
    note "tests $label: none registered"
  else
    note "tests $label: $((total - failed - skipped)) passed, $failed failed, $skipped skipped (of $total)"
  fi
  if [ $rc -ne 0 ]; then
    status=1
    local failures
    local pattern='^\s+[0-9]+ - .* \((Failed|Timeout|Not Run|SEGFAULT|Subprocess aborted|Exception|Child aborted|'
    pattern+='Bus error|ILLEGAL)\)'
    mapfile -t failures < <(grep -E "$pattern" "$log" | head -n 10)
    for line in "${failures[@]}"; do note "  failed: ${line#"${line%%[![:space:]]*}"}"; done
  fi
  return 0
}

if [ $built -eq 1 ] && [ "${FLAME_GPU_CHECK_SKIP_TESTS:-0}" != 1 ]; then
  test_filter=()
  [ "${FLAME_GPU_CHECK_SLOW:-0}" = 1 ] || test_filter=(-LE '^slow$')
  tests_start=$(date +%s)
  # GPU tests share the one card: a few at a time. The multi-rank CUDA suites (labels mpi;cuda,
  # tests/dist/cuda) run with the mpi label below, one at a time, not next to these.
  cuda_exclude='^mpi$'
  [ "${FLAME_GPU_CHECK_SLOW:-0}" = 1 ] || cuda_exclude='^(slow|mpi)$'
  run_label cuda -j 4 -LE "$cuda_exclude"
  run_label cpu -j "$jobs" "${test_filter[@]}"
  mpi_count=$(ctest --test-dir "$build" -N -L '^mpi$' 2>/dev/null | sed -nE 's/^Total Tests: ([0-9]+)/\1/p')
  if [ "${mpi_count:-0}" -eq 0 ]; then
    note "tests mpi: none registered"
  elif [ "$gpu_count" -lt 2 ]; then
    note "tests mpi: not run ($mpi_count registered; they need 2+ GPUs, this machine has $gpu_count)"
  else
    # Label mpi includes the NCCL suites (labels mpi;cuda: nccl_test, ddp_nccl_test).
    run_label mpi -j 1 "${test_filter[@]}"
  fi
  slow_note=""
  [ ${#test_filter[@]} -eq 0 ] || slow_note=" (label slow excluded; FLAME_GPU_CHECK_SLOW=1 runs it)"
  note "tests took $(( $(date +%s) - tests_start )) s$slow_note"
fi

# --- benchmarks --------------------------------------------------------------------------
# run_bench NAME COMMAND...: JSON lines to bench.jsonl, everything to bench.log.
bench_results=()
run_bench() {
  local name=$1
  shift
  section "$name" | tee -a "$out/bench.log"
  # bench_timeout: seconds allowed (300 unless a caller sets it, e.g. as a local).
  timeout "${bench_timeout:-300}" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
  local rc=$?
  cat "$tmp/$name.out" "$tmp/$name.err"
  cat "$tmp/$name.out" "$tmp/$name.err" >>"$out/bench.log"
  grep '^{' "$tmp/$name.out" >>"$out/bench.jsonl"
  if [ $rc -eq 0 ]; then
    bench_results+=("$name ok")
  else
    bench_results+=("$name FAILED (rc $rc)")
    status=1
  fi
}

# Loader throughput (issue 4): flame-prep converts Fashion-MNIST (the idx files carried in
# .data/fashion-mnist) and writes a synthetic 2 GiB token stream (2^30 u16 tokens, windows of 1024)
# into /tmp/flame-data; loader_bench measures each (workers 1, 2, 4 x disk, memory; 2 s each).
# The whole step is time-boxed to loader_budget seconds: each command gets what is left of it.
loader_budget=150
loader_step() {
  local name=$1
  shift
  local bench_timeout=$((loader_deadline - $(date +%s)))
  if [ "$bench_timeout" -le 0 ]; then
    bench_results+=("$name NOT RUN (the loader step's ${loader_budget} s were spent)")
    status=1
    return 1
  fi
  local before=${#bench_results[@]}
  run_bench "$name" "$@"
  [[ "${bench_results[$before]}" == *" ok" ]]
}
run_loader_benches() {
  local prep="$build/launch/prep/flame-prep" bench="$build/bench/loader_bench" data=/tmp/flame-data
  if [ ! -x "$prep" ] || [ ! -x "$bench" ]; then
    bench_results+=("loader_bench NOT BUILT (flame-prep or loader_bench missing)")
    status=1
    return
  fi
  loader_deadline=$(($(date +%s) + loader_budget))
  rm -rf "$data"
  if compgen -G "$root/.data/fashion-mnist/*.gz" >/dev/null; then
    loader_step prep_fashion_mnist "$prep" fashion-mnist --source "$root/.data/fashion-mnist" --out "$data/fmnist" &&
      loader_step loader_fashion_mnist "$bench" --data "$data/fmnist/train" --name fashion-mnist --seconds 2
  else
    bench_results+=("loader_bench fashion-mnist NOT RUN (no $root/.data/fashion-mnist/*.gz)")
  fi
  loader_step prep_tokens "$prep" synthetic --kind tokens --tokens 1073741824 --window 1024 --out "$data/tokens" &&
    loader_step loader_tokens "$bench" --data "$data/tokens" --name tokens-2GB --seconds 2
  note "loader step: $(($(date +%s) + loader_budget - loader_deadline)) s of its ${loader_budget} s budget"
}

# run_train W: flame-train on W GPUs (W > 1: under mpirun), then the same training in PyTorch; a
# train_fashion_mnist JSON line for each into bench.jsonl.
run_train() {
  local world=$1 dir=$tmp/train-w$1
  local launcher=()
  [ "$world" -gt 1 ] && launcher=(mpirun --allow-run-as-root -np "$world" -x NCCL_NVLS_ENABLE=0)
  run_bench "flame_train_w$world" "${launcher[@]}" "$build/launch/train/flame-train" \
    "$root/configs/fashion_mnist_cnn.toml" --set data.train=/tmp/flame-data/fmnist/train \
    --set data.test=/tmp/flame-data/fmnist/test --set "log.dir=$dir" --set log.progress=false
  if [ -f "$dir/summary.json" ]; then
    python3 - "$dir/summary.json" "$world" "$gpu_name" >>"$out/bench.jsonl" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(json.dumps({"bench": "train_fashion_mnist", "impl": "flame", "world": int(sys.argv[2]),
                  "time_to_90_s": s["time_to_90_s"], "samples_per_s": s["samples_per_s"],
                  "test_accuracy": s["test_accuracy"], "steps": s["steps"], "device": sys.argv[3]}))
PY
  fi
  run_bench "torch_fashion_mnist_w$world" mpirun --allow-run-as-root -np "$world" -x NCCL_NVLS_ENABLE=0 \
    -x FLAME_FASHION_MNIST_DIR python3 "$root/bench/torch_fashion_mnist.py"
}

if [ $built -eq 1 ] && [ "${FLAME_GPU_CHECK_SKIP_BENCH:-0}" != 1 ]; then
  run_loader_benches
  for program in matmul_bench elementwise_bench op_overhead_bench cnn_step_bench; do
    if [ -x "$build/bench/$program" ]; then
      run_bench "$program" "$build/bench/$program"
    else
      bench_results+=("$program NOT BUILT")
      status=1
    fi
  done
  # All-reduce bus bandwidth (issue 5): FLAME's NCCL communicator against raw NCCL, one rank per GPU.
  if [ "$gpu_count" -lt 2 ]; then
    bench_results+=("allreduce_bench NOT RUN (needs 2+ GPUs, this machine has $gpu_count)")
  elif [ -x "$build/bench/allreduce_bench" ]; then
    run_bench allreduce_bench mpirun --allow-run-as-root -np 2 -x NCCL_NVLS_ENABLE=0 "$build/bench/allreduce_bench"
  else
    bench_results+=("allreduce_bench NOT BUILT")
    status=1
  fi
  # DDP step time at 1 and 2 ranks (weak scaling) and the MLP's hidden share of communication; one
  # process per model, as a training job runs one (docs/PERFORMANCE.md, ninth run: a second NCCL
  # communicator in a process slowed its compute; the benchmark now shares one between its cases).
  if [ "$gpu_count" -ge 2 ] && [ -x "$build/bench/ddp_scaling_bench" ]; then
    for model in cnn mlp; do
      for world in 1 2; do
        run_bench "ddp_scaling_${model}_w$world" mpirun --allow-run-as-root -np "$world" -x NCCL_NVLS_ENABLE=0 \
          "$build/bench/ddp_scaling_bench" --model "$model"
        # PyTorch DDP on the same model and step, same run.
        run_bench "torch_ddp_${model}_w$world" mpirun --allow-run-as-root -np "$world" -x NCCL_NVLS_ENABLE=0 \
          python3 "$root/bench/torch_ddp_reference.py" --model "$model"
        # Gradients all-reduced in bf16 (DdpOptions::reduce_dtype; PyTorch's bf16_compress_hook).
        run_bench "ddp_scaling_${model}_bf16_w$world" mpirun --allow-run-as-root -np "$world" -x NCCL_NVLS_ENABLE=0 \
          "$build/bench/ddp_scaling_bench" --model "$model" --step bucket --reduce bf16
        run_bench "torch_ddp_${model}_bf16_w$world" mpirun --allow-run-as-root -np "$world" -x NCCL_NVLS_ENABLE=0 \
          python3 "$root/bench/torch_ddp_reference.py" --model "$model" --reduce bf16
      done
      # bf16 gradients through the copy engines (2 ranks; docs/PERFORMANCE.md, twelfth run); the mlp
      # only: the cnn's buckets are below the copy engines' 4 MiB threshold.
      [ "$model" = mlp ] && run_bench "ddp_scaling_${model}_bf16_copy_engine_w2" mpirun --allow-run-as-root -np 2 \
        -x NCCL_NVLS_ENABLE=0 "$build/bench/ddp_scaling_bench" --model "$model" --step bucket --reduce bf16 \
        --all-reduce copy-engine
      # The same with each bucket's mean computed inside AdamW's update (DdpOptions::step_mean), written
      # into .grad (mlp) and not, the gradients then cleared after the step: the fastest choice for 2
      # GPUs, run for the cnn too (whose buckets take the ring in bf16; docs/dist.md).
      means="in-update-no-grad"
      [ "$model" = mlp ] && means="in-update $means"
      for mean in $means; do
        run_bench "ddp_scaling_${model}_bf16_copy_engine_${mean//-/_}_w2" mpirun --allow-run-as-root -np 2 \
          -x NCCL_NVLS_ENABLE=0 "$build/bench/ddp_scaling_bench" --model "$model" --step bucket --reduce bf16 \
          --all-reduce copy-engine --step-mean "$mean"
      done
    done
    # Where that step's communication sits against backward (Note [collective timeline]): a run of
    # its own, as the timing events cost the host time, so its figures stay out of bench.jsonl.
    section "timeline_mlp_bf16_copy_engine_w2" | tee -a "$out/bench.log"
    if timeout 120 mpirun --allow-run-as-root -np 2 -x NCCL_NVLS_ENABLE=0 -x FLAME_NCCL_TIMELINE="$out/timeline-mlp" \
      "$build/bench/ddp_scaling_bench" --model mlp --step bucket --reduce bf16 --all-reduce copy-engine \
      >>"$out/bench.log" 2>&1 &&
      timeline_table=$(python3 "$root/scripts/timeline_summary.py" "$out/timeline-mlp.rank0" 2>&1); then
      bench_results+=("timeline_mlp ok")
    else
      bench_results+=("timeline_mlp FAILED (see bench.log)")
      status=1
    fi
  fi
  # flame-train: the Fashion-MNIST CNN of configs/fashion_mnist_cnn.toml on 1 GPU and on 2 (issue 6),
  # and PyTorch's same training in the same run (bench/torch_fashion_mnist.py).
  if [ -x "$build/launch/train/flame-train" ] && [ -f /tmp/flame-data/fmnist/train/manifest.json ]; then
    run_train 1
    [ "$gpu_count" -ge 2 ] && run_train 2
  else
    bench_results+=("flame_train NOT RUN (flame-train not built or no Fashion-MNIST shards)")
  fi
fi
[ "${FLAME_GPU_CHECK_SKIP_BENCH:-0}" != 1 ] && run_bench torch_reference python3 "$root/bench/torch_reference.py"
bench_line=$(printf '%s, ' "${bench_results[@]}")
note "benchmarks: ${bench_line%, }"

# --- summary -----------------------------------------------------------------------------
# The tables first, so that a table bench_summary could not build fails the check (a traceback in
# place of the figures must not end in "result: OK").
tables=$(python3 "$root/scripts/bench_summary.py" "$out/bench.jsonl" 2>&1)
tables_status=$?
if [ $tables_status -ne 0 ]; then
  note "bench_summary: FAILED (exit $tables_status): a table could not be built, see below"
  status=1
fi
{
  section "FLAME GPU check summary ($(( $(date +%s) - start_time )) s)"
  printf '%s\n' "${summary[@]}"
  echo
  printf '%s\n' "$tables"
  echo
  if [ -n "${timeline_table:-}" ]; then
    echo "collective timeline, mlp, bf16 gradients through the copy engines, rank 0 (timeline-mlp.rank*):"
    printf '%s\n\n' "$timeline_table"
  fi
  echo "logs: $out/{build.log,test.log,bench.jsonl,bench.log,device.txt,summary.txt}"
  echo "result: $([ $status -eq 0 ] && echo OK || echo FAILED)"
} | tee "$out/summary.txt"
rm -rf "$tmp"
exit $status

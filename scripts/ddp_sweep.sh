#!/usr/bin/env bash
# DDP step time on 2 GPUs under different NCCL and process-placement settings (issue 5's scaling
# work): bench/ddp_scaling_bench at W=1 once, then at W=2 once per variant below, with its phase
# breakdown. Run on the GPU machine after scripts/gpu_check.sh has built $BUILD_DIR (default
# build-gpu); JSON lines, each tagged with its variant, go to $OUT/ddp_sweep.jsonl and a table is
# printed at the end.
#
# Usage: scripts/ddp_sweep.sh [--model cnn|mlp|all]
# FLAME_SWEEP_VARIANTS=default (DDP's per-bucket step, SM carve-out), nccl (NCCL CTA limits, SM
# carve-out, stream priority), placement (mpirun's CPU binding) or scaling (FLAME's ddp.step and
# PyTorch DDP, W=1 and W=2, per-rank batch 256, 512 and 1024, gradients reduced in f32 and in
# bf16; prints the weak-scaling efficiency of each) or copy-engine (ddp.step with the ring and with
# the copy-engine all-reduce, CommunicatorOptions::overlap_all_reduce, and PyTorch DDP, per-rank batch
# 256, 512 and 1024, W=1 and W=2; W=1 runs the ring only, as both are the same there) or
# copy-engine-bf16 (the same with gradients reduced in bf16 too: W=1 f32 and bf16, W=2 ring and
# copy engines in f32 and bf16, PyTorch DDP in f32 and with its bf16 compression hook) or priority
# (W=1 f32; W=2 bf16 gradients through the copy engines and f32 through the ring, each with the
# communication stream at normal and at high priority; per-rank batch 256, 512 and 1024) or
# last-bucket (W=1 f32; W=2 bf16 gradients through the copy engines as they are, with the last
# bucket at high priority, DdpOptions::last_bucket_high_priority, and with the whole communication
# stream at high priority; per-rank batch 256, 512 and 1024; all of it twice) or step-mean (W=1
# f32; W=2 bf16 gradients through the copy engines with each DdpOptions::step_mean; per-rank batch
# 256, 512 and 1024; all of it twice) or rounds (batch 256, FLAME_SWEEP_ROUNDS rounds, 3 by default,
# each W=1 f32, W=2 f32 and W=2 with the fastest choice for 2 GPUs, in that order; with
# FLAME_SWEEP_BUCKET_CAP_KIB=N the same three again with DdpOptions::bucket_cap_bytes = N KiB; with
# FLAME_SWEEP_ONE_SHOT_KIB=N one more W=2 f32 run with CommunicatorOptions::one_shot_max_bytes = N
# KiB, 0 for off).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-gpu}
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
model=all
if [ $# -gt 0 ]; then
  [ "$1" = --model ] && [ $# -eq 2 ] || { echo "usage: ddp_sweep.sh [--model cnn|mlp|all]" >&2; exit 2; }
  model=$2
fi
failed=0
bench="$build/bench/ddp_scaling_bench"
[ -x "$bench" ] || { echo "ddp_sweep: $bench is not built (run scripts/gpu_check.sh first)" >&2; exit 1; }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
jsonl="$out/ddp_sweep.jsonl"
: >"$jsonl"

# variant NAME WORLD "MPIRUN OPTIONS" "VAR=value ..." "BENCH ARGUMENTS"
variant() {
  local name=$1 world=$2
  local -a mpi_args env_args bench_args
  read -r -a mpi_args <<<"${3:-}"
  local assignment
  for assignment in ${4:-}; do env_args+=(-x "$assignment"); done
  read -r -a bench_args <<<"${5:-}"
  echo "== $name (W=$world; mpirun ${3:-}; env ${4:-}; bench ${5:-})"
  timeout 120 mpirun -np "$world" "${mpi_args[@]}" -x NCCL_NVLS_ENABLE=0 "${env_args[@]}" \
    "$bench" --model "$model" --calls blocking "${bench_args[@]}" >"$out/sweep-$name.out" 2>"$out/sweep-$name.err"
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "   FAILED (rc $rc): $(tail -n 3 "$out/sweep-$name.err")"
    failed=1
  fi
  tag_records "$name"
}

# tag_records NAME: appends sweep-NAME.out's JSON lines to the sweep's JSONL, tagged with NAME.
tag_records() {
  python3 - "$1" "$out/sweep-$1.out" >>"$jsonl" <<'PY'
import json, sys
for line in open(sys.argv[2]):
    if line.startswith("{"):
        record = json.loads(line)
        record["variant"] = sys.argv[1]
        print(json.dumps(record))
PY
}

# torch_variant NAME WORLD "ARGUMENTS": PyTorch DDP (bench/torch_ddp_reference.py) on the same step.
torch_variant() {
  local name=$1 world=$2
  local -a args
  read -r -a args <<<"${3:-}"
  echo "== $name (PyTorch, W=$world; ${3:-})"
  timeout 180 mpirun -np "$world" -x NCCL_NVLS_ENABLE=0 -x TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
    python3 "$root/bench/torch_ddp_reference.py" --model "$model" "${args[@]}" \
    >"$out/sweep-$name.out" 2>"$out/sweep-$name.err"
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "   FAILED (rc $rc): $(tail -n 3 "$out/sweep-$name.err")"
    failed=1
  fi
  tag_records "$name"
}

variants=${FLAME_SWEEP_VARIANTS:-default}
case $variants in
  default | nccl | placement | scaling | copy-engine | copy-engine-bf16 | priority | last-bucket | step-mean | rounds) ;;
  *)
    echo "ddp_sweep: FLAME_SWEEP_VARIANTS must be default, nccl, placement, scaling, copy-engine," \
      "copy-engine-bf16, priority, last-bucket, step-mean or rounds, got '$variants'" >&2
    exit 2
    ;;
esac
case $variants in scaling | copy-engine* | priority | last-bucket | step-mean | rounds) ;; *) variant w1 1 ;; esac
case $variants in
  default)
    variant w1-bucket 1 "" "" "--step bucket"
    variant default 2
    variant bucket 2 "" "" "--step bucket"
    variant carve-32 2 "" "" "--carveout 32"
    variant bucket-carve-24 2 "" "" "--step bucket --carveout 24"
    variant bucket-carve-32 2 "" "" "--step bucket --carveout 32"
    variant bucket-carve-40 2 "" "" "--step bucket --carveout 40"
    variant bucket-carve-48 2 "" "" "--step bucket --carveout 48"
    variant bucket-prio-carve-32 2 "" "" "--step bucket --carveout 32 --priority high"
    variant default-again 2
    ;;
  nccl)
    variant default 2
    variant carve-24 2 "" "" "--carveout 24"
    variant carve-32 2 "" "" "--carveout 32"
    variant prio 2 "" "" "--priority high"
    variant prio-carve-24 2 "" "" "--priority high --carveout 24"
    variant ctas-16-carve-16 2 "" "" "--max-ctas 16 --carveout 16"
    variant ctas-12-carve-12 2 "" "" "--max-ctas 12 --carveout 12"
    variant ctas-8-carve-8 2 "" "" "--max-ctas 8 --carveout 8"
    variant cta-policy-eff 2 "" "NCCL_CTA_POLICY=1"
    ;;
  placement)
    variant default 2
    variant bind-none 2 "--bind-to none"
    variant pe-4 2 "--map-by slot:PE=4 --bind-to core"
    ;;
  scaling)
    # One process per model, as a training job runs one (docs/PERFORMANCE.md, ninth run).
    models=$model
    [ "$model" = all ] && models="cnn mlp"
    for model in $models; do
      for batch in 256 512 1024; do
        for reduce in f32 bf16; do
          for world in 1 2; do
            variant "flame-$model-b$batch-$reduce-w$world" "$world" "" "" "--step bucket --batch $batch --reduce $reduce"
            torch_variant "torch-$model-b$batch-$reduce-w$world" "$world" "--batch $batch --reduce $reduce"
          done
        done
      done
    done
    ;;
  copy-engine)
    models=$model
    [ "$model" = all ] && models="cnn mlp"
    for model in $models; do
      for batch in 256 512 1024; do
        variant "flame-$model-b$batch-w1" 1 "" "" "--step bucket --batch $batch"
        variant "flame-$model-b$batch-ring-w2" 2 "" "" "--step bucket --batch $batch"
        variant "flame-$model-b$batch-copy-engine-w2" 2 "" "" "--step bucket --batch $batch --all-reduce copy-engine"
        torch_variant "torch-$model-b$batch-w1" 1 "--batch $batch"
        torch_variant "torch-$model-b$batch-w2" 2 "--batch $batch"
      done
    done
    ;;
  copy-engine-bf16)
    models=$model
    [ "$model" = all ] && models="cnn mlp"
    for model in $models; do
      for batch in 256 512 1024; do
        for reduce in f32 bf16; do
          variant "flame-$model-b$batch-$reduce-w1" 1 "" "" "--step bucket --batch $batch --reduce $reduce"
          variant "flame-$model-b$batch-$reduce-ring-w2" 2 "" "" "--step bucket --batch $batch --reduce $reduce"
          variant "flame-$model-b$batch-$reduce-copy-engine-w2" 2 "" "" \
            "--step bucket --batch $batch --reduce $reduce --all-reduce copy-engine"
          torch_variant "torch-$model-b$batch-$reduce-w1" 1 "--batch $batch --reduce $reduce"
          torch_variant "torch-$model-b$batch-$reduce-w2" 2 "--batch $batch --reduce $reduce"
        done
      done
    done
    ;;
  priority)
    models=$model
    [ "$model" = all ] && models="cnn mlp"
    for model in $models; do
      for batch in 256 512 1024; do
        variant "flame-$model-b$batch-f32-w1" 1 "" "" "--step bucket --batch $batch"
        for priority in default high; do
          variant "flame-$model-b$batch-bf16-copy-engine-$priority-w2" 2 "" "" \
            "--step bucket --batch $batch --reduce bf16 --all-reduce copy-engine --priority $priority \
             --last-bucket-priority default"
          variant "flame-$model-b$batch-f32-ring-$priority-w2" 2 "" "" "--step bucket --batch $batch --priority $priority"
        done
      done
    done
    ;;
  last-bucket)
    # Twice over, each round its own W=1 run, to see the spread between calls.
    models=$model
    [ "$model" = all ] && models="cnn mlp"
    for repeat in r1 r2; do
      for model in $models; do
        for batch in 256 512 1024; do
          common="--step bucket --batch $batch"
          engines="$common --reduce bf16 --all-reduce copy-engine"
          variant "flame-$model-b$batch-f32-w1-$repeat" 1 "" "" "$common"
          variant "flame-$model-b$batch-bf16-copy-engine-w2-$repeat" 2 "" "" "$engines --last-bucket-priority default"
          variant "flame-$model-b$batch-bf16-copy-engine-last-high-w2-$repeat" 2 "" "" \
            "$engines --last-bucket-priority high"
          variant "flame-$model-b$batch-bf16-copy-engine-stream-high-w2-$repeat" 2 "" "" \
            "$engines --priority high --last-bucket-priority default"
        done
      done
    done
    ;;
  step-mean)
    models=$model
    [ "$model" = all ] && models="cnn mlp"
    for repeat in r1 r2; do
      for model in $models; do
        for batch in 256 512 1024; do
          common="--step bucket --batch $batch"
          engines="$common --reduce bf16 --all-reduce copy-engine"
          variant "flame-$model-b$batch-f32-w1-$repeat" 1 "" "" "$common"
          variant "flame-$model-b$batch-bf16-copy-engine-w2-$repeat" 2 "" "" "$engines"
          variant "flame-$model-b$batch-bf16-copy-engine-in-update-w2-$repeat" 2 "" "" "$engines --step-mean in-update"
          variant "flame-$model-b$batch-bf16-copy-engine-no-grad-w2-$repeat" 2 "" "" \
            "$engines --step-mean in-update-no-grad"
        done
      done
    done
    ;;
  rounds)
    # FLAME_SWEEP_ROUNDS rounds (3 by default) at batch 256 per rank, W=1 and W=2 alternating, as one
    # pair of processes can move by 3% (docs/PERFORMANCE.md, sixteenth run): W=1 f32, W=2 f32 through
    # the ring (the defaults), W=2 with the fastest choice for 2 GPUs (bf16 gradients through the
    # copy engines, each mean computed in AdamW's update, gradients cleared after the step).
    models=$model
    [ "$model" = all ] && models="cnn mlp"
    for ((round = 1; round <= ${FLAME_SWEEP_ROUNDS:-3}; round++)); do
      for model in $models; do
        variant "flame-$model-b256-f32-w1-r$round" 1 "" "" "--step bucket"
        variant "flame-$model-b256-f32-w2-r$round" 2 "" "" "--step bucket"
        variant "flame-$model-b256-bf16-copy-engine-no-grad-w2-r$round" 2 "" "" \
          "--step bucket --reduce bf16 --all-reduce copy-engine --step-mean in-update-no-grad"
        if [ -n "${FLAME_SWEEP_ONE_SHOT_KIB:-}" ]; then  # W=2 f32 with this one-shot limit (0: off)
          variant "flame-$model-b256-f32-one-shot-w2-r$round" 2 "" "" \
            "--step bucket --one-shot-max-kib $FLAME_SWEEP_ONE_SHOT_KIB"
        fi
        if [ -n "${FLAME_SWEEP_BUCKET_CAP_KIB:-}" ]; then  # the same three with this bucket cap
          cap="--bucket-cap-kib $FLAME_SWEEP_BUCKET_CAP_KIB"
          variant "flame-$model-b256-f32-cap-w1-r$round" 1 "" "" "--step bucket $cap"
          variant "flame-$model-b256-f32-cap-w2-r$round" 2 "" "" "--step bucket $cap"
          variant "flame-$model-b256-bf16-copy-engine-no-grad-cap-w2-r$round" 2 "" "" \
            "--step bucket --reduce bf16 --all-reduce copy-engine --step-mean in-update-no-grad $cap"
        fi
      done
    done
    ;;
esac

python3 - "$jsonl" <<'PY'
import json, re, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'variant':45} {'model':5} {'W':>2} {'step ms':>8} {'fwd':>7} {'bwd':>7} {'wait':>7} {'optim':>7} {'host':>7} {'hidden':>7}")
step = {(r["variant"], r["model"]): r["value"] for r in rows if r["bench"] == "ddp_step"}
hidden = {(r["variant"], r["model"]): r["value"] for r in rows if r["bench"] == "ddp_overlap"}
for r in rows:
    if r["bench"] != "ddp_phases":
        continue
    key = (r["variant"], r["model"])
    h = hidden.get(key)
    print(f"{r['variant']:45} {r['model']:5} {r['world']:>2} {step.get(key, float('nan')):8.3f} {r['forward_ms']:7.3f} "
          f"{r['backward_ms']:7.3f} {r['wait_ms']:7.3f} {r['optimizer_ms']:7.3f} {r.get('host_ms', float('nan')):7.3f} "
          f"{'' if h is None else f'{h:7.2f}'}")

# Weak scaling per implementation, model, batch and reduction dtype: efficiency = t(W=1) / t(W=2).
steps = {}
for r in rows:
    if r["bench"] == "ddp_step" and r["variant"].startswith(("flame-", "torch-")):
        algorithm = r.get("all_reduce", "ring")
        if r.get("high_priority"):  # CommunicatorOptions::high_priority_stream
            algorithm += "-high-priority"
        # DdpOptions::last_bucket_high_priority: it acts on the copy-engine all-reduce only.
        if r.get("last_bucket_high_priority") and r.get("all_reduce") == "copy_engine":
            algorithm += "-last-high"
        if r.get("step_mean", "reduced") != "reduced" and r.get("all_reduce") == "copy_engine":  # DdpOptions::step_mean
            algorithm += "-" + r["step_mean"].replace("_", "-")
        if r.get("bucket_cap_bytes", 25 << 20) != 25 << 20:  # DdpOptions::bucket_cap_bytes
            algorithm += f"-cap{r['bucket_cap_bytes'] >> 10}k"
        if r.get("one_shot_max_bytes", 2 << 20) != 2 << 20 and int(r["world"]) == 2:  # CommunicatorOptions
            algorithm += f"-one-shot{r['one_shot_max_bytes'] >> 10}k"
        repeat = r["variant"].rsplit("-", 1)[1] if re.search(r"-r[0-9]+$", r["variant"]) else ""
        key = (r["impl"], r["model"], r["size"], r.get("reduce", "f32"), algorithm, repeat)
        steps.setdefault(key, {})[int(r["world"])] = r["value"]
def f32_ring(key):  # the same case's f32 ring run, at W=1 (with the same bucket cap when it has one)
    cap = re.search(r"-cap[0-9]+k$", key[4])
    capped = steps.get(key[:3] + ("f32", "ring" + cap.group(0), key[5]), {}).get(1) if cap else None
    return capped or steps.get(key[:3] + ("f32", "ring", key[5]), {}).get(1)
for key, by_world in steps.items():  # W=1 has nothing to all-reduce: every algorithm shares the ring's run
    if 1 not in by_world:
        by_world[1] = steps.get(key[:4] + ("ring", key[5]), {}).get(1) or f32_ring(key)
if steps:
    # Against the f32 W=1 step too: at W=1 a bf16 reduction still converts every bucket twice.
    print(f"\n{'impl':6} {'model':5} {'batch':6} {'reduce':6} {'all-reduce':48} {'rep':3} {'W=1 ms':>8} "
          f"{'W=2 ms':>8} {'efficiency':>10} {'vs f32 W=1':>10}")
    for key, by_world in sorted(steps.items()):
        impl, model, size, reduce, algorithm, repeat = key
        one, two = by_world.get(1), by_world.get(2)
        f32_one = f32_ring(key)
        efficiency = f"{one / two:10.3f}" if one and two else f"{'missing':>10}"
        against_f32 = f"{f32_one / two:10.3f}" if f32_one and two else f"{'missing':>10}"
        print(f"{impl:6} {model:5} {size:6} {reduce:6} {algorithm:48} {repeat:3} {one or float('nan'):8.3f} "
              f"{two or float('nan'):8.3f} {efficiency} {against_f32}")
PY
exit $failed

#!/usr/bin/env bash
# The main job: builds FLAME, converts Fashion-MNIST (Debian's dataset-fashion-mnist, installed by
# scripts/setup.sh) into sharded HDF5 under data/fashion-mnist, and trains the CNN of
# configs/fashion_mnist_cnn.toml on the GPU when there is one (the CPU otherwise), showing progress.
# It fails unless the test accuracy reaches 90%, and ends by saying where the metrics, logs and
# checkpoint are. Extra arguments go to flame-train (e.g. --device cpu, --set train.epochs=3).
# Multi-GPU: run flame-train under `mpirun -np N` yourself (docs/launch.md), or sbatch (cluster/).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}" --target flame-train flame-prep
source_dir=${FLAME_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [ ! -f data/fashion-mnist/train/manifest.json ] || [ ! -f data/fashion-mnist/test/manifest.json ]; then
  "$build_dir/launch/prep/flame-prep" fashion-mnist --source "$source_dir" --out data/fashion-mnist
fi
# The run's log.dir: the config's, or the last `--set log.dir=...` among the extra arguments.
log_dir=runs/fashion_mnist_cnn
for argument in "$@"; do
  case $argument in
    log.dir=* | --set=log.dir=*) log_dir=${argument#*log.dir=} ;;
  esac
done
log_dir=${log_dir#[\"\']} && log_dir=${log_dir%[\"\']}
"$build_dir/launch/train/flame-train" configs/fashion_mnist_cnn.toml "$@"
python3 - "$log_dir" <<'PY'
import json, sys
log_dir = sys.argv[1]
summary = json.load(open(f"{log_dir}/summary.json"))
accuracy = summary["test_accuracy"]
print(f"test accuracy {100 * accuracy:.2f}% after {summary['steps']} steps on {summary['world_size']} x "
      f"{summary['device']}, {summary['samples_per_s']:.0f} samples/s")
print(f"metrics: {log_dir}/metrics.jsonl (TensorBoard: tensorboard --logdir {log_dir}/tensorboard)")
print(f"logs: {log_dir}/logs/   checkpoint: {summary['checkpoint']}")
if accuracy < 0.90:
    sys.exit(f"the test accuracy {100 * accuracy:.2f}% is below 90%")
PY

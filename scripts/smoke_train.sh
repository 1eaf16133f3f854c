#!/usr/bin/env bash
# Builds FLAME and runs the training smoke job (on the GPU when one is present, else the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}" --target flame-smoke
"$build_dir/launch/flame-smoke" "$@"

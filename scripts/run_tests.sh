#!/usr/bin/env bash
# Configures, builds and runs FLAME's test suite (CUDA tests skip without a GPU).
# Usage: scripts/run_tests.sh [extra ctest args]   (BUILD_DIR defaults to ./build)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" -j "$jobs"
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" -LE slow "$@"

#!/usr/bin/env bash
# Copies what the GPU check needs from this machine's packages into .data/ (git-ignored), to be
# carried to the GPU machine (device tool: carry [".data"]): Fashion-MNIST's idx files, for the
# loader benchmark and the flame-prep test (FLAME_FASHION_MNIST_DIR=$PWD/.data/fashion-mnist there);
# and into .debs/ (carry [".data", ".debs"]) the Debian packages the GPU machine lacks (toml++'s
# headers), which scripts/gpu_check.sh unpacks into a prefix CMake searches.
set -euo pipefail
cd "$(dirname "$0")/.."
source_dir=/usr/share/datasets/fashion-mnist
[ -d "$source_dir" ] || { echo "stage_gpu_data: $source_dir missing; run scripts/setup.sh first" >&2; exit 1; }
mkdir -p .data/fashion-mnist
cp "$source_dir"/*.gz .data/fashion-mnist/
echo "staged $(du -sh .data | cut -f1) in .data/"
mkdir -p .debs
(cd .debs && apt-get download libtomlplusplus-dev >/dev/null)
echo "staged $(ls .debs | tr '\n' ' ')in .debs/"

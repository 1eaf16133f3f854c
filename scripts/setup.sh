#!/usr/bin/env bash
# Installs everything FLAME needs to build and test, from Debian/Ubuntu packages. Idempotent.
# The CUDA toolkit (nvcc, cuBLAS, cuDNN, NVRTC, NCCL) is expected under /usr/local/cuda or as
# system packages; without it FLAME builds its CPU backend only.
set -euo pipefail
packages=(
  build-essential cmake ninja-build ccache pkg-config git python3 python3-pip
  libopenmpi-dev openmpi-bin
  libhdf5-dev libssl-dev
  dataset-fashion-mnist
  libspdlog-dev libfmt-dev
  libgtest-dev
  libopenblas-dev
  nlohmann-json3-dev libcli11-dev libtomlplusplus-dev
  slurmctld slurmd slurm-client munge
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Python packages the tests use (safetensors and h5py interop checks, TensorBoard's event reader).
python_packages=(safetensors numpy h5py tensorboard)
if ! python3 -c "import safetensors, numpy, h5py, tensorboard" >/dev/null 2>&1; then
  # PIP_ROOT_USER_ACTION rather than --root-user-action: pip before 22.1 (Ubuntu 22.04's) ignores it.
  export PIP_ROOT_USER_ACTION=ignore
  pip_install=(python3 -m pip install --quiet --disable-pip-version-check)
  # A Debian-managed python3 refuses plain pip installs (PEP 668); pyenv's or a venv's does not.
  "${pip_install[@]}" "${python_packages[@]}" 2>/dev/null ||
    "${pip_install[@]}" --break-system-packages "${python_packages[@]}"
fi
echo "setup: all packages present"

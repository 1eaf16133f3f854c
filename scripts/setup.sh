#!/usr/bin/env bash
# Installs everything FLAME needs to build and test, from Debian/Ubuntu packages. Idempotent.
# Debian 12+ or Ubuntu 24.04+: older releases lack CMake >= 3.24 and toml++ in their archives.
# The CUDA toolkit (nvcc, cuBLAS, cuDNN, NVRTC, NCCL) is expected under /usr/local/cuda or as
# system packages; without it FLAME builds its CPU backend only.
set -euo pipefail
if [ -r /etc/os-release ]; then
  # shellcheck disable=SC1091
  os_id=$(. /etc/os-release && echo "${ID:-}") os_version=$(. /etc/os-release && echo "${VERSION_ID:-}")
  too_old=""
  # No VERSION_ID: Debian testing or unstable, newer than any release.
  [ -z "$os_version" ] || case $os_id in
    debian) [ "${os_version%%.*}" -ge 12 ] 2>/dev/null || too_old="Debian $os_version" ;;
    ubuntu) [ "${os_version%%.*}" -ge 24 ] 2>/dev/null || too_old="Ubuntu $os_version" ;;
  esac
  if [ -n "$too_old" ]; then
    echo "setup: $too_old is too old: FLAME needs CMake >= 3.24 and toml++ 3 (libtomlplusplus-dev), which" \
      "Debian 12+ and Ubuntu 24.04+ have. Use one of those, or install both yourself." >&2
    exit 1
  fi
fi
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
  # A freshly booted machine's unattended upgrades may hold the dpkg lock for a while: wait for it.
  apt_wait=(-o DPkg::Lock::Timeout=600)
  $sudo_cmd apt-get "${apt_wait[@]}" update -qq
  $sudo_cmd apt-get "${apt_wait[@]}" install -y -qq --no-install-recommends "${missing[@]}"
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

#!/usr/bin/env bash
# Compiles sdserve with `--features cuda` on a machine without a GPU, so the
# CUDA build never rots (CI runs this after the tests). Nothing runs on a GPU:
# this is `cargo check` of every target, with candle's CUDA kernels compiled
# by a real nvcc from the CUDA 13.0 PyPI wheels (the recipe of
# ../shared/GPU.md; a full CUDA build for a GPU is ../shared/cuda-build.sh).
#
#   bash scripts/cuda-check.sh
#
# Only compile errors matter here, so the kernels' device code is compiled at
# -O0 (NVCC_APPEND_FLAGS), which halves nvcc's time; nothing built here ships.
# The toolkit venv and the target folder live under
# ${XDG_CACHE_HOME:-~/.cache}/sdserve-cuda-check, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

W=${SDSERVE_CUDA_CHECK_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sdserve-cuda-check}
mkdir -p "$W"
[ -x "$W/venv/bin/pip" ] || python3 -m venv "$W/venv"
# Compiler, headers and runtime only: `cargo check` links nothing, so the
# cuBLAS/cuRAND wheels (and a stub libcuda) are not needed. Every part is
# pinned to 13.0: newer nvvm/crt make PTX a 13.0 ptxas refuses.
"$W/venv/bin/pip" install -q --disable-pip-version-check \
  "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" \
  "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*"
CU=$("$W/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13
export PATH=$CU/bin:$PATH CUDA_ROOT=$CU CUDA_PATH=$CU
# The lowest generation the README's CUDA images target with bf16 (A100, A10, L4, H100).
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:--Xcicc -O0 -Xptxas -O0}"
export CARGO_TARGET_DIR=$W/target
nvcc --version | tail -n 2

start=$(date +%s)
cargo check --locked -p sdserve-engine -p sdserve --features sdserve/cuda --all-targets
echo "cuda-check: sdserve --features cuda compiles ($(( $(date +%s) - start )) s)"

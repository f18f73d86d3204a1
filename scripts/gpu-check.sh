#!/usr/bin/env bash
# One command for a lent GPU (see scripts/gpu_check.py and ../shared/GPU.md):
# parity in f32, the f16 bound, speed against diffusers at SD 1.5 shapes,
# peak GPU memory, load time and `uname -r`, as a markdown report in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/gpu_check.py "$@"

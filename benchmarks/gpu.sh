#!/usr/bin/env bash
# The GPU benchmark: generate a reduced `city`, train one block for MINUTES (default 3) and print samples/s and
# validation PSNR against training time, then mesh the block and print its F-score against the ground truth
# (benchmarks/gpu_train.py; the figures also go to WS/gpu_train.json). The whole run is cut at LIMIT seconds
# (default 450, under 8 minutes). Ray, W&B and Zarr's extras are not needed there (see launch/README.md).
# Usage: benchmarks/gpu.sh [--workspace DIR] [--smoke]; PYTHON picks the interpreter (default: .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec timeout --signal=INT --kill-after=30 "${LIMIT:-450}" "$PYTHON" -m benchmarks.gpu_train --minutes "${MINUTES:-3}" "$@"

#!/usr/bin/env bash
# The GPU profile's measurement on the lent machine (JAX, no TensorFlow/DVC/MLflow there).
# Needs, beside the working tree: .wheels/ (keras, namex, optree for Python 3.12) and
# .gpudata/cifar10-jpeg.zip. Writes logs to $OUT (or ./bench-out).
set -uo pipefail
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
python3 -m pip install --quiet --no-index --no-deps .wheels/*.whl 2>&1 | tail -2
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=$PWD
nvidia-smi -L | tee "$OUT/machine.txt"
src=.gpudata/cifar10-jpeg.zip
[ "${SMOKE:-1}" = 0 ] || timeout 150 python3 bench/pipeline_compute.py --profile profiles/gpu.yaml --source $src \
  --smoke --limit 5000 --val-size 500 2>&1 | tee "$OUT/smoke.log" | grep -E "^\[|Error|error" 
timeout "${FULL_TIMEOUT:-390}" python3 bench/pipeline_compute.py --profile profiles/gpu.yaml \
  --source $src 2>&1 | tee "$OUT/full.log" | grep -E "^\[|Error|error|Epoch|val_acc"

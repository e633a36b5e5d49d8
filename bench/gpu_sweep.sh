#!/usr/bin/env bash
# Device check (issue 16): the sweep runner on one lent GPU (JAX; no TensorFlow, DVC or
# MLflow there), 5 seeds x {default, scratch specialists} on the full shared data.
# Prints images/s per network after compile, each step's wall time and the sweep's.
# Needs, beside the working tree (carried: .wheels and .gpudata, 64 MiB in all):
#   .wheels/   keras and its pure-Python deps for the device's Python (pip download)
#   .gpudata/cifar10-jpeg.zip
# Rehearse on CPU first: KERAS_BACKEND=jax SMOKE=1 bash bench/gpu_sweep.sh
set -uo pipefail
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
if ls .wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install --quiet --no-index --no-deps .wheels/*.whl 2>&1 | tail -2
fi
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=$PWD
(nvidia-smi -L 2>/dev/null || lscpu | grep "Model name") | tee "$OUT/machine.txt"
src=${SOURCE:-.gpudata/cifar10-jpeg.zip}
seeds=${SEEDS:-5}
file=sweeps/gpu-check.yaml
if [ "${SMOKE:-0}" = 1 ]; then  # a minute on CPU: the same code path, tiny budget
  file=$OUT/smoke.yaml
  python3 - "$file" <<'PY'
import sys, yaml
spec = yaml.safe_load(open("sweeps/gpu-check.yaml"))
spec["params"] = {"data": {"limit": 3000, "val_size": 500, "gate_size": 500},
                  "net": {"width": 8}, "base": {"epochs": 2}, "router": {"epochs": 1},
                  "specialists": {"epochs": 1}, "mixture": {"tta": 0}}
spec["configurations"]["scratch_specialists"] = {"specialists": {"epochs": 2}}
yaml.safe_dump(spec, open(sys.argv[1], "w"))
PY
  seeds=${SEEDS:-1}
fi
start=$(date +%s)
timeout "${SWEEP_TIMEOUT:-560}" python3 -m hmoe.sweep "$file" --seeds "$seeds" --source "$src" \
  --out "$OUT/sweep" --no-mlflow 2>&1 | tee "$OUT/sweep.log" | grep -E "images/s|: [0-9.]+ s$|seed|done|Error"
echo "sweep wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/sweep.log"
python3 - "$OUT/sweep/findings.csv" <<'PY'
import sys
import pandas as pd
f = pd.read_csv(sys.argv[1])
rates = [c for c in f if c.endswith("_images_per_s")]
steps = [c for c in f if c.endswith("_s") and not c.endswith("_per_s") and c != "wall_s"]
print("images/s after compile (mean over the runs that trained it):")
print(f[rates].mean().round(0).to_string())
print("step wall time, s (per configuration x seed; 0 = reused):")
print(f[["config", "seed", *steps, "wall_s"]].round(1).to_string(index=False))
print("test accuracy:")
print(f.groupby("config")[["mixture_accuracy", "base_accuracy", "two_bases_control_accuracy"]]
      .agg(["mean", "std"]).round(4).to_string() if "two_bases_control_accuracy" in f else
      f.groupby("config")[["mixture_accuracy", "base_accuracy"]].agg(["mean", "std"]).round(4))
PY

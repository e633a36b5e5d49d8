#!/usr/bin/env bash
# Issue 34's figures for a CPU kind, in one command: run it first on a machine whose CPU
# has no committed profile yet (the Intel Xeon with AMX has none), idle, from the
# repository root with the project's environment active:
#
#     bash bench/cpu_session.sh                 # profile + speed: about 10 min
#     E2E=../shared/cifar10/cifar10-jpeg.zip bash bench/cpu_session.sh profile speed e2e
#
# Parts (arguments; default "profile speed"):
# 1. profile: bench/profile_step.py in mixed_bfloat16 and float32 (the step by kind of
#    work and the roofline), written with the CPU's lscpu line to
#    bench/results/profile_step-<model>.md, the file docs/results.md cites;
# 2. speed: bench/train_speed.py in both precisions, twice each, alternating (the run-to-run
#    spread is part of the figure);
# 3. e2e, with E2E=<data source>: the default `dvc repro --force` end to end, at the
#    committed HEAD, in a throwaway git worktree whose params.yaml differs only in
#    data.source: each stage's `done in` line and the whole wall time (about 30 min on
#    the 2-core AMD EPYC).
# Nothing else may run meanwhile: every figure is a timing.
set -euo pipefail
parts=" ${*:-profile speed} "
for part in $parts; do
  case $part in profile | speed | e2e) ;; *) echo "unknown part: $part" >&2; exit 2 ;; esac
done
if [[ $parts == *" e2e "* && -z ${E2E:-} ]]; then
  echo "e2e needs E2E=<data source> (a CIFAR-10 archive, folder or zip)" >&2; exit 2
fi
model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
family=$(lscpu | sed -n 's/^CPU family: *//p' | head -1)
number=$(lscpu | sed -n 's/^Model: *//p' | head -1)
flags=$(grep -o -w -E 'avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | xargs)
slug=$(echo "$model-$family-$number" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/-$//')
out=bench/results/profile_step-$slug.md
export TF_CPP_MIN_LOG_LEVEL=2
quiet() { grep -v -E '^(I0000|W0000|E0000|WARNING: All log)|oneDNN|To enable' || true; }

if [[ $parts == *" profile "* ]]; then
{
  echo "# bench/profile_step.py on $(nproc) cores of $model"
  echo
  echo "\`lscpu\`: \"$model\", family $family model $number; flags: $flags." \
    "Commit $(git describe --always --dirty); $(python -c 'import tensorflow as t, keras as k; print(f"tensorflow {t.__version__}, keras {k.__version__}")' 2>/dev/null)." \
    "Run $(date -u +'%Y-%m-%d %H:%M UTC') by bench/cpu_session.sh."
  for precision in mixed_bfloat16 float32; do
    echo
    echo '```'
    python bench/profile_step.py --precision "$precision" 2>&1 | quiet
    echo '```'
  done
} | tee "$out"
echo "wrote $out"
fi

if [[ $parts == *" speed "* ]]; then
  for round in 1 2; do
    for precision in mixed_bfloat16 float32; do
      echo "== train_speed $precision, round $round"
      python bench/train_speed.py --precision "$precision" --images 8192 --epochs 5 2>&1 |
        quiet | grep -v ' epoch '
    done
  done
fi

if [[ $parts == *" e2e "* ]]; then
  source=$(realpath "$E2E")
  tree=$(mktemp -d)/e2e
  git worktree add --detach "$tree" HEAD >/dev/null
  trap 'git worktree remove --force "$tree"' EXIT
  sed -i "s|^  source: keras |  source: $source |" "$tree/params.yaml"
  grep -q "source: $source" "$tree/params.yaml" || { echo "data.source not set" >&2; exit 1; }
  start=$(date +%s)
  (cd "$tree" && PYTHONPATH=$tree dvc repro --force 2>&1) | grep -E 'done in|Running stage|ERROR'
  echo "end to end: $(( $(date +%s) - start )) s on $model ($flags)"
  # the committed run's CPU model reproduces it to the bit; another model's bfloat16 differs
  python - "$tree" <(git show HEAD:dvc.lock) <<'PY'
import sys, yaml
from pathlib import Path
tree, committed, metrics = Path(sys.argv[1]), Path(sys.argv[2]), "reports/metrics.json"
def md5(lock):  # the hash DVC recorded for the headline metrics
    return next(o["md5"] for o in lock["stages"]["evaluate"]["outs"] if o["path"] == metrics)
same = md5(yaml.safe_load(committed.read_text())) == md5(yaml.safe_load((tree / "dvc.lock").read_text()))
print((tree / metrics).read_text().strip())
print(f"{metrics}:", "identical to" if same else "differs from", "the committed dvc.lock's")
PY
fi

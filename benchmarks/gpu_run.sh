#!/usr/bin/env bash
# The GPU check of issue 14 as one prepared command (benchmarks/train_throughput.py on CUDA, plus the fast path's
# CUDA-only pieces), for a session lent an NVIDIA machine whose Python has torch + transformers + peft but may lack
# llamabrew's other needs and the `gpu` extra, and cannot reach a package registry.
#
#   bash benchmarks/gpu_run.sh fetch            # here, once: wheels for what the device lacks, into .whl/ (ignored)
#   bash benchmarks/gpu_run.sh run [CONFIGS]    # there: run(command="bash benchmarks/gpu_run.sh run", carry=[".whl"])
#
# `run` prints every figure, writes the GPU section of benchmarks/RESULTS.md and copies it (and the log) to $OUT.
# Sized for a device lease of 15 minutes: everything ends within BUDGET_S (560 s) of the start. The throughput
# configurations run in the order of the goals they answer, 12 s timed each, and stop CHECK_S (150 s) before the
# end for benchmarks/gpu_train_check.py (same loss and gradients on CUDA; `llamabrew train` learning on CUDA);
# name some configurations (e.g. "hf-qlora qlora-8g") to split the run across two calls.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        typing-extensions==4.16.0 bitsandbytes==0.50.2 liger-kernel==0.8.5 gguf==0.19.0)

case "${1:-run}" in
fetch)
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  du -sh .whl
  ;;
run)
  shift || true
  CONFIGS=()
  if [ $# -gt 0 ]; then CONFIGS=(--configs "$@"); fi
  PY=python3
  START=$(date +%s) BUDGET_S=${BUDGET_S:-560} CHECK_S=${CHECK_S:-150}
  if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
  fi
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  OUT="${OUT:-/tmp/llamabrew-gpu-out}"
  mkdir -p "$OUT"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true
  $PY - <<'EOF' 2>&1 | tee "$OUT/fastpath.txt" || true
# What "auto" chooses on this card (the checks of what it computes are in gpu_train_check.py).
import torch
from llamabrew.train import fastpath
from llamabrew.recipe import Recipe
from llamabrew.train.memory import KNOWN_SHAPES
env = fastpath.environment(torch.device("cuda"), torch.bfloat16)
print("installed:", sorted(env.installed), "card GiB:", round(env.card_gib, 1))
print("auto for 7B LoRA:", fastpath.choose(Recipe(), env, KNOWN_SHAPES["7B"]).describe())
print("auto for 8B QLoRA:", fastpath.choose(Recipe.model_validate({"model": {"quantize_4bit": True}}), env,
                                            KNOWN_SHAPES["8B"]).describe())
EOF
  # throughput first, stopped in time for the fast path's CUDA checks; all within BUDGET_S of the start
  $PY benchmarks/train_throughput.py --device cuda --seconds "${SECONDS_PER_CONFIG:-12}" --warmup 2 \
      --config-timeout 240 --deadline $((START + BUDGET_S - CHECK_S)) "${CONFIGS[@]}" 2>&1 \
      | tee "$OUT/train_throughput.log" || true
  cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
  timeout $((START + BUDGET_S - $(date +%s))) $PY benchmarks/gpu_train_check.py 2>&1 | tee "$OUT/train_check.txt" || true
  ;;
*)
  echo "usage: $0 fetch | run [CONFIGS...]" >&2
  exit 2
  ;;
esac

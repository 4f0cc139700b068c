#!/usr/bin/env bash
# Reproduces the recorded GPU results in benchmarks/results/h200/ (see BENCHMARKS.md).
# Run from the repository root on a CUDA machine with the course installed. Peers are
# timed when importable: fla-core (pip install fla-core) and mamba_ssm's CUDA selective
# scan (the `selective_scan_cuda` extension of mamba_ssm, on PYTHONPATH).
#   usage: benchmarks/h200.sh [OUT_DIR] [part...]   parts: tests attention fwdbwd ssm decode
set -uo pipefail
OUT=${1:-benchmarks/results/h200}
shift || true
PARTS=${*:-tests attention fwdbwd ssm decode}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LENGTHS="1024 2048 4096 8192 16384 32768 65536"
ATTN="--batch 4 --heads 16 --head-dim 128 --dtype bfloat16 --device cuda --backends torch triton --budget-ms 3000 --no-progress"
for part in $PARTS; do
  case $part in
    tests)  $PY -m pytest tests -m gpu -q -p no:nbval -p no:cacheprovider -n 8 --dist loadfile 2>&1 | tail -25 ;;
    attention)
      $PY -m course_lib.bench $ATTN --lengths $LENGTHS --mode fwd \
        --mechanisms softmax_attention linear_attention gated_linear_attention \
        --cases causal plain scalar vector --out "$OUT/attention_fwd" 2>&1 | tail -40 ;;
    fwdbwd)
      $PY -m course_lib.bench $ATTN --lengths $LENGTHS --mode fwdbwd \
        --mechanisms softmax_attention linear_attention gated_linear_attention \
        --cases causal plain scalar vector --out "$OUT/attention_fwdbwd" 2>&1 | tail -40 ;;
    ssm)
      $PY -m course_lib.bench --batch 4 --channels 2048 --d-state 16 --dtype bfloat16 \
        --device cuda --backends torch triton --budget-ms 3000 --no-progress \
        --lengths 1024 2048 4096 8192 16384 32768 --mode fwd --mechanisms selective_scan \
        --cases full plain --out "$OUT/selective_scan_fwd" 2>&1 | tail -30 ;;
    decode)
      $PY -m course_lib.bench $ATTN --lengths 1024 4096 16384 65536 --decode --mode fwd \
        --mechanisms softmax_attention linear_attention gated_linear_attention selective_scan \
        --out "$OUT/decode" 2>&1 | tail -30 ;;
    *) echo "unknown part $part" ;;
  esac
done

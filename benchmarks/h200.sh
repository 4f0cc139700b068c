#!/usr/bin/env bash
# Reproduces the recorded GPU results in benchmarks/results/h200/ (see BENCHMARKS.md).
# Run from the repository root on a CUDA machine with the course installed. Peers are
# timed when importable: fla-core (pip install fla-core) and mamba_ssm's CUDA selective
# scan (the `selective_scan_cuda` extension of mamba_ssm, on PYTHONPATH).
#
#   usage: benchmarks/h200.sh [OUT_DIR] [part...]
#   parts: tests attention_fwd attention_fwdbwd attention_torch ssm ssm_family decode
#          notebooks mqar, and one mechanism at a time (the fourth session's recording):
#          softmax linear gla decode_steps
#
# Each part writes its own folder under OUT_DIR and is sized to finish in under ten
# minutes on an H200, so the parts can be spread over several short sessions. The
# benchmark saves results.json after every series (`complete: false` until it ends), so a
# part stopped by a time limit still leaves what it measured. Set PART_TIMEOUT (seconds)
# to bound each part.
set -uo pipefail
OUT=${1:-benchmarks/results/h200}
shift || true
PARTS=${*:-tests attention_fwd attention_fwdbwd attention_torch ssm ssm_family decode}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LIMIT=${PART_TIMEOUT:-590}
LENGTHS="512 1024 2048 4096 8192 16384 32768 65536"
ATTN="--batch 4 --heads 16 --head-dim 128 --dtype bfloat16 --device cuda --budget-ms 3000 --no-progress"
# fla's first calls autotune for minutes: time the course's series first, then the peers
ONE="$ATTN --peers-last --backends triton --lengths $LENGTHS"
ATTN_MECHS="softmax_attention linear_attention gated_linear_attention"
SSM="--batch 4 --channels 2048 --d-state 16 --heads 16 --head-dim 128 --dtype bfloat16 --device cuda --budget-ms 3000 --no-progress"
bench() { local name=$1; shift; timeout "$LIMIT" $PY -m course_lib.bench "$@" --out "$OUT/$name" 2>&1 | tee "$OUT/$name.log" | tail -40; }
for part in $PARTS; do
  echo "== $part ($(date -u +%H:%M:%S))"
  case $part in
    tests)  # every gpu-marked test: the kernels compiled, at real sizes and low precision
      timeout "$LIMIT" $PY -m pytest tests -m gpu -v -p no:nbval -p no:cacheprovider -n 6 \
        --dist load --timeout 150 --tb=short > "$OUT/gpu_tests.log" 2>&1
      tail -15 "$OUT/gpu_tests.log" ;;
    attention_fwd)  # the Triton kernels and the peers (SDPA, fla), forward, T = 512..65536
      bench attention_fwd $ATTN --lengths $LENGTHS --mode fwd --mechanisms $ATTN_MECHS \
        --backends triton --cases causal plain scalar vector ;;
    attention_fwdbwd)
      bench attention_fwdbwd $ATTN --lengths $LENGTHS --mode fwdbwd --mechanisms $ATTN_MECHS \
        --backends triton --cases causal plain scalar vector ;;
    attention_torch)  # the PyTorch forms a learner trains with (no peers: timed above)
      bench attention_torch $ATTN --lengths 512 1024 2048 4096 8192 16384 --mode both \
        --mechanisms $ATTN_MECHS --backends torch --forms parallel tiled chunkwise \
        --cases causal plain scalar --no-peers ;;
    ssm)  # selective scan: Triton forms beside mamba_ssm's CUDA kernel
      bench ssm $SSM --lengths $LENGTHS --mode both \
        --mechanisms selective_scan --backends triton --forms scan block_scan block_adjoint \
        --cases full plain ;;
    ssm_family)  # LTI SSM, H3, SSD duality, the Mamba block (PyTorch)
      bench ssm_family $SSM --lengths 1024 2048 4096 8192 16384 32768 65536 --mode both \
        --mechanisms lti_ssm h3 ssd mamba_block --backends torch --forms fft gla scan forward \
        --cases diag_complex heads default --no-peers ;;
    softmax)  # the fourth session ran --mode fwdbwd (the forward is in attention_fwd)
      bench softmax_fwdbwd $ONE --mechanisms softmax_attention --cases causal --mode fwdbwd ;;
    linear)
      bench linear_attention $ONE --mechanisms linear_attention --cases plain --mode both ;;
    gla)  # both gates: fla's chunk_gla (vector) and chunk_simple_gla (scalar)
      bench gla $ONE --mechanisms gated_linear_attention --cases vector scalar --mode both ;;
    decode_steps)  # the decode steps alone, without the forwards of the decode part
      bench decode_steps $ATTN --decode-only --lengths 1024 4096 16384 65536 ;;
    decode)  # per-token latency and cache/state memory against position
      bench decode $ATTN --lengths 1024 4096 16384 65536 --decode --mode fwd --no-peers \
        --mechanisms $ATTN_MECHS selective_scan --backends triton ;;
    notebooks)  # every chapter top to bottom, compiled kernels, one at a time; the executed
                # copies (printed checks, figures) go to OUT/notebooks
      $PY -m course_lib.notebook_tools run notebooks/*.ipynb --timeout 300 --out "$OUT/notebooks" \
        2>&1 | grep -v IPKernelApp | tee "$OUT/notebooks_run.txt" ;;
    mqar)  # the recorded MQAR grid of chapter 10: one process per mixer side by side (the
           # tiny models leave the GPU mostly idle), joined into one file every 20 s; each
           # slice resumes from the joined file, so a second call trains only what is missing
      M="$OUT/../mqar_h200"; S=${TMPDIR:-/tmp}/mqar_slices; mkdir -p "$M" "$S"
      for m in attention linear_attention gla h3 mamba mamba+attention; do
        mkdir -p "$S/$m"; [ -f "$M/results.json" ] && cp "$M/results.json" "$S/$m/"
        timeout "$LIMIT" $PY -m course_lib.tasks.experiment --config gpu --resume --mixers "$m" \
          --no-progress --out "$S/$m" > "$S/$m.log" 2>&1 &
      done
      join() { $PY -m course_lib.tasks.experiment --out "$M" --merge "$S"/*/results.json; }
      while [ -n "$(jobs -rp)" ]; do sleep 20; join > /dev/null 2>&1; done
      join; tail -n 3 "$S"/*.log ;;
    *) echo "unknown part $part" ;;
  esac
done

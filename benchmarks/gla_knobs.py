"""Launch-knob sweep of the GLA vector-gate kernels on a CUDA GPU (the sweeps behind the
defaults in ``course_lib/gated_linear_attention/triton_kernels.py``'s CONFIG).

    python benchmarks/gla_knobs.py [T ...]        (default: 16384 65536)

For each length: the intra-chunk A kernel alone for every (rows per program, warps) pair,
checked against the first pair; the forward state scan alone for BK_state x warps; then
the chunk and fused forms, forward and forward+backward, with the defaults, beside fla's
``chunk_gla`` when fla-core is installed (same process, same inputs). bf16, B=4, H=16,
K=V=128, as in BENCHMARKS.md. Prints one line a measurement (``triton.testing.do_bench``
medians, ms).
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from course_lib.gated_linear_attention import triton_kernels as G

B, H, K = 4, 16, 128
BT = 64
A_KERNEL = [(64, 4), (64, 8), (32, 2), (32, 4), (16, 1), (16, 2), (16, 4)]  # (rows, warps)
STATE_SCAN = [(64, 4), (64, 8), (128, 4), (128, 8)]  # (BK_state, warps)
DEFAULTS = copy.deepcopy(G.CONFIG)  # the committed launch settings, restored after each variant


def inputs(T: int):
    torch.manual_seed(0)
    q = (torch.randn(B, T, H, K, device="cuda") * K**-0.5).bfloat16()
    k = (torch.randn(B, T, H, K, device="cuda") * K**-0.5).bfloat16()
    v = torch.randn(B, T, H, K, device="cuda").bfloat16()
    g = F.logsigmoid(torch.randn(B, T, H, K, device="cuda") + 3.0)  # decays near 0.95
    return q, k, v, g


def with_config(update: dict):
    G.CONFIG.clear()
    G.CONFIG.update(copy.deepcopy(DEFAULTS))
    G.CONFIG.update(update)


def say(line: str) -> None:
    print(line, flush=True)


def forward_backward(fn, x):
    xg = [t.clone().requires_grad_(True) for t in x]

    def run():
        o, _ = fn(*xg)
        o.backward(torch.ones_like(o))

    return run, xg


def sweep(T: int) -> None:
    q, k, v, g = x = inputs(T)
    gc = G._cumsum(g, False, BT)
    first = None
    for rows, warps in A_KERNEL:
        with_config({"intra_rows": rows, "warps_intra": warps})
        A = G._intra(q, k, gc, False, BT)
        first = A.clone() if first is None else first
        diff = (A - first).abs().max().item()
        ms = do_bench(lambda: G._intra(q, k, gc, False, BT), warmup=5, rep=60)
        say(f"T={T} A kernel rows={rows} warps={warps}: {ms:.3f} ms (max diff {diff:.1e})")
    for bk, warps in STATE_SCAN:
        with_config({"BK_state": bk, "warps_state": warps})
        ms = do_bench(lambda: G._states(k, v, gc, None, False, False, BT), warmup=5, rep=60)
        say(f"T={T} state scan BK_state={bk} warps={warps}: {ms:.3f} ms")
    with_config({})
    forms = [("course chunk_gla", G.chunk_gla), ("course fused_chunk_gla", G.fused_chunk_gla)]
    try:
        from fla.ops.gla import chunk_gla as fla_chunk_gla

        forms.append(("fla chunk_gla", lambda q, k, v, g: fla_chunk_gla(q, k, v, g=g)))
    except ImportError:
        say("fla-core not installed: no peer")
    for name, fn in forms:
        fwd = do_bench(lambda fn=fn: fn(*x), warmup=5, rep=80)
        run, xg = forward_backward(fn, x)
        both = do_bench(run, warmup=3, rep=60, grad_to_none=xg)
        say(f"T={T} {name}: fwd {fwd:.3f} ms, fwd+bwd {both:.3f} ms")


if __name__ == "__main__":
    for T in [int(a) for a in sys.argv[1:]] or [16384, 65536]:
        sweep(T)
    with_config({})

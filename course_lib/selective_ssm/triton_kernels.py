"""The selective scan in Triton: a fused forward, its backward, and one decoding step.

Glossary of dimension letters:

* ``B`` batch, ``T`` time steps, ``D`` channels, ``N`` state size per channel,
* ``BD`` channels per program (``BLOCK_D``), ``BN`` the state size padded to a power of 2,
* ``L`` checkpoint interval in steps (``CHUNK``), ``c = ceil(T / L)`` checkpoints,
* ``BL`` steps per block of the block-scan forward (``BLOCK_L``, divides ``L``).

Forward (Gu & Dao 2023, section 3.3): the program ``(d-block, b)`` owns ``BD`` channels of
one batch element and all their ``N`` states, a ``[BD, BN]`` fp32 tile that lives in
registers for the whole sequence. It walks time in order; each step loads ``u_t, delta_t,
z_t`` (``BD`` contiguous values: channels-last makes ``D`` the fast axis) and ``B_t, C_t``
(``N`` values shared by all programs of the batch element), and computes

    dt  = softplus(delta + delta_bias)        a = exp2(dt * A log2(e))   (A pre-scaled)
    h   = a * h + (dt u) B_t                  out = (h C_t + D u) * silu(z)

so the only traffic is reading the inputs and writing ``out`` once: the state is never
written, except the ``[BD, BN]`` tile every ``L`` steps (a checkpoint) when a backward
pass will need it. ``B * ceil(D / BD)`` programs run at once (512 at B=4, D=2048, BD=16).
The step's loads do not depend on the state, so each is issued one step ahead (a software
prefetch held in registers): the memory latency overlaps a step of maths.

Block-scan forward (form "block_scan", :func:`selective_scan_blockwise`): the same program
grid, but time is walked ``BL`` steps at a time. A block loads ``u, delta, z`` as ``[BL,
BD]`` tiles and ``B, C`` as ``[BL, BN]`` tiles (one block ahead, as above), forms

    a_t = exp(dt_t A),  b_t = dt_t u_t B_t        # [BL, BN, BD]
    b_0 <- a_0 h + b_0                            # the state carried into the block

and runs ``tl.associative_scan`` along the steps with the composition of affine maps
``(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)`` (Blelloch 1990; Martin & Cundy 2018; Smith
et al. 2023): its second output is ``h_t`` for every step of the block at once. Then
``y = sum_n h_t C_t`` (a reduction over the state axis), the skip and the gate, one
``[BL, BD]`` store, and the last step's state is carried on. Steps past ``T`` get
``dt = 0``: ``a = 1, b = 0``, the identity, so the carried state is the last real step's.
The point is not fewer operations (it does the same exponentials and multiply-adds) but
fewer round trips: one wide load and one wide store per ``BL`` steps, and ``BL * N * BD``
independent exponentials per block for the scheduler instead of ``N * BD`` behind each
step's dependent chain. Which axes go to lanes, warps or registers is the compiler's
choice (channels last: lanes on ``D``); with the steps in registers the scan is a short
sequential loop in each thread, with no cross-thread traffic. It stores the same checkpoints
as the step-by-step forward (``BL`` divides ``L``), so the backward below serves both.

Backward, per program, walking the checkpoints from last to first: recompute the ``L``
states of the chunk from its checkpoint (kept in a per-program scratch buffer), then run the
adjoint recurrence backwards through the chunk. With ``g`` the gradient reaching ``h_t``
(from ``out_t`` and from ``h_{t+1}``)::

    gy      = dout * silu(z)                  dz = dout * y * silu'(z)
    g      += gy C_t                          dC_t = sum_d gy h_t        dD += gy u
    dB_t    = sum_d g (dt u)                  du = dt sum_n g B_t + D gy
    dA     += g h_{t-1} a dt                  ddt = sum_n g h_{t-1} a A + u sum_n g B_t
    ddelta  = ddt * sigmoid(delta + delta_bias) (softplus)   g <- g * a   (to h_{t-1})

``dB, dC`` are sums over channels held by different programs: they are accumulated with
atomic adds in fp32; ``dA, dD, ddelta_bias`` are written per batch element and summed by
torch. What is left in ``g`` after step 0 is the gradient of ``initial_state``.

Block backward (form "block_adjoint", :func:`selective_scan_block_adjoint`): the same
walk over the checkpoints, ``BL`` steps at a time. For each chunk it first scans the
chunk's blocks forwards from the checkpoint, as the block forward does, keeping only the
state entering each block (``[L / BL, BN, BD]`` per program); then, block by block from
the last, it rescans the block's states ``h_t`` from its entering state and computes the
adjoint of all its steps with one associative scan backwards in time. The adjoint is the
same affine recurrence read from the other end, ``g_t = a_{t+1} g_{t+1} + gy_t C_t``: a
segment of steps maps the gradient reaching its last state to the one reaching its first,
``x -> p x + s``, and composing it with the segment before needs one more factor, the
segment's first ``a`` (:func:`_compose_back`). The carried gradient is added at the block's
last step, and ``a_{t0} g_{t0}`` is carried to the block before. Every line of the table
above is then elementwise over ``[BL, BN, BD]`` tiles, with ``a h_{t-1} = h_t - b_t``, and
reductions over the states (``du, ddelta``), the channels (``dB, dC``: one atomic add per
step, state and program) or the steps (``dA, dD, ddelta_bias``, kept in registers).

All maths is fp32 whatever the input dtype (fp32, fp16, bf16; ``A`` fp32). Lengths and
channel counts need not be multiples of anything: channel and state lanes are masked.
Offsets inside one batch element are int32 (``T * D < 2**31``; longer inputs are refused).
Configuration is in :data:`CONFIG` (no autotuning here).

What bounds them: the step-by-step forward is latency-bound (each step waits for the last);
the block forward, with the latency spread over ``BL`` steps, is bound by instruction issue:
per state element and step an exponential, about five multiplies and adds, and its share of
the per-step softplus and of the layout changes between ``[BL, BD]`` and ``[BL, BN, BD]``
tiles (through shared memory): about 15 instructions in all on sm_90.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from course_lib import runtime

runtime.require_triton()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from course_lib.selective_ssm.numpy_ref import (  # noqa: E402
    check_scan_inputs,
    check_step_inputs,
)

# softplus and sigmoid are written with exp2/log2 (one hardware instruction each)
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)

# ``tl.sum`` is itself a jitted function, and every call of one in the CPU interpreter
# re-patches triton.language (about 10 ms); ``tl.reduce`` with Triton's own sum combiner
# is the same reduction when compiled and takes the interpreter's numpy fast path.


@triton.jit
def _add(a, b):
    return a + b


_sum_combine = getattr(tl.standard, "_sum_combine", _add)  # _add: same maths, slower on CPU

#: Launch configuration (one place; no autotuning on the course machines).
#: ``CHUNK``: checkpoint interval shared by the forwards and the backward. ``BLOCK_D``:
#: channels per program; with ``N = 16`` and 4 warps a 16-channel tile is 2 states per
#: thread, so B=4, D=2048 gives 512 programs, about 15 warps per SM of an H200 to hide the
#: per-step load latency (the scan is latency-bound, not bandwidth-bound, at these sizes).
#: ``block_fwd`` (the block-scan forward): tiles ``[BL, BN, BD]`` = 8 x 16 x 16 over 2 warps
#: are 32 elements per thread and per tile (16 lanes on the channels, 2 lanes x 2 warps on
#: the states, the 8 steps in each thread); ``a, b`` and the scanned states stay in
#: registers: ptxas gives 158-168 registers (triton 3.6 and 3.9, sm_90, no spills), so 6
#: programs fit an SM and B=4, D=2048 (512 programs, about 4 per SM) runs in one wave.
#: That is about 8 warps per SM: few, each with much independent work. The loop is about
#: 15 SASS instructions per state element and step (one exponential). Worth sweeping on
#: the GPU: BL 8, BD 16, 4 warps (72 registers, 16 warps per SM, about 19 instructions per
#: element); BL 8, BD 32, 4 warps (142 registers, 256 programs, about 14.5); not BL 16,
#: BD 16, 4 warps (128-168 registers: 3 programs per SM with triton 3.9, two waves).
#: ``BL`` must divide ``CHUNK`` when checkpoints are stored (the launcher takes the gcd).
#: ``block_bwd`` (the block backward, form "block_adjoint"): the same ``[8, 16, 16]`` tiles,
#: but about twice as many live at once (the states, ``a``, ``b``, the adjoint and the scan's
#: three carries), so 4 warps: 16 elements per thread and per tile. Compiled ahead of time
#: for sm_90 (triton 3.6, not measured on a GPU): 210-213 registers with every option, 164
#: without, no spills, 2 KB of shared memory: 2 programs per SM, 512 programs in two waves.
#: Neighbours were worse on registers: 2 warps 242-255 (spills), 8 warps 222-249, BD 8 on 4
#: warps 163-229, BD 32 on 8 warps 228-238, BL 4 152-168 (spills with every option).
CONFIG: dict[str, dict[str, int]] = {
    "fwd": {"BLOCK_D": 16, "CHUNK": 64, "num_warps": 4},
    "bwd": {"BLOCK_D": 16, "num_warps": 4},
    "step": {"BLOCK_D": 64, "num_warps": 4},
    "block_fwd": {"BLOCK_L": 8, "BLOCK_D": 16, "num_warps": 2},
    "block_bwd": {"BLOCK_L": 8, "BLOCK_D": 16, "num_warps": 4},
}


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, last_ptr, ckpt_ptr,
    T, D, N, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    SOFTPLUS: tl.constexpr, STORE_CKPT: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    mask_d, mask_n = offs_d < D, offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]  # [BD, BN]
    dn = offs_d[:, None] * N + offs_n[None, :]  # [BD, BN] offsets in a [D, N] matrix
    A2 = tl.load(A_ptr + dn, mask=mask_dn, other=0.0).to(tl.float32) * LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state = pid_b * D * N + dn  # [BD, BN] offsets in a [B, D, N] state
    if HAS_H0:
        h = tl.load(h0_ptr + state, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    # pointers at step 0 of this batch element, advanced by one row per step
    x0 = pid_b * T * D + offs_d  # [BD] in [B, T, D]
    n0 = pid_b * T * N + offs_n  # [BN] in [B, T, N]
    p_u, p_dl, p_z, p_out = u_ptr + x0, delta_ptr + x0, z_ptr + x0, out_ptr + x0
    p_B, p_C = B_ptr + n0, C_ptr + n0
    ck0 = ckpt_ptr + pid_b * n_chunks * D * N + dn  # [BD, BN], checkpoint 0
    # software prefetch: step t+1's inputs are loaded before step t is computed, so that
    # the load latency overlaps one step of maths instead of stalling every step
    zero = tl.zeros([1], dtype=tl.int32)
    u_n = tl.load(p_u, mask=mask_d, other=0.0)
    dl_n = tl.load(p_dl, mask=mask_d, other=0.0)
    B_n = tl.load(p_B, mask=mask_n, other=0.0)
    C_n = tl.load(p_C, mask=mask_n, other=0.0)
    if HAS_Z:
        z_n = tl.load(p_z, mask=mask_d, other=0.0)
    for t in range(0, T):
        if STORE_CKPT:
            if t % CHUNK == 0:  # the state entering chunk t // CHUNK
                tl.store(ck0 + (t // CHUNK) * D * N, h, mask=mask_dn)
        u, dt = u_n.to(tl.float32), dl_n.to(tl.float32)
        Bt, Ct = B_n.to(tl.float32), C_n.to(tl.float32)
        if HAS_Z:
            z = z_n.to(tl.float32)
        p_u, p_dl, p_z, p_B, p_C = p_u + D, p_dl + D, p_z + D, p_B + N, p_C + N
        more = (zero + t + 1) < T  # [1]: is there a next step (a tensor in both modes)
        u_n = tl.load(p_u, mask=mask_d & more, other=0.0)
        dl_n = tl.load(p_dl, mask=mask_d & more, other=0.0)
        B_n = tl.load(p_B, mask=mask_n & more, other=0.0)
        C_n = tl.load(p_C, mask=mask_n & more, other=0.0)
        if HAS_Z:
            z_n = tl.load(p_z, mask=mask_d & more, other=0.0)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = tl.maximum(dt, 0.0) + LN2 * tl.log2(1.0 + tl.exp2(-tl.abs(dt) * LOG2E))
        a = tl.exp2(dt[:, None] * A2)  # [BD, BN]
        h = a * h + (dt * u)[:, None] * Bt[None, :]
        y = tl.reduce(h * Ct[None, :], 1, _sum_combine)  # [BD]
        if HAS_D:
            y += Dv * u
        if HAS_Z:
            y *= z / (1.0 + tl.exp2(-z * LOG2E))
        tl.store(p_out, y.to(out_ptr.dtype.element_ty), mask=mask_d)
        p_out += D
    tl.store(last_ptr + state, h, mask=mask_dn)


@triton.jit
def _compose(a1, b1, a2, b2):
    """``h -> a1 h + b1`` then ``h -> a2 h + b2`` is the one step ``h -> a1 a2 h + a2 b1 + b2``."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _pinned(x, y):
    """``(x, y)`` unchanged, through ``tl.join`` and ``tl.split``. The pair is computed once
    per ``[BL, BD]`` (or ``[BL, BN]``) element and then broadcast to ``[BL, BN, BD]``, whose
    layout holds copies of each element in several threads. Triton 3.6 moves that layout
    change up to the loads and then repeats the softplus (or the fp32 conversion) in every
    thread holding a copy, which doubles the loop's instructions; it does not move it
    across a split, so the work is done once per element and the copies are made after."""
    return tl.split(tl.join(x, y))


@triton.jit
def _block_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, last_ptr, ckpt_ptr,
    T, D, N, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    SOFTPLUS: tl.constexpr, STORE_CKPT: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """Program ``(d-block, b)`` walks time in blocks of ``BL`` steps (``BL`` divides
    ``CHUNK``) and scans each block in parallel. Tiles are ``[BL, BN, BD]`` with the
    channels last: the compiler spreads the fastest axis over the lanes of a warp, so the
    channels take the lanes, the states the rest, and each thread walks the ``BL`` steps."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_l = tl.arange(0, BLOCK_L)  # [BL] step inside the block
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    mask_d, mask_n = offs_d < D, offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]  # [BN, BD]
    nd = offs_n[:, None] + offs_d[None, :] * N  # [BN, BD] offsets in a [D, N] matrix
    A2 = tl.load(A_ptr + nd, mask=mask_nd, other=0.0).to(tl.float32) * LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state = pid_b * D * N + nd  # [BN, BD] offsets in a [B, D, N] state
    if HAS_H0:
        h = tl.load(h0_ptr + state, mask=mask_nd, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    first = (offs_l == 0)[:, None, None]  # [BL, 1, 1]: where the carried state enters
    final = (offs_l == BLOCK_L - 1)[:, None, None]  # [BL, 1, 1]: the state carried out
    # pointers at block 0 of this batch element, advanced by BL rows per block
    xs = pid_b * T * D + offs_l[:, None] * D + offs_d[None, :]  # [BL, BD] in [B, T, D]
    ns = pid_b * T * N + offs_l[:, None] * N + offs_n[None, :]  # [BL, BN] in [B, T, N]
    p_u, p_dl, p_z, p_out = u_ptr + xs, delta_ptr + xs, z_ptr + xs, out_ptr + xs
    p_B, p_C = B_ptr + ns, C_ptr + ns
    ck0 = ckpt_ptr + pid_b * n_chunks * D * N + nd  # [BN, BD], checkpoint 0
    # software prefetch as in the step-by-step kernel, one block ahead: block k+1 is
    # loaded before block k is computed
    rows = offs_l < T  # [BL] which steps of the block are inside the sequence
    m_x, m_n = rows[:, None] & mask_d[None, :], rows[:, None] & mask_n[None, :]
    u_n = tl.load(p_u, mask=m_x, other=0.0)
    dl_n = tl.load(p_dl, mask=m_x, other=0.0)
    B_n = tl.load(p_B, mask=m_n, other=0.0)
    C_n = tl.load(p_C, mask=m_n, other=0.0)
    if HAS_Z:
        z_n = tl.load(p_z, mask=m_x, other=0.0)
    for t0 in range(0, T, BLOCK_L):
        if STORE_CKPT:
            if t0 % CHUNK == 0:  # the state entering chunk t0 // CHUNK
                tl.store(ck0 + (t0 // CHUNK) * D * N, h, mask=mask_nd)
        valid, m_out = rows, m_x  # [BL], [BL, BD]: this block's steps inside the sequence
        u, dt = u_n.to(tl.float32), dl_n.to(tl.float32)  # [BL, BD]
        Bt, Ct = _pinned(B_n.to(tl.float32), C_n.to(tl.float32))  # [BL, BN]
        if HAS_Z:
            z = z_n.to(tl.float32)
        p_u, p_dl, p_z = p_u + BLOCK_L * D, p_dl + BLOCK_L * D, p_z + BLOCK_L * D
        p_B, p_C = p_B + BLOCK_L * N, p_C + BLOCK_L * N
        rows = (t0 + BLOCK_L + offs_l) < T  # [BL] the next block's steps
        m_x, m_n = rows[:, None] & mask_d[None, :], rows[:, None] & mask_n[None, :]
        u_n = tl.load(p_u, mask=m_x, other=0.0)
        dl_n = tl.load(p_dl, mask=m_x, other=0.0)
        B_n = tl.load(p_B, mask=m_n, other=0.0)
        C_n = tl.load(p_C, mask=m_n, other=0.0)
        if HAS_Z:
            z_n = tl.load(p_z, mask=m_x, other=0.0)
        if HAS_BIAS:
            dt += bias[None, :]
        if SOFTPLUS:
            dt = tl.maximum(dt, 0.0) + LN2 * tl.log2(1.0 + tl.exp2(-tl.abs(dt) * LOG2E))
        dt = tl.where(valid[:, None], dt, 0.0)  # steps past T: a = 1, b = 0, the identity
        dt, dtu = _pinned(dt, dt * u)  # [BL, BD]
        a = tl.exp2(dt[:, None, :] * A2[None, :, :])  # [BL, BN, BD]
        b = dtu[:, None, :] * Bt[:, :, None]  # [BL, BN, BD]
        b = tl.where(first, a * h[None, :, :] + b, b)  # the state entering the block
        _, hs = tl.associative_scan((a, b), 0, _compose)  # [BL, BN, BD]: h_t in the block
        y = tl.reduce(hs * Ct[:, :, None], 1, _sum_combine)  # [BL, BD]
        if HAS_D:
            y += Dv[None, :] * u
        if HAS_Z:
            y *= z / (1.0 + tl.exp2(-z * LOG2E))
        tl.store(p_out, y.to(out_ptr.dtype.element_ty), mask=m_out)
        p_out += BLOCK_L * D
        # the last step's state: -0.0 is an exact identity of +, so only that row is summed
        h = tl.reduce(tl.where(final, hs, -0.0), 0, _sum_combine)  # [BN, BD]
    tl.store(last_ptr + state, h, mask=mask_nd)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr,
    dout_ptr, dlast_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    T, D, N, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_DLAST: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    mask_d, mask_n = offs_d < D, offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    dn = offs_d[:, None] * N + offs_n[None, :]  # [BD, BN]
    A = tl.load(A_ptr + dn, mask=mask_dn, other=0.0).to(tl.float32)
    A2 = A * LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state = pid_b * D * N + dn  # [BD, BN]
    if HAS_DLAST:
        g = tl.load(dlast_ptr + state, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        g = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    x0 = pid_b * T * D + offs_d  # [BD] step 0 of this batch element in [B, T, D]
    n0 = pid_b * T * N + offs_n  # [BN] ... and in [B, T, N]
    zero = tl.zeros([1], dtype=tl.int32)
    # this program's scratch: CHUNK tiles [BD, BN] holding h_{t-1} for the current chunk
    TILE = BLOCK_D * BLOCK_N  # a constexpr: the product of two
    tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :]  # [BD, BN]
    scratch = scratch_ptr + (pid_b * tl.num_programs(0) + pid_d) * CHUNK * TILE + tile
    p_ck = ckpt_ptr + (pid_b * n_chunks + n_chunks - 1) * D * N + dn  # last checkpoint
    for ci in range(0, n_chunks):
        t0 = (n_chunks - 1 - ci) * CHUNK
        t_end = tl.minimum(t0 + CHUNK, T)
        # 1. recompute the chunk's states from its checkpoint, h_{t-1} into the scratch
        h = tl.load(p_ck, mask=mask_dn, other=0.0)
        p_ck -= D * N
        p_u, p_dl, p_B, p_s = (
            u_ptr + x0 + t0 * D,
            delta_ptr + x0 + t0 * D,
            B_ptr + n0 + t0 * N,
            scratch,
        )
        for _ in range(t0, t_end):
            tl.store(p_s, h)
            u = tl.load(p_u, mask=mask_d, other=0.0).to(tl.float32)
            dt = tl.load(p_dl, mask=mask_d, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt += bias
            if SOFTPLUS:
                dt = tl.maximum(dt, 0.0) + LN2 * tl.log2(1.0 + tl.exp2(-tl.abs(dt) * LOG2E))
            Bt = tl.load(p_B, mask=mask_n, other=0.0).to(tl.float32)
            h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
            p_u, p_dl, p_B, p_s = p_u + D, p_dl + D, p_B + N, p_s + TILE
        tl.debug_barrier()
        # 2. the adjoint recurrence, backwards through the chunk. As in the forward, the
        # inputs of the step before are loaded (prefetched) before this step's maths.
        xo = x0 + (t_end - 1) * D  # [BD] at the chunk's last step
        no = n0 + (t_end - 1) * N  # [BN]
        p_s -= TILE
        hp_n = tl.load(p_s)
        u_n = tl.load(u_ptr + xo, mask=mask_d, other=0.0)
        dl_n = tl.load(delta_ptr + xo, mask=mask_d, other=0.0)
        B_n = tl.load(B_ptr + no, mask=mask_n, other=0.0)
        C_n = tl.load(C_ptr + no, mask=mask_n, other=0.0)
        gy_n = tl.load(dout_ptr + xo, mask=mask_d, other=0.0)
        if HAS_Z:
            z_n = tl.load(z_ptr + xo, mask=mask_d, other=0.0)
        for i in range(t0, t_end):
            h_prev, u, raw = hp_n, u_n.to(tl.float32), dl_n.to(tl.float32)
            Bt, Ct, gy = B_n.to(tl.float32), C_n.to(tl.float32), gy_n.to(tl.float32)
            if HAS_Z:
                z = z_n.to(tl.float32)
            xc, nc = xo, no  # this step's rows, for the stores below
            xo, no, p_s = xo - D, no - N, p_s - TILE
            more = (zero + i + 1) < t_end  # [1]: a step before this one in the chunk
            hp_n = tl.load(p_s, mask=more[:, None], other=0.0)
            u_n = tl.load(u_ptr + xo, mask=mask_d & more, other=0.0)
            dl_n = tl.load(delta_ptr + xo, mask=mask_d & more, other=0.0)
            B_n = tl.load(B_ptr + no, mask=mask_n & more, other=0.0)
            C_n = tl.load(C_ptr + no, mask=mask_n & more, other=0.0)
            gy_n = tl.load(dout_ptr + xo, mask=mask_d & more, other=0.0)
            if HAS_Z:
                z_n = tl.load(z_ptr + xo, mask=mask_d & more, other=0.0)
            if HAS_BIAS:
                raw += bias
            if SOFTPLUS:
                dt = tl.maximum(raw, 0.0) + LN2 * tl.log2(1.0 + tl.exp2(-tl.abs(raw) * LOG2E))
            else:
                dt = raw
            a = tl.exp2(dt[:, None] * A2)  # [BD, BN]
            h = a * h_prev + (dt * u)[:, None] * Bt[None, :]
            if HAS_Z:
                y = tl.reduce(h * Ct[None, :], 1, _sum_combine)  # [BD], before the gate
                if HAS_D:
                    y += Dv * u
                sz = 1.0 / (1.0 + tl.exp2(-z * LOG2E))
                tl.store(dz_ptr + xc, gy * y * sz * (1.0 + z * (1.0 - sz)), mask=mask_d)
                gy = gy * z * sz
            dC = tl.reduce(gy[:, None] * h, 0, _sum_combine)  # [BN], this block's channels
            tl.atomic_add(dC_ptr + nc, dC, mask=mask_n)
            g += gy[:, None] * Ct[None, :]  # the gradient reaching h_t
            gB = tl.reduce(g * Bt[None, :], 1, _sum_combine)  # [BD]
            dB = tl.reduce(g * (dt * u)[:, None], 0, _sum_combine)  # [BN]
            tl.atomic_add(dB_ptr + nc, dB, mask=mask_n)
            gha = g * h_prev * a  # [BD, BN]: the gradient of (dt A) through a = exp(dt A)
            dA_acc += gha * dt[:, None]
            ddt = tl.reduce(gha * A, 1, _sum_combine) + u * gB  # [BD]
            du = dt * gB
            if HAS_D:
                du += Dv * gy
                dD_acc += gy * u
            if SOFTPLUS:
                ddt = ddt / (1.0 + tl.exp2(-raw * LOG2E))  # softplus' = sigmoid
            dbias_acc += ddt
            tl.store(du_ptr + xc, du, mask=mask_d)
            tl.store(ddelta_ptr + xc, ddt, mask=mask_d)
            g = g * a  # on to h_{t-1}
        tl.debug_barrier()
    tl.store(dh0_ptr + state, g, mask=mask_dn)
    tl.store(dA_ptr + state, dA_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * D + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * D + offs_d, dbias_acc, mask=mask_d)


@triton.jit
def _compose_back(a2, p2, s2, a1, p1, s1):
    """The adjoint's composition, for a scan run backwards in time (``reverse=True`` calls
    it with the LATER segment first). A segment of steps ``i..j`` maps the gradient ``x``
    arriving at its last state from the step after it to the gradient reaching its first
    state, ``g_i = p x + s`` (``p = a_{i+1} ... a_j``), and keeps its first step's ``a_i``:
    the earlier segment ``(a1, p1, s1)`` receives ``x' = a2 (p2 x + s2)``."""
    p = p1 * a2
    return a1, p * p2, s1 + p * s2


@triton.jit
def _block_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr,
    dout_ptr, dlast_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    T, D, N, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_DLAST: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """The backward in blocks of ``BL`` steps (form "block_adjoint"). Program ``(d-block,
    b)``, tiles ``[BL, BN, BD]`` channels last as in the block forward. Per chunk, last to
    first: (1) from the checkpoint, scan the chunk's blocks forwards and keep the state
    entering each block in this program's scratch ``[CHUNK / BL, BN, BD]``; (2) walk the
    blocks backwards: rescan the block's states ``h_t`` from its entering state, then
    the adjoint ``g_t = a_{t+1} g_{t+1} + gy_t C_t`` of all its steps with one reverse
    scan seeded by the gradient carried from the block after it; every gradient of the
    module docstring's table is then elementwise over the tiles plus reductions."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_l = tl.arange(0, BLOCK_L)  # [BL] step inside the block
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    mask_d, mask_n = offs_d < D, offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]  # [BN, BD]
    nd = offs_n[:, None] + offs_d[None, :] * N  # [BN, BD] offsets in a [D, N] matrix
    A = tl.load(A_ptr + nd, mask=mask_nd, other=0.0).to(tl.float32)  # masked lanes: a = 1
    A2 = A * LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state = pid_b * D * N + nd  # [BN, BD] offsets in a [B, D, N] state
    if HAS_DLAST:  # the gradient carried into the last step's state
        g_c = tl.load(dlast_ptr + state, mask=mask_nd, other=0.0).to(tl.float32)
    else:
        g_c = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    first = (offs_l == 0)[:, None, None]  # [BL, 1, 1]: the block's first step
    final = (offs_l == BLOCK_L - 1)[:, None, None]  # [BL, 1, 1]: its last step
    xs = pid_b * T * D + offs_l[:, None] * D + offs_d[None, :]  # [BL, BD], block 0
    ns = pid_b * T * N + offs_l[:, None] * N + offs_n[None, :]  # [BL, BN], block 0
    # this program's scratch: the state entering each block of the current chunk
    TILE = BLOCK_N * BLOCK_D  # a constexpr: the product of two
    tile = tl.arange(0, BLOCK_N)[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    scratch = scratch_ptr + (pid_b * tl.num_programs(0) + pid_d) * (CHUNK // BLOCK_L) * TILE
    scratch += tile  # [BN, BD]
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        t_c = c * CHUNK  # the chunk's first step
        n_blocks = (tl.minimum(CHUNK, T - t_c) + BLOCK_L - 1) // BLOCK_L  # the last: partial
        # 1. forwards through the chunk from its checkpoint: the state entering each block
        h = tl.load(ckpt_ptr + (pid_b * n_chunks + c) * D * N + nd, mask=mask_nd, other=0.0)
        for k in range(0, n_blocks):
            t0 = t_c + k * BLOCK_L
            tl.store(scratch + k * TILE, h)
            rows = (t0 + offs_l) < T  # [BL] steps inside the sequence
            m_x, m_n = rows[:, None] & mask_d[None, :], rows[:, None] & mask_n[None, :]
            u = tl.load(u_ptr + xs + t0 * D, mask=m_x, other=0.0).to(tl.float32)
            dt = tl.load(delta_ptr + xs + t0 * D, mask=m_x, other=0.0).to(tl.float32)
            Bt = tl.load(B_ptr + ns + t0 * N, mask=m_n, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt += bias[None, :]
            if SOFTPLUS:
                dt = tl.maximum(dt, 0.0) + LN2 * tl.log2(1.0 + tl.exp2(-tl.abs(dt) * LOG2E))
            dt = tl.where(rows[:, None], dt, 0.0)  # steps past T: the identity
            a = tl.exp2(dt[:, None, :] * A2[None, :, :])  # [BL, BN, BD]
            b = (dt * u)[:, None, :] * Bt[:, :, None]
            b = tl.where(first, a * h[None, :, :] + b, b)
            _, hs = tl.associative_scan((a, b), 0, _compose)
            h = tl.reduce(tl.where(final, hs, -0.0), 0, _sum_combine)  # [BN, BD]
        tl.debug_barrier()  # the scratch is written by other threads than read it
        # 2. backwards through the chunk's blocks
        for kk in range(0, n_blocks):
            k = n_blocks - 1 - kk
            t0 = t_c + k * BLOCK_L
            h_in = tl.load(scratch + k * TILE)  # [BN, BD] the state entering the block
            rows = (t0 + offs_l) < T
            m_x, m_n = rows[:, None] & mask_d[None, :], rows[:, None] & mask_n[None, :]
            xb, nb = xs + t0 * D, ns + t0 * N  # [BL, BD], [BL, BN] this block's rows
            u = tl.load(u_ptr + xb, mask=m_x, other=0.0).to(tl.float32)
            raw = tl.load(delta_ptr + xb, mask=m_x, other=0.0).to(tl.float32)
            gy = tl.load(dout_ptr + xb, mask=m_x, other=0.0).to(tl.float32)  # 0 past T
            Bt = tl.load(B_ptr + nb, mask=m_n, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + nb, mask=m_n, other=0.0).to(tl.float32)
            if HAS_BIAS:
                raw += bias[None, :]
            if SOFTPLUS:
                dt = tl.maximum(raw, 0.0) + LN2 * tl.log2(1.0 + tl.exp2(-tl.abs(raw) * LOG2E))
            else:
                dt = raw
            dt = tl.where(rows[:, None], dt, 0.0)  # steps past T: a = 1, b = 0
            dt, dtu = _pinned(dt, dt * u)  # [BL, BD]
            Bt, Ct = _pinned(Bt, Ct)  # [BL, BN]
            # the block's states, as in the forward
            a = tl.exp2(dt[:, None, :] * A2[None, :, :])  # [BL, BN, BD]
            b = dtu[:, None, :] * Bt[:, :, None]  # [BL, BN, BD], b_t = dt u B_t
            _, hs = tl.associative_scan(
                (a, tl.where(first, a * h_in[None, :, :] + b, b)), 0, _compose
            )  # [BL, BN, BD]: h_t
            if HAS_Z:
                y = tl.reduce(hs * Ct[:, :, None], 1, _sum_combine)  # [BL, BD], before the gate
                if HAS_D:
                    y += Dv[None, :] * u
                z = tl.load(z_ptr + xb, mask=m_x, other=0.0).to(tl.float32)
                sz = 1.0 / (1.0 + tl.exp2(-z * LOG2E))
                tl.store(dz_ptr + xb, gy * y * sz * (1.0 + z * (1.0 - sz)), mask=m_x)
                gy = gy * z * sz
            dC = tl.reduce(gy[:, None, :] * hs, 2, _sum_combine)  # [BL, BN], this program's
            tl.atomic_add(dC_ptr + nb, dC, mask=m_n)
            # the adjoint: g_t = a_{t+1} g_{t+1} + gy_t C_t, one reverse scan over the
            # block, with the carried gradient added at the last step (past T: a = 1, c = 0)
            gc = gy[:, None, :] * Ct[:, :, None]  # [BL, BN, BD]
            gc = tl.where(final, gc + g_c[None, :, :], gc)
            ones = tl.full([BLOCK_L, BLOCK_N, BLOCK_D], 1.0, tl.float32)
            _, _, g = tl.associative_scan((a, ones, gc), 0, _compose_back, reverse=True)
            # carried to the block before: the gradient reaching h_{t0-1} is a_{t0} g_{t0}
            g_c = tl.reduce(tl.where(first, a * g, -0.0), 0, _sum_combine)  # [BN, BD]
            gB = tl.reduce(g * Bt[:, :, None], 1, _sum_combine)  # [BL, BD]
            dB = tl.reduce(g * dtu[:, None, :], 2, _sum_combine)  # [BL, BN]
            tl.atomic_add(dB_ptr + nb, dB, mask=m_n)
            # a_t h_{t-1} = h_t - b_t: the previous state without a shifted copy of hs (it
            # rounds to eps |b_t| absolute, small against the other terms in fp32)
            gah = g * (hs - b)  # [BL, BN, BD]: the gradient of (dt A) through a = exp(dt A)
            dA_acc += tl.reduce(gah * dt[:, None, :], 0, _sum_combine)
            ddt = tl.reduce(gah * A[None, :, :], 1, _sum_combine) + u * gB  # [BL, BD]
            du = dt * gB
            if HAS_D:
                du += Dv[None, :] * gy
                dD_acc += tl.reduce(gy * u, 0, _sum_combine)
            if SOFTPLUS:
                ddt = ddt / (1.0 + tl.exp2(-raw * LOG2E))  # softplus' = sigmoid
            ddt = tl.where(rows[:, None], ddt, 0.0)  # steps past T: g * h is not zero there
            dbias_acc += tl.reduce(ddt, 0, _sum_combine)
            tl.store(du_ptr + xb, du, mask=m_x)
            tl.store(ddelta_ptr + xb, ddt, mask=m_x)
        tl.debug_barrier()  # the next chunk rewrites the scratch
    tl.store(dh0_ptr + state, g_c, mask=mask_nd)
    tl.store(dA_ptr + state, dA_acc, mask=mask_nd)
    if HAS_D:
        tl.store(dD_ptr + pid_b * D + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * D + offs_d, dbias_acc, mask=mask_d)


@triton.jit
def selective_scan_step_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, state_ptr,
    y_ptr, new_state_ptr,
    D, N,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One token: program ``(d-block, b)`` reads its ``[BD, N]`` states once, writes them
    once, and the output ``y_t`` for its channels."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < D, offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    dn = offs_d[:, None] * N + offs_n[None, :]
    A2 = tl.load(A_ptr + dn, mask=mask_dn, other=0.0).to(tl.float32) * LOG2E
    h = tl.load(state_ptr + pid_b * D * N + dn, mask=mask_dn, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + pid_b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(delta_ptr + pid_b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = tl.maximum(dt, 0.0) + LN2 * tl.log2(1.0 + tl.exp2(-tl.abs(dt) * LOG2E))
    Bt = tl.load(B_ptr + pid_b * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + pid_b * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
    y = tl.reduce(h * Ct[None, :], 1, _sum_combine)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) * u
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        y *= z * (1.0 / (1.0 + tl.exp2(-z * LOG2E)))
    tl.store(y_ptr + pid_b * D + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)
    tl.store(new_state_ptr + pid_b * D * N + dn, h, mask=mask_dn)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _check_device(**tensors: Any) -> None:
    """Every tensor on one device; on CUDA when the kernels are compiled; no bfloat16 below
    compute capability 8.0."""
    named = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = named[0]
    for name, t in named:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}: "
                "pass all tensors on one device"
            )
    if runtime.triton_mode() == "compiled" and first.device.type != "cuda":
        raise ValueError(f"{first_name} must be a CUDA tensor for compiled Triton kernels")
    runtime.check_bf16_supported(**dict(named))  # no bf16 below compute capability 8.0


def _c(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.contiguous()


def _dummy(x: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Kernels need a pointer even for an absent optional input (never read)."""
    return like if x is None else x


def _scan_forward(
    form, u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, store_ckpt
):  # fmt: skip
    """Launch the forward of ``form`` ("scan": step by step; "block" or "block_adjoint":
    ``BL`` steps at a time): ``out`` [B, T, D] (u's dtype), ``last`` [B, D, N] fp32 and
    the checkpoints [B, c, D, N] fp32 (``None`` unless ``store_ckpt``). Both forwards store
    the same checkpoints."""
    Bsz, T, Dd = u.shape
    N = A.shape[1]
    L = CONFIG["fwd"]["CHUNK"]
    n_chunks = triton.cdiv(T, L)
    out = runtime.new_empty((Bsz, T, Dd), dtype=u.dtype, device=u.device)
    last = runtime.new_empty((Bsz, Dd, N), dtype=torch.float32, device=u.device)
    ckpt = (
        runtime.new_empty((Bsz, n_chunks, Dd, N), dtype=torch.float32, device=u.device)
        if store_ckpt
        else last
    )
    args = (
        u, delta, A, B, C, _dummy(D, A), _dummy(z, u), _dummy(delta_bias, A), _dummy(h0, last),
        out, last, ckpt, T, Dd, N, n_chunks,
    )  # fmt: skip
    flags = dict(
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        HAS_H0=h0 is not None, SOFTPLUS=bool(delta_softplus), STORE_CKPT=store_ckpt,
        BLOCK_N=triton.next_power_of_2(N), CHUNK=L,
    )  # fmt: skip
    if form == "scan":
        cfg = CONFIG["fwd"]
        grid = (triton.cdiv(Dd, cfg["BLOCK_D"]), Bsz)
        _scan_fwd_kernel[grid](*args, **flags, BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"])
    else:
        cfg = CONFIG["block_fwd"]
        # a block never straddles a checkpoint: BL divides CHUNK (gcd of powers of 2)
        BL = math.gcd(cfg["BLOCK_L"], L) if store_ckpt else cfg["BLOCK_L"]
        grid = (triton.cdiv(Dd, cfg["BLOCK_D"]), Bsz)
        _block_scan_fwd_kernel[grid](
            *args, **flags, BLOCK_L=BL, BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"]
        )
    return out, last, (ckpt if store_ckpt else None)


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, form, u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0):
        store = any(ctx.needs_input_grad)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None
        out, last, ckpt = _scan_forward(
            form, u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, store
        )
        if store:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0, ckpt)
            ctx.delta_softplus = delta_softplus
            ctx.form = form  # "block_adjoint": the block backward, else the step one
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, h0, ckpt = ctx.saved_tensors
        Bsz, T, Dd = u.shape
        N = A.shape[1]
        L = CONFIG["fwd"]["CHUNK"]
        blocks = ctx.form == "block_adjoint"
        cfg = CONFIG["block_bwd"] if blocks else CONFIG["bwd"]
        BL = math.gcd(cfg["BLOCK_L"], L) if blocks else 1  # a block never straddles a chunk
        n_chunks = ckpt.shape[1]
        BN = triton.next_power_of_2(N)
        n_dblocks = triton.cdiv(Dd, cfg["BLOCK_D"])
        dev, f32 = u.device, torch.float32
        dout = torch.zeros_like(u) if dout is None else dout.contiguous()
        dlast = None if dlast is None else dlast.contiguous()
        # per program: the CHUNK states of a chunk (step backward), or the state entering
        # each of its CHUNK / BL blocks (block backward)
        scratch = torch.empty(
            Bsz * n_dblocks * (L // BL) * cfg["BLOCK_D"] * BN, dtype=f32, device=dev
        )
        du = runtime.new_empty((Bsz, T, Dd), dtype=f32, device=dev)
        ddelta = runtime.new_empty((Bsz, T, Dd), dtype=f32, device=dev)
        dz = runtime.new_empty((Bsz, T, Dd), dtype=f32, device=dev) if z is not None else du
        dB = torch.zeros((Bsz, T, N), dtype=f32, device=dev)  # atomic accumulators
        dC = torch.zeros((Bsz, T, N), dtype=f32, device=dev)
        dA = runtime.new_empty((Bsz, Dd, N), dtype=f32, device=dev)  # per batch element
        dD = runtime.new_empty((Bsz, Dd), dtype=f32, device=dev) if D is not None else du
        dbias = (
            runtime.new_empty((Bsz, Dd), dtype=f32, device=dev) if delta_bias is not None else du
        )
        dh0 = runtime.new_empty((Bsz, Dd, N), dtype=f32, device=dev)
        args = (
            u, delta, A, B, C, _dummy(D, A), _dummy(z, u), _dummy(delta_bias, A), ckpt,
            dout, _dummy(dlast, dh0), scratch,
            du, ddelta, dz, dB, dC, dA, dD, dbias, dh0,
            T, Dd, N, n_chunks,
        )  # fmt: skip
        flags = dict(
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            HAS_DLAST=dlast is not None, SOFTPLUS=bool(ctx.delta_softplus),
            BLOCK_D=cfg["BLOCK_D"], BLOCK_N=BN, CHUNK=L, num_warps=cfg["num_warps"],
        )  # fmt: skip
        if blocks:
            _block_scan_bwd_kernel[(n_dblocks, Bsz)](*args, **flags, BLOCK_L=BL)
        else:
            _scan_bwd_kernel[(n_dblocks, Bsz)](*args, **flags)

        def cast(g, like):
            return None if like is None else g.to(like.dtype)

        return (
            None, cast(du, u), cast(ddelta, delta), cast(dA.sum(0), A), cast(dB, B), cast(dC, C),
            cast(dD.sum(0), D) if D is not None else None,
            cast(dz, z) if z is not None else None,
            cast(dbias.sum(0), delta_bias) if delta_bias is not None else None,
            None,
            cast(dh0, h0) if h0 is not None else None,
        )  # fmt: skip


def _apply(form: str, args: dict[str, Any]) -> Any:
    """Check the arguments of a public scan, then run ``form`` through autograd."""
    dims = check_scan_inputs(**args)
    if dims["T"] * max(dims["D"], dims["N"]) >= 2**31:
        raise ValueError(
            f"u is too long for the kernel's int32 offsets: T * D = "
            f"{dims['T'] * dims['D']} (split the sequence, carry the state)"
        )
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
    _check_device(**{k: args[k] for k in names})
    out, last = _SelectiveScan.apply(
        form, *(_c(args[k]) for k in names[:-1]), bool(args["delta_softplus"]),
        _c(args["initial_state"]),
    )  # fmt: skip
    return (out, last) if args["return_last_state"] else out


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> Any:
    """Fused selective scan (forward and backward in Triton), mamba_ssm's interface.

    ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``out_t = (h_t C_t + D u_t) silu(z_t)``,
    ``dt = softplus(delta + delta_bias)`` when ``delta_softplus``.

    Shapes: ``u, delta, z`` [B, T, D] (fp32, fp16 or bf16); ``A`` [D, N] (fp32 advised);
    ``B, C`` [B, T, N]; ``D, delta_bias`` [D]; ``initial_state`` [B, D, N]. Returns
    ``out`` [B, T, D] in u's dtype, or ``(out, last_state [B, D, N] fp32)`` when
    ``return_last_state``. Differentiable in every tensor argument; the gradients come back
    in each argument's dtype, computed in fp32. The forward walks time one step at a time.
    """
    return _apply("scan", locals())


def selective_scan_blockwise(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> Any:
    """:func:`selective_scan` with a forward that is parallel in time inside blocks of
    ``BL`` steps (``CONFIG["block_fwd"]``): for each block the pairs
    ``(a_t, b_t) = (exp(dt_t A), dt_t B_t u_t)`` [BL, N, BD] are combined by an associative
    scan, ``(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)``, after folding the carried state
    into the block's first step (``b_0 += a_0 h``). Same arguments, shapes, results and
    backward (it stores the same checkpoints) as :func:`selective_scan`.
    """
    return _apply("block", locals())


def selective_scan_block_adjoint(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> Any:
    """:func:`selective_scan_blockwise` (same forward, arguments, shapes and results) with
    a backward that also works ``BL`` steps at a time (``CONFIG["block_bwd"]``): per block
    it rescans the states from the state entering the block, then runs the adjoint
    ``g_t = exp(dt_{t+1} A) g_{t+1} + C_t gy_t`` for all the block's steps with one
    associative scan backwards in time, and forms every gradient from ``[BL, N, BD]``
    tiles with reductions over the states, the channels or the steps.
    """
    return _apply("block_adjoint", locals())


def selective_scan_decode_step(
    u_t: torch.Tensor,
    delta_t: torch.Tensor,
    A: torch.Tensor,
    B_t: torch.Tensor,
    C_t: torch.Tensor,
    state: torch.Tensor,
    D: torch.Tensor | None = None,
    z_t: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step in one kernel launch (no autograd): O(D N) work, any past length.

    ``u_t, delta_t, z_t`` [B, D]; ``B_t, C_t`` [B, N]; ``state`` [B, D, N]. Returns
    ``(y_t [B, D] in u_t's dtype, new_state [B, D, N] fp32)``; ``state`` is not modified.
    """
    check_step_inputs(**locals())
    _check_device(u_t=u_t, delta_t=delta_t, A=A, B_t=B_t, C_t=C_t, state=state, D=D,
                  z_t=z_t, delta_bias=delta_bias)  # fmt: skip
    Bsz, Dd = u_t.shape
    N = A.shape[1]
    cfg = CONFIG["step"]
    y = runtime.new_empty((Bsz, Dd), dtype=u_t.dtype, device=u_t.device)
    new_state = runtime.new_empty((Bsz, Dd, N), dtype=torch.float32, device=u_t.device)
    u_t, delta_t, A, B_t, C_t, state = (x.contiguous() for x in (u_t, delta_t, A, B_t, C_t, state))
    D, z_t, delta_bias = _c(D), _c(z_t), _c(delta_bias)
    with torch.no_grad():
        selective_scan_step_kernel[(triton.cdiv(Dd, cfg["BLOCK_D"]), Bsz)](
            u_t, delta_t, A, B_t, C_t, _dummy(D, A), _dummy(z_t, u_t), _dummy(delta_bias, A),
            state, y, new_state, Dd, N,
            HAS_D=D is not None, HAS_Z=z_t is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), BLOCK_D=cfg["BLOCK_D"],
            BLOCK_N=triton.next_power_of_2(N), num_warps=cfg["num_warps"],
        )  # fmt: skip
    return y, new_state

"""Chunkwise gated linear attention in Triton: two forward forms, backward, one decoding step.

Glossary of dimension letters:

* ``B`` batch, ``T`` sequence length, ``H`` heads, ``K`` key/query head dimension,
  ``V`` value head dimension, ``N`` number of chunks (``ceil(T / BT)``),
* ``BT`` chunk length (rows that share one stored state), ``BC`` sub-chunk length,
  ``NC = BT / BC`` sub-chunks per chunk, ``BK``/``BV`` the padded/blocked K and V widths.

The maths is the chunkwise form of :mod:`course_lib.gated_linear_attention.numpy_ref`
with a key-side gate only (GLA: ``G_t = exp(g_t) 1^T``; Yang et al. 2023). Inside chunk
``n`` the log gates are summed from the chunk's start, ``b_i = sum_{s<=i} g_s`` (fp32), and
with ``h_n`` the state before the chunk::

    o_i     = scale * [(q_i ⊙ e^{b_i})^T h_n + sum_{j<=i} A_ij v_j]
    A_ij    = sum_k q_ik k_jk e^{b_ik - b_jk}                       (j <= i in the chunk)
    h_{n+1} = e^{b_L} ⊙ h_n + sum_j (k_j ⊙ e^{b_L - b_j}) v_j^T     (b_L: the chunk's total)

Numerical safety: every exponent evaluated is <= 0. ``A`` cannot be one matrix product for
a vector gate (the decay depends on k), so the chunk is cut into sub-chunks of ``BC`` rows.
For the keys of a sub-chunk ``J`` and a row ``i`` after it, pick the last row ``r`` of
``J`` (``j <= r < i``): ``e^{b_i - b_j} = e^{b_i - b_r} e^{b_r - b_j}``, two factors <= 1,
and the whole column block is ``(q ⊙ e^{b - b_r}) (k_J ⊙ e^{b_r - b_J})^T``, a matrix
product (rows at or before ``r`` masked). The diagonal [BC, BC] blocks are summed one key
offset at a time with clamped exponents. A scalar gate (one number per row) has no such
problem: ``A = (q k^T) ⊙ D`` with the chunk's [BT, BT] decay mask ``D_ij = e^{b_i - b_j}``,
one product per chunk.

Forward kernels, in launch order: ``_chunk_cumsum_kernel`` (b; the same pass flags gates
that are not finite and <= 0), ``_fwd_states_kernel`` (the sequential scan over chunks
that stores every h_n in fp32), ``_fwd_intra_kernel`` or ``_fwd_intra_scalar_kernel`` (A,
fp32), ``_fwd_output_kernel`` (o).

The fused forward (form ``fused_chunk``: :func:`fused_chunk_gla`,
:func:`fused_chunk_simple_gla`). The four-kernel forward writes every h_n in fp32,
``N K V`` numbers per head: at B=4, H=16, K=V=128, T=65536 that is 4.3 GB written by
the state scan and read back by the output kernel, more than q, k, v, g and o together.
The fused form keeps ``_chunk_cumsum_kernel`` and, for a vector gate,
``_fwd_intra_kernel`` (A in parallel over chunks, with the safe sub-chunk split), then
``_fused_fwd_kernel``: one program per (V-block, batch*head) walks the chunks in order
with the state block ``S [BK, BV]`` in fp32 registers and for every chunk::

    o = scale * [(q ⊙ e^b) S + A v]          A read (vector gate) or (q k^T) ⊙ D (scalar)
    S <- e^{b_L} ⊙ S + (k ⊙ e^{b_L - b})^T v  (every exponent <= 0, as above)

storing o and, once at the end, the final state; no h_n ever reaches memory. What is
left sequential is the chain of S updates; the loads of chunk n + 1 do not depend on S,
so the software pipeliner fetches them while chunk n computes (``num_stages``). There
are only ``(V / BV) B H`` programs (128 at B=4, H=16, K=V=128: about one per SM), so the
form suits many heads; with few heads and long T the chunkwise form spreads its output
work over the chunks instead. The vector gate still moves A (``BT`` fp32 numbers a row,
written once and read once per V-block) and b (fp32); the scalar gate needs neither.
The backward recomputes hs with ``_fwd_states_kernel`` (and a scalar gate's A), then
runs the backward below unchanged: one more pass over k, v in exchange for never storing
hs in the forward. A vector gate's A is kept from the forward (BT fp32 numbers a row).

Backward, given ``do`` and the gradient ``dh_T`` of the final state (kernels
``_bwd_states_kernel``, ``_bwd_dA_kernel``, ``_bwd_dv_kernel``, ``_bwd_dqdk_kernel`` or
``_bwd_dqdk_scalar_kernel``, ``_bwd_dg_kernel``):

* states backwards: ``dh_n = e^{b_L} ⊙ dh_{n+1} + scale * sum_i (q_i ⊙ e^{b_i}) do_i^T``;
* ``dA_ij = scale * do_i . v_j`` (j <= i), ``dv_j = scale * sum_{i>=j} A_ij do_i +
  (k_j ⊙ e^{b_L - b_j})^T dh_{n+1}``;
* ``dq_i = e^{b_i} ⊙ (scale * h_n do_i) + sum_{j<=i} dA_ij k_j ⊙ e^{b_i - b_j}``,
  ``dk_j = e^{b_L - b_j} ⊙ (dh_{n+1} v_j) + sum_{i>=j} dA_ij q_i ⊙ e^{b_i - b_j}``
  (off-diagonal tiles split at a row between the two sub-chunks: the last row of J for
  dq, as in the forward, the first row of I for dk). For a vector gate dq and dk
  are elementwise in k once dA is known, so ``_bwd_dqdk_kernel`` takes one chunk and a
  slice of K per program: the inter-chunk products read each state once, earlier
  sub-chunks add to dq (later ones to dk) as one [BT, BC] x [BC, BK] product each, and
  the NC diagonal blocks go together, one in-block offset at a time;
* the gate gradient. With global cumulative gates ``G_t = sum_{s<=t} g_s`` the output
  depends on G only through ``q~_t = q_t ⊙ e^{G_t}`` and ``k~_t = k_t ⊙ e^{-G_t}``
  (``o_i = scale sum_{j<=i} (q~_i . k~_j) v_j + scale q~_i^T h_0``), and the final state
  is ``h_T = e^{G_T} ⊙ (h_0 + sum_j k~_j v_j^T)``. The chain rule through ``q = q~ e^{-G}``
  and ``k = k~ e^{G}`` gives, per element,
  ``dL/dG_t = q_t ⊙ dq_t - k_t ⊙ dk_t  (+ sum_v dh_T ⊙ h_T at t = T)``,
  where dq, dk are the gradients already computed. Since ``G_t = sum_{s<=t} g_s``,
  ``dg_t = sum_{s>=t} dL/dG_s``: a reverse cumulative sum. No exponential appears, so
  the identity is as safe as dq and dk. A scalar gate (``[B, T, H]``) sums it over K.

Configuration is in :data:`CONFIG` (no autotuning on the course machines).
"""

from __future__ import annotations

import torch

from course_lib import checks, runtime

runtime.require_triton()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from course_lib.gated_linear_attention.numpy_ref import validate  # noqa: E402

# Launch configuration, picked by hand for an H200 at K = V = 128, bf16.
CONFIG = {
    "BT": 64,  # default chunk length: one stored fp32 state per 64 steps
    "BC": 16,  # sub-chunk length for the gated intra-chunk tiles
    "BV": 64,  # value columns per program (the state block is BK x BV in fp32)
    "BV_K256": 32,  # ... when K pads to 256, to keep the fp32 state block in registers
    "warps_state": 4,  # the sequential state scans
    # ... each program scans a block of BK_state key rows of the state (the gate decays
    # every key row on its own): at K = V = 128, B = 4, H = 16 that is 256 programs of
    # [64, 64] fp32 state instead of 128 of [128, 64]. H200, bf16, T = 16384: the forward
    # scan takes 1.04 ms instead of 1.64 (4.10 instead of 6.54 at T = 65536).
    "BK_state": 64,
    "warps_chunk": 4,  # per-chunk kernels
    # The vector-gate A kernel: one program per intra_rows rows of a chunk, holding their
    # q and b as [rows, BK] fp32 tiles. Few rows and few warps keep many small programs
    # resident on an SM. H200, bf16, K = 128, T = 16384 (65536), the diagonal loop as it
    # was before the sixth session (two selects on the tile, base e): 16 rows on 2 warps
    # took 1.93 ms (7.66), 32 rows on 2 warps 2.13 (8.46), the whole chunk on 4 warps 2.30
    # (9.31), on 8 warps 3.82 (15.4), 16 rows on 1 or 4 warps more than on 2. With the
    # lean loop (sixth session, same process as fla): 16 rows on 1 warp 1.50 (5.94), on 2
    # warps 1.64 (6.49), on 4 warps 2.40 (9.54); 32 rows on 2 warps 1.76 (6.97), on 4 2.51.
    # One warp a program at K = 128 spills a few bytes (sm_90, triton 3.6: 8 B stored) and
    # is still the fastest; the warps double with each doubling of BK past 128, so the
    # tiles per thread stay the same (1 warp at K = 256 spilled over a kilobyte).
    "intra_rows": 16,
    "warps_intra": 1,  # ... per 128 key columns
    "stages": 2,  # software pipelining of loads in loops: 2 keeps the fp32 K = 256 scans
    #               within shared memory (Triton's default 3 does not fit there)
    "BK_dg": 32,  # key columns per program of the gate-gradient scan
    "BK_dqdk_scalar": 64,  # key columns per program of the scalar-gate dq/dk kernel
    # The vector-gate dq/dk kernel (_bwd_dqdk_kernel): one program per (slice of BK_dqdk
    # key columns, chunk, batch*head). Its live tiles are [BT, BK_dqdk] fp32 (dq, dk, b
    # and one gathered row set of k, q, b in the diagonal loop): at BT = 64, BK_dqdk = 64
    # one such tile is 32 registers a thread over 4 warps, about six of them in the
    # 255-register budget; BT = 128 doubles every tile, so 8 warps there. sm_90 builds
    # (triton 3.6, bf16, BT = 64): 4 warps use 255 registers and spill 116 B (K = 128)
    # or 192 B (K = 256), once, around the off-diagonal loops, not in the diagonal loop;
    # 8 warps do not spill (206 / 207 registers). 4 warps let two programs share an SM
    # (one waits at a barrier while the other computes): on an H200 (B=4, T=16384,
    # H=16, K=V=128) a first version of this kernel took 8.5 ms with 4 warps, 10.6 ms
    # with 8; the final version is not timed yet.
    "BK_dqdk": 64,
    "warps_dqdk": 4,
    "warps_dqdk_BT128": 8,
    "decode_BV": 32,
    "decode_warps": 4,
    # The fused forward (form "fused_chunk", _fused_fwd_kernel): one program per (V-block,
    # batch*head), so (V / BV) * B * H programs: BV = 64 at K = V = 128, B = 4, H = 16
    # gives 128 programs, about one per SM of the H200's 132 (BV = 128 would halve that).
    # The state block [BK, BV] stays in fp32 registers: 128 x 64 fp32 is 32 registers a
    # thread over 8 warps; K = 256 halves BV to 32 to keep the same budget.
    # Beside S a vector-gate chunk holds q, k, b and the scaled q ⊙ e^b, k ⊙ e^{b_L - b}
    # as [BT, BK] tiles, so 8 warps once such a tile exceeds 64 x 64 ("tile_wide") spread
    # them over twice the registers (sm_90 builds with triton 3.6, bf16, K = 128, BT = 64:
    # 255 registers and a 16 B stack frame with 8 warps, 208 B with 4). A scalar gate
    # scales rows of q S and of v instead, so its chunk holds only q and k at that width:
    # 4 warps up to K = 128 (no spill in the same build), 8 beyond. H200, bf16, B = 4,
    # H = 16, K = V = 128 (seventh session, same process as fla's chunk_simple_gla): the
    # scalar fused forward took 2.67 ms at T = 65536 (0.68 at 16384); scaling the q and k
    # tiles on 8 warps, as before, 4.20 (1.00); rows on 8 warps 3.41, rows of q S only
    # (k scaled) on 4 warps 3.34.
    # The loads of chunk n + 1 do not depend on S, so the software pipeliner can fetch
    # them while chunk n computes: as many stages as fit "stage_bytes" together (a stage:
    # q, k in the input dtype, plus b and A in fp32 for a vector gate), at most
    # "num_stages", at least 1 (no pipelining). bf16, K = 128, BT = 64: a vector-gate
    # stage is 80 KB -> 2 stages, a scalar-gate stage 32 KB -> 3. Shared memory of the
    # sm_90 builds (triton 3.6, compiled ahead of time without a GPU, 16-byte aligned
    # pointers): 66 KB and 130 KB there (a third vector-gate stage would fit, 108 KB; not
    # timed). A scalar gate at fp32 and K = 256 holds q, k and k^T as [64, 256] fp32 tiles
    # and needed 237 KB with V blocks of 32, so it takes "BV_K256_fp32_scalar" (217 KB).
    # Every shape stays under the 227 KB a block may use, except fp32 with K = 256 and
    # BT = 128 under a scalar gate, which the chunkwise form's intra kernel exceeds as well.
    "fused": {
        "BV": 64,
        "BV_K256": 32,
        "BV_K256_fp32_scalar": 16,
        "num_warps": 4,
        "num_warps_wide": 8,
        "tile_wide": 64 * 64,
        "num_stages": 3,
        "stage_bytes": 160 * 1024,
    },
}
# Below compute capability 8.0 (a T4, sm_75) a block may use at most 64 KB of shared memory
# and tl.dot has no fp32 tensor-core path: fp32 products become FMAs whose operands are
# re-laid-out through shared memory, a whole tile at a time (the vector-gate A kernel
# computes in fp32 whatever the input dtype), and the software pipeliner has no
# asynchronous copies (sm_80 brought them) to overlap loads with. Compiled ahead of time
# for sm_75 (Triton 3.6) with CONFIG, many fp32 launches at K >= 128 needed 72 to 152 KB
# (the fused walk at K = 256 the most), and at K = 256 the fused walk (72 KB) and the A
# kernel (80 KB) went over in fp16 too: a [BT, BK] fp32 tile such as q ⊙ e^b is 64 KB at
# BT = 64, K = 256. So below 8.0 (the launchers read the capability of q's device; the
# interpreter counts as 8.0 or newer) these entries replace CONFIG's: chunks of at most
# "max_BT" steps and short enough that one [BT, BK] tile of the input dtype takes at
# most "max_tile_bytes" (BT = 64 for fp16 up to K = 128
# and fp32 up to K = 64, 32 at fp16 K = 256 and fp32 K = 128, 16 at fp32 K = 256; a longer
# chunk_size is cut, the result does not depend on it), V blocks of 32 (16 at K = 256) in
# the chunkwise kernels and the fused walk, and one pipeline stage.
# With these, all 467 distinct launches of this module's sm_75 compile (fp16 and fp32, K
# and V from 16 to 256, every chunk size, both gates, both forms, forward and backward;
# the A kernel in programs of 16 rows) fit, the largest in 56 KB; the worst register
# spill is 8 KB of stores (the fused walk, fp16, K = 64). Not run on a T4 yet.
PRE_AMPERE = {
    "max_BT": 64,
    "max_tile_bytes": 16 * 1024,
    "BV": 32,
    "BV_K256": 16,
    "stages": 1,
    "fused": {"BV": 32, "BV_K256": 16, "num_stages": 1},
}


def _settings(capability: tuple[int, int] | None) -> dict:
    """CONFIG, with PRE_AMPERE's entries in place below compute capability 8.0 (None, the
    interpreter or a CPU tensor, counts as 8.0 or newer)."""
    if capability is None or tuple(capability) >= (8, 0):
        return CONFIG
    fused = {**CONFIG["fused"], **PRE_AMPERE["fused"]}
    return {**CONFIG, **{k: v for k, v in PRE_AMPERE.items() if k != "fused"}, "fused": fused}


def _config(x: torch.Tensor) -> dict:
    """The launch settings for the GPU that holds ``x`` (:func:`_settings`)."""
    return _settings(runtime.device_capability(x.device))


LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): e^x = 2^{x log2 e}


def _pow2(n: int, low: int = 16) -> int:
    return max(low, triton.next_power_of_2(n))


# ------------------------------------------------------------------------------ loads


@triton.jit
def _load_rows(ptr, rows, T, cols, D, stride_t, other):
    """Rows ``rows`` (time indices) and columns ``cols`` of a [T, *, D] tensor (masked)."""
    mask = (rows[:, None] < T) & (rows[:, None] >= 0) & (cols[None, :] < D)
    return tl.load(ptr + rows[:, None] * stride_t + cols[None, :], mask=mask, other=other)


@triton.jit
def _load_pairs(ptr, rows, T, cols, D, stride_t):
    """Row ``rows[i]`` for every i (rows may repeat), as a [len(rows), D] tile (masked)."""
    mask = (rows[:, None] < T) & (cols[None, :] < D)
    return tl.load(ptr + rows[:, None] * stride_t + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _load_gate(gc_ptr, rows, T, cols, K, H, SCALAR: tl.constexpr):
    """Within-chunk cumulative log gates as a [rows, BK] fp32 tile (scalar gates broadcast)."""
    if SCALAR:
        g = tl.load(gc_ptr + rows * H, mask=rows < T, other=0.0)
        return g[:, None] + (cols[None, :] * 0).to(tl.float32)
    else:
        return _load_rows(gc_ptr, rows, T, cols, K, H * K, 0.0)


@triton.jit
def _load_gate_row(gc_ptr, row, cols, K, H, SCALAR: tl.constexpr):
    """One row ``row`` (a valid time index) of the cumulative gates, [BK] fp32."""
    if SCALAR:
        return tl.load(gc_ptr + row * H) + (cols * 0).to(tl.float32)
    else:
        return tl.load(gc_ptr + row * H * K + cols, mask=cols < K, other=0.0)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _chunk_cumsum_kernel(
    g_ptr, gc_ptr, bad_ptr, T, H, K, BT: tl.constexpr, BK: tl.constexpr, SCALAR: tl.constexpr
):
    """gc[t] = sum of g from the start of t's chunk to t, in fp32; bad[i_bh, i_n] counts
    the gates of the chunk that break "finite and <= 0": positive, NaN or -inf (also
    finite values below -3e38, which the exact check run by the launcher then clears; it
    runs only when a count is not zero, for its message). Grid (N, B*H)."""
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    rows = i_n * BT + tl.arange(0, BT)
    if SCALAR:
        base = (i_b * T * H + i_h).to(tl.int64)
        g = tl.load(g_ptr + base + rows * H, mask=rows < T, other=0.0).to(tl.float32)
        tl.store(gc_ptr + base + rows * H, tl.cumsum(g, axis=0), mask=rows < T)
    else:
        base = (i_b * T * H + i_h).to(tl.int64) * K
        cols = tl.arange(0, BK)
        g = _load_rows(g_ptr + base, rows, T, cols, K, H * K, 0.0).to(tl.float32)
        mask = (rows[:, None] < T) & (cols[None, :] < K)
        ptrs = gc_ptr + base + rows[:, None] * H * K + cols[None, :]
        tl.store(ptrs, tl.cumsum(g, axis=0), mask=mask)
    # positive, NaN (never equal to itself) or -inf (below every finite fp32 but the very
    # last few, which the exact check then clears); masked entries were loaded as 0
    bad = (g > 0.0) | (g != g) | (g < -3.0e38)
    tl.store(bad_ptr + i_bh * tl.num_programs(0) + i_n, tl.sum(bad.to(tl.int32)))


@triton.jit
def _fwd_states_kernel(
    k_ptr,
    v_ptr,
    gc_ptr,
    h0_ptr,
    hs_ptr,
    ht_ptr,
    T,
    H,
    K,
    V,
    N,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    SCALAR: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
):
    """Scan over chunks: store h_n (state before chunk n) in hs [B, H, N, K, V] fp32.
    Grid (cdiv(K, BK), cdiv(V, BV), B*H): the gate decays each key row of the state on
    its own, so blocks of K rows scan independently (more programs, shorter chains)."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    cols_k = i_k * BK + tl.arange(0, BK)
    cols_v = i_v * BV + tl.arange(0, BV)
    kbase = (i_b * T * H + i_h).to(tl.int64) * K
    vbase = (i_b * T * H + i_h).to(tl.int64) * V
    gbase = (i_b * T * H + i_h).to(tl.int64) * (1 if SCALAR else K)
    smask = (cols_k[:, None] < K) & (cols_v[None, :] < V)
    soffs = cols_k[:, None] * V + cols_v[None, :]  # [BK, BV] inside one K x V state
    h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        h += tl.load(h0_ptr + i_bh.to(tl.int64) * K * V + soffs, mask=smask, other=0.0)
    for i_n in range(N):
        tl.store(hs_ptr + (i_bh.to(tl.int64) * N + i_n) * K * V + soffs, h, mask=smask)
        rows = i_n * BT + tl.arange(0, BT)
        last = tl.minimum(i_n * BT + BT, T) - 1
        k = _load_rows(k_ptr + kbase, rows, T, cols_k, K, H * K, 0.0)  # [BT, BK]
        v = _load_rows(v_ptr + vbase, rows, T, cols_v, V, H * V, 0.0)  # [BT, BV]
        if SCALAR:  # one decay per row: scale v's rows (as the fused walk does)
            b = tl.load(gc_ptr + gbase + rows * H, mask=rows < T, other=0.0)  # [BT]
            b_last = tl.load(gc_ptr + gbase + last * H)
            v_dec = (v * tl.exp(tl.minimum(b_last - b, 0.0))[:, None]).to(v.dtype)
            h = h * tl.exp(b_last) + tl.dot(tl.trans(k), v_dec)
        else:
            b = _load_gate(gc_ptr + gbase, rows, T, cols_k, K, H, SCALAR)  # [BT, BK]
            b_last = _load_gate_row(gc_ptr + gbase, last, cols_k, K, H, SCALAR)  # [BK]
            k_dec = (k * tl.exp(tl.minimum(b_last[None, :] - b, 0.0))).to(v.dtype)
            h = h * tl.exp(b_last)[:, None] + tl.dot(tl.trans(k_dec), v)
    if STORE_HT:
        tl.store(ht_ptr + i_bh.to(tl.int64) * K * V + soffs, h, mask=smask)


@triton.jit
def _fwd_intra_kernel(
    q_ptr,
    k_ptr,
    gc_ptr,
    A_ptr,
    T,
    H,
    K,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BR: tl.constexpr,
    BK: tl.constexpr,
):
    """A[i, j] = sum_k q_ik k_jk e^{b_ik - b_jk} (j <= i): A is [B, T, H, BT] fp32, zeros
    above the diagonal. One program per BR rows (whole sub-chunks) of a chunk: grid
    (N * BT / BR, B*H).

    Column block J (the BC keys of an earlier sub-chunk J) against the program's rows i
    after it, split at J's last row r: ``A[i, J] = (q_i ⊙ e^{b_i - b_r}) . (k_J ⊙ e^{b_r -
    b_J})``, one [BR, BK] x [BK, BC] product per J, both exponents <= 0 for the rows that
    are stored (the others are clamped to <= 0 too, and not stored). The program's own
    diagonal [BC, BC] blocks are summed together, one key offset j at a time: each
    sub-chunk loads its key row j once and broadcasts it over its BC rows."""
    NR: tl.constexpr = BR // BC  # sub-chunks per program
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    i_n, r0 = i_p // (BT // BR), (i_p % (BT // BR)) * BR  # chunk, first row inside it
    i_b, i_h = i_bh // H, i_bh % H
    kbase = (i_b * T * H + i_h).to(tl.int64) * K
    abase = (i_b * T * H + i_h).to(tl.int64) * BT
    t0 = i_n * BT
    idx = r0 + tl.arange(0, BR)  # row inside the chunk
    rows = t0 + idx
    cols_k = tl.arange(0, BK)
    cols_c = tl.arange(0, BC)
    cols_t = tl.arange(0, BT)
    q = _load_rows(q_ptr + kbase, rows, T, cols_k, K, H * K, 0.0).to(tl.float32)  # [BR, BK]
    b = _load_rows(gc_ptr + kbase, rows, T, cols_k, K, H * K, 0.0)  # [BR, BK] fp32
    a_rows = A_ptr + abase + rows * H * BT  # [BR] start of each row of A
    # zeros right of each row's own diagonal block
    sub_end = (idx // BC) * BC + BC  # [BR]
    zmask = (rows < T)[:, None] & (cols_t[None, :] >= sub_end[:, None])
    tl.store(a_rows[:, None] + cols_t[None, :], tl.zeros([BR, BT], dtype=tl.float32), mask=zmask)
    for i_j in range(0, r0 // BC + NR - 1):  # sub-chunks before the program's last one
        keys = t0 + i_j * BC + cols_c  # [BC] time index of J's keys
        r = tl.minimum(t0 + i_j * BC + BC - 1, T - 1)
        b_r = tl.load(gc_ptr + kbase + r * H * K + cols_k, mask=cols_k < K, other=0.0)  # [BK]
        k_j = _load_rows(k_ptr + kbase, keys, T, cols_k, K, H * K, 0.0).to(tl.float32)
        b_j = _load_rows(gc_ptr + kbase, keys, T, cols_k, K, H * K, 0.0)
        k_j = k_j * tl.exp(tl.minimum(b_r[None, :] - b_j, 0.0))  # [BC, BK]
        q_r = q * tl.exp(tl.minimum(b - b_r[None, :], 0.0))  # [BR, BK]
        tile = tl.dot(q_r, tl.trans(k_j))  # [BR, BC]
        after = idx >= (i_j + 1) * BC  # rows after block J (its own rows: diagonal, below)
        mask = ((rows < T) & after)[:, None] & (cols_c[None, :] < BC)
        tl.store(a_rows[:, None] + (i_j * BC + cols_c)[None, :], tile, mask=mask)
    # The diagonal blocks, the program's rows as [NR, BC, BK]. This loop is most of the
    # kernel's work, so it runs lean: gates in base 2 (e^x = 2^{x log2 e}, the scaling done
    # once per tile, not per exponent) and no select inside the sum. Rows before the key
    # (i < j) would have an exponent b_i - b_j >= 0: clamped to 0 (so nothing overflows),
    # their sums are thrown away by the one select on the [NR, BC] result.
    q3 = tl.reshape(q, (NR, BC, BK))
    b3 = tl.reshape(b * LOG2E, (NR, BC, BK))
    first = r0 + tl.arange(0, NR) * BC  # [NR] first row of each sub-chunk, inside the chunk
    rows2 = t0 + first[:, None] + cols_c[None, :]  # [NR, BC] time index of each row
    for j in range(BC):
        key = t0 + first + j  # [NR] the key each sub-chunk's rows meet at offset j
        k_p = _load_pairs(k_ptr + kbase, key, T, cols_k, K, H * K).to(tl.float32)  # [NR, BK]
        b_p = _load_pairs(gc_ptr + kbase, key, T, cols_k, K, H * K) * LOG2E
        e = tl.exp2(tl.minimum(b3 - b_p[:, None, :], 0.0))  # [NR, BC, BK]
        a = tl.sum(q3 * k_p[:, None, :] * e, axis=2)  # [NR, BC]
        a = tl.where(cols_c[None, :] >= j, a, 0.0)  # key at or before the row (else zero)
        a_ptrs = A_ptr + abase + rows2 * H * BT + (first + j)[:, None]
        tl.store(a_ptrs, a, mask=rows2 < T)


@triton.jit
def _fwd_output_kernel(
    q_ptr,
    v_ptr,
    gc_ptr,
    hs_ptr,
    A_ptr,
    o_ptr,
    scale,
    T,
    H,
    K,
    V,
    N,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    SCALAR: tl.constexpr,
):
    """o = scale * [(q ⊙ e^b) h_n + A v] for one chunk and one block of V columns.
    Grid (cdiv(V, BV), N, B*H)."""
    i_v, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    kbase = (i_b * T * H + i_h).to(tl.int64) * K
    vbase = (i_b * T * H + i_h).to(tl.int64) * V
    gbase = (i_b * T * H + i_h).to(tl.int64) * (1 if SCALAR else K)
    abase = (i_b * T * H + i_h).to(tl.int64) * BT
    rows = i_n * BT + tl.arange(0, BT)
    cols_k = tl.arange(0, BK)
    cols_v = i_v * BV + tl.arange(0, BV)
    cols_t = tl.arange(0, BT)
    q = _load_rows(q_ptr + kbase, rows, T, cols_k, K, H * K, 0.0)
    b = _load_gate(gc_ptr + gbase, rows, T, cols_k, K, H, SCALAR)
    v = _load_rows(v_ptr + vbase, rows, T, cols_v, V, H * V, 0.0)
    smask = (cols_k[:, None] < K) & (cols_v[None, :] < V)
    h = tl.load(
        hs_ptr + (i_bh.to(tl.int64) * N + i_n) * K * V + cols_k[:, None] * V + cols_v[None, :],
        mask=smask,
        other=0.0,
    )
    A = _load_rows(A_ptr + abase, rows, T, cols_t, BT, H * BT, 0.0)
    qg = (q * tl.exp(b)).to(v.dtype)
    o = tl.dot(qg, h.to(v.dtype)) + tl.dot(A.to(v.dtype), v)
    omask = (rows[:, None] < T) & (cols_v[None, :] < V)
    tl.store(
        o_ptr + vbase + rows[:, None] * H * V + cols_v[None, :],
        (o * scale).to(o_ptr.dtype.element_ty),
        mask=omask,
    )


@triton.jit
def _fused_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    gc_ptr,
    A_ptr,
    h0_ptr,
    o_ptr,
    ht_ptr,
    scale,
    T,
    H,
    K,
    V,
    N,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    SCALAR: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
):
    """For n = 0 .. N-1, with S = h_n in fp32 registers (never stored per chunk):
    o = scale * [(q ⊙ e^b) S + A v], then S <- e^{b_L} ⊙ S + (k ⊙ e^{b_L - b})^T v.
    A is read from memory (vector gate, [B, T, H, BT] fp32) or computed here as
    (q k^T) ⊙ D (scalar gate). A scalar gate is one number per row, so it scales rows of
    the narrower operands: e^{b_i} (q_i S) and k^T (e^{b_L - b} ⊙ v). Grid (cdiv(V, BV), B*H)."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    cols_k = tl.arange(0, BK)
    cols_v = i_v * BV + tl.arange(0, BV)
    cols_t = tl.arange(0, BT)
    kbase = (i_b * T * H + i_h).to(tl.int64) * K
    vbase = (i_b * T * H + i_h).to(tl.int64) * V
    gbase = (i_b * T * H + i_h).to(tl.int64) * (1 if SCALAR else K)
    abase = (i_b * T * H + i_h).to(tl.int64) * BT
    smask = (cols_k[:, None] < K) & (cols_v[None, :] < V)
    soffs = cols_k[:, None] * V + cols_v[None, :]  # [BK, BV] inside one K x V state
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0_ptr + i_bh.to(tl.int64) * K * V + soffs, mask=smask, other=0.0).to(
            tl.float32
        )
    for i_n in range(N):
        # loads that do not depend on S: the pipeliner may issue them a chunk early
        rows = i_n * BT + cols_t
        last = tl.minimum(i_n * BT + BT, T) - 1
        q = _load_rows(q_ptr + kbase, rows, T, cols_k, K, H * K, 0.0)  # [BT, BK]
        k = _load_rows(k_ptr + kbase, rows, T, cols_k, K, H * K, 0.0)  # [BT, BK]
        v = _load_rows(v_ptr + vbase, rows, T, cols_v, V, H * V, 0.0)  # [BT, BV]
        if SCALAR:
            # one decay per row: scale the [BT, BV] product and v's rows instead of the
            # wider [BT, BK] q and k tiles (K = 128, BV = 64: half the multiplies, and q
            # and k reach the tensor cores as loaded)
            b = tl.load(gc_ptr + gbase + rows * H, mask=rows < T, other=0.0)  # [BT]
            b_last = tl.load(gc_ptr + gbase + last * H)
            A = tl.dot(q, tl.trans(k)) * _scalar_decay(b, rows, T, BT)  # [BT, BT] fp32
            o = tl.dot(q, S.to(v.dtype)) * tl.exp(b)[:, None]  # row i: e^{b_i} q_i S
        else:
            b = _load_gate(gc_ptr + gbase, rows, T, cols_k, K, H, SCALAR)  # [BT, BK]
            b_last = _load_gate_row(gc_ptr + gbase, last, cols_k, K, H, SCALAR)  # [BK]
            A = _load_rows(A_ptr + abase, rows, T, cols_t, BT, H * BT, 0.0)  # [BT, BT]
            qg = (q * tl.exp(b)).to(v.dtype)
            k_dec = (k * tl.exp(tl.minimum(b_last[None, :] - b, 0.0))).to(v.dtype)
            o = tl.dot(qg, S.to(v.dtype))
        o = tl.dot(A.to(v.dtype), v, o)  # [BT, BV] fp32
        tl.store(
            o_ptr + vbase + rows[:, None] * H * V + cols_v[None, :],
            (o * scale).to(o_ptr.dtype.element_ty),
            mask=(rows[:, None] < T) & (cols_v[None, :] < V),
        )
        # h_{n+1}
        if SCALAR:
            v_dec = (v * tl.exp(tl.minimum(b_last - b, 0.0))[:, None]).to(v.dtype)
            S = S * tl.exp(b_last) + tl.dot(tl.trans(k), v_dec)
        else:
            S = S * tl.exp(b_last)[:, None] + tl.dot(tl.trans(k_dec), v)
    if STORE_HT:
        tl.store(ht_ptr + i_bh.to(tl.int64) * K * V + soffs, S, mask=smask)


@triton.jit
def _bwd_states_kernel(
    q_ptr,
    do_ptr,
    gc_ptr,
    dht_ptr,
    dhs_ptr,
    dh0_ptr,
    scale,
    T,
    H,
    K,
    V,
    N,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    SCALAR: tl.constexpr,
    HAS_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr,
):
    """Reverse scan: dhs[n] = gradient of the state *after* chunk n, [B, H, N, K, V] fp32.
    Grid (cdiv(K, BK), cdiv(V, BV), B*H), blocks of K rows independent as in the forward."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    cols_k = i_k * BK + tl.arange(0, BK)
    cols_v = i_v * BV + tl.arange(0, BV)
    kbase = (i_b * T * H + i_h).to(tl.int64) * K
    vbase = (i_b * T * H + i_h).to(tl.int64) * V
    gbase = (i_b * T * H + i_h).to(tl.int64) * (1 if SCALAR else K)
    smask = (cols_k[:, None] < K) & (cols_v[None, :] < V)
    soffs = cols_k[:, None] * V + cols_v[None, :]
    dh = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dh += tl.load(dht_ptr + i_bh.to(tl.int64) * K * V + soffs, mask=smask, other=0.0)
    for i_r in range(N):
        i_n = N - 1 - i_r
        tl.store(dhs_ptr + (i_bh.to(tl.int64) * N + i_n) * K * V + soffs, dh, mask=smask)
        rows = i_n * BT + tl.arange(0, BT)
        last = tl.minimum(i_n * BT + BT, T) - 1
        b = _load_gate(gc_ptr + gbase, rows, T, cols_k, K, H, SCALAR)
        b_last = _load_gate_row(gc_ptr + gbase, last, cols_k, K, H, SCALAR)
        q = _load_rows(q_ptr + kbase, rows, T, cols_k, K, H * K, 0.0)
        do = _load_rows(do_ptr + vbase, rows, T, cols_v, V, H * V, 0.0)
        qg = (q * tl.exp(b)).to(do.dtype)
        dh = dh * tl.exp(b_last)[:, None] + scale * tl.dot(tl.trans(qg), do)
    if STORE_DH0:
        tl.store(dh0_ptr + i_bh.to(tl.int64) * K * V + soffs, dh, mask=smask)


@triton.jit
def _bwd_dA_kernel(do_ptr, v_ptr, dA_ptr, scale, T, H, V, BT: tl.constexpr, BV: tl.constexpr):
    """dA[i, j] = scale * do_i . v_j for j <= i in the chunk, [B, T, H, BT] fp32.
    Grid (N, B*H)."""
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    vbase = (i_b * T * H + i_h).to(tl.int64) * V
    abase = (i_b * T * H + i_h).to(tl.int64) * BT
    rows = i_n * BT + tl.arange(0, BT)
    cols_t = tl.arange(0, BT)
    dA = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        cols_v = i_v * BV + tl.arange(0, BV)
        do = _load_rows(do_ptr + vbase, rows, T, cols_v, V, H * V, 0.0)
        v = _load_rows(v_ptr + vbase, rows, T, cols_v, V, H * V, 0.0)
        dA += tl.dot(do, tl.trans(v))
    dA = tl.where(cols_t[:, None] >= cols_t[None, :], dA * scale, 0.0)
    tl.store(dA_ptr + abase + rows[:, None] * H * BT + cols_t[None, :], dA, mask=rows[:, None] < T)


@triton.jit
def _bwd_dv_kernel(
    k_ptr,
    do_ptr,
    gc_ptr,
    A_ptr,
    dhs_ptr,
    dv_ptr,
    scale,
    T,
    H,
    K,
    V,
    N,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    SCALAR: tl.constexpr,
):
    """dv = scale * A^T do + (k ⊙ e^{b_L - b}) dh_{n+1}. Grid (cdiv(V, BV), N, B*H)."""
    i_v, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    kbase = (i_b * T * H + i_h).to(tl.int64) * K
    vbase = (i_b * T * H + i_h).to(tl.int64) * V
    gbase = (i_b * T * H + i_h).to(tl.int64) * (1 if SCALAR else K)
    abase = (i_b * T * H + i_h).to(tl.int64) * BT
    rows = i_n * BT + tl.arange(0, BT)
    last = tl.minimum(i_n * BT + BT, T) - 1
    cols_k = tl.arange(0, BK)
    cols_v = i_v * BV + tl.arange(0, BV)
    cols_t = tl.arange(0, BT)
    k = _load_rows(k_ptr + kbase, rows, T, cols_k, K, H * K, 0.0)
    b = _load_gate(gc_ptr + gbase, rows, T, cols_k, K, H, SCALAR)
    b_last = _load_gate_row(gc_ptr + gbase, last, cols_k, K, H, SCALAR)
    do = _load_rows(do_ptr + vbase, rows, T, cols_v, V, H * V, 0.0)
    A = _load_rows(A_ptr + abase, rows, T, cols_t, BT, H * BT, 0.0)
    smask = (cols_k[:, None] < K) & (cols_v[None, :] < V)
    dh = tl.load(
        dhs_ptr + (i_bh.to(tl.int64) * N + i_n) * K * V + cols_k[:, None] * V + cols_v[None, :],
        mask=smask,
        other=0.0,
    )
    k_dec = (k * tl.exp(tl.minimum(b_last[None, :] - b, 0.0))).to(do.dtype)
    dv = scale * tl.dot(tl.trans(A.to(do.dtype)), do) + tl.dot(k_dec, dh.to(do.dtype))
    tl.store(
        dv_ptr + vbase + rows[:, None] * H * V + cols_v[None, :],
        dv.to(dv_ptr.dtype.element_ty),
        mask=(rows[:, None] < T) & (cols_v[None, :] < V),
    )


@triton.jit
def _bwd_dqdk_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    gc_ptr,
    dA_ptr,
    hs_ptr,
    dhs_ptr,
    dq_ptr,
    dk_ptr,
    dG_ptr,
    scale,
    T,
    H,
    K,
    V,
    N,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
):
    """Vector gate: dq, dk and dG = q ⊙ dq - k ⊙ dk for all BT rows of one chunk and one
    slice of BK key columns. Grid (cdiv(K, BK), N, B*H).

    Given dA (from ``_bwd_dA_kernel``) every term is elementwise in the key index, so the
    K axis splits freely and each program reads its slice of h_n and dh_{n+1} once:

    * inter-chunk: dq = scale e^b ⊙ (do h_n^T), dk = e^{b_L - b} ⊙ (v dh_{n+1}^T), summed
      over V blocks;
    * earlier sub-chunk J (columns) -> later rows, for dq: with r the last row of J,
      e^{b_i - b_r} ⊙ [dA_{:,J} (k_J ⊙ e^{b_r - b_J})], dA masked to the rows after J, so
      one [BT, BC] x [BC, BK] product per J updates the whole tile;
    * later sub-chunk I (rows) -> earlier columns, for dk: with r the first row of I,
      e^{b_r - b_j} ⊙ [dA_{I,:}^T (q_I ⊙ e^{b_I - b_r})], dA masked to the columns before I;
    * the NC diagonal [BC, BC] blocks together, one offset j = 0 .. BC-1 at a time: row i
      pairs with row p = (i // BC) BC + j of its own sub-chunk (gathered loads) and gets
      dA_ip k_p e^{b_i - b_p} in dq if p <= i, dA_pi q_p e^{b_p - b_i} in dk if p >= i;
      both use the one factor e^{-|b_i - b_p|}.

    Every exponent is <= 0 where it counts and is clamped to <= 0 elsewhere (those
    entries are masked off or meet a zero of dA). The diagonal loop runs first, before
    any tensor-core product, so that its [BT, BK] updates need no layout conversion.
    dG has one slice ([B, T, H, K]); the programs of one chunk write disjoint columns."""
    NC: tl.constexpr = BT // BC
    i_k, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    kbase = (i_b * T * H + i_h).to(tl.int64) * K
    vbase = (i_b * T * H + i_h).to(tl.int64) * V
    abase = (i_b * T * H + i_h).to(tl.int64) * BT
    gk_ptr = gc_ptr + kbase  # the vector gate has q's layout
    t0 = i_n * BT
    rows = t0 + tl.arange(0, BT)
    last = tl.minimum(t0 + BT, T) - 1
    cols_k = i_k * BK + tl.arange(0, BK)
    cols_t = tl.arange(0, BT)  # row (and dA column) index inside the chunk
    cols_c = tl.arange(0, BC)
    b = _load_rows(gk_ptr, rows, T, cols_k, K, H * K, 0.0)  # [BT, BK]
    b_last = tl.load(gk_ptr + last * H * K + cols_k, mask=cols_k < K, other=0.0)  # [BK]
    # The NC diagonal blocks at once, offset j inside the sub-chunk: row i's partner is
    # row p of the same sub-chunk at offset j; dq takes p <= i, dk takes p >= i. This
    # loop comes first so that dq, dk stay in the elementwise (blocked) layout through it
    # and meet the tensor-core layout of the products below once, not every iteration
    # (seen in the sm_90 TTGIR: last, it converted two fp32 tiles per iteration).
    dq = tl.zeros([BT, BK], dtype=tl.float32)
    dk = tl.zeros([BT, BK], dtype=tl.float32)
    sub = (cols_t // BC) * BC  # [BT]: first row of each row's sub-chunk
    off = cols_t % BC  # [BT]: each row's offset inside its sub-chunk
    for j in range(BC):
        p = t0 + sub + j  # [BT]
        k_p = _load_rows(k_ptr + kbase, p, T, cols_k, K, H * K, 0.0).to(tl.float32)
        q_p = _load_rows(q_ptr + kbase, p, T, cols_k, K, H * K, 0.0).to(tl.float32)
        b_p = _load_rows(gk_ptr, p, T, cols_k, K, H * K, 0.0)  # [BT, BK]
        dA_ip = tl.load(dA_ptr + abase + rows * H * BT + sub + j, mask=rows < T, other=0.0)
        dA_pi = tl.load(dA_ptr + abase + p * H * BT + cols_t, mask=p < T, other=0.0)
        # mask the [BT] columns of dA, not the tiles: dq pairs p <= i, dk pairs p >= i
        dA_ip = tl.where(off >= j, dA_ip, 0.0)
        dA_pi = tl.where(off <= j, dA_pi, 0.0)
        # b falls along the chunk (g <= 0), so the exponent each side needs, b_i - b_p
        # for p <= i (dq) and b_p - b_i for p >= i (dk), is -|b_i - b_p| in both cases
        e = tl.exp(-tl.abs(b - b_p))  # [BT, BK]
        dq += dA_ip[:, None] * (k_p * e)
        dk += dA_pi[:, None] * (q_p * e)
    # inter-chunk parts: through h_n (dq) and dh_{n+1} (dk), summed over V blocks
    hq = tl.zeros([BT, BK], dtype=tl.float32)
    hk = tl.zeros([BT, BK], dtype=tl.float32)
    sbase = (i_bh.to(tl.int64) * N + i_n) * K * V
    for i_v in range(tl.cdiv(V, BV)):
        cols_v = i_v * BV + tl.arange(0, BV)
        do = _load_rows(do_ptr + vbase, rows, T, cols_v, V, H * V, 0.0)  # [BT, BV]
        v = _load_rows(v_ptr + vbase, rows, T, cols_v, V, H * V, 0.0)  # [BT, BV]
        smask = (cols_v[:, None] < V) & (cols_k[None, :] < K)
        soffs = cols_k[None, :] * V + cols_v[:, None]  # [BV, BK]: the state transposed
        hT = tl.load(hs_ptr + sbase + soffs, mask=smask, other=0.0).to(do.dtype)
        dhT = tl.load(dhs_ptr + sbase + soffs, mask=smask, other=0.0).to(v.dtype)
        hq += tl.dot(do, hT)  # [BT, BK]
        hk += tl.dot(v, dhT)  # [BT, BK]
    dq += hq * scale * tl.exp(b)
    dk += hk * tl.exp(tl.minimum(b_last[None, :] - b, 0.0))
    # intra-chunk, dq: each earlier sub-chunk J of columns feeds every row after it
    for i_j in range(NC - 1):
        c0 = i_j * BC  # J's first column inside the chunk
        rows_j = t0 + c0 + cols_c
        r = tl.minimum(t0 + c0 + BC - 1, T - 1)  # J's last row (clamped: a tail chunk)
        b_r = tl.load(gk_ptr + r * H * K + cols_k, mask=cols_k < K, other=0.0)  # [BK]
        k_j = _load_rows(k_ptr + kbase, rows_j, T, cols_k, K, H * K, 0.0).to(tl.float32)
        b_j = _load_rows(gk_ptr, rows_j, T, cols_k, K, H * K, 0.0)  # [BC, BK]
        k_j = k_j * tl.exp(tl.minimum(b_r[None, :] - b_j, 0.0))  # rows j <= r
        dA_j = _load_rows(dA_ptr + abase, rows, T, c0 + cols_c, BT, H * BT, 0.0)  # [BT, BC]
        # keep the rows after J only: J's own rows are its diagonal block (done above),
        # rows before J hold zeros of dA already
        dA_j = tl.where(cols_t[:, None] >= c0 + BC, dA_j, 0.0)
        dq += tl.dot(dA_j, k_j) * tl.exp(tl.minimum(b - b_r[None, :], 0.0))  # rows i > r
    # intra-chunk, dk: each later sub-chunk I of rows feeds every column before it
    for i_i in range(1, NC):
        c0 = i_i * BC  # I's first row inside the chunk
        rows_i = t0 + c0 + cols_c
        r = tl.minimum(t0 + c0, T - 1)  # I's first row (clamped: then I has no valid row)
        b_r = tl.load(gk_ptr + r * H * K + cols_k, mask=cols_k < K, other=0.0)  # [BK]
        q_i = _load_rows(q_ptr + kbase, rows_i, T, cols_k, K, H * K, 0.0).to(tl.float32)
        b_i = _load_rows(gk_ptr, rows_i, T, cols_k, K, H * K, 0.0)  # [BC, BK]
        q_i = q_i * tl.exp(tl.minimum(b_i - b_r[None, :], 0.0))  # rows i >= r
        dA_i = _load_rows(dA_ptr + abase, rows_i, T, cols_t, BT, H * BT, 0.0)  # [BC, BT]
        # keep the columns before I only (I's own columns are the diagonal block)
        dA_i = tl.where(cols_t[None, :] < c0, dA_i, 0.0)
        dk += tl.dot(tl.trans(dA_i), q_i) * tl.exp(tl.minimum(b_r[None, :] - b, 0.0))
    mask = (rows[:, None] < T) & (cols_k[None, :] < K)
    offs = rows[:, None] * H * K + cols_k[None, :]
    tl.store(dq_ptr + kbase + offs, dq.to(dq_ptr.dtype.element_ty), mask=mask)
    tl.store(dk_ptr + kbase + offs, dk.to(dk_ptr.dtype.element_ty), mask=mask)
    # dL/dG = q ⊙ dq - k ⊙ dk (module docstring), fp32, reverse-summed by _bwd_dg_kernel
    q = _load_rows(q_ptr + kbase, rows, T, cols_k, K, H * K, 0.0).to(tl.float32)
    k = _load_rows(k_ptr + kbase, rows, T, cols_k, K, H * K, 0.0).to(tl.float32)
    tl.store(dG_ptr + kbase + offs, q * dq - k * dk, mask=mask)


@triton.jit
def _scalar_decay(b, rows, T, BT: tl.constexpr):
    """[BT, BT] decay mask e^{b_i - b_j} (j <= i, row valid) of a scalar gate b [BT]."""
    idx = tl.arange(0, BT)
    keep = (idx[:, None] >= idx[None, :]) & (rows[:, None] < T)
    diff = tl.minimum(tl.where(keep, b[:, None] - b[None, :], 0.0), 0.0)
    return tl.where(keep, tl.exp(diff), 0.0)


@triton.jit
def _fwd_intra_scalar_kernel(
    q_ptr, k_ptr, gc_ptr, A_ptr, T, H, K, BT: tl.constexpr, BK: tl.constexpr
):
    """Scalar gate: the whole chunk's A = (q k^T) ⊙ D in one product, D the decay mask.
    Grid (N, B*H)."""
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    kbase = (i_b * T * H + i_h).to(tl.int64) * K
    gbase = (i_b * T * H + i_h).to(tl.int64)
    abase = (i_b * T * H + i_h).to(tl.int64) * BT
    rows = i_n * BT + tl.arange(0, BT)
    cols_k = tl.arange(0, BK)
    cols_t = tl.arange(0, BT)
    b = tl.load(gc_ptr + gbase + rows * H, mask=rows < T, other=0.0)
    q = _load_rows(q_ptr + kbase, rows, T, cols_k, K, H * K, 0.0)
    k = _load_rows(k_ptr + kbase, rows, T, cols_k, K, H * K, 0.0)
    A = tl.dot(q, tl.trans(k)) * _scalar_decay(b, rows, T, BT)
    ptrs = A_ptr + abase + rows[:, None] * H * BT + cols_t[None, :]
    tl.store(ptrs, A, mask=rows[:, None] < T)


@triton.jit
def _bwd_dqdk_scalar_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    gc_ptr,
    dA_ptr,
    hs_ptr,
    dhs_ptr,
    dq_ptr,
    dk_ptr,
    dG_ptr,
    scale,
    T,
    H,
    K,
    V,
    N,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
):
    """Scalar gate, one whole chunk: dq = e^b ⊙ (scale h_n do) + (dA ⊙ D) k and
    dk = e^{b_L - b} ⊙ (dh_{n+1} v) + (dA ⊙ D)^T q, for BK of the K columns (the mask D
    does not depend on k, so K splits freely). dG gets this slice's share of
    sum_k (q dq - k dk), at dG[i_k]. Grid (N, cdiv(K, BK), B*H)."""
    i_n, i_k, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    kbase = (i_b * T * H + i_h).to(tl.int64) * K
    vbase = (i_b * T * H + i_h).to(tl.int64) * V
    gbase = (i_b * T * H + i_h).to(tl.int64)
    abase = (i_b * T * H + i_h).to(tl.int64) * BT
    rows = i_n * BT + tl.arange(0, BT)
    last = tl.minimum(i_n * BT + BT, T) - 1
    cols_k = i_k * BK + tl.arange(0, BK)
    cols_t = tl.arange(0, BT)
    b = tl.load(gc_ptr + gbase + rows * H, mask=rows < T, other=0.0)
    b_last = tl.load(gc_ptr + gbase + last * H)
    dq = tl.zeros([BT, BK], dtype=tl.float32)
    dk = tl.zeros([BT, BK], dtype=tl.float32)
    sbase = (i_bh.to(tl.int64) * N + i_n) * K * V
    # The products here stay in fp32 (tf32 on tensor cores) rather than rounding the fp32
    # states and dA to the input dtype: dG below is a difference of two sums over K that
    # nearly cancel, so bf16 rounding of these operands (2^-8) is amplified in dg (seen
    # on an H200: dg 4.0e-2 relative error at K = 256 in bf16). Inputs q, k, v, do are
    # exact in fp32, so only the states and dA are rounded, to tf32's 2^-11.
    for i_v in range(tl.cdiv(V, BV)):
        cols_v = i_v * BV + tl.arange(0, BV)
        do = _load_rows(do_ptr + vbase, rows, T, cols_v, V, H * V, 0.0).to(tl.float32)
        v = _load_rows(v_ptr + vbase, rows, T, cols_v, V, H * V, 0.0).to(tl.float32)
        smask = (cols_v[:, None] < V) & (cols_k[None, :] < K)
        soffs = cols_k[None, :] * V + cols_v[:, None]  # [BV, BK]: the state transposed
        hT = tl.load(hs_ptr + sbase + soffs, mask=smask, other=0.0)
        dhT = tl.load(dhs_ptr + sbase + soffs, mask=smask, other=0.0)
        dq += tl.dot(do, hT)
        dk += tl.dot(v, dhT)
    dq = dq * (scale * tl.exp(b))[:, None]
    dk = dk * tl.exp(tl.minimum(b_last - b, 0.0))[:, None]
    dA = _load_rows(dA_ptr + abase, rows, T, cols_t, BT, H * BT, 0.0)
    dAD = dA * _scalar_decay(b, rows, T, BT)  # [BT, BT]
    q = _load_rows(q_ptr + kbase, rows, T, cols_k, K, H * K, 0.0).to(tl.float32)
    k = _load_rows(k_ptr + kbase, rows, T, cols_k, K, H * K, 0.0).to(tl.float32)
    dq += tl.dot(dAD, k)
    dk += tl.dot(tl.trans(dAD), q)
    mask = (rows[:, None] < T) & (cols_k[None, :] < K)
    offs = rows[:, None] * H * K + cols_k[None, :]
    tl.store(dq_ptr + kbase + offs, dq.to(dq_ptr.dtype.element_ty), mask=mask)
    tl.store(dk_ptr + kbase + offs, dk.to(dk_ptr.dtype.element_ty), mask=mask)
    # dL/dG summed over K (module docstring), reverse-summed over time by _bwd_dg_kernel
    dG = tl.sum(q * dq - k * dk, axis=1)  # [BT]
    BTH = tl.num_programs(2).to(tl.int64) * T  # B * H * T: one slice of dG
    tl.store(dG_ptr + i_k * BTH + gbase + rows * H, dG, mask=rows < T)


@triton.jit
def _bwd_dg_kernel(
    dG_ptr,
    dgl_ptr,
    dg_ptr,
    T,
    H,
    K,
    N,
    NKS,
    BT: tl.constexpr,
    BK: tl.constexpr,
    SCALAR: tl.constexpr,
    HAS_DGL: tl.constexpr,
):
    """dg_t = sum_{s >= t} dG_s + dgl: a reverse scan over chunks of dG = dL/dG
    ([B, T, H, K], or [B, T, H] for a scalar gate), plus dgl = sum_v dh_T ⊙ h_T
    ([B, H, K], summed over K for a scalar gate), the final state's share that every step
    feels. Grid (cdiv(K, BK), B*H), one program per head when SCALAR."""
    i_k, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    kbase = (i_b * T * H + i_h).to(tl.int64) * K
    gbase = (i_b * T * H + i_h).to(tl.int64)
    cols_k = i_k * BK + tl.arange(0, BK)
    carry = tl.zeros([BK], dtype=tl.float32)
    if HAS_DGL:
        carry += tl.load(dgl_ptr + i_bh.to(tl.int64) * K + cols_k, mask=cols_k < K, other=0.0)
    carry_s = tl.sum(carry, axis=0)
    for i_r in range(N):
        rows = (N - 1 - i_r) * BT + tl.arange(0, BT)
        if SCALAR:
            dG = tl.zeros([BT], dtype=tl.float32)
            for i_s in range(NKS):  # the K-slices written by _bwd_dqdk_scalar_kernel
                ptrs = dG_ptr + i_s * tl.num_programs(1).to(tl.int64) * T + gbase + rows * H
                dG += tl.load(ptrs, mask=rows < T, other=0.0)  # [BT]
            dg = tl.cumsum(dG, axis=0, reverse=True) + carry_s
            tl.store(dg_ptr + gbase + rows * H, dg, mask=rows < T)
            carry_s += tl.sum(dG, axis=0)
        else:
            dG = _load_rows(dG_ptr + kbase, rows, T, cols_k, K, H * K, 0.0)  # [BT, BK]
            mask = (rows[:, None] < T) & (cols_k[None, :] < K)
            ptrs = dg_ptr + kbase + rows[:, None] * H * K + cols_k[None, :]
            tl.store(ptrs, tl.cumsum(dG, axis=0, reverse=True) + carry[None, :], mask=mask)
            carry += tl.sum(dG, axis=0)


@triton.jit
def _decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    g_ptr,
    s_ptr,
    o_ptr,
    ns_ptr,
    scale,
    H,
    K,
    V,
    BK: tl.constexpr,
    BV: tl.constexpr,
    SCALAR: tl.constexpr,
):
    """S' = e^{g} ⊙ S + k v^T, o = scale S'^T q, for one (b, h) and V block.
    Grid (cdiv(V, BV), B*H)."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    cols_k = tl.arange(0, BK)
    cols_v = i_v * BV + tl.arange(0, BV)
    kmask = cols_k < K
    vmask = cols_v < V
    base_k = i_bh.to(tl.int64) * K
    base_v = i_bh.to(tl.int64) * V
    q = tl.load(q_ptr + base_k + cols_k, mask=kmask, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + base_k + cols_k, mask=kmask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + base_v + cols_v, mask=vmask, other=0.0).to(tl.float32)
    if SCALAR:
        g = tl.load(g_ptr + i_bh).to(tl.float32) + tl.zeros([BK], dtype=tl.float32)
    else:
        g = tl.load(g_ptr + base_k + cols_k, mask=kmask, other=0.0).to(tl.float32)
    smask = kmask[:, None] & vmask[None, :]
    soffs = i_bh.to(tl.int64) * K * V + cols_k[:, None] * V + cols_v[None, :]
    s = tl.load(s_ptr + soffs, mask=smask, other=0.0).to(tl.float32)
    s = s * tl.exp(g)[:, None] + k[:, None] * v[None, :]
    o = tl.sum(s * q[:, None], axis=0) * scale  # [BV]
    tl.store(ns_ptr + soffs, s, mask=smask)
    tl.store(o_ptr + base_v + cols_v, o.to(o_ptr.dtype.element_ty), mask=vmask)


# --------------------------------------------------------------------------- launchers


def _sizes(q, v, BT):
    B, T, H, K = q.shape
    V = v.shape[-1]
    return B, T, H, K, V, triton.cdiv(T, BT)


def _blocks(K, V, cfg=CONFIG):
    """(BK, BV) of the chunkwise kernels: K padded to a power of two, V blocked."""
    BK = _pow2(K)
    BV = min(cfg["BV"] if BK <= 128 else cfg["BV_K256"], _pow2(V))
    return BK, BV


def _cumsum(g, scalar, BT):
    """Within-chunk cumulative log gates b (fp32, g's shape), and the gate check as a
    :class:`_GateCheck` whose ``wait()`` the caller runs after its own launches: the same
    pass over g counts the gates that are not finite and <= 0 (the exact check runs only
    when one is not, for its message): at T = 64k g is gigabytes, and a separate check
    would read it again."""
    B, T, H = g.shape[:3]
    K = 1 if scalar else g.shape[3]
    N = triton.cdiv(T, BT)
    gc = runtime.new_empty(tuple(g.shape), dtype=torch.float32, device=g.device)
    bad = torch.empty((B * H, N), dtype=torch.int32, device=g.device)  # every entry written
    _chunk_cumsum_kernel[(N, B * H)](g, gc, bad, T, H, K, BT=BT, BK=_pow2(K), SCALAR=scalar)
    return gc, _GateCheck(bad, g)


class _GateCheck:
    """Whether any gate was bad, without stalling the GPU. Reading a count from the GPU
    makes the host wait for it; waiting right after the cumulative sum would leave the GPU
    idle while the host then launches the next kernel (tens of microseconds, about a tenth
    of the forward at T = 2048), and waiting after the last kernel would idle it while the
    host prepares the next call. So ``bad.any()`` is copied into pinned host memory
    behind the cumulative sum, an event marks the copy, the caller queues its other
    kernels, and ``wait()`` blocks only until the copy has landed (the queued kernels run
    on meanwhile), then raises the exact check's error if a gate was bad. Off the GPU the
    interpreter has run the launch to its end already, and the check runs at once."""

    def __init__(self, bad: torch.Tensor, g: torch.Tensor):
        self.g, self.done = g, None
        if g.is_cuda:
            self.flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            self.flag.copy_(bad.any(), non_blocking=True)
            self.done = torch.cuda.Event()
            self.done.record(torch.cuda.current_stream(g.device))
        else:
            self.flag = bad.any()
            self.wait()

    def wait(self) -> None:
        if self.done is not None:
            self.done.synchronize()
        if bool(self.flag):
            checks.check_log_gate("g", self.g.detach())


def _states(k, v, gc, h0, output_final_state, scalar, BT):
    """Every chunk's entering state hs [B, H, N, K, V] fp32, and the final state or None."""
    B, T, H, K, V, N = _sizes(k, v, BT)
    cfg = _config(k)
    BK, BVb = _blocks(K, V, cfg)
    dev = k.device
    hs = runtime.new_empty((B, H, N, K, V), dtype=torch.float32, device=dev)
    ht = (
        runtime.new_empty((B, H, K, V), dtype=torch.float32, device=dev)
        if output_final_state
        else None
    )
    BKs = min(BK, cfg["BK_state"])
    _fwd_states_kernel[(triton.cdiv(K, BKs), triton.cdiv(V, BVb), B * H)](
        k,
        v,
        gc,
        h0 if h0 is not None else gc,
        hs,
        ht if ht is not None else hs,
        T,
        H,
        K,
        V,
        N,
        BT=BT,
        BK=BKs,
        BV=BVb,
        SCALAR=scalar,
        HAS_H0=h0 is not None,
        STORE_HT=ht is not None,
        num_warps=cfg["warps_state"],
        num_stages=cfg["stages"],
    )
    return hs, ht


def _intra(q, k, gc, scalar, BT):
    """The intra-chunk matrix A [B, T, H, BT] fp32 (zeros above the diagonal)."""
    B, T, H, K = q.shape
    N = triton.cdiv(T, BT)
    cfg = _config(q)
    BC = min(cfg["BC"], BT)
    A = runtime.new_empty((B, T, H, BT), dtype=torch.float32, device=q.device)
    if scalar:  # one [BT, BT] product per chunk
        grid, kernel, kw = (N, B * H), _fwd_intra_scalar_kernel, {}
        warps = cfg["warps_chunk"]
    else:  # sub-chunk tiles (module docstring)
        BR = max(BC, min(cfg["intra_rows"], BT))
        grid, kernel, kw = (N * (BT // BR), B * H), _fwd_intra_kernel, {"BC": BC, "BR": BR}
        warps = cfg["warps_intra"] * max(1, _pow2(K) // 128)
    kernel[grid](
        q,
        k,
        gc,
        A,
        T,
        H,
        K,
        BT=BT,
        BK=_pow2(K),
        num_warps=warps,
        num_stages=cfg["stages"],
        **kw,
    )
    return A


def _chunk_forward(q, k, v, g, scale, h0, output_final_state, scalar, BT):
    """Forward stages; returns o, the final state (or None) and what backward needs."""
    B, T, H, K, V, N = _sizes(q, v, BT)
    cfg = _config(q)
    BK, BVb = _blocks(K, V, cfg)
    gc, gate_check = _cumsum(g, scalar, BT)
    hs, ht = _states(k, v, gc, h0, output_final_state, scalar, BT)
    A = _intra(q, k, gc, scalar, BT)
    o = runtime.new_empty((B, T, H, V), dtype=v.dtype, device=q.device)
    _fwd_output_kernel[(triton.cdiv(V, BVb), N, B * H)](
        q,
        v,
        gc,
        hs,
        A,
        o,
        scale,
        T,
        H,
        K,
        V,
        N,
        BT=BT,
        BK=BK,
        BV=BVb,
        SCALAR=scalar,
        num_warps=cfg["warps_chunk"],
        num_stages=cfg["stages"],
    )
    gate_check.wait()
    return o, ht, (gc, hs, A)


def _chunk_backward(q, k, v, gc, hs, A, do, dht, ht, scale, want_dh0, scalar, BT):
    cfg = _config(q)
    BC = min(cfg["BC"], BT)
    B, T, H, K, V, N = _sizes(q, v, BT)
    BK, BVb = _blocks(K, V, cfg)
    dev = q.device
    f32 = torch.float32
    dhs = runtime.new_empty((B, H, N, K, V), dtype=f32, device=dev)
    dh0 = runtime.new_empty((B, H, K, V), dtype=f32, device=dev) if want_dh0 else None
    BKs = min(BK, cfg["BK_state"])
    _bwd_states_kernel[(triton.cdiv(K, BKs), triton.cdiv(V, BVb), B * H)](
        q,
        do,
        gc,
        dht if dht is not None else gc,
        dhs,
        dh0 if dh0 is not None else dhs,
        scale,
        T,
        H,
        K,
        V,
        N,
        BT=BT,
        BK=BKs,
        BV=BVb,
        SCALAR=scalar,
        HAS_DHT=dht is not None,
        STORE_DH0=dh0 is not None,
        num_warps=cfg["warps_state"],
        num_stages=cfg["stages"],
    )
    dA = runtime.new_empty((B, T, H, BT), dtype=f32, device=dev)
    _bwd_dA_kernel[(N, B * H)](
        do,
        v,
        dA,
        scale,
        T,
        H,
        V,
        BT=BT,
        BV=BVb,
        num_warps=cfg["warps_chunk"],
        num_stages=cfg["stages"],
    )
    dv = runtime.new_empty((B, T, H, V), dtype=v.dtype, device=dev)
    _bwd_dv_kernel[(triton.cdiv(V, BVb), N, B * H)](
        k,
        do,
        gc,
        A,
        dhs,
        dv,
        scale,
        T,
        H,
        K,
        V,
        N,
        BT=BT,
        BK=BK,
        BV=BVb,
        SCALAR=scalar,
        num_warps=cfg["warps_chunk"],
        num_stages=cfg["stages"],
    )
    dq = runtime.new_empty((B, T, H, K), dtype=q.dtype, device=dev)
    dk = runtime.new_empty((B, T, H, K), dtype=k.dtype, device=dev)
    if scalar:  # K split in slices; dG holds each slice's share, summed by _bwd_dg_kernel
        BKs = min(BK, cfg["BK_dqdk_scalar"])
        NKS = triton.cdiv(K, BKs)
        dG = runtime.new_empty((NKS, *gc.shape), dtype=f32, device=dev)
        grid, kernel, kw = (N, NKS, B * H), _bwd_dqdk_scalar_kernel, {"BK": BKs}
        warps = cfg["warps_chunk"]
    else:  # K split in slices too, each writing its own columns of the one dG
        NKS = 1
        BKs = min(BK, cfg["BK_dqdk"])
        dG = runtime.new_empty(tuple(gc.shape), dtype=f32, device=dev)  # dL/dG
        grid, kernel, kw = (triton.cdiv(K, BKs), N, B * H), _bwd_dqdk_kernel, {"BK": BKs}
        kw["BC"] = BC
        warps = cfg["warps_dqdk"] if BT <= 64 else cfg["warps_dqdk_BT128"]
    args = (q, k, v, do, gc, dA, hs, dhs, dq, dk, dG, scale, T, H, K, V, N)
    kernel[grid](*args, BT=BT, BV=BVb, num_warps=warps, num_stages=cfg["stages"], **kw)
    # the gate gradient (module docstring): dg_t = sum_{s >= t} dG_s, plus the final
    # state's share sum_v dh_T ⊙ h_T at every step
    dgl = None
    if dht is not None and ht is not None:
        dgl = (dht.float() * ht).sum(-1).contiguous()  # [B, H, K]
    dg = runtime.new_empty(tuple(gc.shape), dtype=f32, device=dev)
    BKg = BK if scalar else min(BK, cfg["BK_dg"])  # a scalar gate: one program per head
    _bwd_dg_kernel[(triton.cdiv(K, BKg), B * H)](
        dG,
        dG if dgl is None else dgl,
        dg,
        T,
        H,
        K,
        N,
        NKS,
        BT=BT,
        BK=BKg,
        SCALAR=scalar,
        HAS_DGL=dgl is not None,
        num_warps=cfg["warps_state"],
        num_stages=cfg["stages"],
    )
    return dq, dk, dv, dg, dh0


class _ChunkGLA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, h0, output_final_state, scalar, BT):
        o, ht, (gc, hs, A) = _chunk_forward(q, k, v, g, scale, h0, output_final_state, scalar, BT)
        ctx.BT = BT
        ctx.save_for_backward(q, k, v, gc, hs, A, ht)
        ctx.scale, ctx.scalar = scale, scalar
        ctx.has_h0 = h0 is not None
        ctx.g_dtype = g.dtype
        ctx.h0_dtype = h0.dtype if h0 is not None else None
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, hs, A, ht = ctx.saved_tensors
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        dq, dk, dv, dg, dh0 = _chunk_backward(
            q, k, v, gc, hs, A, do, dht, ht, ctx.scale, ctx.has_h0, ctx.scalar, ctx.BT
        )
        dh0 = dh0.to(ctx.h0_dtype) if dh0 is not None else None
        return (dq, dk, dv, dg.to(ctx.g_dtype), None, dh0, None, None, None)


def _fused_launch_config(BT, BK, esize, scalar, settings=CONFIG):
    """(num_warps, num_stages) of ``_fused_fwd_kernel`` from ``settings["fused"]``: as many
    pipelined chunks of loads as fit ``stage_bytes``, at least 1 (no pipelining) and at
    most ``num_stages``. A stage holds q and k (and for a vector gate b and A in fp32)."""
    cfg = settings["fused"]
    stage = 2 * BT * BK * esize  # q and k of one chunk
    if not scalar:
        stage += BT * (BK + BT) * 4  # b [BT, BK] and A [BT, BT], fp32
    num_stages = max(1, min(cfg["num_stages"], cfg["stage_bytes"] // stage))
    wide = BK > 128 if scalar else BT * BK > cfg["tile_wide"]  # scalar: no [BT, BK] fp32 tiles
    num_warps = cfg["num_warps_wide"] if wide else cfg["num_warps"]
    return num_warps, num_stages


def _fused_forward(q, k, v, gc, A, scale, h0, output_final_state, scalar, BT):
    """o and the final state (or None) in one walk over the chunks (``_fused_fwd_kernel``);
    ``A`` is the vector gate's intra-chunk matrix (None for a scalar gate)."""
    B, T, H, K, V, N = _sizes(q, v, BT)
    settings = _config(q)
    cfg = settings["fused"]
    BK = _pow2(K)
    BVb = min(cfg["BV"] if BK <= 128 else cfg["BV_K256"], _pow2(V))
    if scalar and BK > 128 and q.element_size() == 4:
        BVb = min(BVb, cfg["BV_K256_fp32_scalar"])
    num_warps, num_stages = _fused_launch_config(BT, BK, q.element_size(), scalar, settings)
    dev = q.device
    o = runtime.new_empty((B, T, H, V), dtype=v.dtype, device=dev)
    ht = (
        runtime.new_empty((B, H, K, V), dtype=torch.float32, device=dev)
        if output_final_state
        else None
    )
    _fused_fwd_kernel[(triton.cdiv(V, BVb), B * H)](
        q,
        k,
        v,
        gc,
        A if A is not None else gc,
        h0 if h0 is not None else gc,
        o,
        ht if ht is not None else o,
        scale,
        T,
        H,
        K,
        V,
        N,
        BT=BT,
        BK=BK,
        BV=BVb,
        SCALAR=scalar,
        HAS_H0=h0 is not None,
        STORE_HT=ht is not None,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return o, ht


class _FusedChunkGLA(torch.autograd.Function):
    """Forward: cumsum, (vector gate) A, then the fused walk; no per-chunk states stored.
    Backward: recompute hs (``_fwd_states_kernel``), and A for a scalar gate (a vector
    gate's A, the dearest forward kernel, is kept from the forward), then the chunkwise
    backward."""

    @staticmethod
    def forward(ctx, q, k, v, g, scale, h0, output_final_state, scalar, BT):
        gc, gate_check = _cumsum(g, scalar, BT)
        A = None if scalar else _intra(q, k, gc, scalar, BT)
        o, ht = _fused_forward(q, k, v, gc, A, scale, h0, output_final_state, scalar, BT)
        gate_check.wait()
        ctx.BT = BT
        ctx.save_for_backward(q, k, v, gc, h0, ht, A)
        ctx.scale, ctx.scalar = scale, scalar
        ctx.g_dtype = g.dtype
        ctx.h0_dtype = h0.dtype if h0 is not None else None
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, h0, ht, A = ctx.saved_tensors
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        hs, _ = _states(k, v, gc, h0, False, ctx.scalar, ctx.BT)  # [B, H, N, K, V] fp32
        if A is None:  # scalar gate: one product per chunk, cheaper than keeping it
            A = _intra(q, k, gc, ctx.scalar, ctx.BT)  # [B, T, H, BT] fp32
        dq, dk, dv, dg, dh0 = _chunk_backward(
            q, k, v, gc, hs, A, do, dht, ht, ctx.scale, h0 is not None, ctx.scalar, ctx.BT
        )
        dh0 = dh0.to(ctx.h0_dtype) if dh0 is not None else None
        return (dq, dk, dv, dg.to(ctx.g_dtype), None, dh0, None, None, None)


def _check_log_gate_fast(name: str, g: torch.Tensor) -> None:
    """``checks.check_log_gate`` in one pass over the gate (a min/max reduction, NaN-
    propagating), falling back to it for the message when something is wrong (the decode
    step's gate; the chunked forms check g inside their cumulative-sum pass)."""
    lo, hi = torch.aminmax(g.detach())
    lo, hi = float(lo), float(hi)
    if not (lo > float("-inf") and hi <= 0.0):  # NaN compares False
        checks.check_log_gate(name, g.detach())


def _launch(
    q, k, v, g, scale, initial_state, output_final_state, scalar, name, chunk_size, fused=False
):
    chunk_size = CONFIG["BT"] if chunk_size is None else chunk_size
    chunk_size = checks.check_positive_int("chunk_size", chunk_size)
    if chunk_size not in (16, 32, 64, 128):
        raise ValueError(f"chunk_size must be 16, 32, 64 or 128, got {chunk_size}")
    dims = validate(q, k, v, None, None, scale, initial_state)
    spec = "B T H" if scalar else "B T H K"
    checks.check_shapes(dims, g=(g, spec))  # g <= 0 and finite: checked by _cumsum
    checks.check_same_dtype(q=q, k=k, v=v)
    # no bf16 below compute capability 8.0 (k and v share q's dtype, checked above)
    runtime.check_bf16_supported(q=q, g=g, initial_state=initial_state)
    if dims["K"] > 256 or dims["V"] > 256:
        raise ValueError(
            f"{name} supports head dims up to 256 (q/k: K, v: V), got K={dims['K']}, V={dims['V']}"
        )
    cfg = _config(q)
    if cfg is not CONFIG:  # below compute capability 8.0: shorter chunks (PRE_AMPERE)
        row = _pow2(dims["K"]) * q.element_size()  # bytes of one row of a [BT, BK] tile
        chunk_size = min(chunk_size, cfg["max_BT"], cfg["max_tile_bytes"] // row)
    scale = dims["K"] ** -0.5 if scale is None else float(scale)
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    h0 = initial_state.contiguous() if initial_state is not None else None
    function = _FusedChunkGLA if fused else _ChunkGLA
    o, ht = function.apply(q, k, v, g, scale, h0, bool(output_final_state), scalar, chunk_size)
    return o, (ht if output_final_state else None)


def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention with a vector gate (GLA), chunkwise, forward and backward.

    ``S_t = (e^{g_t} 1^T) ⊙ S_{t-1} + k_t v_t^T``, ``o_t = scale * S_t^T q_t``.

    q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; g: log gates ``[B, T, H, K]`` (<= 0);
    initial_state: ``[B, H, K, V]``. Returns ``o [B, T, H, V]`` in v's dtype and the final
    state ``[B, H, K, V]`` in fp32 (``None`` unless ``output_final_state``). Chunks of
    ``chunk_size`` steps (the module docstring gives the algorithm; below compute
    capability 8.0 possibly fewer, see :data:`PRE_AMPERE`); inputs fp32, fp16 or bf16 (not
    bf16 below 8.0), all accumulation in fp32; K and V up to 256 (padded to a power of
    two >= 16 and masked), any T.
    """
    return _launch(
        q, k, v, g, scale, initial_state, output_final_state, False, "chunk_gla", chunk_size
    )


def chunk_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention with one scalar gate per head and step (Mamba-2, simple GLA).

    ``S_t = e^{g_t} S_{t-1} + k_t v_t^T``; g: ``[B, T, H]`` (<= 0); other shapes and
    dtypes as in :func:`chunk_gla`. The same kernels read the gate as one number per row
    (broadcast over K); its gradient is the K-sum of the vector gate's.
    """
    return _launch(
        q,
        k,
        v,
        g,
        scale,
        initial_state,
        output_final_state,
        True,
        "chunk_simple_gla",
        chunk_size,
    )


def fused_chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`chunk_gla` (vector gate ``g [B, T, H, K]``) with the fused forward: one
    program per (V-block, batch*head) walks the chunks with the state in registers and
    never stores per-chunk states (module docstring). Same arguments, results, dtypes
    and gradients; the backward recomputes the states and runs the chunkwise backward.
    """
    return _launch(
        q,
        k,
        v,
        g,
        scale,
        initial_state,
        output_final_state,
        False,
        "fused_chunk_gla",
        chunk_size,
        fused=True,
    )


def fused_chunk_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`chunk_simple_gla` (scalar gate ``g [B, T, H]``) with the fused forward; the
    intra-chunk matrix ``A = (q k^T) ⊙ D`` is computed inside the walk, so the forward is
    two kernels (cumsum, walk). Same arguments, results, dtypes and gradients.
    """
    return _launch(
        q,
        k,
        v,
        g,
        scale,
        initial_state,
        output_final_state,
        True,
        "fused_chunk_simple_gla",
        chunk_size,
        fused=True,
    )


def gla_decode_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    g_t: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step in one kernel: ``S' = e^{g_t} ⊙ S + k_t v_t^T``, ``o_t = scale S'^T q_t``.

    q_t, k_t: ``[B, H, K]``; v_t: ``[B, H, V]``; g_t: ``[B, H, K]`` (vector gate) or
    ``[B, H]`` (scalar gate); state: ``[B, H, K, V]``. Returns ``o_t [B, H, V]`` (v's
    dtype) and the new state (fp32). Each program owns a K x BV slice of one head's state.
    """
    dims = checks.check_shapes(
        q_t=(q_t, "B H K"), k_t=(k_t, "B H K"), v_t=(v_t, "B H V"), state=(state, "B H K V")
    )
    if g_t is None or g_t.dim() not in (2, 3):
        raise ValueError("g_t must have shape [B, H] or [B, H, K] (log gates)")
    checks.check_shapes(dims, g_t=(g_t, "B H" if g_t.dim() == 2 else "B H K"))
    _check_log_gate_fast("g_t", g_t)
    # no bf16 below compute capability 8.0
    runtime.check_bf16_supported(q_t=q_t, k_t=k_t, v_t=v_t, g_t=g_t, state=state)
    if scale is not None:
        checks.check_positive_float("scale", scale)
    B, H, K = q_t.shape
    V = v_t.shape[-1]
    scale = K**-0.5 if scale is None else float(scale)
    BV = min(CONFIG["decode_BV"], _pow2(V))
    q_t, k_t, v_t, g_t, state = (x.contiguous() for x in (q_t, k_t, v_t, g_t, state))
    o = runtime.new_empty((B, H, V), dtype=v_t.dtype, device=q_t.device)
    new_state = runtime.new_empty((B, H, K, V), dtype=torch.float32, device=q_t.device)
    _decode_kernel[(triton.cdiv(V, BV), B * H)](
        q_t,
        k_t,
        v_t,
        g_t,
        state,
        o,
        new_state,
        scale,
        H,
        K,
        V,
        BK=_pow2(K),
        BV=BV,
        SCALAR=g_t.dim() == 2,
        num_warps=CONFIG["decode_warps"],
    )
    return o, new_state

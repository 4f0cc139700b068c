"""Chunkwise linear attention in Triton: two forward forms, one backward, and a decode step.

Glossary of dimension letters
-----------------------------
B  batch size
T  sequence length
H  number of heads
K  head dimension of queries and keys (16..256 on the GPU; any size works, tiles are masked)
V  head dimension of values
C  chunk length (``chunk_size``, a power of two from 16 to 128; the kernels' ``BT``)
N  number of chunks, ``ceil(T / C)`` (``NT`` in the kernels)
P, R  the two dimensions of a state tile in the generic kernels (``K`` and ``V``, or
      ``V`` and ``K`` when a kernel reads a state transposed)

Layout (as in fla): ``q, k [B, T, H, K]``, ``v [B, T, H, V]``, state ``S [B, H, K, V]``.
No feature map inside the kernels: apply ``phi`` in torch first, as fla does
(:func:`linear_attention_chunkwise` is that wrapper).

The algorithm (the chunkwise form of Katharopoulos et al. 2020, as in Yang et al. 2023 /
fla), for one (batch, head) and chunks ``n = 0 .. N-1`` of ``C`` tokens::

    h_n = S_0 + sum_{m < n} K_m^T V_m                  state entering chunk n   [K, V]
    O_n = scale * (Q_n h_n + (Q_n K_n^T ⊙ M) V_n)      M[t, s] = [s <= t]       [C, V]

Two kernels, each used for the forward and for the backward:

* ``_chunk_state_kernel``: one program per (K-block, V-block, batch*head) walks the chunks
  in order (in reverse for the backward), keeping the state tile in fp32 registers and
  writing the state entering every chunk to ``h [B, H, N, K, V]`` (input dtype; only the
  sequential loop accumulates, in fp32). The final state is written in fp32.
* ``_chunk_output_kernel``: one program per (R-block, chunk, batch*head), all chunks in
  parallel: ``out = s_inter * a @ st + s_intra * ((a b^T) ⊙ mask) @ c``.

The backward (with ``G = dO``) is the same two kernels with the roles swapped::

    dh_n  = dS_T + scale * sum_{m > n} Q_m^T dO_m        (state kernel, reversed)
    dS_0  = dS_T + scale * sum_m Q_m^T dO_m              (its final tile)
    dQ_n  = scale * (dO_n h_n^T + (dO_n V_n^T ⊙ M) K_n)  (output kernel, h read transposed)
    dK_n  = V_n dh_n^T + scale * (V_n dO_n^T ⊙ M^T) Q_n  (output kernel, upper mask)
    dV_n  = K_n dh_n + scale * (K_n Q_n^T ⊙ M^T) dO_n    (output kernel, upper mask)

What bounds it: the state kernel writes ``h``, ``N K V`` numbers per head. At C = 64,
K = V = 128 that is ``2 K V / C = 512`` bytes a token and head (bf16), half of what q, k,
v and o take together (``2 (2 K + 2 V) = 1024`` bytes). The output kernel then reads
``h`` back, so the two-kernel forward moves about twice the bytes the result needs
(2.1 GB of states written and read again at B=4, H=16, T=65536), plus a second launch.

The fused forward (form ``fused_chunk``, :func:`fused_chunk_linear_attention`; the same
walk as fla's ``fused_chunk``) does both in one kernel: one program per (V-block,
batch*head) walks the chunks in order with the whole ``[K, BV]`` state block in fp32
registers, and for every chunk::

    O_n = scale * (Q_n S + (Q_n K_n^T ⊙ M) V_n)        with S = h_n, before the update
    S  <- S + K_n^T V_n

storing ``O_n`` and never the states; the final ``S`` is written once (fp32). Memory
traffic is near the floor: read q, k, v, write o (q and k once per V-block; the V-blocks
of a head have neighbouring program ids and run side by side, so the second read should
mostly hit L2). What is left sequential is the chain of ``S`` updates: of the four small
matmuls of a chunk (``Q_n S``, the scores ``Q_n K_n^T``, their product with ``V_n``,
``K_n^T V_n``) two read or write ``S``, ``N`` times in a row. The loads of chunk
``n + 1`` do not depend on ``S``, so Triton's software pipeliner (``num_stages``) fetches
them while chunk ``n`` computes. The parallelism is
``(V / BV) B H`` programs only, so the form is best when ``B H`` fills the GPU (128
programs at B=4, H=16: about one per SM of an H200); with few heads and long sequences
the chunkwise form spreads the output work over the chunks instead. In fp16/bf16, ``S``
is cast to the input dtype for the tensor-core product ``Q_n S`` (fp32 accumulation), as
the chunkwise form's stored ``h`` is; fp32 inputs keep an fp32 ``S``. ``K`` must fit one
tile (``K <= 256``, ``FUSED_MAX_K``); wider keys fall back to the chunkwise kernels. The
backward recomputes ``h`` with one (forward) pass of the state kernel, then runs the
chunkwise backward above: recomputing costs a pass over k and v, and the forward never
stores ``h`` for it.

The normaliser (``normalize=True``) is linear attention with values ``1``: we append a
column of ones to ``v`` and ``z`` as the last column of the state, run the same kernels on
``V + 1`` columns, and divide in torch. The kernels stay one code path, the backward of
the division comes from autograd, and the cost is one extra (masked) value column.

Shapes that are not multiples of the tiles (``T`` not a multiple of ``C``, head dims that
are not powers of two) are handled by masked loads and stores with zero fill; zero keys and
values add nothing to the state, so padding never changes a result.
"""

from __future__ import annotations

from typing import Any

from course_lib import runtime

runtime.require_triton()

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from course_lib import checks  # noqa: E402
from course_lib.linear_attention import validation  # noqa: E402
from course_lib.linear_attention.feature_maps import apply_feature_map  # noqa: E402

EPS = 1e-10  # the normaliser's eps, as in numpy_ref

# Launch configurations (no autotuning here; picked for an H200 at K = V = 128, bf16).
# "state": the sequential chunk loop; a [BP, BR] fp32 state tile per program. 64 x 64
#   gives (K/64) (V/64) B H programs (256 at B=4, H=16: about two per SM), and the loads of
#   the next chunks do not depend on the state, so num_stages=3 lets them run ahead.
# "output": the parallel per-chunk kernel; BP is the contraction block, BR the output
#   block. BR = 128 covers V = 128 in one program, so q and k of a chunk are read once and
#   the C x C score matrix is computed once; 8 warps hold the [C, 128] fp32 accumulator.
# "decode": one token; a [BK, BV] tile of the state per step of its loop over K.
# "fused": the one-kernel forward (form "fused_chunk"). The whole K dimension is one tile
#   (BK = next power of two >= K), so the state block [BK, BV] stays in fp32 registers. BV
#   = 64 at K = 128 gives (V/64) B H = 128 programs at B=4, H=16: one per SM of the H200's
#   132, each holding a 128 x 64 fp32 state (64 registers a thread with 4 warps, one
#   warpgroup, leaving room for the [64, 128] q and k tiles and the 64 x 64 score block).
#   BV = 128 would read q and k once instead of twice but leave half the SMs idle; the two
#   V-block programs of one head have neighbouring ids, so they run side by side and the
#   second read of q, k mostly hits L2. "max_state" caps BK * BV (K = 256 -> BV = 32).
#   The loads of chunk n + 1 do not depend on S, so the software pipeliner can issue them
#   while chunk n computes: num_stages buffers of (q, k, v) chunks in shared memory, as
#   many as fit in "pipeline_bytes", at most "num_stages" (bf16, K = 128, C = 64: 40 KB a
#   stage -> 3 stages, 136 KB of shared memory in the sm_90 build; bf16 at K = 256 -> 2,
#   152 KB; fp32 at K = V = 128 -> 1). "stage_bytes" bounds one stage: a shape whose one
#   (q, k, v) chunk is larger runs the chunkwise kernels (_fused_fits). H200, bf16,
#   B = 4, H = 16, K = V = 128, T = 65536 (16384): 3 stages take 1.44 ms (0.35), 2 stages
#   (pipeline_bytes 100 KB, the fifth session's setting) 2.17 (0.55), 1 stage 2.78; the
#   memory floor is 1.01 ms. 8 warps when K > 128 spread the larger q, k tiles over more
#   registers.
CONFIG: dict[str, dict[str, int]] = {
    "state": {"BP": 64, "BR": 64, "num_warps": 4, "num_stages": 3},
    "output": {"BP": 64, "BR": 128, "num_warps": 8, "num_stages": 2},
    "decode": {"BK": 64, "BV": 64, "num_warps": 4},
    "fused": {
        "BV": 64,
        "max_state": 128 * 64,
        "num_warps": 4,
        "num_warps_wide": 8,
        "num_stages": 3,
        "stage_bytes": 100_000,
        "pipeline_bytes": 160_000,
    },
}
# Below compute capability 8.0 (a T4, sm_75) a block may use at most 64 KB of shared memory
# and tl.dot has no fp32 tensor-core path: fp32 products become FMAs whose operands are
# re-laid-out through shared memory, a whole tile at a time. Compiled ahead of time for
# sm_75 (Triton 3.6) with the settings above, the output kernel needed 128 KB at fp32 and
# C = 128 (the [C, C] fp32 score block alone is 64 KB) and the fused forward 72 to 128 KB
# (C = 128 even at K = 16 in fp16, K = 256, fp32 at K = 128). So below 8.0 (the launchers
# read the capability of q's device; the interpreter counts as 8.0 or newer):
# "max_chunk": the kernels run chunks of at most this length, whatever chunk_size asks
#   for; the result does not depend on the chunk length (only the split of the work does).
# "fused_stage_bytes": the fused forward runs only where one (q, k, v) chunk takes at most
#   this many bytes, in place of CONFIG["fused"]["stage_bytes"]; larger shapes run the
#   chunkwise kernels, as fp32 at K = 256 does on the H200. (So at C = 64 fp16 with
#   K > 128 and fp32 with K > 64 run chunkwise.)
# With these, all 266 distinct launches of this module's sm_75 compile (fp16 and fp32, K
# and V from 16 to 256, every chunk size, forward and backward) fit in 64 KB, the largest
# exactly 64 KB; many spill registers, most (20 KB of spill stores) the fused forward at
# fp16, K = 128, C = 64. Not run on a T4 yet.
PRE_AMPERE: dict[str, int] = {"max_chunk": 64, "fused_stage_bytes": 48 * 1024}
CHUNK_SIZES = (16, 32, 64, 128)
FUSED_MAX_K = 256  # beyond this the fused form falls back to the two-kernel path


def _pre_ampere(capability: tuple[int, int] | None) -> bool:
    """True below compute capability 8.0; None (interpreter, CPU) counts as 8.0 or newer."""
    return capability is not None and tuple(capability) < (8, 0)


def _run_chunk_size(chunk_size: int, capability: tuple[int, int] | None) -> int:
    """The chunk length the kernels run with: ``chunk_size``, capped at
    ``PRE_AMPERE["max_chunk"]`` below compute capability 8.0."""
    if _pre_ampere(capability):
        return min(chunk_size, PRE_AMPERE["max_chunk"])
    return chunk_size


def _fused_fits(
    K: int, V: int, chunk_size: int, itemsize: int, capability: tuple[int, int] | None = None
) -> bool:
    """Whether the fused forward fits a shape: ``K <= FUSED_MAX_K`` and one (q, k, v) chunk
    within ``CONFIG["fused"]["stage_bytes"]`` (``PRE_AMPERE["fused_stage_bytes"]`` below
    compute capability 8.0). Compiled for sm_90 ahead of time (triton 3.6, ptxas), fp32 at
    K = 256 needed 237 KB of shared memory at C = 64 and 442 KB at C = 128, over the
    H200's 227 KB per block; such shapes run the chunkwise kernels."""
    if K > FUSED_MAX_K:
        return False
    cfg = CONFIG["fused"]
    budget = PRE_AMPERE["fused_stage_bytes"] if _pre_ampere(capability) else cfg["stage_bytes"]
    BK = _block(K, FUSED_MAX_K)
    BV = _block(V, min(cfg["BV"], max(16, cfg["max_state"] // BK)))
    return chunk_size * (2 * BK + BV) * itemsize <= budget


@triton.jit
def _chunk_state_kernel(
    a_ptr,  # [B, T, H, P]
    c_ptr,  # [B, T, H, R]
    init_ptr,  # [B, H, P, R], any float dtype (read only if HAS_INIT)
    states_ptr,  # [B, H, NT, P, R], state entering (forward) / leaving (reverse) each chunk
    final_ptr,  # [B, H, P, R] fp32 (written only if STORE_FINAL)
    T,
    H,
    P,
    R,
    NT,
    scale,
    HAS_INIT: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    REVERSE: tl.constexpr,
    BT: tl.constexpr,
    BP: tl.constexpr,
    BR: tl.constexpr,
):
    """S <- S + scale * A_n^T C_n over chunks n, storing S before each update."""
    i_p = tl.program_id(0)
    i_r = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    offs_p = i_p * BP + tl.arange(0, BP)
    offs_r = i_r * BR + tl.arange(0, BR)
    mask_p = offs_p < P
    mask_r = offs_r < R
    tile = offs_p[:, None] * R + offs_r[None, :]  # [BP, BR]
    mask_tile = mask_p[:, None] & mask_r[None, :]
    a_base = a_ptr + (i_b * T * H + i_h) * P
    c_base = c_ptr + (i_b * T * H + i_h) * R
    S = tl.zeros([BP, BR], dtype=tl.float32)
    if HAS_INIT:
        S += tl.load(init_ptr + i_bh * P * R + tile, mask=mask_tile, other=0.0).to(tl.float32)
    for i in range(NT):
        if REVERSE:
            n = NT - 1 - i
        else:
            n = i
        out = states_ptr + (i_bh * NT + n) * P * R + tile
        tl.store(out, S.to(states_ptr.dtype.element_ty), mask=mask_tile)
        offs_t = n * BT + tl.arange(0, BT)
        mask_t = offs_t < T
        a = tl.load(
            a_base + offs_t[:, None] * (H * P) + offs_p[None, :],
            mask=mask_t[:, None] & mask_p[None, :],
            other=0.0,
        )  # [BT, BP]
        c = tl.load(
            c_base + offs_t[:, None] * (H * R) + offs_r[None, :],
            mask=mask_t[:, None] & mask_r[None, :],
            other=0.0,
        )  # [BT, BR]
        S += scale * tl.dot(tl.trans(a), c)  # [BP, BR], fp32 accumulation
    if STORE_FINAL:
        tl.store(final_ptr + i_bh * P * R + tile, S, mask=mask_tile)


@triton.jit
def _chunk_output_kernel(
    a_ptr,  # [B, T, H, P]
    b_ptr,  # [B, T, H, P]
    c_ptr,  # [B, T, H, R]
    st_ptr,  # [B, H, NT, *, *] states; element (p, r) at p * st_sp + r * st_sr
    out_ptr,  # [B, T, H, R]
    T,
    H,
    P,
    R,
    NT,
    st_sp,
    st_sr,
    s_inter,
    s_intra,
    REVERSE: tl.constexpr,
    BT: tl.constexpr,
    BP: tl.constexpr,
    BR: tl.constexpr,
):
    """out_n = s_inter * a_n @ st_n + s_intra * ((a_n b_n^T) ⊙ mask) @ c_n for one chunk n."""
    i_r = tl.program_id(0)
    i_n = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    offs_t = i_n * BT + tl.arange(0, BT)
    offs_r = i_r * BR + tl.arange(0, BR)
    mask_t = offs_t < T
    mask_r = offs_r < R
    a_base = a_ptr + (i_b * T * H + i_h) * P
    b_base = b_ptr + (i_b * T * H + i_h) * P
    st_base = st_ptr + (i_bh * NT + i_n) * P * R
    acc = tl.zeros([BT, BR], dtype=tl.float32)
    A = tl.zeros([BT, BT], dtype=tl.float32)
    for p0 in range(0, P, BP):
        offs_p = p0 + tl.arange(0, BP)
        mask_p = offs_p < P
        rows = offs_t[:, None] * (H * P) + offs_p[None, :]  # [BT, BP]
        mask_rows = mask_t[:, None] & mask_p[None, :]
        a = tl.load(a_base + rows, mask=mask_rows, other=0.0)  # [BT, BP]
        b = tl.load(b_base + rows, mask=mask_rows, other=0.0)  # [BT, BP]
        st = tl.load(
            st_base + offs_p[:, None] * st_sp + offs_r[None, :] * st_sr,
            mask=mask_p[:, None] & mask_r[None, :],
            other=0.0,
        )  # [BP, BR]
        acc += tl.dot(a, st.to(a.dtype))  # inter-chunk, [BT, BR]
        A += tl.dot(a, tl.trans(b))  # [BT, BT]
    if REVERSE:
        keep = offs_t[:, None] <= offs_t[None, :]
    else:
        keep = offs_t[:, None] >= offs_t[None, :]
    A = tl.where(keep, A, 0.0)
    c_base = c_ptr + (i_b * T * H + i_h) * R
    cols = offs_t[:, None] * (H * R) + offs_r[None, :]  # [BT, BR]
    mask_cols = mask_t[:, None] & mask_r[None, :]
    c = tl.load(c_base + cols, mask=mask_cols, other=0.0)  # [BT, BR]
    out = s_inter * acc + s_intra * tl.dot(A.to(c.dtype), c)  # intra-chunk added
    out_base = out_ptr + (i_b * T * H + i_h) * R
    tl.store(out_base + cols, out.to(out_ptr.dtype.element_ty), mask=mask_cols)


@triton.jit
def _fused_chunk_fwd_kernel(
    q_ptr,  # [B, T, H, K]
    k_ptr,  # [B, T, H, K]
    v_ptr,  # [B, T, H, V]
    init_ptr,  # [B, H, K, V], any float dtype (read only if HAS_INIT)
    o_ptr,  # [B, T, H, V]
    final_ptr,  # [B, H, K, V] fp32 (written only if STORE_FINAL)
    T,
    H,
    K,
    V,
    NT,
    scale,
    HAS_INIT: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
):
    """For n = 0 .. NT-1: O_n = scale (Q_n S + (Q_n K_n^T ⊙ M) V_n), then S <- S + K_n^T V_n.

    One program per (V-block, batch*head); the whole K dimension is one tile (BK >= K), so
    the state block S [BK, BV] lives in fp32 registers for the whole walk and is never
    written to memory, except once at the end (the final state).
    """
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    offs_c = tl.arange(0, BT)  # position inside a chunk
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k = offs_k < K
    mask_v = offs_v < V
    tile = offs_k[:, None] * V + offs_v[None, :]  # [BK, BV]
    mask_tile = mask_k[:, None] & mask_v[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_INIT:
        S += tl.load(init_ptr + i_bh * K * V + tile, mask=mask_tile, other=0.0).to(tl.float32)
    causal = offs_c[:, None] >= offs_c[None, :]  # M[t, s] = [s <= t], [BT, BT]
    # pointers to the first chunk; each step moves them BT tokens on (64-bit pointer adds)
    p_q = q_ptr + (i_b * T * H + i_h) * K + offs_c[:, None] * (H * K) + offs_k[None, :]
    p_k = k_ptr + (i_b * T * H + i_h) * K + offs_c[:, None] * (H * K) + offs_k[None, :]
    p_v = v_ptr + (i_b * T * H + i_h) * V + offs_c[:, None] * (H * V) + offs_v[None, :]
    p_o = o_ptr + (i_b * T * H + i_h) * V + offs_c[:, None] * (H * V) + offs_v[None, :]
    for n in range(NT):
        mask_t = n * BT + offs_c < T
        mask_qk = mask_t[:, None] & mask_k[None, :]
        mask_vo = mask_t[:, None] & mask_v[None, :]
        # these loads do not depend on S: the pipeliner issues them num_stages - 1 chunks early
        q = tl.load(p_q, mask=mask_qk, other=0.0)  # [BT, BK]
        k = tl.load(p_k, mask=mask_qk, other=0.0)  # [BT, BK]
        v = tl.load(p_v, mask=mask_vo, other=0.0)  # [BT, BV]
        A = tl.where(causal, tl.dot(q, tl.trans(k)), 0.0)  # [BT, BT], fp32
        o = tl.dot(q, S.to(q.dtype))  # inter-chunk, [BT, BV], fp32 accumulation
        o = tl.dot(A.to(v.dtype), v, o)  # + intra-chunk
        tl.store(p_o, (o * scale).to(o_ptr.dtype.element_ty), mask=mask_vo)
        S += tl.dot(tl.trans(k), v)  # [BK, BV], after the output: S enters the next chunk
        p_q += BT * H * K
        p_k += BT * H * K
        p_v += BT * H * V
        p_o += BT * H * V
    if STORE_FINAL:
        tl.store(final_ptr + i_bh * K * V + tile, S, mask=mask_tile)


@triton.jit
def _decode_step_kernel(
    q_ptr,  # [B, H, K]
    k_ptr,  # [B, H, K]
    v_ptr,  # [B, H, V]
    s_ptr,  # [B, H, K, V] (read only if HAS_STATE)
    o_ptr,  # [B, H, V]
    snew_ptr,  # [B, H, K, V] fp32
    K,
    V,
    scale,
    HAS_STATE: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
):
    """S' = S + k v^T; o = scale * S'^T q, one V-block of one (batch, head)."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_v = offs_v < V
    v = tl.load(v_ptr + i_bh * V + offs_v, mask=mask_v, other=0.0).to(tl.float32)  # [BV]
    o = tl.zeros([BV], dtype=tl.float32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        mask_k = offs_k < K
        q = tl.load(q_ptr + i_bh * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)  # [BK]
        k = tl.load(k_ptr + i_bh * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)  # [BK]
        tile = i_bh * K * V + offs_k[:, None] * V + offs_v[None, :]  # [BK, BV]
        mask_tile = mask_k[:, None] & mask_v[None, :]
        S = k[:, None] * v[None, :]  # [BK, BV]
        if HAS_STATE:
            S += tl.load(s_ptr + tile, mask=mask_tile, other=0.0).to(tl.float32)
        tl.store(snew_ptr + tile, S, mask=mask_tile)
        o += tl.sum(S * q[:, None], axis=0)  # [BV]
    tl.store(o_ptr + i_bh * V + offs_v, (o * scale).to(o_ptr.dtype.element_ty), mask=mask_v)


def _block(size: int, cap: int) -> int:
    """Tile length for a dimension: a power of two, at least 16 (tl.dot), at most ``cap``."""
    return max(16, min(cap, triton.next_power_of_2(size)))


def _launch_states(
    a: torch.Tensor,
    c: torch.Tensor,
    init: torch.Tensor | None,
    states: torch.Tensor,
    final: torch.Tensor | None,
    scale: float,
    reverse: bool,
    chunk_size: int,
) -> None:
    """``states[:, :, n] = init + scale * sum_{m before n} a_m^T c_m``; ``final`` = the total.

    ``a [B, T, H, P]``, ``c [B, T, H, R]``, ``init``/``final [B, H, P, R]``,
    ``states [B, H, N, P, R]``; "before" means m < n, or m > n when ``reverse``.
    """
    B, T, H, P = a.shape
    R = c.shape[-1]
    cfg = CONFIG["state"]
    BP, BR = _block(P, cfg["BP"]), _block(R, cfg["BR"])
    grid = (triton.cdiv(P, BP), triton.cdiv(R, BR), B * H)
    _chunk_state_kernel[grid](
        a,
        c,
        init if init is not None else states,
        states,
        final if final is not None else states,
        T,
        H,
        P,
        R,
        states.shape[2],
        float(scale),
        HAS_INIT=init is not None,
        STORE_FINAL=final is not None,
        REVERSE=reverse,
        BT=chunk_size,
        BP=BP,
        BR=BR,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )


def _launch_output(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    states: torch.Tensor,
    transpose_states: bool,
    out: torch.Tensor,
    s_inter: float,
    s_intra: float,
    reverse: bool,
    chunk_size: int,
) -> torch.Tensor:
    """``out_n = s_inter * a_n st_n + s_intra * ((a_n b_n^T) ⊙ mask) c_n`` for every chunk.

    ``a, b [B, T, H, P]``, ``c, out [B, T, H, R]``; ``states [B, H, N, P, R]`` or, with
    ``transpose_states``, ``[B, H, N, R, P]`` read as its transpose. The mask keeps
    ``s <= t`` (``s >= t`` when ``reverse``).
    """
    B, T, H, P = a.shape
    R = c.shape[-1]
    cfg = CONFIG["output"]
    BP, BR = _block(P, cfg["BP"]), _block(R, cfg["BR"])
    st_sp, st_sr = (1, P) if transpose_states else (R, 1)
    grid = (triton.cdiv(R, BR), states.shape[2], B * H)
    _chunk_output_kernel[grid](
        a,
        b,
        c,
        states,
        out,
        T,
        H,
        P,
        R,
        states.shape[2],
        st_sp,
        st_sr,
        float(s_inter),
        float(s_intra),
        REVERSE=reverse,
        BT=chunk_size,
        BP=BP,
        BR=BR,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return out


def _launch_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    init: torch.Tensor | None,
    o: torch.Tensor,
    final: torch.Tensor | None,
    scale: float,
    chunk_size: int,
) -> None:
    """``o_t = scale * S_t^T q_t``, ``S_t = init + sum_{s <= t} k_s v_s^T``; ``final = S_T``.

    ``q, k [B, T, H, K]`` with ``K <= FUSED_MAX_K``, ``v, o [B, T, H, V]``,
    ``init``/``final [B, H, K, V]``. One kernel, no per-chunk states in memory.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    cfg = CONFIG["fused"]
    BK = _block(K, FUSED_MAX_K)
    BV = _block(V, min(cfg["BV"], max(16, cfg["max_state"] // BK)))
    stage = chunk_size * (2 * BK + BV) * q.element_size()  # bytes of one (q, k, v) chunk
    num_stages = max(1, min(cfg["num_stages"], cfg["pipeline_bytes"] // stage))
    num_warps = cfg["num_warps"] if BK <= 128 else cfg["num_warps_wide"]
    grid = (triton.cdiv(V, BV), B * H)
    _fused_chunk_fwd_kernel[grid](
        q,
        k,
        v,
        init if init is not None else o,
        o,
        final if final is not None else o,
        T,
        H,
        K,
        V,
        triton.cdiv(T, chunk_size),
        float(scale),
        HAS_INIT=init is not None,
        STORE_FINAL=final is not None,
        BT=chunk_size,
        BK=BK,
        BV=BV,
        num_warps=num_warps,
        num_stages=num_stages,
    )


class _ChunkLinearAttention(torch.autograd.Function):
    """Autograd wrapper of the chunkwise kernels (inputs already contiguous)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        initial_state: torch.Tensor | None,
        scale: float,
        output_final_state: bool,
        chunk_size: int,
        o_dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = triton.cdiv(T, chunk_size)
        dev = q.device
        h = runtime.new_empty((B, H, N, K, V), dtype=q.dtype, device=dev)  # states entering
        final = (
            runtime.new_empty((B, H, K, V), dtype=torch.float32, device=dev)
            if output_final_state
            else None
        )
        _launch_states(k, v, initial_state, h, final, 1.0, False, chunk_size)
        o = runtime.new_empty((B, T, H, V), dtype=o_dtype, device=dev)
        _launch_output(q, k, v, h, False, o, scale, scale, False, chunk_size)
        ctx.save_for_backward(q, k, v, h)
        ctx.scale = scale
        ctx.chunk_size = chunk_size
        ctx.init_dtype = initial_state.dtype if initial_state is not None else None
        return o, final

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor, dfinal: torch.Tensor | None) -> tuple[Any, ...]:  # type: ignore[override]
        q, k, v, h = ctx.saved_tensors
        grads = _chunk_backward(q, k, v, h, do, dfinal, ctx.scale, ctx.chunk_size, ctx.init_dtype)
        return (*grads, None, None, None, None)


def _chunk_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    h: torch.Tensor,
    do: torch.Tensor,
    dfinal: torch.Tensor | None,
    scale: float,
    C: int,
    init_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(dq, dk, dv, dS0)`` from the states entering every chunk, ``h [B, H, N, K, V]``.

    ``dS0`` (in ``init_dtype``) only when there was an initial state (``init_dtype`` set).
    """
    dev = q.device
    do = do.to(q.dtype).contiguous()  # [B, T, H, V]
    if dfinal is not None:
        dfinal = dfinal.contiguous()
    dh = runtime.new_empty(h.shape, dtype=q.dtype, device=dev)  # [B, H, N, K, V]
    dS0 = (
        runtime.new_empty(h.shape[:2] + h.shape[3:], dtype=torch.float32, device=dev)
        if init_dtype is not None
        else None
    )
    _launch_states(q, do, dfinal, dh, dS0, scale, True, C)
    dq = runtime.new_empty(q.shape, dtype=q.dtype, device=dev)
    dk = runtime.new_empty(k.shape, dtype=k.dtype, device=dev)
    dv = runtime.new_empty(v.shape, dtype=v.dtype, device=dev)
    _launch_output(do, v, k, h, True, dq, scale, scale, False, C)
    _launch_output(v, do, q, dh, True, dk, 1.0, scale, True, C)
    _launch_output(k, q, do, dh, False, dv, 1.0, scale, True, C)
    if dS0 is not None:
        dS0 = dS0.to(init_dtype)
    return dq, dk, dv, dS0


class _FusedChunkLinearAttention(torch.autograd.Function):
    """The one-kernel forward; the backward recomputes the chunk states, then reuses the
    chunkwise backward (inputs already contiguous, ``K <= FUSED_MAX_K``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        initial_state: torch.Tensor | None,
        scale: float,
        output_final_state: bool,
        chunk_size: int,
        o_dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, H, K = q.shape
        V = v.shape[-1]
        dev = q.device
        o = runtime.new_empty((B, T, H, V), dtype=o_dtype, device=dev)
        final = (
            runtime.new_empty((B, H, K, V), dtype=torch.float32, device=dev)
            if output_final_state
            else None
        )
        _launch_fused(q, k, v, initial_state, o, final, scale, chunk_size)
        ctx.save_for_backward(q, k, v, initial_state)
        ctx.scale = scale
        ctx.chunk_size = chunk_size
        return o, final

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor, dfinal: torch.Tensor | None) -> tuple[Any, ...]:  # type: ignore[override]
        q, k, v, init = ctx.saved_tensors
        B, T, H, K = q.shape
        C = ctx.chunk_size
        h = runtime.new_empty(
            (B, H, triton.cdiv(T, C), K, v.shape[-1]), dtype=q.dtype, device=q.device
        )  # [B, H, N, K, V], the states entering every chunk, as the chunkwise forward has
        _launch_states(k, v, init, h, None, 1.0, False, C)
        init_dtype = init.dtype if init is not None else None
        grads = _chunk_backward(q, k, v, h, do, dfinal, ctx.scale, C, init_dtype)
        return (*grads, None, None, None, None)


def _check_tensors(**tensors: Any) -> None:
    """Torch tensors on one device (CUDA when the kernels are compiled); the first leads.
    No bfloat16 on a GPU below compute capability 8.0."""
    device = None
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor for the Triton backend")
        if device is None:
            device = x.device
            if runtime.triton_mode() == "compiled" and device.type != "cuda":
                raise ValueError(
                    f"compiled Triton kernels need CUDA tensors; {name} is on {device}"
                )
        elif x.device != device:
            raise ValueError(f"{name} is on {x.device} but the other inputs are on {device}")
    runtime.check_bf16_supported(**tensors)  # no bf16 below compute capability 8.0


def _state_on(x: Any, like: torch.Tensor) -> torch.Tensor | None:
    """A state component as a tensor on ``like``'s device (numpy arrays are converted:
    ``course_lib.testing.to_backend`` leaves the pair ``(S, z)`` as numpy)."""
    if x is None:
        return None
    return x.to(like.device) if torch.is_tensor(x) else torch.as_tensor(x, device=like.device)


def _run_form(
    fused: bool,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None,
    normalize: bool,
    initial_state: Any,
    output_final_state: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, Any]:
    """Checks, then the chunkwise (``fused=False``) or fused forward, normaliser included."""
    dims = validation.check_qkv(q, k, v)
    scale = validation.check_common(scale, None, normalize, output_final_state, dims["K"])
    chunk_size = checks.check_positive_int("chunk_size", chunk_size)
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"chunk_size must be one of {CHUNK_SIZES} for Triton, got {chunk_size}")
    S0, z0 = validation.split_state(initial_state, normalize, dims)
    _check_tensors(q=q, k=k, v=v)
    S0, z0 = _state_on(S0, q), _state_on(z0, q)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    V_run = dims["V"] + 1 if normalize else dims["V"]  # the normaliser adds a column
    capability = runtime.device_capability(q.device)  # smaller shapes below 8.0
    chunk_size = _run_chunk_size(chunk_size, capability)
    use_fused = fused and _fused_fits(dims["K"], V_run, chunk_size, q.element_size(), capability)
    function = _FusedChunkLinearAttention if use_fused else _ChunkLinearAttention
    if not normalize:
        S0 = S0.contiguous() if S0 is not None else None
        o, final = function.apply(q, k, v, S0, scale, output_final_state, chunk_size, q.dtype)
        return o, final
    V = dims["V"]
    c = _normaliser_scale(q, k, z0, scale)  # a power of two, see there
    v1 = torch.cat([v * c.to(v.dtype), c.to(v.dtype).expand_as(v[..., :1])], -1)  # [.., V+1]
    S1 = None
    if S0 is not None:
        S1 = torch.cat([S0 * c.to(S0.dtype), (z0 * c)[..., None].to(S0.dtype)], -1)
    o1, final = function.apply(
        q, k, v1, S1, scale, output_final_state, chunk_size, torch.float32
    )  # o1 [B, T, H, V + 1] fp32: c * numerator and c * denominator
    o = (o1[..., :V] / (o1[..., V:] + c * EPS)).to(q.dtype)
    return o, (None if final is None else (final[..., :V] / c, final[..., V] / c))


def _normaliser_scale(
    q: torch.Tensor, k: torch.Tensor, z0: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """A power of two c <= 1 that multiplies the whole value block ``[v, 1]`` (and the
    initial state): the kernels see ``c * S``, ``c * z`` and, on the way back, gradients
    ``dO / (c * den)``; ``o = num / den`` is unchanged and c is exact. A tensor: no sync.

    Why, in fp16: ``z_t`` grows like T (past 65504 at T = 65536), and ``den = scale q . z``
    with it (~1e6 there), so ``dO / den`` fell below fp16's smallest normal 2^-14 when the
    backward cast it for ``tl.dot`` and dq lost its digits. A small c lifts it; a too small
    c overflows the other end, the gradient of the scaled values ``dv / c`` (~``|k| dS /
    c`` through the final state). With ``D >= den`` and ``k2 = max ||k_t||`` from the
    sizes, ``c = 2^(1 - floor(log2(D / k2) / 2))``, 2 to 4 times ``(k2 / D)^(1/2)``, sits
    between the two, a little towards the overflow side (2^-6 at T = 65536, K = 128, where
    ``dv / c <= 5e3``); and ``c * max |z| <= 2^15``.
    """
    with torch.no_grad():
        f32 = torch.float32
        z_max = torch.linalg.vector_norm(k, 1, dim=1, dtype=f32).amax()  # >= |z_t - z0|
        if z0 is not None:
            z_max = z_max + z0.abs().amax().to(f32)
        den = torch.linalg.vector_norm(q, 1, dim=-1, dtype=f32).amax() * scale * z_max
        k2 = torch.linalg.vector_norm(k, 2, dim=-1, dtype=f32).amax()
        e = torch.floor(torch.log2((den / k2.clamp(min=1.0)).clamp(min=1.0)) / 2) - 1
        e_z = torch.ceil(torch.log2(z_max.clamp(min=1.0))) - 15.0  # c * z <= 2^15
        return torch.exp2(-torch.maximum(e, e_z).clamp(min=0.0))


def chunk_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    normalize: bool = False,
    initial_state: Any = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, Any]:
    """Causal linear attention with the chunkwise Triton kernels (differentiable).

    ``o_t = scale * S_t^T q_t`` with ``S_t = S_0 + sum_{s <= t} k_s v_s^T``; with
    ``normalize=True`` divided by ``scale * z_t . q_t + eps``, ``z_t = z_0 + sum_{s<=t} k_s``.
    No feature map: pass ``phi(q), phi(k)``.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; fp32, fp16 or bf16 (one dtype).
        scale: default ``K ** -0.5``.
        normalize: divide by the normaliser (realised as an extra value column of ones).
        initial_state: ``S_0 [B, H, K, V]``, or ``(S_0, z_0 [B, H, K])`` when normalising.
        output_final_state: also return the final state (fp32).
        chunk_size: ``C`` in (16, 32, 64, 128); below compute capability 8.0 the kernels
            use at most 64 (:data:`PRE_AMPERE`), with the same result.

    Returns:
        ``(o [B, T, H, V] in q's dtype, final_state)``, ``final_state`` = ``S_T`` or
        ``(S_T, z_T)`` in fp32, or None. Gradients flow to q, k, v and the initial state.
    """
    return _run_form(
        False, q, k, v, scale, normalize, initial_state, output_final_state, chunk_size
    )


def fused_chunk_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    normalize: bool = False,
    initial_state: Any = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, Any]:
    """:func:`chunk_linear_attention` with the one-kernel forward (differentiable).

    Same arguments, returns and equations. The forward keeps the state in registers while
    it walks the chunks and never writes the per-chunk states; the backward recomputes them
    (one pass of the state kernel) and then runs the chunkwise backward. For
    ``K > FUSED_MAX_K`` (256) the state tile would not fit in registers and the chunkwise
    kernels run instead.
    """
    return _run_form(True, q, k, v, scale, normalize, initial_state, output_final_state, chunk_size)


def _with_feature_map(
    fn: Any,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None,
    feature_map: Any,
    normalize: bool,
    initial_state: Any,
    output_final_state: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, Any]:
    """Apply ``phi`` in torch (input dtype), resolve the scale from the raw ``K``, call ``fn``."""
    dims = validation.check_qkv(q, k, v)
    scale = validation.check_common(scale, feature_map, normalize, output_final_state, dims["K"])
    checks.check_positive_int("chunk_size", chunk_size)
    fq, fk = apply_feature_map(q, feature_map), apply_feature_map(k, feature_map)
    return fn(fq, fk, v, scale, normalize, initial_state, output_final_state, chunk_size)


def linear_attention_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    feature_map: Any = None,
    normalize: bool = False,
    initial_state: Any = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, Any]:
    """The torch/numpy signature on top of :func:`chunk_linear_attention`.

    Applies ``phi`` in torch (on the input dtype), resolves the default scale from the raw
    ``K``, then calls the kernels. Same arguments and returns as
    :func:`course_lib.linear_attention.torch_impl.linear_attention_chunkwise`.
    """
    return _with_feature_map(
        chunk_linear_attention,
        q,
        k,
        v,
        scale,
        feature_map,
        normalize,
        initial_state,
        output_final_state,
        chunk_size,
    )


def linear_attention_fused_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    feature_map: Any = None,
    normalize: bool = False,
    initial_state: Any = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, Any]:
    """The torch/numpy signature on top of :func:`fused_chunk_linear_attention`.

    Same arguments and returns as :func:`linear_attention_chunkwise`.
    """
    return _with_feature_map(
        fused_chunk_linear_attention,
        q,
        k,
        v,
        scale,
        feature_map,
        normalize,
        initial_state,
        output_final_state,
        chunk_size,
    )


def linear_attention_decode_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state: torch.Tensor | None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step in one kernel: ``S' = S + k_t v_t^T``, ``o_t = scale * S'^T q_t``.

    Args:
        q_t, k_t: ``[B, H, K]``; v_t: ``[B, H, V]`` (one dtype); state ``S [B, H, K, V]``
            (any float dtype) or None for zeros. No feature map (apply it first).

    Returns:
        ``(o_t [B, H, V] in q_t's dtype, new_state [B, H, K, V] fp32)``. Each program owns a
        V-block of one (batch, head) and loops over K in blocks, so the state is read and
        written once: O(K V) work and memory traffic per token. Not differentiable.
    """
    dims = validation.check_token(q_t, k_t, v_t)
    scale = validation.check_scale(scale, dims["K"])
    S, _ = validation.split_state(state, False, dims, name="state")
    _check_tensors(q_t=q_t, k_t=k_t, v_t=v_t)
    S = _state_on(S, q_t)
    B, H, K, V = dims["B"], dims["H"], dims["K"], dims["V"]
    q_t, k_t, v_t = q_t.contiguous(), k_t.contiguous(), v_t.contiguous()
    S = S.contiguous() if S is not None else None
    o = runtime.new_empty((B, H, V), dtype=q_t.dtype, device=q_t.device)
    S_new = runtime.new_empty((B, H, K, V), dtype=torch.float32, device=q_t.device)
    cfg = CONFIG["decode"]
    BK, BV = _block(K, cfg["BK"]), _block(V, cfg["BV"])
    _decode_step_kernel[(triton.cdiv(V, BV), B * H)](
        q_t,
        k_t,
        v_t,
        S if S is not None else S_new,
        o,
        S_new,
        K,
        V,
        float(scale),
        HAS_STATE=S is not None,
        BK=BK,
        BV=BV,
        num_warps=cfg["num_warps"],
    )
    return o, S_new

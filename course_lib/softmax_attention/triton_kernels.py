"""FlashAttention-style softmax attention in Triton: tiled forward, recomputing backward.

Glossary of dimension letters
-----------------------------
B  batch size
T  number of queries (the length of ``q``)
S  number of keys and values
H  number of heads
K  head dimension of queries and keys
V  head dimension of values

Block sizes are named for what they tile: ``BLOCK_T`` query rows, ``BLOCK_S`` keys,
``BLOCK_K`` and ``BLOCK_V`` the head dimensions (the next power of two >= 16 of K and V; the
padded columns are loaded as zeros and never stored, so any head dimension works).

Forward (Dao et al. 2022; Dao 2023, FlashAttention-2): one program per (query block, batch
and head). It keeps the running maximum ``m``, running sum ``l`` and unnormalised output
``acc`` of the online softmax (see ``numpy_ref.online_softmax_merge``) in registers, walks
over key blocks, and writes ``o = acc / l`` and the log-sum-exp ``lse = m + log l``. Only
``lse`` (``[B, H, T]`` floats) is kept for the backward, never the ``[T, S]`` matrix.

Backward, with ``p_ij = exp(s_ij - lse_i)`` recomputed tile by tile:

1. ``delta_i = sum_v dO_iv O_iv`` (one small kernel),
2. per key block: ``dV_j = sum_i p_ij dO_i`` and ``dK_j = scale sum_i p_ij (dP_ij - delta_i) q_i``
   with ``dP_ij = dO_i . v_j``,
3. per query block: ``dQ_i = scale sum_j p_ij (dP_ij - delta_i) k_j``.

Splitting (2) and (3) into two kernels recomputes ``p`` twice but needs no atomic adds.
Every tile accumulates in float32; exponentials use ``exp2`` with the scores pre-multiplied
by ``log2(e)``. The causal mask is aligned bottom-right (query ``i`` sees keys
``j <= i + S - T``; a decode query, ``T == 1``, sees the whole KV cache); key blocks entirely
in a query block's future are skipped.
"""

from __future__ import annotations

from course_lib import runtime

runtime.require_triton()  # before `import triton`: decides compiled mode or interpreter

from typing import Any  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from course_lib import checks  # noqa: E402
from course_lib.softmax_attention.numpy_ref import (  # noqa: E402
    check_attention_inputs,
    default_scale,
)

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * LOG2E)
LN2 = 0.6931471805599453  # ln(2): log(x) = log2(x) * LN2
# Kernels may read only constexpr globals (compiled Triton refuses plain floats).
_LOG2E_C = tl.constexpr(LOG2E)
_LN2_C = tl.constexpr(LN2)
MAX_HEAD_DIM = 256
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Launch configurations for an H200 (Hopper, 228 KB shared memory per SM), by padded head
# dimension, for 2-byte inputs; fp32 inputs are shrunk to fit by `_fit_shared_memory`. Checked by
# compiling ahead of time for sm_90 with Triton 3.9 (shared memory within limits), not timed.
# Values follow common FlashAttention-2 Triton settings; they are not autotuned here.
GPU_CONFIGS: dict[str, dict[int, dict[str, int]]] = {
    "fwd": {
        64: {"BLOCK_T": 128, "BLOCK_S": 64, "num_warps": 4, "num_stages": 3},
        128: {"BLOCK_T": 128, "BLOCK_S": 64, "num_warps": 8, "num_stages": 3},
        256: {"BLOCK_T": 64, "BLOCK_S": 32, "num_warps": 8, "num_stages": 2},
    },
    "bwd": {
        64: {"BLOCK_T": 64, "BLOCK_S": 64, "num_warps": 4, "num_stages": 2},
        128: {"BLOCK_T": 64, "BLOCK_S": 64, "num_warps": 8, "num_stages": 2},
        256: {"BLOCK_T": 32, "BLOCK_S": 32, "num_warps": 4, "num_stages": 2},
    },
}
# Before compute capability 8.0 (e.g. a T4, sm_75) a block gets at most 64 KB of shared memory
# and tl.dot has no tensor-core path: it becomes fp32 FMAs, and the operands are staged and
# re-laid-out through shared memory in ways `shared_memory_estimate` (fitted on sm_90) does not
# model. So these are used as they are, without `_fit_shared_memory`. The sizes were picked by
# compiling every forward and backward launch ahead of time for sm_75 with Triton 3.6 (fp16 and
# fp32, head dims 16 to 256, causal or not) and reading each kernel's shared memory: the largest
# is exactly 64 KB (backward, fp32, head dim 256), the forward stays under 36 KB. The backward
# spills some registers (up to ~11 KB at fp16, head dim 256); not timed.
GPU_CONFIGS_PRE_AMPERE: dict[str, dict[int, dict[str, int]]] = {
    "fwd": {
        64: {"BLOCK_T": 32, "BLOCK_S": 32, "num_warps": 4, "num_stages": 1},
        128: {"BLOCK_T": 32, "BLOCK_S": 32, "num_warps": 8, "num_stages": 1},
        256: {"BLOCK_T": 16, "BLOCK_S": 16, "num_warps": 8, "num_stages": 1},
    },
    "bwd": {
        64: {"BLOCK_T": 32, "BLOCK_S": 32, "num_warps": 4, "num_stages": 1},
        128: {"BLOCK_T": 16, "BLOCK_S": 16, "num_warps": 4, "num_stages": 1},
        256: {"BLOCK_T": 16, "BLOCK_S": 16, "num_warps": 2, "num_stages": 1},
    },
}
# The CPU interpreter runs every program op by op in Python: few, unequal blocks keep it
# quick and still exercise the tails, several trips of each loop and the T/S bookkeeping.
INTERPRETER_CONFIG = {"BLOCK_T": 32, "BLOCK_S": 64, "num_warps": 1, "num_stages": 1}
# Set entries here to override the chosen configuration, e.g.
# ``CONFIG["fwd"] = {"BLOCK_T": 64, "num_warps": 4}``; keys "fwd" and "bwd".
CONFIG: dict[str, dict[str, int]] = {}
SHARED_MEMORY_BUDGET = 180 * 1024  # bytes, some headroom below the H200's 227 KB per block


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _fwd_tile(
    q, m_i, l_i, acc,  # the query tile and the running (m, l, acc) of its rows
    k_base, v_base, rows, start, stride_ks, stride_vs, ik, iv, k_ok, v_ok, T, S, qk_scale,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Fold the key block ``[start, start + BLOCK_S)`` into the online softmax of ``q``."""
    cols = start + tl.arange(0, BLOCK_S)  # key indices  [BLOCK_S]
    col_ok = cols < S
    k = tl.load(
        k_base + cols[:, None] * stride_ks + ik[None, :],
        mask=col_ok[:, None] & k_ok[None, :],
        other=0.0,
    )  # [BLOCK_S, BLOCK_K]
    s = tl.dot(q, tl.trans(k)) * qk_scale  # [BLOCK_T, BLOCK_S], fp32, log2 units
    if MASKED:  # the tail key block and the blocks the causal diagonal crosses
        visible = col_ok[None, :]  # [1, BLOCK_S]; tail rows (>= T) are never stored
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None] + (S - T))
        s = tl.where(visible, s, float("-inf"))

    # The online-softmax rescale: move the old partial result onto the new maximum.
    m_new = tl.maximum(m_i, tl.max(s, 1))  # [BLOCK_T]
    alpha = tl.exp2(m_i - m_new)  # [BLOCK_T], 0 on the first block (m_i = -inf)
    p = tl.exp2(s - m_new[:, None])  # [BLOCK_T, BLOCK_S], masked -> 0
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(
        v_base + cols[:, None] * stride_vs + iv[None, :],
        mask=col_ok[:, None] & v_ok[None, :],
        other=0.0,
    )  # [BLOCK_S, BLOCK_V]
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)  # [BLOCK_T, BLOCK_V]
    return m_new, l_i, acc


@triton.jit
def _attn_fwd_kernel(
    Q, Kp, Vp, O, LSE,  # pointers: q [B,T,H,K], k [B,S,H,K], v [B,S,H,V], o [B,T,H,V], lse [B,H,T]
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_ot, stride_oh,
    H, T, S, KD, VD,  # heads, lengths and true head dims
    qk_scale,  # scale * log2(e)
    CAUSAL: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    pid_t = tl.program_id(0)  # which block of queries
    pid_bh = tl.program_id(1)  # which (batch, head)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = Kp + b * stride_kb + h * stride_kh
    v_base = Vp + b * stride_vb + h * stride_vh
    o_base = O + b * stride_ob + h * stride_oh

    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # query indices  [BLOCK_T]
    ik = tl.arange(0, BLOCK_K)  # head-dim offsets  [BLOCK_K]
    iv = tl.arange(0, BLOCK_V)  # [BLOCK_V]
    row_ok = rows < T
    k_ok = ik < KD
    v_ok = iv < VD
    q = tl.load(
        q_base + rows[:, None] * stride_qt + ik[None, :],
        mask=row_ok[:, None] & k_ok[None, :],
        other=0.0,
    )  # [BLOCK_T, BLOCK_K]

    m_i = tl.full([BLOCK_T], float("-inf"), tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_T], tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)  # running sum of exp2(s - m_i) v

    # Two loops over key blocks: first those every query of this block sees in full (no
    # mask needed), then the rest up to the causal diagonal and the tail key block S.
    first_row = pid_t * BLOCK_T
    s_end = S
    s_full = S
    if CAUSAL:  # query i sees keys j <= i + S - T
        s_end = tl.minimum(S, first_row + BLOCK_T + S - T)  # the block's last query's reach
        s_full = tl.minimum(S, first_row + 1 + S - T)  # its first query's reach
    s_full = s_full // BLOCK_S * BLOCK_S  # whole blocks only
    for start in range(0, s_full, BLOCK_S):
        m_i, l_i, acc = _fwd_tile(
            q, m_i, l_i, acc, k_base, v_base, rows, start, stride_ks, stride_vs, ik, iv,
            k_ok, v_ok, T, S, qk_scale, CAUSAL=CAUSAL, MASKED=False, BLOCK_S=BLOCK_S,
        )  # fmt: skip
    for start in range(s_full, s_end, BLOCK_S):
        m_i, l_i, acc = _fwd_tile(
            q, m_i, l_i, acc, k_base, v_base, rows, start, stride_ks, stride_vs, ik, iv,
            k_ok, v_ok, T, S, qk_scale, CAUSAL=CAUSAL, MASKED=True, BLOCK_S=BLOCK_S,
        )  # fmt: skip

    o = acc / l_i[:, None]  # normalise once, at the end
    tl.store(
        o_base + rows[:, None] * stride_ot + iv[None, :],
        o.to(O.dtype.element_ty),
        mask=row_ok[:, None] & v_ok[None, :],
    )
    lse = (m_i + tl.log2(l_i)) * _LN2_C  # natural log-sum-exp of the scaled scores
    tl.store(LSE + pid_bh.to(tl.int64) * T + rows, lse, mask=row_ok)


@triton.jit
def _attn_bwd_delta_kernel(
    O, DO, DELTA,  # o, do [B,T,H,V]; delta [B,H,T]
    stride_ob, stride_ot, stride_oh,
    stride_dob, stride_dot, stride_doh,
    H, T, VD,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    dv = tl.arange(0, BLOCK_V)
    mask = (rows < T)[:, None] & (dv < VD)[None, :]
    o = tl.load(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_ot + dv[None, :],
                mask=mask, other=0.0).to(tl.float32)  # fmt: skip
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dot + dv[None, :],
                 mask=mask, other=0.0).to(tl.float32)  # fmt: skip
    delta = tl.sum(o * do, 1)  # [BLOCK_T]
    tl.store(DELTA + pid_bh.to(tl.int64) * T + rows, delta, mask=rows < T)


@triton.jit
def _attn_bwd_dkivkernel(
    Q, Kp, Vp, DO, LSE, DELTA, DK, DV,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dot, stride_doh,
    H, T, S, KD, VD,
    sm_scale, qk_scale,  # scale, and scale * log2(e)
    CAUSAL: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    pid_s = tl.program_id(0)  # which block of keys
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    lse_base = LSE + pid_bh.to(tl.int64) * T
    delta_base = DELTA + pid_bh.to(tl.int64) * T

    cols = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)  # key indices  [BLOCK_S]
    ik = tl.arange(0, BLOCK_K)
    iv = tl.arange(0, BLOCK_V)
    col_ok = cols < S
    k_ok = ik < KD
    v_ok = iv < VD
    k_off = b * stride_kb + h * stride_kh + cols[:, None] * stride_ks + ik[None, :]
    v_off = b * stride_vb + h * stride_vh + cols[:, None] * stride_vs + iv[None, :]
    k = tl.load(Kp + k_off, mask=col_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_S, BLOCK_K]
    v = tl.load(Vp + v_off, mask=col_ok[:, None] & v_ok[None, :], other=0.0)  # [BLOCK_S, BLOCK_V]
    dk = tl.zeros([BLOCK_S, BLOCK_K], tl.float32)
    dv = tl.zeros([BLOCK_S, BLOCK_V], tl.float32)

    t_start = 0
    if CAUSAL:  # the first query that sees key j is i = j - (S - T); earlier blocks skipped
        t_start = tl.maximum(pid_s * BLOCK_S - (S - T), 0) // BLOCK_T * BLOCK_T
    for start in range(t_start, T, BLOCK_T):
        rows = start + tl.arange(0, BLOCK_T)  # query indices  [BLOCK_T]
        row_ok = rows < T
        q = tl.load(q_base + rows[:, None] * stride_qt + ik[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # fmt: skip
        do = tl.load(do_base + rows[:, None] * stride_dot + iv[None, :],
                     mask=row_ok[:, None] & v_ok[None, :], other=0.0)  # fmt: skip
        lse2 = tl.load(lse_base + rows, mask=row_ok, other=0.0) * _LOG2E_C  # [BLOCK_T]
        delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)  # [BLOCK_T]

        s_t = tl.dot(k, tl.trans(q)) * qk_scale  # scores transposed  [BLOCK_S, BLOCK_T]
        visible = col_ok[:, None] & row_ok[None, :]
        if CAUSAL:
            visible = visible & (cols[:, None] <= rows[None, :] + (S - T))
        p_t = tl.where(visible, tl.exp2(s_t - lse2[None, :]), 0.0)  # p^T  [BLOCK_S, BLOCK_T]
        dv += tl.dot(p_t.to(do.dtype), do)  # [BLOCK_S, BLOCK_V]
        dp_t = tl.dot(v, tl.trans(do))  # (dO V^T)^T  [BLOCK_S, BLOCK_T]
        ds_t = p_t * (dp_t - delta[None, :])  # [BLOCK_S, BLOCK_T]
        dk += tl.dot(ds_t.to(q.dtype), q)  # [BLOCK_S, BLOCK_K]

    dk = dk * sm_scale
    tl.store(DK + k_off, dk.to(DK.dtype.element_ty), mask=col_ok[:, None] & k_ok[None, :])
    tl.store(DV + v_off, dv.to(DV.dtype.element_ty), mask=col_ok[:, None] & v_ok[None, :])


@triton.jit
def _attn_bwd_dq_kernel(
    Q, Kp, Vp, DO, LSE, DELTA, DQ,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dot, stride_doh,
    H, T, S, KD, VD,
    sm_scale, qk_scale,
    CAUSAL: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    pid_t = tl.program_id(0)  # which block of queries
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    k_base = Kp + b * stride_kb + h * stride_kh
    v_base = Vp + b * stride_vb + h * stride_vh

    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    ik = tl.arange(0, BLOCK_K)
    iv = tl.arange(0, BLOCK_V)
    row_ok = rows < T
    k_ok = ik < KD
    v_ok = iv < VD
    q_off = b * stride_qb + h * stride_qh + rows[:, None] * stride_qt + ik[None, :]
    q = tl.load(Q + q_off, mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_T, BLOCK_K]
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dot + iv[None, :],
                 mask=row_ok[:, None] & v_ok[None, :], other=0.0)  # fmt: skip
    lse2 = tl.load(LSE + pid_bh.to(tl.int64) * T + rows, mask=row_ok, other=0.0) * _LOG2E_C
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * T + rows, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_T, BLOCK_K], tl.float32)

    s_end = S
    if CAUSAL:
        s_end = tl.minimum(S, (pid_t + 1) * BLOCK_T + S - T)
    for start in range(0, s_end, BLOCK_S):
        cols = start + tl.arange(0, BLOCK_S)  # [BLOCK_S]
        col_ok = cols < S
        k = tl.load(k_base + cols[:, None] * stride_ks + ik[None, :],
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0)  # fmt: skip
        v = tl.load(v_base + cols[:, None] * stride_vs + iv[None, :],
                    mask=col_ok[:, None] & v_ok[None, :], other=0.0)  # fmt: skip
        s = tl.dot(q, tl.trans(k)) * qk_scale  # [BLOCK_T, BLOCK_S]
        visible = row_ok[:, None] & col_ok[None, :]
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None] + (S - T))
        p = tl.where(visible, tl.exp2(s - lse2[:, None]), 0.0)  # [BLOCK_T, BLOCK_S]
        dp = tl.dot(do, tl.trans(v))  # [BLOCK_T, BLOCK_S]
        ds = p * (dp - delta[:, None])  # [BLOCK_T, BLOCK_S]
        dq += tl.dot(ds.to(k.dtype), k)  # [BLOCK_T, BLOCK_K]

    dq = dq * sm_scale
    tl.store(DQ + q_off, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None] & k_ok[None, :])


# ----------------------------------------------------------------------------- launchers


def _head_block(d: int) -> int:
    """Padded head dimension: the next power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(d))


def shared_memory_estimate(cfg: dict[str, int], BLOCK_K: int, BLOCK_V: int, esize: int) -> int:
    """Bytes of shared memory a launch stages, roughly: ``num_stages`` buffers of the key
    and value tiles plus one query-side tile (q, and dO in the backward). A rule of thumb:
    every configuration it admits under the budget compiled for sm_90 (Triton 3.9, checked
    ahead of time) within the H200's 227 KB per block."""
    key_side = cfg["num_stages"] * cfg["BLOCK_S"] * (BLOCK_K + BLOCK_V)
    return (key_side + cfg["BLOCK_T"] * (BLOCK_K + BLOCK_V)) * esize


def _fit_shared_memory(cfg: dict[str, int], BLOCK_K: int, BLOCK_V: int, esize: int) -> None:
    """Shrink BLOCK_S, then BLOCK_T, then the pipeline depth until the estimate fits."""
    while shared_memory_estimate(cfg, BLOCK_K, BLOCK_V, esize) > SHARED_MEMORY_BUDGET:
        if cfg["BLOCK_S"] > 32:
            cfg["BLOCK_S"] //= 2
        elif cfg["BLOCK_T"] > 32:
            cfg["BLOCK_T"] //= 2
        elif cfg["num_stages"] > 1:
            cfg["num_stages"] -= 1
        else:
            break


def launch_config(
    pass_: str,
    BLOCK_K: int,
    BLOCK_V: int,
    dtype: torch.dtype = torch.float16,
    capability: tuple[int, int] | None = None,
) -> dict[str, int]:
    """Block sizes and launch options for ``pass_`` ("fwd" or "bwd"), then :data:`CONFIG`.

    On a GPU the table :data:`GPU_CONFIGS` is looked up by the larger padded head dimension
    and shrunk to :data:`SHARED_MEMORY_BUDGET`; below compute ``capability`` (8, 0) the table
    :data:`GPU_CONFIGS_PRE_AMPERE` is used as it is (None counts as 8.0 or newer). In the
    interpreter :data:`INTERPRETER_CONFIG` is used. Every block size must be a power of two
    >= 16 (``tl.arange`` and ``tl.dot`` need that).
    """
    checks.check_choice("pass_", pass_, ("fwd", "bwd"))
    if runtime.triton_mode() == "interpreter":
        cfg = dict(INTERPRETER_CONFIG)
    else:
        pre_ampere = capability is not None and tuple(capability) < (8, 0)
        table = (GPU_CONFIGS_PRE_AMPERE if pre_ampere else GPU_CONFIGS)[pass_]
        d = max(BLOCK_K, BLOCK_V)
        cfg = dict(table[min((key for key in table if key >= d), default=max(table))])
        if not pre_ampere:
            esize = torch.tensor([], dtype=dtype).element_size()
            _fit_shared_memory(cfg, BLOCK_K, BLOCK_V, esize)
    cfg.update(CONFIG.get(pass_, {}))
    for name in ("BLOCK_T", "BLOCK_S", "num_warps", "num_stages"):
        value = checks.check_positive_int(f"CONFIG[{pass_!r}][{name!r}]", cfg[name])
        if name.startswith("BLOCK") and (value < 16 or value & (value - 1)):
            raise ValueError(
                f"CONFIG[{pass_!r}][{name!r}] must be a power of two >= 16, got {value}"
            )
    return cfg


def _check_triton_inputs(q: Any, k: Any, v: Any, scale: Any, causal: Any) -> dict[str, int]:
    dims = check_attention_inputs(q, k, v, scale, causal)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor for the Triton backend")
    if q.dtype not in DTYPES:
        raise TypeError(f"q must be float32, float16 or bfloat16 for Triton, got {q.dtype}")
    for letter, name in (("K", "q"), ("V", "v")):
        if dims[letter] > MAX_HEAD_DIM:
            raise ValueError(
                f"{name} has head dimension {letter}={dims[letter]}; the Triton kernel "
                f"supports up to {MAX_HEAD_DIM}"
            )
    mode = runtime.triton_mode()
    for name, x in (("q", q), ("k", k), ("v", v)):
        if mode == "compiled" and not x.is_cuda:
            raise ValueError(f"{name} must be on a CUDA device for compiled Triton")
        if mode == "interpreter" and x.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU for the Triton interpreter")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    if mode == "interpreter" and q.dtype == torch.bfloat16:
        raise TypeError("q is bfloat16, which Triton's CPU interpreter does not support")
    runtime.check_bf16_supported(q=q)  # no bf16 below compute capability 8.0
    return dims


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel on contiguous inputs; ``(o [B, T, H, V], lse [B, H, T])``.

    Grid: ``(cdiv(T, BLOCK_T), B * H)``, one program per query block and head.
    """
    B, T, H, K = q.shape
    S, V = k.shape[1], v.shape[-1]
    BLOCK_K, BLOCK_V = _head_block(K), _head_block(V)
    cfg = launch_config("fwd", BLOCK_K, BLOCK_V, q.dtype, runtime.device_capability(q.device))
    o = runtime.new_empty((B, T, H, V), dtype=q.dtype, device=q.device)  # [B, T, H, V]
    lse = runtime.new_empty((B, H, T), dtype=torch.float32, device=q.device)  # [B, H, T]
    grid = (triton.cdiv(T, cfg["BLOCK_T"]), B * H)
    _attn_fwd_kernel[grid](
        q, k, v, o, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        H, T, S, K, V,
        scale * LOG2E,
        CAUSAL=causal,
        BLOCK_T=cfg["BLOCK_T"], BLOCK_S=cfg["BLOCK_S"], BLOCK_K=BLOCK_K, BLOCK_V=BLOCK_V,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return o, lse


def _backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    scale: float,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the three backward kernels on contiguous tensors; ``(dq, dk, dv)``.

    ``delta [B, H, T]`` on grid ``(cdiv(T, BLOCK_T), B * H)``; ``dk, dv`` on grid
    ``(cdiv(S, BLOCK_S), B * H)``, each program looping over query blocks; ``dq`` on grid
    ``(cdiv(T, BLOCK_T), B * H)``, each program looping over key blocks.
    """
    B, T, H, K = q.shape
    S, V = k.shape[1], v.shape[-1]
    BLOCK_K, BLOCK_V = _head_block(K), _head_block(V)
    cfg = launch_config("bwd", BLOCK_K, BLOCK_V, q.dtype, runtime.device_capability(q.device))
    dev = q.device
    delta = runtime.new_empty((B, H, T), dtype=torch.float32, device=dev)  # [B, H, T]
    _attn_bwd_delta_kernel[(triton.cdiv(T, cfg["BLOCK_T"]), B * H)](
        o, do, delta,
        o.stride(0), o.stride(1), o.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        H, T, V,
        BLOCK_T=cfg["BLOCK_T"], BLOCK_V=BLOCK_V,
    )  # fmt: skip
    dq = runtime.new_empty((B, T, H, K), dtype=q.dtype, device=dev)  # [B, T, H, K]
    dk = runtime.new_empty((B, S, H, K), dtype=k.dtype, device=dev)  # [B, S, H, K]
    dv = runtime.new_empty((B, S, H, V), dtype=v.dtype, device=dev)  # [B, S, H, V]
    common = dict(
        H=H, T=T, S=S, KD=K, VD=V, sm_scale=scale, qk_scale=scale * LOG2E, CAUSAL=causal,
        BLOCK_T=cfg["BLOCK_T"], BLOCK_S=cfg["BLOCK_S"], BLOCK_K=BLOCK_K, BLOCK_V=BLOCK_V,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    strides = (
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
    )  # fmt: skip
    _attn_bwd_dkivkernel[(triton.cdiv(S, cfg["BLOCK_S"]), B * H)](
        q, k, v, do, lse, delta, dk, dv, *strides, **common
    )
    _attn_bwd_dq_kernel[(triton.cdiv(T, cfg["BLOCK_T"]), B * H)](
        q, k, v, do, lse, delta, dq, *strides, **common
    )
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: Triton forward saves ``(q, k, v, o, lse)``; Triton backward."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                causal: bool) -> torch.Tensor:  # fmt: skip
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o, lse = _forward(q, k, v, scale, causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale, ctx.causal = scale, causal
        return o

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, o, lse = ctx.saved_tensors
        do = do.contiguous().to(q.dtype)
        dq, dk, dv = _backward(q, k, v, o, lse, do, ctx.scale, ctx.causal)
        return dq, dk, dv, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Softmax attention by a FlashAttention-2 style Triton kernel, differentiable.

    ``o = softmax(scale q k^T + mask) v`` computed tile by tile with the online softmax; the
    backward recomputes the probabilities from the stored log-sum-exp (see the module
    docstring for the equations).

    Args:
        q: ``[B, T, H, K]``; k: ``[B, S, H, K]``; v: ``[B, S, H, V]``; float32, float16 or
            bfloat16 (one dtype), on the GPU (compiled) or the CPU (interpreter). Head
            dimensions up to 256, any size (padded to a power of two inside).
        scale: default ``K ** -0.5``.
        causal: bottom-right mask, query ``i`` sees keys ``j <= i + S - T`` (a decode query
            sees the whole KV cache); needs ``T <= S``.

    Returns:
        ``o [B, T, H, V]`` in the input dtype (accumulated in float32).
    """
    dims = _check_triton_inputs(q, k, v, scale, causal)
    return FlashAttentionFunction.apply(q, k, v, default_scale(dims["K"], scale), bool(causal))


def flash_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    causal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel alone (no autograd): ``(o [B, T, H, V], lse [B, T, H])``.

    ``lse`` is float32, the natural log-sum-exp of each query's scaled scores, as
    ``numpy_ref.attention_lse`` gives it.
    """
    dims = _check_triton_inputs(q, k, v, scale, causal)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    with torch.no_grad():
        o, lse = _forward(q, k, v, default_scale(dims["K"], scale), bool(causal))
    return o, lse.transpose(1, 2)  # [B, T, H, V], [B, T, H]

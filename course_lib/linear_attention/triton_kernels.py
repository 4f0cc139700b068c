"""Chunkwise linear attention in Triton: forward and backward kernels, and a decode step.

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
CONFIG: dict[str, dict[str, int]] = {
    "state": {"BP": 64, "BR": 64, "num_warps": 4, "num_stages": 3},
    "output": {"BP": 64, "BR": 128, "num_warps": 8, "num_stages": 2},
    "decode": {"BK": 64, "BV": 64, "num_warps": 4},
}
CHUNK_SIZES = (16, 32, 64, 128)


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
        scale, C = ctx.scale, ctx.chunk_size
        dev = q.device
        do = do.to(q.dtype).contiguous()  # [B, T, H, V]
        if dfinal is not None:
            dfinal = dfinal.contiguous()
        dh = runtime.new_empty(h.shape, dtype=q.dtype, device=dev)  # [B, H, N, K, V]
        dS0 = (
            runtime.new_empty(h.shape[:2] + h.shape[3:], dtype=torch.float32, device=dev)
            if ctx.init_dtype is not None
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
            dS0 = dS0.to(ctx.init_dtype)
        return dq, dk, dv, dS0, None, None, None, None


def _check_tensors(**tensors: Any) -> None:
    """Torch tensors on one device (CUDA when the kernels are compiled); the first leads."""
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


def _state_on(x: Any, like: torch.Tensor) -> torch.Tensor | None:
    """A state component as a tensor on ``like``'s device (numpy arrays are converted:
    ``course_lib.testing.to_backend`` leaves the pair ``(S, z)`` as numpy)."""
    if x is None:
        return None
    return x.to(like.device) if torch.is_tensor(x) else torch.as_tensor(x, device=like.device)


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
        chunk_size: ``C`` in (16, 32, 64, 128).

    Returns:
        ``(o [B, T, H, V] in q's dtype, final_state)``, ``final_state`` = ``S_T`` or
        ``(S_T, z_T)`` in fp32, or None. Gradients flow to q, k, v and the initial state.
    """
    dims = validation.check_qkv(q, k, v)
    scale = validation.check_common(scale, None, normalize, output_final_state, dims["K"])
    chunk_size = checks.check_positive_int("chunk_size", chunk_size)
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"chunk_size must be one of {CHUNK_SIZES} for Triton, got {chunk_size}")
    S0, z0 = validation.split_state(initial_state, normalize, dims)
    _check_tensors(q=q, k=k, v=v)
    S0, z0 = _state_on(S0, q), _state_on(z0, q)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if not normalize:
        S0 = S0.contiguous() if S0 is not None else None
        o, final = _ChunkLinearAttention.apply(
            q, k, v, S0, scale, output_final_state, chunk_size, q.dtype
        )
        return o, final
    V = dims["V"]
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # [B, T, H, V + 1]
    S1 = None if S0 is None else torch.cat([S0, z0[..., None].to(S0.dtype)], -1)  # [.., V+1]
    o1, final = _ChunkLinearAttention.apply(
        q, k, v1, S1, scale, output_final_state, chunk_size, torch.float32
    )  # o1 [B, T, H, V + 1] fp32: numerator and denominator
    o = (o1[..., :V] / (o1[..., V:] + EPS)).to(q.dtype)
    return o, (None if final is None else (final[..., :V], final[..., V]))


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
    dims = validation.check_qkv(q, k, v)
    scale = validation.check_common(scale, feature_map, normalize, output_final_state, dims["K"])
    checks.check_positive_int("chunk_size", chunk_size)
    fq, fk = apply_feature_map(q, feature_map), apply_feature_map(k, feature_map)
    return chunk_linear_attention(
        fq, fk, v, scale, normalize, initial_state, output_final_state, chunk_size
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

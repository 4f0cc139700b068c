"""Gated linear attention in PyTorch: vectorised, differentiable (chapter 04).

Glossary of dimension letters:

* ``B`` batch, ``T`` sequence length, ``H`` heads,
* ``K`` key/query head dimension, ``V`` value head dimension,
* ``C`` chunk length, ``N`` number of chunks (``T`` padded up to ``N * C``).

Same functions, names and signatures as :mod:`course_lib.gated_linear_attention.numpy_ref`
(read its docstring for the equations and the table of gates). Inputs may be any float
dtype; the maths runs in at least float32 (float64 stays float64) and outputs come back in
the input dtype. States are returned in the accumulation dtype. Gradients flow to q, k, v,
the gates and the initial state.

Only the recurrent form loops over time steps; the chunkwise form computes every chunk's
intra-chunk part at once and loops only over chunks to carry the state.
"""

from __future__ import annotations

import torch

from course_lib import checks
from course_lib.gated_linear_attention.numpy_ref import check_gates, validate

__all__ = [
    "cumulative_log_gates",
    "decay_mask",
    "effective_attention",
    "gated_linear_attention_chunkwise",
    "gated_linear_attention_parallel",
    "gated_linear_attention_recurrent",
    "gated_linear_attention_step",
    "normalize_gates",
]


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 accumulate in float32."""
    return torch.promote_types(x.dtype, torch.float32)


def normalize_gates(
    gk: torch.Tensor | None,
    gv: torch.Tensor | None,
    B: int,
    T: int,
    H: int,
    K: int,
    V: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand any gate form to full log gates ``[B, T, H, K]`` and ``[B, T, H, V]``.

    ``None`` means log gate 0 (no decay); ``[H]`` repeats over batch and time; ``[B, T, H]``
    repeats over the key dimension. Expansion is a broadcast, so gradients sum back.
    """
    if gk is None:
        gk_full = torch.zeros(B, T, H, K, dtype=dtype, device=device)
    elif gk.dim() == 1:
        gk_full = gk.to(dtype)[None, None, :, None].expand(B, T, H, K)  # [B, T, H, K]
    elif gk.dim() == 3:
        gk_full = gk.to(dtype)[..., None].expand(B, T, H, K)  # [B, T, H, K]
    else:
        gk_full = gk.to(dtype)
    if gv is None:
        gv_full = torch.zeros(B, T, H, V, dtype=dtype, device=device)
    else:
        gv_full = gv.to(dtype)
    return gk_full, gv_full


def cumulative_log_gates(g: torch.Tensor) -> torch.Tensor:
    """``G_t = sum_{s<=t} g_s`` along the time axis (axis 1 of ``[B, T, ...]``)."""
    return torch.cumsum(g, dim=1)


def decay_mask(g_cumsum: torch.Tensor) -> torch.Tensor:
    """``D[..., i, j] = exp(G_i - G_j)`` for ``j <= i``, else 0; time on the last axis.

    ``[..., T] -> [..., T, T]``. The difference is masked to ``-inf`` before the
    exponential, so no positive exponent is ever evaluated (and no NaN gradient appears).
    """
    T = g_cumsum.shape[-1]
    diff = g_cumsum[..., :, None] - g_cumsum[..., None, :]  # [..., T, T]
    causal = torch.ones(T, T, dtype=torch.bool, device=g_cumsum.device).tril()
    return torch.exp(diff.masked_fill(~causal, float("-inf")))


def _prepare(q, k, v, gk, gv, scale, initial_state):
    B, T, H, K = q.shape
    V = v.shape[-1]
    acc = _acc_dtype(q)
    gk_full, gv_full = normalize_gates(gk, gv, B, T, H, K, V, acc, q.device)
    scale = K**-0.5 if scale is None else float(scale)
    if initial_state is None:
        S0 = torch.zeros(B, H, K, V, dtype=acc, device=q.device)
    else:
        S0 = initial_state.to(acc)
    return q.to(acc), k.to(acc), v.to(acc), gk_full, gv_full, scale, S0


def gated_linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``S_t = (exp(gk_t) exp(gv_t)^T) ⊙ S_{t-1} + k_t v_t^T``, ``o_t = scale S_t^T q_t``.

    A Python loop over T (the definition). q, k ``[B, T, H, K]``, v ``[B, T, H, V]``,
    initial_state ``[B, H, K, V]``; returns ``o [B, T, H, V]`` and the final state.
    """
    validate(q, k, v, gk, gv, scale, initial_state)
    dtype = v.dtype
    q, k, v, gk_full, gv_full, scale, S = _prepare(q, k, v, gk, gv, scale, initial_state)
    outs = []
    # step t's slices by unbind(1), not x[:, t]: the backward of an index writes a
    # gradient the size of all of x, at every step (T^2 work); unbind's stacks once
    steps = zip(*(x.unbind(1) for x in (q, k, v, gk_full, gv_full)), strict=True)
    for q_t, k_t, v_t, gk_t, gv_t in steps:
        G = torch.exp(gk_t[..., :, None] + gv_t[..., None, :])  # [B, H, K, V]
        S = G * S + torch.einsum("bhk,bhv->bhkv", k_t, v_t)
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q_t))
    o = torch.stack(outs, dim=1)  # [B, T, H, V]
    return o.to(dtype), (S if output_final_state else None)


def gated_linear_attention_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state: torch.Tensor,
    gk_t: torch.Tensor | None = None,
    gv_t: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step. q_t, k_t ``[B, H, K]``; v_t ``[B, H, V]``; state ``[B, H, K, V]``;
    gk_t ``[H]``, ``[B, H]`` or ``[B, H, K]``; gv_t ``[B, H, V]``. Returns ``o_t [B, H, V]``
    (input dtype) and the new state (accumulation dtype)."""
    dims = checks.check_shapes(
        q_t=(q_t, "B H K"), k_t=(k_t, "B H K"), v_t=(v_t, "B H V"), state=(state, "B H K V")
    )
    check_gates(dims, gk_t, gv_t, "gk_t", "gv_t")
    if scale is not None:
        checks.check_positive_float("scale", scale)
    B, H, K = q_t.shape
    V = v_t.shape[-1]
    acc = _acc_dtype(q_t)
    scale = K**-0.5 if scale is None else float(scale)
    gk_full, gv_full = normalize_gates(
        None if gk_t is None else gk_t if gk_t.dim() == 1 else gk_t[:, None],
        None if gv_t is None else gv_t[:, None],
        B,
        1,
        H,
        K,
        V,
        acc,
        q_t.device,
    )  # [B, 1, H, K], [B, 1, H, V]
    G = torch.exp(gk_full[:, 0, :, :, None] + gv_full[:, 0, :, None, :])  # [B, H, K, V]
    new_state = G * state.to(acc) + torch.einsum("bhk,bhv->bhkv", k_t.to(acc), v_t.to(acc))
    o_t = scale * torch.einsum("bhkv,bhk->bhv", new_state, q_t.to(acc))
    return o_t.to(v_t.dtype), new_state


def _final_state(k, v, Gk, Gv, S0):
    """State after the span whose cumulative gates are Gk ``[B, T, H, K]``, Gv."""
    kd = k * torch.exp(Gk[:, -1:] - Gk)  # [B, T, H, K], decayed to the last step
    vd = v * torch.exp(Gv[:, -1:] - Gv)  # [B, T, H, V]
    decay = torch.exp(Gk[:, -1, :, :, None] + Gv[:, -1, :, None, :])  # [B, H, K, V]
    return decay * S0 + torch.einsum("bthk,bthv->bhkv", kd, vd)


def _gated_scores(q, k, Gk, gk, pattern):
    """``sum_k q_ik k_jk exp(Gk_ik - Gk_jk)`` for j <= i, 0 above: ``[..., H, T, T]``.

    ``Gk [..., T, H, K]`` are cumulative log gates, time on the third axis from the end.
    When the gate is one number per head and step (``gk`` is None, ``[H]`` or
    ``[B, T, H]``) the decay does not depend on k and factors out of the sum: the mask is
    ``[..., H, T, T]`` (Mamba-2's structured mask) instead of ``[..., H, K, T, T]``.
    """
    if gk is None or gk.dim() in (1, 3):
        D = decay_mask(Gk[..., 0].transpose(-1, -2))  # [..., H, T, T]
        return torch.einsum(pattern, q, k) * D
    Dk = decay_mask(Gk.movedim(-3, -1))  # [..., H, K, T, T]
    lhs, out = pattern.split("->")
    return torch.einsum(f"{lhs},{out[:-2]}k{out[-2:]}->{out}", q, k, Dk)


def gated_linear_attention_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All pairs at once with the decay masks ``Dk [B, H, K, T, T]``, ``Dv [B, H, V, T, T]``.

    ``o_i = scale sum_{j<=i} [sum_k q_ik k_jk Dk_ijk] (v_j ⊙ Dv_ij) + scale (q_i ⊙
    exp(Gk_i))^T S_0 ⊙ exp(Gv_i)``. O(T^2 (K + V)) memory: for teaching and short T.
    """
    validate(q, k, v, gk, gv, scale, initial_state)
    dtype = v.dtype
    q, k, v, gk_full, gv_full, scale, S0 = _prepare(q, k, v, gk, gv, scale, initial_state)
    Gk = cumulative_log_gates(gk_full)  # [B, T, H, K]
    Gv = cumulative_log_gates(gv_full)  # [B, T, H, V]
    scores = _gated_scores(q, k, Gk, gk, "bihk,bjhk->bhij")  # [B, H, T, T]
    if gv is None:  # the value side has no decay: skip its all-ones mask
        o = scale * torch.einsum("bhij,bjhv->bihv", scores, v)
    else:
        Dv = decay_mask(Gv.permute(0, 2, 3, 1))  # [B, H, V, T, T]
        o = scale * torch.einsum("bhij,bjhv,bhvij->bihv", scores, v, Dv)  # [B, T, H, V]
    o = o + scale * torch.einsum("bihk,bhkv,bihv->bihv", q * torch.exp(Gk), S0, torch.exp(Gv))
    final = _final_state(k, v, Gk, Gv, S0) if output_final_state else None
    return o.to(dtype), final


def gated_linear_attention_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise form: all chunks' intra-chunk parts at once, a loop over chunks for S.

    T is padded with zero steps (log gate 0, k = v = q = 0) up to ``N * C``; they change
    neither the state nor the valid outputs. With ``b`` the log gates summed from each
    chunk's start (all exponents <= 0)::

        o_i   = scale [(q_i ⊙ exp(bk_i))^T S_n ⊙ exp(bv_i) + intra-chunk parallel form]
        S_n+1 = exp(bk_C) exp(bv_C)^T ⊙ S_n
              + sum_j (k_j ⊙ exp(bk_C - bk_j)) (v_j ⊙ exp(bv_C - bv_j))^T
    """
    validate(q, k, v, gk, gv, scale, initial_state)
    C = checks.check_positive_int("chunk_size", chunk_size)
    dtype = v.dtype
    B, T, H, _ = q.shape
    V = v.shape[-1]
    q, k, v, gk_full, gv_full, scale, S = _prepare(q, k, v, gk, gv, scale, initial_state)
    N = -(-T // C)
    pad = N * C - T

    def chunks(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [B, N, C, H, D]
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        return x.reshape(B, N, C, H, x.shape[-1])

    qc, kc, vc = chunks(q), chunks(k), chunks(v)
    bk = torch.cumsum(chunks(gk_full), dim=2)  # [B, N, C, H, K], from each chunk's start
    bv = torch.cumsum(chunks(gv_full), dim=2)  # [B, N, C, H, V]
    # intra-chunk parallel form, every chunk at once
    scores = _gated_scores(qc, kc, bk, gk, "bnihk,bnjhk->bnhij")  # [B, N, H, C, C]
    if gv is None:
        o_intra = torch.einsum("bnhij,bnjhv->bnihv", scores, vc)  # [B, N, C, H, V]
    else:
        Dv = decay_mask(bv.permute(0, 1, 3, 4, 2))  # [B, N, H, V, C, C]
        o_intra = torch.einsum("bnhij,bnjhv,bnhvij->bnihv", scores, vc, Dv)
    # what each chunk writes into the state, decayed to the chunk's end
    total_k, total_v = bk[:, :, -1], bv[:, :, -1]  # [B, N, H, K], [B, N, H, V]
    kd = kc * torch.exp(total_k[:, :, None] - bk)  # [B, N, C, H, K]
    vd = vc * torch.exp(total_v[:, :, None] - bv)  # [B, N, C, H, V]
    writes = torch.einsum("bnjhk,bnjhv->bnhkv", kd, vd)  # [B, N, H, K, V]
    decay = torch.exp(total_k[..., :, None] + total_v[..., None, :])  # [B, N, H, K, V]
    # the only loop: carry the state from chunk to chunk. unbind, not decay[:, n]: the
    # backward of an index allocates a gradient the size of the whole tensor at every
    # step (N^2 work over the loop); unbind's backward stacks the N pieces once.
    states = []
    for decay_n, writes_n in zip(decay.unbind(1), writes.unbind(1), strict=True):
        states.append(S)
        S = decay_n * S + writes_n  # [B, H, K, V]
    S_before = torch.stack(states, dim=1)  # [B, N, H, K, V]
    o_inter = torch.einsum("bnihk,bnhkv,bnihv->bnihv", qc * torch.exp(bk), S_before, torch.exp(bv))
    o = scale * (o_inter + o_intra)  # [B, N, C, H, V]
    o = o.reshape(B, N * C, H, V)[:, :T]  # [B, T, H, V]
    return o.to(dtype), (S if output_final_state else None)


def effective_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    gk: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """``A [B, H, T, T]`` with ``A_ij = scale sum_k q_ik k_jk exp(Gk_ik - Gk_jk)``, j <= i."""
    dims = checks.check_shapes(q=(q, "B T H K"), k=(k, "B T H K"))
    check_gates(dict(dims, V=1), gk, None)
    if scale is not None:
        checks.check_positive_float("scale", scale)
    B, T, H, K = q.shape
    acc = _acc_dtype(q)
    gk_full, _ = normalize_gates(gk, None, B, T, H, K, 1, acc, q.device)
    scale = K**-0.5 if scale is None else float(scale)
    Dk = decay_mask(cumulative_log_gates(gk_full).permute(0, 2, 3, 1))  # [B, H, K, T, T]
    A = scale * torch.einsum("bihk,bjhk,bhkij->bhij", q.to(acc), k.to(acc), Dk)
    return A.to(q.dtype)

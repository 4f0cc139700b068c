"""Softmax attention in PyTorch: vectorised, differentiable, any float dtype.

Glossary of dimension letters
-----------------------------
B  batch size
T  number of queries (the length of ``q``)
S  number of keys and values (the KV cache at decode time)
H  number of heads
K  head dimension of queries and keys
V  head dimension of values

Same functions, names and signatures as :mod:`course_lib.softmax_attention.numpy_ref`
(read that module for the equations). Inputs of any float dtype are computed with float32
accumulation (float64 stays float64) and the result is returned in the input dtype.
Gradients come from autograd. The causal mask is aligned bottom-right: query ``i`` sees
keys ``j <= i + S - T``, so a decode query (``T == 1``) sees the whole KV cache.
"""

from __future__ import annotations

import torch

from course_lib import checks
from course_lib.softmax_attention.numpy_ref import check_attention_inputs, default_scale


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; fp32, fp16 and bf16 accumulate in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def causal_mask(T: int, S: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[T, S]`` booleans, True where query ``i`` may see key ``j``: ``j <= i + S - T``."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    return j <= i + (S - T)  # [T, S]


def softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Numerically stable softmax along ``axis``: ``exp(x - max x) / sum exp(x - max x)``.

    Written out (rather than ``torch.softmax``) to show the max subtraction; computed in
    float32 (float64 for float64 input), returned in the input dtype.
    """
    checks.check_array("x", x)
    xf = x.to(_acc_dtype(x))
    m = xf.amax(dim=axis, keepdim=True).detach()  # any shift gives the same softmax
    e = torch.exp(xf - m)
    return (e / e.sum(dim=axis, keepdim=True)).to(x.dtype)


def attention_scores(
    q: torch.Tensor, k: torch.Tensor, scale: float | None = None, causal: bool = True
) -> torch.Tensor:
    """Scaled, masked scores ``s [B, H, T, S]`` in the accumulation dtype; masked = ``-inf``."""
    checks.check_shapes(q=(q, "B T H K"), k=(k, "B S H K"))
    acc = _acc_dtype(q)
    T, S = q.shape[1], k.shape[1]
    scale = default_scale(q.shape[-1], scale)
    s = torch.einsum("bthk,bshk->bhts", q.to(acc), k.to(acc)) * scale  # [B, H, T, S]
    if causal:
        s = s.masked_fill(~causal_mask(T, S, q.device), float("-inf"))
    return s


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """``o = softmax(scale q k^T + mask) v`` with the full ``[T, S]`` score matrix.

    Args:
        q: ``[B, T, H, K]``; k: ``[B, S, H, K]``; v: ``[B, S, H, V]``, one float dtype.
        scale: default ``K ** -0.5``.
        causal: bottom-right mask (query ``i`` sees ``j <= i + S - T``); needs ``T <= S``.

    Returns:
        ``o [B, T, H, V]`` in the dtype of ``q``.
    """
    check_attention_inputs(q, k, v, scale, causal)
    p = softmax(attention_scores(q, k, scale, causal), axis=-1)  # [B, H, T, S]
    o = torch.einsum("bhts,bshv->bthv", p, v.to(p.dtype))  # [B, T, H, V]
    return o.to(q.dtype)


def attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """``lse [B, T, H]``, ``lse_i = log sum_j exp(s_ij)``, in the accumulation dtype."""
    check_attention_inputs(q, k, k, scale, causal)  # k stands in for v: only its shape
    s = attention_scores(q, k, scale, causal)  # [B, H, T, S]
    return torch.logsumexp(s, dim=-1).transpose(1, 2)  # [B, T, H]


def online_softmax_merge(
    m1: torch.Tensor,
    l1: torch.Tensor,
    acc1: torch.Tensor,
    m2: torch.Tensor,
    l2: torch.Tensor,
    acc2: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge partial softmax results ``(m [...], l [...], acc [..., V])`` of two key sets.

    ``m = max(m1, m2)``; ``l = exp(m1 - m) l1 + exp(m2 - m) l2``;
    ``acc = exp(m1 - m) acc1 + exp(m2 - m) acc2``. An empty set is ``(-inf, 0, 0)``.
    """
    m = torch.maximum(m1, m2)  # [...]
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # both sets empty
    alpha1 = torch.exp(m1 - m_safe)  # rescale of the old part
    alpha2 = torch.exp(m2 - m_safe)  # rescale of the new part
    l = alpha1 * l1 + alpha2 * l2
    acc = alpha1[..., None] * acc1 + alpha2[..., None] * acc2  # [..., V]
    return m, l, acc


def _tile_partial(
    s: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(m, l, acc)`` of one tile of scores ``s [B, H, t, s]`` and values ``v [B, s, H, V]``."""
    m = s.amax(dim=-1).detach()  # [B, H, t]; a shift, so no gradient is needed through it
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # fully masked row
    p = torch.exp(s - m_safe[..., None])  # [B, H, t, s]
    l = p.sum(dim=-1)  # [B, H, t]
    acc = torch.einsum("bhts,bshv->bhtv", p, v)  # [B, H, t, V]
    return m, l, acc


def _tiled_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None,
    causal: bool,
    block_q: int,
    block_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o [B, T, H, V], lse [B, T, H])`` in the accumulation dtype; inputs checked."""
    acc_dtype = _acc_dtype(q)
    q, k, v = (x.to(acc_dtype) for x in (q, k, v))
    B, T, H, K = q.shape
    S, V = k.shape[1], v.shape[-1]
    scale = default_scale(K, scale)
    mask = causal_mask(T, S, q.device) if causal else None  # [T, S]
    outs, lses = [], []
    for t0 in range(0, T, block_q):
        t1 = min(t0 + block_q, T)
        q_blk = q[:, t0:t1]  # [B, t, H, K]
        m = q.new_full((B, H, t1 - t0), float("-inf"))  # empty set of keys
        l = q.new_zeros((B, H, t1 - t0))
        acc = q.new_zeros((B, H, t1 - t0, V))
        s_end = min(S, t1 + S - T) if causal else S  # skip key blocks in the future
        for s0 in range(0, s_end, block_k):
            s1 = min(s0 + block_k, S)
            s_tile = torch.einsum("bthk,bshk->bhts", q_blk, k[:, s0:s1]) * scale  # [B, H, t, s]
            if mask is not None:
                s_tile = s_tile.masked_fill(~mask[t0:t1, s0:s1], float("-inf"))
            m_new, l_new, acc_new = _tile_partial(s_tile, v[:, s0:s1])
            m, l, acc = online_softmax_merge(m, l, acc, m_new, l_new, acc_new)
        outs.append(acc / l[..., None])  # [B, H, t, V]
        lses.append(m + torch.log(l))  # [B, H, t]
    o = torch.cat(outs, dim=2).transpose(1, 2)  # [B, T, H, V]
    lse = torch.cat(lses, dim=2).transpose(1, 2)  # [B, T, H]
    return o, lse


def softmax_attention_tiled(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    causal: bool = True,
    block_q: int = 16,
    block_k: int = 16,
) -> torch.Tensor:
    """Softmax attention by tiles with the online softmax (FlashAttention's forward).

    The Python loops over query and key blocks are the definition of this form; inside a
    tile everything is vectorised. Gradients flow through the loop by autograd (which does
    keep every tile, unlike FlashAttention's recomputing backward). Same arguments and
    result as :func:`softmax_attention`, ``o [B, T, H, V]`` in the input dtype.
    """
    check_attention_inputs(q, k, v, scale, causal)
    block_q = checks.check_positive_int("block_q", block_q)
    block_k = checks.check_positive_int("block_k", block_k)
    o, _ = _tiled_forward(q, k, v, scale, causal, block_q, block_k)
    return o.to(q.dtype)


def softmax_attention_tiled_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    causal: bool = True,
    block_q: int = 16,
    block_k: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`softmax_attention_tiled`, also returning ``lse [B, T, H]`` (accumulation
    dtype)."""
    check_attention_inputs(q, k, v, scale, causal)
    block_q = checks.check_positive_int("block_q", block_q)
    block_k = checks.check_positive_int("block_k", block_k)
    o, lse = _tiled_forward(q, k, v, scale, causal, block_q, block_k)
    return o.to(q.dtype), lse

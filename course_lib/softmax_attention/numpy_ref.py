"""Softmax attention in float64 numpy: the ground truth of chapter 01.

Glossary of dimension letters
-----------------------------
B  batch size
T  number of queries (the length of ``q``)
S  number of keys and values (the length of ``k`` and ``v``; the KV cache at decode time)
H  number of heads
K  head dimension of queries and keys
V  head dimension of values

Layout (as in fla): ``q [B, T, H, K]``, ``k [B, S, H, K]``, ``v [B, S, H, V]`` and the output
``o [B, T, H, V]``.

Scaled dot-product attention (Vaswani et al. 2017) for one head::

    s_ij = scale * q_i . k_j                    scale = K ** -0.5 by default
    p_ij = exp(s_ij - lse_i)                    lse_i = log sum_j exp(s_ij)   (softmax over j)
    o_i  = sum_j p_ij v_j

Causal mask, aligned bottom-right: query ``i`` sees key ``j`` when ``j <= i + S - T``. With
``S == T`` this is the usual ``j <= i``; a decode step (``T == 1``) against a KV cache of
length ``S`` sees all ``S`` keys, and a block of ``T`` new queries appended after ``S - T``
cached tokens sees the cache plus the new tokens up to itself. With ``causal=True`` every
query must see at least one key, so ``T <= S`` is required.

Two forms, one answer:

* :func:`softmax_attention` materialises the ``[T, S]`` score matrix per head:
  O(T S K) time and O(T S) memory.
* :func:`softmax_attention_tiled` never holds more than a ``[block_q, block_k]`` tile of
  scores. It keeps, per query, a running maximum ``m``, a running sum ``l`` and an
  unnormalised output ``acc``, and merges each new tile with :func:`online_softmax_merge`
  (the online softmax of Milakov and Gimelshein 2018, as used by FlashAttention, Dao et al.
  2022): O(T S K) time, O(T) extra memory.

:func:`softmax_attention_backward` gives the gradients in closed form (Dao 2023,
FlashAttention-2), the reference for the Triton backward kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib import checks


def check_attention_inputs(
    q: Any, k: Any, v: Any, scale: Any = None, causal: Any = True
) -> dict[str, int]:
    """Validate ``q [B, T, H, K]``, ``k [B, S, H, K]``, ``v [B, S, H, V]``, scale, causal.

    Shared by the numpy, torch and Triton entry points (it accepts arrays and tensors), so
    that each backend rejects the same bad input with the same message. Returns the sizes.
    """
    dims = checks.check_shapes(q=(q, "B T H K"), k=(k, "B S H K"), v=(v, "B S H V"))
    checks.check_same_dtype(q=q, k=k, v=v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if 0 in tuple(x.shape):
            raise ValueError(f"{name} must not have an empty dimension, got shape {tuple(x.shape)}")
    if scale is not None:
        checks.check_positive_float("scale", scale)
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal and dims["T"] > dims["S"]:
        raise ValueError(
            f"with causal=True every query needs a key: q's length T={dims['T']} must not "
            f"exceed k's length S={dims['S']} (the mask is aligned bottom-right)"
        )
    return dims


def default_scale(K: int, scale: float | None) -> float:
    """``scale`` if given, else ``K ** -0.5`` (keeps the variance of ``q . k`` near one)."""
    return float(K) ** -0.5 if scale is None else float(scale)


def causal_mask(T: int, S: int) -> np.ndarray:
    """``[T, S]`` booleans, True where query ``i`` may see key ``j``: ``j <= i + S - T``."""
    i = np.arange(T)[:, None]
    j = np.arange(S)[None, :]
    return j <= i + (S - T)  # [T, S]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``.

    ``softmax(x)_j = exp(x_j - max(x)) / sum_i exp(x_i - max(x))``: subtracting the maximum
    changes nothing mathematically but keeps every ``exp`` in ``(0, 1]``, so logits of 1e4
    do not overflow. Entries equal to ``-inf`` (masked) get probability zero; each slice
    along ``axis`` needs at least one finite entry.
    """
    checks.check_array("x", x)
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def attention_scores(
    q: np.ndarray, k: np.ndarray, scale: float | None = None, causal: bool = True
) -> np.ndarray:
    """Scaled, masked scores ``s [B, H, T, S]``; masked entries are ``-inf``."""
    checks.check_shapes(q=(q, "B T H K"), k=(k, "B S H K"))
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    T, S = q.shape[1], k.shape[1]
    s = np.einsum("bthk,bshk->bhts", q, k) * default_scale(q.shape[-1], scale)  # [B, H, T, S]
    if causal:
        s = np.where(causal_mask(T, S), s, -np.inf)
    return s


def softmax_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float | None = None,
    causal: bool = True,
) -> np.ndarray:
    """Softmax attention with the full score matrix: ``o = softmax(scale q k^T + mask) v``.

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, S, H, K]``.
        v: values ``[B, S, H, V]``.
        scale: score scale, default ``K ** -0.5``.
        causal: mask aligned bottom-right, query ``i`` sees keys ``j <= i + S - T`` (a
            decode query, ``T == 1``, sees the whole KV cache). Needs ``T <= S``.

    Returns:
        ``o [B, T, H, V]`` in float64.
    """
    check_attention_inputs(q, k, v, scale, causal)
    s = attention_scores(q, k, scale, causal)  # [B, H, T, S]
    p = softmax(s, axis=-1)  # [B, H, T, S]
    v = np.asarray(v, dtype=np.float64)
    return np.einsum("bhts,bshv->bthv", p, v)  # [B, T, H, V]


def attention_lse(
    q: np.ndarray,
    k: np.ndarray,
    scale: float | None = None,
    causal: bool = True,
) -> np.ndarray:
    """Log-sum-exp of each query's scores, ``lse [B, T, H]``: ``lse_i = log sum_j exp(s_ij)``.

    With it, ``p_ij = exp(s_ij - lse_i)`` is recomputed from ``q`` and ``k`` alone: the
    backward pass of FlashAttention stores ``lse`` instead of the ``[T, S]`` matrix ``p``.
    """
    check_attention_inputs(q, k, k, scale, causal)  # k stands in for v: only its shape
    s = attention_scores(q, k, scale, causal)  # [B, H, T, S]
    m = np.max(s, axis=-1, keepdims=True)  # [B, H, T, 1]
    lse = m[..., 0] + np.log(np.sum(np.exp(s - m), axis=-1))  # [B, H, T]
    return lse.transpose(0, 2, 1)  # [B, T, H]


def online_softmax_merge(
    m1: np.ndarray,
    l1: np.ndarray,
    acc1: np.ndarray,
    m2: np.ndarray,
    l2: np.ndarray,
    acc2: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge two partial softmax results over disjoint sets of keys.

    A partial result over a set of keys ``J`` is ``(m, l, acc)`` with::

        m   = max_{j in J} s_j                        running maximum      [...]
        l   = sum_{j in J} exp(s_j - m)               running sum          [...]
        acc = sum_{j in J} exp(s_j - m) v_j           unnormalised output  [..., V]

    For the union of two sets, put both on the common maximum ``m = max(m1, m2)``: each
    term was computed relative to its own maximum, so it is rescaled by ``exp(m_i - m)``::

        l   = exp(m1 - m) l1   + exp(m2 - m) l2
        acc = exp(m1 - m) acc1 + exp(m2 - m) acc2

    and at the end ``o = acc / l`` and ``lse = m + log(l)``. An empty set is
    ``(-inf, 0, 0)``; the merge treats it correctly (its weight is ``exp(-inf) = 0``).
    """
    m = np.maximum(m1, m2)  # [...]
    m_safe = np.where(np.isfinite(m), m, 0.0)  # both empty: any finite shift works
    alpha1 = np.exp(m1 - m_safe)  # rescale of the old part, [...]
    alpha2 = np.exp(m2 - m_safe)  # rescale of the new part, [...]
    l = alpha1 * l1 + alpha2 * l2
    acc = alpha1[..., None] * acc1 + alpha2[..., None] * acc2  # [..., V]
    return m, l, acc


def _tile_partial(s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The partial result ``(m, l, acc)`` of one tile of scores ``s [B, H, t, s]``."""
    m = np.max(s, axis=-1)  # [B, H, t]
    m_safe = np.where(np.isfinite(m), m, 0.0)  # a row with every key masked
    p = np.exp(s - m_safe[..., None])  # [B, H, t, s], masked entries give 0
    l = np.sum(p, axis=-1)  # [B, H, t]
    acc = np.einsum("bhts,bshv->bhtv", p, v)  # [B, H, t, V]
    return m, l, acc


def _tiled_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float | None,
    causal: bool,
    block_q: int,
    block_k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(o [B, T, H, V], lse [B, T, H])`` by tiles; inputs already checked."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    B, T, H, K = q.shape
    S, V = k.shape[1], v.shape[-1]
    scale = default_scale(K, scale)
    o = np.zeros((B, H, T, V))
    lse = np.zeros((B, H, T))
    for t0 in range(0, T, block_q):
        t1 = min(t0 + block_q, T)
        q_blk = q[:, t0:t1]  # [B, t, H, K]
        # The state of an empty set of keys: m = -inf, l = 0, acc = 0.
        m = np.full((B, H, t1 - t0), -np.inf)
        l = np.zeros((B, H, t1 - t0))
        acc = np.zeros((B, H, t1 - t0, V))
        # Causal: the last query of this block sees keys up to (t1 - 1) + S - T; later key
        # blocks are entirely in its future and are skipped.
        s_end = min(S, t1 + S - T) if causal else S
        for s0 in range(0, s_end, block_k):
            s1 = min(s0 + block_k, S)
            s_tile = np.einsum("bthk,bshk->bhts", q_blk, k[:, s0:s1]) * scale  # [B, H, t, s]
            if causal:
                visible = causal_mask(T, S)[t0:t1, s0:s1]  # [t, s]
                s_tile = np.where(visible, s_tile, -np.inf)
            m_new, l_new, acc_new = _tile_partial(s_tile, v[:, s0:s1])
            m, l, acc = online_softmax_merge(m, l, acc, m_new, l_new, acc_new)
        o[:, :, t0:t1] = acc / l[..., None]  # normalise once, at the end
        lse[:, :, t0:t1] = m + np.log(l)
    return o.transpose(0, 2, 1, 3), lse.transpose(0, 2, 1)  # [B, T, H, V], [B, T, H]


def softmax_attention_tiled(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float | None = None,
    causal: bool = True,
    block_q: int = 16,
    block_k: int = 16,
) -> np.ndarray:
    """Softmax attention by tiles with the online softmax (FlashAttention's forward).

    For each block of ``block_q`` queries, walk over blocks of ``block_k`` keys and fold
    each tile of scores into a running ``(m, l, acc)`` with :func:`online_softmax_merge`;
    divide by ``l`` once at the end. Only a ``[block_q, block_k]`` tile of scores exists at
    any time. Same arguments and result as :func:`softmax_attention`; ``o [B, T, H, V]``.
    """
    check_attention_inputs(q, k, v, scale, causal)
    block_q = checks.check_positive_int("block_q", block_q)
    block_k = checks.check_positive_int("block_k", block_k)
    o, _ = _tiled_forward(q, k, v, scale, causal, block_q, block_k)
    return o


def softmax_attention_tiled_lse(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float | None = None,
    causal: bool = True,
    block_q: int = 16,
    block_k: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`softmax_attention_tiled`, also returning ``lse [B, T, H]`` (= m + log l)."""
    check_attention_inputs(q, k, v, scale, causal)
    block_q = checks.check_positive_int("block_q", block_q)
    block_k = checks.check_positive_int("block_k", block_k)
    return _tiled_forward(q, k, v, scale, causal, block_q, block_k)


def softmax_attention_backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    do: np.ndarray,
    scale: float | None = None,
    causal: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients ``(dq, dk, dv)`` of ``sum(o * do)`` in closed form (float64).

    Per head, with ``P = softmax(S)`` and ``S = scale Q K^T`` (masked)::

        dV = P^T dO                              [S, V]
        dP = dO V^T                              [T, S]
        dS = P * (dP - delta),  delta_i = sum_j P_ij dP_ij = dO_i . O_i     [T, S]
        dQ = scale dS K                          [T, K]
        dK = scale dS^T Q                        [S, K]

    ``delta = rowsum(dO * O)`` is FlashAttention-2's preprocessing step (Dao 2023): it needs
    only ``O`` and ``dO``, never the ``[T, S]`` matrix.

    Args:
        q, k, v: as in :func:`softmax_attention`.
        do: the gradient of the loss with respect to ``o``, ``[B, T, H, V]``.
    """
    dims = check_attention_inputs(q, k, v, scale, causal)
    checks.check_shapes(dims, do=(do, "B T H V"))
    q, k, v, do = (np.asarray(x, dtype=np.float64) for x in (q, k, v, do))
    scale = default_scale(q.shape[-1], scale)
    p = softmax(attention_scores(q, k, scale, causal), axis=-1)  # [B, H, T, S]
    o = np.einsum("bhts,bshv->bthv", p, v)  # [B, T, H, V]
    dv = np.einsum("bhts,bthv->bshv", p, do)  # [B, S, H, V]
    dp = np.einsum("bthv,bshv->bhts", do, v)  # [B, H, T, S]
    delta = np.einsum("bthv,bthv->bht", do, o)  # [B, H, T]
    ds = p * (dp - delta[..., None])  # [B, H, T, S]
    dq = scale * np.einsum("bhts,bshk->bthk", ds, k)  # [B, T, H, K]
    dk = scale * np.einsum("bhts,bthk->bshk", ds, q)  # [B, S, H, K]
    return dq, dk, dv

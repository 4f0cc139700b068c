"""Linear attention in PyTorch: vectorised, differentiable, any float dtype.

Glossary of dimension letters
-----------------------------
B  batch size
T  sequence length
H  number of heads
K  head dimension of queries and keys; after a feature map, the feature dimension
V  head dimension of values
N  number of chunks, ``ceil(T / C)``
C  chunk length of the chunkwise form

Same functions, signatures, equations and checks as :mod:`.numpy_ref` (read its docstring
for the maths; Katharopoulos et al. 2020). Inputs of any float dtype are computed in at
least float32 (float64 stays float64); the output ``o`` comes back in the input dtype, the
state ``S`` (and ``z``) in the accumulation dtype (float32, or float64 for float64 input).
Only :func:`linear_attention_recurrent` loops over time, because it is the recurrence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from course_lib import checks
from course_lib.linear_attention import validation
from course_lib.linear_attention.feature_maps import apply_feature_map

EPS = 1e-10  # added to the normaliser's denominator, as in numpy_ref

FeatureMap = str | Callable[[Any], Any] | None


@dataclass
class _Prepared:
    q: torch.Tensor  # scale * phi(q), [B, T, H, K], accumulation dtype
    k: torch.Tensor  # phi(k), [B, T, H, K]
    v: torch.Tensor  # [B, T, H, V]
    S0: torch.Tensor  # [B, H, K, V]
    z0: torch.Tensor  # [B, H, K]
    dtype: torch.dtype  # the input dtype, for the output


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16/float32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def _state_tensor(x: Any, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A state component as a tensor on ``like``'s device in ``dtype``.

    numpy arrays are accepted here because ``course_lib.testing.to_backend`` converts only
    top-level arrays, not the pair ``(S, z)`` of the normalised case.
    """
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x, device=like.device)
    return x.to(device=like.device, dtype=dtype)


def _prepare(
    q: Any,
    k: Any,
    v: Any,
    scale: Any,
    feature_map: FeatureMap,
    normalize: Any,
    initial_state: Any,
    output_final_state: Any,
) -> _Prepared:
    """Validate, apply the feature map and the scale, and unpack the initial state."""
    dims = validation.check_qkv(q, k, v)
    scale = validation.check_common(scale, feature_map, normalize, output_final_state, dims["K"])
    acc = acc_dtype(q.dtype)
    fq = apply_feature_map(q.to(acc), feature_map)
    fk = apply_feature_map(k.to(acc), feature_map)
    dims = validation.check_feature_dims(fq, fk, dims)
    S0, z0 = validation.split_state(initial_state, normalize, dims)
    B, H, Fd, V = dims["B"], dims["H"], dims["K"], dims["V"]
    S0 = q.new_zeros((B, H, Fd, V), dtype=acc) if S0 is None else _state_tensor(S0, q, acc)
    z0 = q.new_zeros((B, H, Fd), dtype=acc) if z0 is None else _state_tensor(z0, q, acc)
    return _Prepared(fq * scale, fk, v.to(acc), S0, z0, q.dtype)


def _final(S: torch.Tensor, z: torch.Tensor, normalize: bool, wanted: bool) -> Any:
    if not wanted:
        return None
    return (S, z) if normalize else S


def linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    feature_map: FeatureMap = None,
    normalize: bool = False,
    initial_state: Any = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, Any]:
    """``S_t = S_{t-1} + phi(k_t) v_t^T``, ``o_t = S_t^T q~_t``, a Python loop over ``t``.

    Shapes and arguments as :func:`course_lib.linear_attention.numpy_ref.
    linear_attention_recurrent`. Slow (T small kernels) but the plainest statement.
    """
    p = _prepare(q, k, v, scale, feature_map, normalize, initial_state, output_final_state)
    S, z = p.S0, p.z0
    outs = []
    # step t's slices by unbind(1), not x[:, t]: the backward of an index writes a
    # gradient the size of all of x, at every step (T^2 work); unbind's stacks once
    for q_t, k_t, v_t in zip(p.q.unbind(1), p.k.unbind(1), p.v.unbind(1), strict=True):
        S = S + torch.einsum("bhk,bhv->bhkv", k_t, v_t)  # [B, H, K, V]
        z = z + k_t  # [B, H, K]
        o_t = torch.einsum("bhkv,bhk->bhv", S, q_t)  # [B, H, V]
        if normalize:
            o_t = o_t / (torch.einsum("bhk,bhk->bh", z, q_t)[..., None] + EPS)
        outs.append(o_t)
    o = torch.stack(outs, dim=1)  # [B, T, H, V]
    return o.to(p.dtype), _final(S, z, normalize, output_final_state)


def linear_attention_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    feature_map: FeatureMap = None,
    normalize: bool = False,
    initial_state: Any = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, Any]:
    """``O = (Q~ K^T ⊙ M) V + Q~ S_0`` with the causal mask ``M[t, s] = [s <= t]``."""
    p = _prepare(q, k, v, scale, feature_map, normalize, initial_state, output_final_state)
    T = p.q.shape[1]
    mask = torch.ones(T, T, dtype=torch.bool, device=p.q.device).tril()  # [T, T]
    A = torch.einsum("bthk,bshk->bhts", p.q, p.k).masked_fill(~mask, 0)  # [B, H, T, T]
    o = torch.einsum("bhts,bshv->bthv", A, p.v) + torch.einsum("bthk,bhkv->bthv", p.q, p.S0)
    if normalize:
        den = A.sum(-1).transpose(1, 2) + torch.einsum("bthk,bhk->bth", p.q, p.z0)  # [B, T, H]
        o = o / (den[..., None] + EPS)
    S = p.S0 + torch.einsum("bthk,bthv->bhkv", p.k, p.v)  # [B, H, K, V]
    z = p.z0 + p.k.sum(1)  # [B, H, K]
    return o.to(p.dtype), _final(S, z, normalize, output_final_state)


def linear_attention_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    feature_map: FeatureMap = None,
    normalize: bool = False,
    initial_state: Any = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, Any]:
    """Chunkwise form, every chunk at once (no loop over chunks).

    Pad ``T`` to ``N * C`` with zeros (zero keys and values add nothing to the state), then::

        U_n   = K_n^T V_n                         per-chunk state increments  [B, N, H, K, V]
        S_n   = S_0 + sum_{m < n} U_m             state entering chunk n (exclusive cumsum)
        O_n   = Q~_n S_n + (Q~_n K_n^T ⊙ M) V_n   inter-chunk + intra-chunk

    and the same with ``V = 1`` for the normaliser. ``chunk_size`` is ``C``.
    """
    chunk_size = checks.check_positive_int("chunk_size", chunk_size)
    p = _prepare(q, k, v, scale, feature_map, normalize, initial_state, output_final_state)
    B, T, H, _ = p.q.shape
    C = max(1, min(chunk_size, T))
    N = -(-T // C)
    pad = N * C - T

    def chunks(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [B, N, C, H, D]
        return F.pad(x, (0, 0, 0, 0, 0, pad)).reshape(B, N, C, H, x.shape[-1])

    qc, kc, vc = chunks(p.q), chunks(p.k), chunks(p.v)
    U = torch.einsum("bnchk,bnchv->bnhkv", kc, vc)  # [B, N, H, K, V]
    S_in = p.S0[:, None] + U.cumsum(1) - U  # [B, N, H, K, V], state entering each chunk
    mask = torch.ones(C, C, dtype=torch.bool, device=p.q.device).tril()  # [C, C]
    A = torch.einsum("bnthk,bnshk->bnhts", qc, kc).masked_fill(~mask, 0)  # [B, N, H, C, C]
    o = torch.einsum("bnthk,bnhkv->bnthv", qc, S_in) + torch.einsum("bnhts,bnshv->bnthv", A, vc)
    if normalize:
        u = kc.sum(2)  # [B, N, H, K]
        z_in = p.z0[:, None] + u.cumsum(1) - u  # [B, N, H, K]
        den = torch.einsum("bnthk,bnhk->bnth", qc, z_in) + A.sum(-1).transpose(2, 3)
        o = o / (den[..., None] + EPS)  # [B, N, C, H, V]
    o = o.reshape(B, N * C, H, -1)[:, :T]  # [B, T, H, V]
    S = p.S0 + U.sum(1)  # [B, H, K, V]
    z = p.z0 + p.k.sum(1)  # [B, H, K]
    return o.to(p.dtype), _final(S, z, normalize, output_final_state)


def linear_attention_noncausal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    feature_map: FeatureMap = None,
    normalize: bool = False,
) -> torch.Tensor:
    """``O = Q~ (phi(K)^T V)``: one ``[K, V]`` matrix per head, O(T K V)."""
    p = _prepare(q, k, v, scale, feature_map, normalize, None, False)
    kv = torch.einsum("bshk,bshv->bhkv", p.k, p.v)  # [B, H, K, V]
    o = torch.einsum("bthk,bhkv->bthv", p.q, kv)  # [B, T, H, V]
    if normalize:
        den = torch.einsum("bthk,bhk->bth", p.q, p.k.sum(1))  # [B, T, H]
        o = o / (den[..., None] + EPS)
    return o.to(p.dtype)


def linear_attention_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state: Any = None,
    scale: float | None = None,
    feature_map: FeatureMap = None,
    normalize: bool = False,
) -> tuple[torch.Tensor, Any]:
    """One decoding step: ``S <- S + phi(k_t) v_t^T``, ``o_t = S^T q~_t``.

    ``q_t, k_t [B, H, K]``, ``v_t [B, H, V]``, ``state`` ``S [B, H, K, V]`` or ``(S, z)``
    (None: zeros). Returns ``(o_t [B, H, V], new_state)``.
    """
    dims = validation.check_token(q_t, k_t, v_t)
    scale = validation.check_common(scale, feature_map, normalize, False, dims["K"])
    acc = acc_dtype(q_t.dtype)
    fq = apply_feature_map(q_t.to(acc), feature_map) * scale  # [B, H, K]
    fk = apply_feature_map(k_t.to(acc), feature_map)  # [B, H, K]
    dims = validation.check_feature_dims(fq, fk, dims)
    S, z = validation.split_state(state, normalize, dims, name="state")
    B, H, Fd, V = dims["B"], dims["H"], dims["K"], dims["V"]
    S = q_t.new_zeros((B, H, Fd, V), dtype=acc) if S is None else _state_tensor(S, q_t, acc)
    z = q_t.new_zeros((B, H, Fd), dtype=acc) if z is None else _state_tensor(z, q_t, acc)
    S = S + torch.einsum("bhk,bhv->bhkv", fk, v_t.to(acc))  # [B, H, K, V]
    z = z + fk  # [B, H, K]
    o = torch.einsum("bhkv,bhk->bhv", S, fq)  # [B, H, V]
    if normalize:
        o = o / (torch.einsum("bhk,bhk->bh", z, fq)[..., None] + EPS)
    return o.to(q_t.dtype), ((S, z) if normalize else S)

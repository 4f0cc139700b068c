"""Linear attention in float64 numpy: the ground truth of chapters 02 and 03.

Glossary of dimension letters
-----------------------------
B  batch size
T  sequence length (t, s index positions)
H  number of heads
K  head dimension of queries and keys; after a feature map, the feature dimension
V  head dimension of values
C  chunk length of the chunkwise form

Layout (as in fla): ``q, k [B, T, H, K]``, ``v [B, T, H, V]``, output ``o [B, T, H, V]``,
state ``S [B, H, K, V]`` and normaliser ``z [B, H, K]``.

Linear attention (Katharopoulos et al. 2020) with a feature map ``phi`` and
``q~_t = scale * phi(q_t)`` (scale applied after the map, default ``K ** -0.5``)::

    S_t = S_{t-1} + phi(k_t) v_t^T          o_t = S_t^T q~_t                     (plain)
    z_t = z_{t-1} + phi(k_t)                o_t = S_t^T q~_t / (z_t . q~_t + eps)   (normalize)

with ``eps = 1e-10`` (:data:`EPS`, as fla's reference). The scale cancels in the normalised
ratio except against ``eps``. The normaliser only makes sense for a positive feature map
(``elu1``, ``relu``, random features): with ``identity`` the denominator can cross zero.
With ``normalize=True`` the state is the pair ``(S, z)``, as ``initial_state`` and as
``final_state``.

Four equal ways to compute the causal output, and the non-causal one:

* :func:`linear_attention_parallel`: ``O = (Q~ K^T ⊙ M) V + Q~ S_0`` with the causal mask
  ``M[t, s] = [s <= t]``; O(T^2 K) like softmax attention, but no softmax.
* :func:`linear_attention_recurrent`: the loop over ``t`` above; O(T K V), O(K V) memory.
* :func:`linear_attention_chunkwise`: chunks of ``C`` tokens; the state entering a chunk
  gives the inter-chunk part, a masked ``C x C`` product the intra-chunk part.
* :func:`linear_attention_step`: one decoding step of the recurrence.
* :func:`linear_attention_noncausal`: ``phi(Q) (phi(K)^T V)``, every query sees every key.
* :func:`linear_attention_backward`: the gradients of the plain form, as reverse recurrences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from course_lib import checks
from course_lib.linear_attention import validation
from course_lib.linear_attention.feature_maps import apply_feature_map

EPS = 1e-10  # added to the normaliser's denominator

FeatureMap = str | Callable[[Any], Any] | None


@dataclass
class _Prepared:
    q: np.ndarray  # scale * phi(q), [B, T, H, K]
    k: np.ndarray  # phi(k), [B, T, H, K]
    v: np.ndarray  # [B, T, H, V]
    S0: np.ndarray  # [B, H, K, V]
    z0: np.ndarray  # [B, H, K]


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


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
    fq = apply_feature_map(_f64(q), feature_map)
    fk = apply_feature_map(_f64(k), feature_map)
    dims = validation.check_feature_dims(fq, fk, dims)
    S0, z0 = validation.split_state(initial_state, normalize, dims)
    B, H, F, V = dims["B"], dims["H"], dims["K"], dims["V"]
    S0 = np.zeros((B, H, F, V)) if S0 is None else _f64(S0)
    z0 = np.zeros((B, H, F)) if z0 is None else _f64(z0)
    return _Prepared(fq * scale, fk, _f64(v), S0, z0)


def _final(S: np.ndarray, z: np.ndarray, normalize: bool, wanted: bool) -> Any:
    if not wanted:
        return None
    return (S, z) if normalize else S


def linear_attention_recurrent(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float | None = None,
    feature_map: FeatureMap = None,
    normalize: bool = False,
    initial_state: Any = None,
    output_final_state: bool = False,
) -> tuple[np.ndarray, Any]:
    """The recurrence, one token at a time: ``S_t = S_{t-1} + phi(k_t) v_t^T``.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.
        scale: multiplies ``phi(q)``; default ``K ** -0.5``.
        feature_map: None (identity), ``"identity"``, ``"elu1"``, ``"relu"`` or a callable.
        normalize: divide by ``z_t . q~_t + eps`` with ``z_t = z_{t-1} + phi(k_t)``.
        initial_state: ``S_0 [B, H, K, V]``, or ``(S_0, z_0 [B, H, K])`` when normalising.
        output_final_state: return the state after the last token.

    Returns:
        ``(o [B, T, H, V], final_state)``; ``final_state`` is ``S_T`` or ``(S_T, z_T)``, or
        None when not asked for.
    """
    p = _prepare(q, k, v, scale, feature_map, normalize, initial_state, output_final_state)
    S, z = p.S0.copy(), p.z0.copy()
    o = np.zeros(p.v.shape)  # [B, T, H, V]
    for t in range(p.q.shape[1]):
        S = S + np.einsum("bhk,bhv->bhkv", p.k[:, t], p.v[:, t])  # [B, H, K, V]
        z = z + p.k[:, t]  # [B, H, K]
        o[:, t] = np.einsum("bhkv,bhk->bhv", S, p.q[:, t])
        if normalize:
            o[:, t] /= np.einsum("bhk,bhk->bh", z, p.q[:, t])[..., None] + EPS
    return o, _final(S, z, normalize, output_final_state)


def linear_attention_parallel(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float | None = None,
    feature_map: FeatureMap = None,
    normalize: bool = False,
    initial_state: Any = None,
    output_final_state: bool = False,
) -> tuple[np.ndarray, Any]:
    """The masked quadratic form: ``O = (Q~ K^T ⊙ M) V + Q~ S_0``, ``M[t, s] = [s <= t]``.

    The normaliser is the same form with ``v = 1``: ``(Q~ K^T ⊙ M) 1 + Q~ z_0``. Arguments
    and returns as :func:`linear_attention_recurrent`.
    """
    p = _prepare(q, k, v, scale, feature_map, normalize, initial_state, output_final_state)
    T = p.q.shape[1]
    mask = np.tril(np.ones((T, T)))  # [T, T], M[t, s] = 1 for s <= t
    A = np.einsum("bthk,bshk->bhts", p.q, p.k) * mask  # [B, H, T, T]
    o = np.einsum("bhts,bshv->bthv", A, p.v) + np.einsum("bthk,bhkv->bthv", p.q, p.S0)
    if normalize:
        den = np.einsum("bhts->bth", A) + np.einsum("bthk,bhk->bth", p.q, p.z0)  # [B, T, H]
        o = o / (den[..., None] + EPS)
    S = p.S0 + np.einsum("bthk,bthv->bhkv", p.k, p.v)  # [B, H, K, V]
    z = p.z0 + p.k.sum(axis=1)  # [B, H, K]
    return o, _final(S, z, normalize, output_final_state)


def linear_attention_chunkwise(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float | None = None,
    feature_map: FeatureMap = None,
    normalize: bool = False,
    initial_state: Any = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[np.ndarray, Any]:
    """Chunks of ``C`` tokens; for the chunk ``[c, c + C)`` with entering state ``S``::

        O_c = Q~_c S + (Q~_c K_c^T ⊙ M) V_c          (inter-chunk + intra-chunk)
        S  <- S + K_c^T V_c

    (and the same with ``V_c = 1``, ``S = z`` for the normaliser). O(T C K + T K V): linear
    in ``T`` like the recurrence, but made of matrix products like the parallel form. The
    last chunk may be shorter. Arguments and returns as :func:`linear_attention_recurrent`,
    plus ``chunk_size`` (``C``, a positive int).
    """
    chunk_size = checks.check_positive_int("chunk_size", chunk_size)
    p = _prepare(q, k, v, scale, feature_map, normalize, initial_state, output_final_state)
    S, z = p.S0.copy(), p.z0.copy()
    T = p.q.shape[1]
    o = np.zeros(p.v.shape)  # [B, T, H, V]
    for c in range(0, T, chunk_size):
        qc, kc, vc = (x[:, c : c + chunk_size] for x in (p.q, p.k, p.v))  # [B, C, H, .]
        mask = np.tril(np.ones((qc.shape[1], qc.shape[1])))  # [C, C]
        A = np.einsum("bthk,bshk->bhts", qc, kc) * mask  # [B, H, C, C]
        oc = np.einsum("bthk,bhkv->bthv", qc, S) + np.einsum("bhts,bshv->bthv", A, vc)
        if normalize:
            den = np.einsum("bthk,bhk->bth", qc, z) + np.einsum("bhts->bth", A)  # [B, C, H]
            oc = oc / (den[..., None] + EPS)
        o[:, c : c + chunk_size] = oc
        S = S + np.einsum("bthk,bthv->bhkv", kc, vc)  # [B, H, K, V]
        z = z + kc.sum(axis=1)  # [B, H, K]
    return o, _final(S, z, normalize, output_final_state)


def linear_attention_noncausal(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float | None = None,
    feature_map: FeatureMap = None,
    normalize: bool = False,
) -> np.ndarray:
    """Every query sees every key, by associativity: ``O = Q~ (phi(K)^T V)``.

    ``phi(K)^T V`` is one ``[K, V]`` matrix per head, made once in O(T K V); the quadratic
    ``(Q~ phi(K)^T) V`` gives the same numbers in O(T^2 K). With ``normalize=True`` each row
    is divided by ``Q~ . sum_s phi(k_s) + eps``. Returns ``o [B, T, H, V]``.
    """
    p = _prepare(q, k, v, scale, feature_map, normalize, None, False)
    kv = np.einsum("bshk,bshv->bhkv", p.k, p.v)  # [B, H, K, V]
    o = np.einsum("bthk,bhkv->bthv", p.q, kv)  # [B, T, H, V]
    if normalize:
        den = np.einsum("bthk,bhk->bth", p.q, p.k.sum(axis=1))  # [B, T, H]
        o = o / (den[..., None] + EPS)
    return o


def linear_attention_step(
    q_t: np.ndarray,
    k_t: np.ndarray,
    v_t: np.ndarray,
    state: Any = None,
    scale: float | None = None,
    feature_map: FeatureMap = None,
    normalize: bool = False,
) -> tuple[np.ndarray, Any]:
    """One decoding step: ``S <- S + phi(k_t) v_t^T``, ``o_t = S^T q~_t`` (O(K V) work).

    Args:
        q_t, k_t: ``[B, H, K]``; v_t: ``[B, H, V]``.
        state: ``S [B, H, K, V]`` or, with ``normalize=True``, ``(S, z [B, H, K])``; None
            starts from zeros.

    Returns:
        ``(o_t [B, H, V], new_state)`` with ``new_state`` shaped like ``state``.
    """
    dims = validation.check_token(q_t, k_t, v_t)
    scale = validation.check_common(scale, feature_map, normalize, False, dims["K"])
    fq = apply_feature_map(_f64(q_t), feature_map) * scale  # [B, H, K]
    fk = apply_feature_map(_f64(k_t), feature_map)  # [B, H, K]
    dims = validation.check_feature_dims(fq, fk, dims)
    S, z = validation.split_state(state, normalize, dims, name="state")
    B, H, F, V = dims["B"], dims["H"], dims["K"], dims["V"]
    S = (np.zeros((B, H, F, V)) if S is None else _f64(S)) + np.einsum(
        "bhk,bhv->bhkv", fk, _f64(v_t)
    )  # [B, H, K, V]
    z = (np.zeros((B, H, F)) if z is None else _f64(z)) + fk  # [B, H, K]
    o = np.einsum("bhkv,bhk->bhv", S, fq)  # [B, H, V]
    if normalize:
        o = o / (np.einsum("bhk,bhk->bh", z, fq)[..., None] + EPS)
    return o, ((S, z) if normalize else S)


def linear_attention_backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    do: np.ndarray,
    scale: float | None = None,
    initial_state: np.ndarray | None = None,
    d_final_state: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of plain linear attention (no feature map, no normaliser), as recurrences.

    For ``o_t = scale * S_t^T q_t`` and a loss with ``dL/do_t = do_t`` (and ``dL/dS_T =
    d_final_state``), the gradient reaching the state after token ``t`` is itself a
    reverse-time linear recurrence::

        G_t  = G_{t+1} + scale * q_t do_t^T        G_{T+1} = dS_T          [B, H, K, V]
        dq_t = scale * S_t do_t     dk_t = G_t v_t     dv_t = G_t^T k_t     dS_0 = G_1

    The ground truth for the Triton backward kernel. Shapes as the forward, ``do`` like
    ``v``; returns ``(dq, dk, dv, d_initial_state)``.
    """
    dims = validation.check_qkv(q, k, v)
    checks.check_shapes(dims, do=(do, "B T H V"))
    scale = validation.check_scale(scale, dims["K"])
    S0, _ = validation.split_state(initial_state, False, dims)
    dST, _ = validation.split_state(d_final_state, False, dims, name="d_final_state")
    q, k, v, do = (_f64(x) for x in (q, k, v, do))
    B, T, H, K, V = *q.shape, v.shape[-1]
    S = np.zeros((B, H, K, V)) if S0 is None else _f64(S0)
    dq = np.zeros(q.shape)  # [B, T, H, K]
    for t in range(T):
        S = S + np.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        dq[:, t] = scale * np.einsum("bhkv,bhv->bhk", S, do[:, t])
    G = np.zeros((B, H, K, V)) if dST is None else _f64(dST)
    dk, dv = np.zeros(k.shape), np.zeros(v.shape)
    for t in reversed(range(T)):
        G = G + scale * np.einsum("bhk,bhv->bhkv", q[:, t], do[:, t])  # [B, H, K, V]
        dk[:, t] = np.einsum("bhkv,bhv->bhk", G, v[:, t])
        dv[:, t] = np.einsum("bhkv,bhk->bhv", G, k[:, t])
    return dq, dk, dv, G

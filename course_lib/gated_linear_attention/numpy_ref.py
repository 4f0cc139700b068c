"""Gated linear attention, float64 numpy reference (chapter 04).

Glossary of dimension letters:

* ``B`` batch, ``T`` sequence length (time), ``H`` heads,
* ``K`` key/query head dimension (rows of the state), ``V`` value head dimension (columns),
* ``C`` chunk length in the chunkwise form, ``N`` number of chunks.

One recurrence covers the whole family (Yang et al. 2023, "Gated Linear Attention
Transformers with Hardware-Efficient Training", GLA)::

    S_t = G_t ⊙ S_{t-1} + k_t v_t^T        G_t = exp(gk_t) exp(gv_t)^T      # [K, V]
    o_t = scale * S_t^T q_t                                                   # [V]

The gates are given in log space (``gk, gv <= 0``, so every decay factor lies in (0, 1]).
One argument pair spans the chapter's table:

================  ================  ==============================================
``gk``            ``gv``            mechanism
================  ================  ==============================================
``None``          ``None``          G = 1: linear attention (Katharopoulos 2020)
``[H]``           ``None``          constant log gamma per head (RetNet, Sun 2023)
``[B, T, H]``     ``None``          data-dependent scalar alpha_t (Mamba-2, Dao &
                                    Gu 2024; simple GLA)
``[B, T, H, K]``  ``None``          data-dependent vector alpha_t 1^T (GLA)
``[B, T, H, K]``  ``[B, T, H, V]``  outer product alpha_t beta_t^T (Yang 2023)
================  ================  ==============================================

Because the gates depend on the input at step t only, all of them are known before the
recurrence starts. Summing log gates over time gives cumulative gates ``Gk_t = sum_{s<=t}
gk_s``, and the recurrence unrolls to

    o_i = scale * sum_{j<=i} sum_k q_ik k_jk exp(Gk_ik - Gk_jk) * v_j ⊙ exp(Gv_i - Gv_j)
          + scale * (q_i ⊙ exp(Gk_i))^T S_0 ⊙ exp(Gv_i)

The factor ``D_ij = exp(G_i - G_j)`` (j <= i) is the *decay mask*. Every exponent written
here is a difference ``G_i - G_j`` with ``j <= i``, so it is <= 0: nothing ever overflows,
however strong the decay. (Splitting it as ``exp(G_i) * exp(-G_j)`` would overflow after
a few hundred steps of strong decay; the parallel and chunkwise forms below never do.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib import checks

# --------------------------------------------------------------------------------------
# validation and gate handling (shared with torch_impl: same checks, same messages)
# --------------------------------------------------------------------------------------


def _values(x: Any) -> Any:
    """The values alone (a torch tensor is detached so that checking it records no graph)."""
    return x.detach() if hasattr(x, "detach") else x


def check_gates(
    dims: dict[str, int], gk: Any, gv: Any, gk_name: str = "gk", gv_name: str = "gv"
) -> None:
    """Shapes (one of the table's forms) and values (finite, <= 0) of the log gates.

    ``dims`` holds the bound letters; it must contain ``B T H K V`` (full sequences) or
    ``B H K V`` (one decoding step, where the gates have no ``T`` axis).
    """
    step = "T" not in dims
    if gk is not None:
        checks.check_array(gk_name, gk)
        forms = ["H", "B H", "B H K"] if step else ["H", "B T H", "B T H K"]
        spec = {len(f.split()): f for f in forms}.get(len(gk.shape))
        if spec is None:
            shapes = ", ".join(f"[{', '.join(f.split())}]" for f in forms)
            raise ValueError(
                f"{gk_name} must have shape {shapes} (log gates), got shape {tuple(gk.shape)}"
            )
        checks.check_shapes(dims, **{gk_name: (gk, spec)})
        checks.check_log_gate(gk_name, _values(gk))
    if gv is not None:
        spec = "B H V" if step else "B T H V"
        checks.check_shapes(dims, **{gv_name: (gv, spec)})
        checks.check_log_gate(gv_name, _values(gv))


def validate(
    q: Any,
    k: Any,
    v: Any,
    gk: Any = None,
    gv: Any = None,
    scale: Any = None,
    initial_state: Any = None,
) -> dict[str, int]:
    """Check every argument of the sequence functions; return the sizes ``B T H K V``."""
    dims = checks.check_shapes(q=(q, "B T H K"), k=(k, "B T H K"), v=(v, "B T H V"))
    checks.check_shapes(dims, initial_state=(initial_state, "B H K V"))
    check_gates(dims, gk, gv)
    if scale is not None:
        checks.check_positive_float("scale", scale)
    return dims


def normalize_gates(
    gk: np.ndarray | None, gv: np.ndarray | None, B: int, T: int, H: int, K: int, V: int
) -> tuple[np.ndarray, np.ndarray]:
    """Expand any gate form of the table to full log gates ``[B, T, H, K]``, ``[B, T, H, V]``.

    ``None`` means no decay (log gate 0); ``[H]`` is repeated over batch and time; a scalar
    gate ``[B, T, H]`` is repeated over the key dimension.
    """
    if gk is None:
        gk_full = np.zeros((B, T, H, K))
    elif gk.ndim == 1:
        gk_full = np.broadcast_to(gk[None, None, :, None], (B, T, H, K))  # [H] -> [B, T, H, K]
    elif gk.ndim == 3:
        gk_full = np.broadcast_to(gk[..., None], (B, T, H, K))  # [B, T, H] -> [B, T, H, K]
    else:
        gk_full = gk
    gv_full = np.zeros((B, T, H, V)) if gv is None else gv
    return np.asarray(gk_full, dtype=np.float64), np.asarray(gv_full, dtype=np.float64)


def cumulative_log_gates(g: np.ndarray) -> np.ndarray:
    """``G_t = sum_{s<=t} g_s`` along the time axis (axis 1 of ``[B, T, ...]``).

    ``exp(G_i - G_j)`` is then the total decay from step j to step i.
    """
    return np.cumsum(g, axis=1)


def decay_mask(g_cumsum: np.ndarray) -> np.ndarray:
    """``D[..., i, j] = exp(G_i - G_j)`` for ``j <= i`` and 0 above the diagonal.

    ``g_cumsum`` has time on its *last* axis, ``[..., T]`` (a ``[T]`` vector for one scalar
    gate); the result is ``[..., T, T]``. The difference is masked *before* the
    exponential, so the entries above the diagonal (positive exponents) are never formed.
    """
    T = g_cumsum.shape[-1]
    diff = g_cumsum[..., :, None] - g_cumsum[..., None, :]  # [..., T, T]: G_i - G_j
    causal = np.tril(np.ones((T, T), dtype=bool))
    return np.exp(np.where(causal, diff, -np.inf))


def _prepare(q, k, v, gk, gv, scale, initial_state):
    B, T, H, K = q.shape
    V = v.shape[-1]
    gk_full, gv_full = normalize_gates(gk, gv, B, T, H, K, V)
    scale = K**-0.5 if scale is None else float(scale)
    S0 = np.zeros((B, H, K, V)) if initial_state is None else np.asarray(initial_state, float)
    return gk_full, gv_full, scale, S0


# --------------------------------------------------------------------------------------
# the three forms
# --------------------------------------------------------------------------------------


def gated_linear_attention_recurrent(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    gk: np.ndarray | None = None,
    gv: np.ndarray | None = None,
    scale: float | None = None,
    initial_state: np.ndarray | None = None,
    output_final_state: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The recurrence, one step at a time: the definition and the ground truth.

    ``S_t = (exp(gk_t) exp(gv_t)^T) ⊙ S_{t-1} + k_t v_t^T``, ``o_t = scale * S_t^T q_t``.

    q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; gk, gv: log gates (see the module table);
    initial_state: ``[B, H, K, V]``. Returns ``o [B, T, H, V]`` and the final state
    ``[B, H, K, V]`` (``None`` unless ``output_final_state``).
    """
    validate(q, k, v, gk, gv, scale, initial_state)
    gk_full, gv_full, scale, S = _prepare(q, k, v, gk, gv, scale, initial_state)
    o = np.zeros(v.shape)
    for t in range(q.shape[1]):
        G = np.exp(gk_full[:, t, :, :, None] + gv_full[:, t, :, None, :])  # [B, H, K, V]
        S = G * S + np.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        o[:, t] = scale * np.einsum("bhkv,bhk->bhv", S, q[:, t])
    return o, (S if output_final_state else None)


def gated_linear_attention_step(
    q_t: np.ndarray,
    k_t: np.ndarray,
    v_t: np.ndarray,
    state: np.ndarray,
    gk_t: np.ndarray | None = None,
    gv_t: np.ndarray | None = None,
    scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One decoding step: decay the state, write ``k_t v_t^T``, read it with ``q_t``.

    q_t, k_t: ``[B, H, K]``; v_t: ``[B, H, V]``; state: ``[B, H, K, V]``; gk_t: ``[H]``,
    ``[B, H]`` or ``[B, H, K]``; gv_t: ``[B, H, V]``. Returns ``o_t [B, H, V]`` and the new
    state ``[B, H, K, V]``. Costs O(K V) per token, whatever the length of the past.
    """
    dims = checks.check_shapes(
        q_t=(q_t, "B H K"), k_t=(k_t, "B H K"), v_t=(v_t, "B H V"), state=(state, "B H K V")
    )
    check_gates(dims, gk_t, gv_t, "gk_t", "gv_t")
    if scale is not None:
        checks.check_positive_float("scale", scale)
    B, H, K = q_t.shape
    scale = K**-0.5 if scale is None else float(scale)
    gk_full, gv_full = normalize_gates(
        None if gk_t is None else gk_t if gk_t.ndim == 1 else gk_t[:, None],
        None if gv_t is None else gv_t[:, None],
        B,
        1,
        H,
        K,
        v_t.shape[-1],
    )  # [B, 1, H, K], [B, 1, H, V]
    log_g = gk_full[:, 0, :, :, None] + gv_full[:, 0, :, None, :]  # [B, H, K, V]
    new_state = np.exp(log_g) * state + np.einsum("bhk,bhv->bhkv", k_t, v_t)
    o_t = scale * np.einsum("bhkv,bhk->bhv", new_state, q_t)
    return o_t, new_state


def gated_linear_attention_parallel(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    gk: np.ndarray | None = None,
    gv: np.ndarray | None = None,
    scale: float | None = None,
    initial_state: np.ndarray | None = None,
    output_final_state: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The whole sequence at once, with the decay mask (O(T^2) memory and time).

    ``o_i = scale * sum_{j<=i} [sum_k q_ik k_jk Dk_ijk] (v_j ⊙ Dv_ij)`` plus the initial
    state's contribution ``scale * (q_i ⊙ exp(Gk_i))^T S_0 ⊙ exp(Gv_i)``, where
    ``Dk_ijk = exp(Gk_ik - Gk_jk)`` and ``Dv_ijv = exp(Gv_iv - Gv_jv)`` are the decay masks
    of the cumulative log gates. With G = 1 the mask is the causal mask of chapter 03.

    Shapes as in :func:`gated_linear_attention_recurrent`.
    """
    validate(q, k, v, gk, gv, scale, initial_state)
    gk_full, gv_full, scale, S0 = _prepare(q, k, v, gk, gv, scale, initial_state)
    Gk = cumulative_log_gates(gk_full)  # [B, T, H, K]
    Gv = cumulative_log_gates(gv_full)  # [B, T, H, V]
    Dk = decay_mask(Gk.transpose(0, 2, 3, 1))  # [B, H, K, T, T]
    Dv = decay_mask(Gv.transpose(0, 2, 3, 1))  # [B, H, V, T, T]
    # scores per (i, j), summed over the key dimension with the key-side decay
    scores = np.einsum("bihk,bjhk,bhkij->bhij", q, k, Dk)  # [B, H, T, T]
    o = scale * np.einsum("bhij,bjhv,bhvij->bihv", scores, v, Dv)  # [B, T, H, V]
    # what the initial state contributes, decayed from step 0 to step i
    o += scale * np.einsum("bihk,bhkv,bihv->bihv", q * np.exp(Gk), S0, np.exp(Gv))
    final = None
    if output_final_state:
        final = _final_state(k, v, Gk, Gv, S0)
    return o, final


def _final_state(k, v, Gk, Gv, S0):
    """``S_T = exp(Gk_T) exp(Gv_T)^T ⊙ S_0 + sum_j (k_j ⊙ exp(Gk_T - Gk_j)) (v_j ⊙ ...)^T``."""
    kd = k * np.exp(Gk[:, -1:] - Gk)  # [B, T, H, K], decayed to the last step
    vd = v * np.exp(Gv[:, -1:] - Gv)  # [B, T, H, V]
    decay = np.exp(Gk[:, -1, :, :, None] + Gv[:, -1, :, None, :])  # [B, H, K, V]
    return decay * S0 + np.einsum("bthk,bthv->bhkv", kd, vd)


def gated_linear_attention_chunkwise(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    gk: np.ndarray | None = None,
    gv: np.ndarray | None = None,
    scale: float | None = None,
    initial_state: np.ndarray | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Chunks of ``C`` steps: parallel inside a chunk, recurrent from chunk to chunk.

    Inside a chunk the log gates are summed from the chunk's start, ``b_i = sum_{s<=i}
    g_s``, so every exponent is <= 0. For the rows of a chunk, with ``S`` the state
    before it::

        o_i   = scale * [(q_i ⊙ exp(bk_i))^T S ⊙ exp(bv_i) + intra-chunk parallel form]
        S_new = exp(bk_C) exp(bv_C)^T ⊙ S
              + sum_j (k_j ⊙ exp(bk_C - bk_j)) (v_j ⊙ exp(bv_C - bv_j))^T

    ``bk_C`` is the chunk's total log gate. Cost O(T C (K + V) + T K V): linear in T.
    Shapes as in :func:`gated_linear_attention_recurrent`; the last chunk may be shorter.
    """
    validate(q, k, v, gk, gv, scale, initial_state)
    chunk_size = checks.check_positive_int("chunk_size", chunk_size)
    gk_full, gv_full, scale, S = _prepare(q, k, v, gk, gv, scale, initial_state)
    o = np.zeros(v.shape)
    for start in range(0, q.shape[1], chunk_size):
        c = slice(start, start + chunk_size)
        qc, kc, vc = q[:, c], k[:, c], v[:, c]  # [B, C, H, *]
        bk = cumulative_log_gates(gk_full[:, c])  # [B, C, H, K], from the chunk's start
        bv = cumulative_log_gates(gv_full[:, c])  # [B, C, H, V]
        # carried state, read by every row of the chunk
        o[:, c] = scale * np.einsum("bihk,bhkv,bihv->bihv", qc * np.exp(bk), S, np.exp(bv))
        # inside the chunk: the parallel form with the chunk's own decay masks
        Dk = decay_mask(bk.transpose(0, 2, 3, 1))  # [B, H, K, C, C]
        Dv = decay_mask(bv.transpose(0, 2, 3, 1))  # [B, H, V, C, C]
        scores = np.einsum("bihk,bjhk,bhkij->bhij", qc, kc, Dk)  # [B, H, C, C]
        o[:, c] += scale * np.einsum("bhij,bjhv,bhvij->bihv", scores, vc, Dv)
        # state after the chunk: old state decayed by the chunk's total gate, plus writes
        S = _final_state(kc, vc, bk, bv, S)
    return o, (S if output_final_state else None)


def effective_attention(
    q: np.ndarray,
    k: np.ndarray,
    gk: np.ndarray | None = None,
    scale: float | None = None,
) -> np.ndarray:
    """The matrix ``A [B, H, T, T]`` with ``o_i = sum_j A_ij v_j`` (no initial state).

    ``A_ij = scale * sum_k q_ik k_jk exp(Gk_ik - Gk_jk)`` for ``j <= i``, 0 above the
    diagonal: attention weights that fade with distance at the rate the gates set (the
    chapter's gating-decay widget draws it). A value-side gate ``gv`` would make the matrix
    differ per value channel, so it is not accepted here; use the parallel form for that.
    q, k: ``[B, T, H, K]``; gk: ``None``, ``[H]``, ``[B, T, H]`` or ``[B, T, H, K]``.
    """
    dims = checks.check_shapes(q=(q, "B T H K"), k=(k, "B T H K"))
    check_gates(dict(dims, V=1), gk, None)
    if scale is not None:
        checks.check_positive_float("scale", scale)
    B, T, H, K = q.shape
    gk_full, _ = normalize_gates(gk, None, B, T, H, K, 1)
    scale = K**-0.5 if scale is None else float(scale)
    Dk = decay_mask(cumulative_log_gates(gk_full).transpose(0, 2, 3, 1))  # [B, H, K, T, T]
    return scale * np.einsum("bihk,bjhk,bhkij->bhij", q, k, Dk)

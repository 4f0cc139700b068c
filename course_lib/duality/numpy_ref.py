"""State space duality (Mamba-2 / SSD, Dao & Gu 2024): float64 numpy reference.

Glossary of dimension letters (Mamba-2 layout):

* ``B`` batch (the input matrix is the argument ``B``), ``T`` time steps, ``H`` heads,
* ``P`` channels per head (the "value" width), ``N`` state size (the "key" width),
* ``s`` a second time index (the source step in the attention form).

A selective SSM whose ``A`` is one negative scalar per head (Mamba-2's restriction) is

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T         # [N, P] per batch and head
    y_t = h_t^T C_t                                     # [P]

with ``x`` [B, T, H, P], ``dt`` [B, T, H] (positive), ``A`` [H] (negative), ``B, C``
[B, T, H, N] (one per head) or [B, T, N] (shared by all heads, Mamba-2's default single
group), and states [B, H, N, P]. Renaming ``q = C``, ``k = B``, ``v = dt x`` and the log
gate ``g_t = dt_t A`` turns it, symbol for symbol, into gated linear attention with a
scalar gate, ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t`` (scale 1).
Unrolled, both are one masked "attention" (the quadratic form)

    y_t = sum_{s<=t} (C_t . B_s) exp(G_t - G_s) dt_s x_s + exp(G_t) h_0^T C_t,
    G_t = sum_{r<=t} g_r,

where ``L[t, s] = exp(G_t - G_s)`` is the 1-semiseparable decay mask. Three functions
compute the same ``(y, final_state)`` three ways: :func:`ssd_scan` (recurrent, the SSM
view), :func:`ssd_as_gla` (the gated linear attention code of chapter 04, unchanged) and
:func:`ssd_quadratic` (the attention view).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from course_lib import checks


def check_ssd_inputs(
    x: Any,
    dt: Any,
    A: Any,
    B: Any,
    C: Any,
    initial_state: Any = None,
    output_final_state: Any = False,
) -> dict[str, int]:
    """Shapes and signs of the SSD arguments (shared by every backend); returns sizes."""
    dims = checks.check_shapes(x=(x, "B T H P"), dt=(dt, "B T H"), A=(A, "H"))
    for name, m in (("B", B), ("C", C)):
        checks.check_array(name, m)
        if len(m.shape) not in (3, 4):
            raise ValueError(
                f"{name} must be [B, T, H, N] (per head) or [B, T, N] (shared), "
                f"got shape {tuple(m.shape)}"
            )
        spec = "B T H N" if len(m.shape) == 4 else "B T N"
        checks.check_shapes(dims, **{name: (m, spec)})
        dims.setdefault("N", int(m.shape[-1]))
    checks.check_shapes(dims, initial_state=(initial_state, "B H N P"))
    if not isinstance(output_final_state, (bool, np.bool_)):
        raise TypeError(
            f"output_final_state must be a bool, got {type(output_final_state).__name__}"
        )
    dt, A = _values(dt), _values(A)
    if _size(dt) and not (float(dt.min()) >= 0 and bool(_finite(dt))):
        raise ValueError("dt (the step sizes) must be finite and >= 0")
    if _size(A) and not (float(A.max()) <= 0 and bool(_finite(A))):
        raise ValueError("A (one decay rate per head) must be finite and <= 0")
    return dims


def _values(x: Any) -> Any:
    """Plain values of an array or tensor (no autograd graph), for the sign checks."""
    return x.detach() if hasattr(x, "detach") else x


def _size(x: Any) -> int:
    return int(np.prod(x.shape))


def _finite(x: Any) -> bool:
    return bool(x.isfinite().all()) if hasattr(x, "isfinite") else bool(np.isfinite(x).all())


def _per_head(m: np.ndarray, H: int) -> np.ndarray:
    """[B, T, N] (shared) -> [B, T, H, N]; per-head input unchanged."""
    return np.broadcast_to(m[:, :, None], m.shape[:2] + (H, m.shape[-1])) if m.ndim == 3 else m


def _prepare(x, dt, A, B, C, initial_state):
    x, dt, A, B, C = (np.asarray(a, dtype=np.float64) for a in (x, dt, A, B, C))
    Bsz, _, H, P = x.shape
    B, C = _per_head(B, H), _per_head(C, H)  # [B, T, H, N]
    N = B.shape[-1]
    h0 = np.zeros((Bsz, H, N, P)) if initial_state is None else np.asarray(initial_state, float)
    return x, dt, A, B, C, h0


def ssd_scan(
    x: np.ndarray,
    dt: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    initial_state: np.ndarray | None = None,
    output_final_state: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The SSM view, one step at a time: ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T``,
    ``y_t = h_t^T C_t``. Returns ``(y [B, T, H, P], final_state [B, H, N, P] or None)``."""
    check_ssd_inputs(**locals())
    x, dt, A, B, C, h = _prepare(x, dt, A, B, C, initial_state)
    y = np.empty_like(x)  # [B, T, H, P]
    for t in range(x.shape[1]):
        decay = np.exp(dt[:, t] * A)  # [B, H]
        h = decay[..., None, None] * h + np.einsum(
            "bh,bhn,bhp->bhnp", dt[:, t], B[:, t], x[:, t]
        )  # [B, H, N, P]
        y[:, t] = np.einsum("bhnp,bhn->bhp", h, C[:, t])
    return y, (h if output_final_state else None)


def ssd_quadratic(
    x: np.ndarray,
    dt: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    initial_state: np.ndarray | None = None,
    output_final_state: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The attention view: ``Y = (C B^T ⊙ L) (dt x)`` with the decay mask
    ``L[t, s] = exp(G_t - G_s)`` for ``s <= t`` (0 above the diagonal), ``G = cumsum(dt A)``.

    ``O(T^2)`` work, no recurrence; the initial state adds ``exp(G_t) h_0^T C_t``.
    """
    check_ssd_inputs(**locals())
    x, dt, A, B, C, h0 = _prepare(x, dt, A, B, C, initial_state)
    G = np.cumsum(dt * A, axis=1)  # [B, T, H]
    diff = G[:, :, None, :] - G[:, None, :, :]  # [B, t, s, H]
    causal = np.tril(np.ones((x.shape[1], x.shape[1]), dtype=bool))[None, :, :, None]
    L = np.where(causal, np.exp(np.where(causal, diff, 0.0)), 0.0)  # [B, t, s, H]
    scores = np.einsum("bthn,bshn->btsh", C, B) * L  # [B, t, s, H]
    y = np.einsum("btsh,bsh,bshp->bthp", scores, dt, x)  # [B, T, H, P]
    y = y + np.exp(G)[..., None] * np.einsum("bthn,bhnp->bthp", C, h0)
    if not output_final_state:
        return y, None
    to_end = np.exp(G[:, -1:] - G) * dt  # [B, T, H]: decay from step s to the end
    final = np.einsum("bsh,bshn,bshp->bhnp", to_end, B, x)  # [B, H, N, P]
    return y, final + np.exp(G[:, -1])[..., None, None] * h0


def gla_scalar_gate_masked(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    g: np.ndarray,
    initial_state: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Small stand-in for chapter 04's function (scale 1, scalar log gate ``g`` [B, T, H]):
    ``o_t = sum_{s<=t} (q_t . k_s) exp(G_t - G_s) v_s + exp(G_t) S_0^T q_t``."""
    G = np.cumsum(g, axis=1)  # [B, T, H]
    T = q.shape[1]
    causal = np.tril(np.ones((T, T), dtype=bool))[None, :, :, None]
    L = np.where(causal, np.exp(np.where(causal, G[:, :, None] - G[:, None], 0.0)), 0.0)
    o = np.einsum("bthk,bshk,btsh,bshv->bthv", q, k, L, v)  # [B, T, H, V]
    S0 = initial_state
    if S0 is None:
        S0 = np.zeros(k.shape[:1] + k.shape[2:] + v.shape[-1:])  # [B, H, K, V]
    o = o + np.exp(G)[..., None] * np.einsum("bthk,bhkv->bthv", q, S0)
    S = np.einsum("bsh,bshk,bshv->bhkv", np.exp(G[:, -1:] - G), k, v)  # [B, H, K, V]
    return o, S + np.exp(G[:, -1])[..., None, None] * S0


def _gla_chunkwise(backend: str):
    """Chapter 04's chunkwise gated linear attention, or ``None`` where it is missing."""
    try:
        module = importlib.import_module(f"course_lib.gated_linear_attention.{backend}")
    except ImportError:
        return None
    return getattr(module, "gated_linear_attention_chunkwise", None)


def ssd_as_gla(
    x: np.ndarray,
    dt: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    initial_state: np.ndarray | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The same SSM computed by gated linear attention: ``q = C``, ``k = B``,
    ``v = dt x``, scalar log gate ``gk = dt A`` [B, T, H], ``scale = 1``.

    Calls :func:`course_lib.gated_linear_attention.numpy_ref.gated_linear_attention_chunkwise`
    (states [B, H, K, V] = [B, H, N, P], the same layout as here).
    """
    check_ssd_inputs(**{k: v for k, v in locals().items() if k != "chunk_size"})
    x, dt, A, B, C, h0 = _prepare(x, dt, A, B, C, initial_state)
    q, k, v, g = C, B, dt[..., None] * x, dt * A  # [B,T,H,N] x2, [B,T,H,P], [B,T,H]
    gla = _gla_chunkwise("numpy_ref")
    if gla is None:  # chapter 04 not installed: the masked stand-in
        y, S = gla_scalar_gate_masked(q, k, v, g, h0)
    else:
        y, S = gla(q, k, v, gk=g, scale=1.0, initial_state=h0, output_final_state=True,
                   chunk_size=chunk_size)  # fmt: skip
    return y, (S if output_final_state else None)

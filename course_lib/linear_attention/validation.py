"""Input checks shared by the numpy, torch and Triton entry points of linear attention.

Glossary of dimension letters
-----------------------------
B  batch size
T  sequence length
H  number of heads
K  head dimension of queries and keys (after the feature map: the feature dimension)
V  head dimension of values

Every public function of ``numpy_ref``, ``torch_impl`` and ``triton_kernels`` calls these
helpers first, so that each backend rejects the same bad input with the same
``ValueError``/``TypeError`` naming the argument (see :mod:`course_lib.checks`).
"""

from __future__ import annotations

from typing import Any

from course_lib import checks
from course_lib.linear_attention.feature_maps import check_feature_map


def check_flag(name: str, value: Any) -> bool:
    """``normalize`` and ``output_final_state`` must be real booleans."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_scale(scale: Any, head_dim: int) -> float:
    """``scale=None`` means ``K ** -0.5`` (``K`` of the raw queries); else a positive number."""
    if scale is None:
        return float(head_dim) ** -0.5
    return checks.check_positive_float("scale", scale)


def check_qkv(q: Any, k: Any, v: Any) -> dict[str, int]:
    """``q, k [B, T, H, K]``, ``v [B, T, H, V]``, one floating dtype; returns the sizes."""
    dims = checks.check_shapes(q=(q, "B T H K"), k=(k, "B T H K"), v=(v, "B T H V"))
    checks.check_same_dtype(q=q, k=k, v=v)
    return dims


def check_token(q_t: Any, k_t: Any, v_t: Any) -> dict[str, int]:
    """One decode step: ``q_t, k_t [B, H, K]``, ``v_t [B, H, V]``, one floating dtype."""
    dims = checks.check_shapes(q_t=(q_t, "B H K"), k_t=(k_t, "B H K"), v_t=(v_t, "B H V"))
    checks.check_same_dtype(q_t=q_t, k_t=k_t, v_t=v_t)
    return dims


def split_state(
    state: Any, normalize: bool, dims: dict[str, int], name: str = "initial_state"
) -> tuple[Any, Any]:
    """Return ``(S [B, H, K, V], z [B, H, K] or None)`` from ``state``.

    Without the normaliser the state is one array ``S``; with ``normalize=True`` it is the
    pair ``(S, z)``. ``dims`` must hold ``B, H, V`` and ``K`` = the feature dimension.
    """
    if state is None:
        return None, None
    if normalize:
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            got = "one array" if hasattr(state, "shape") else type(state).__name__
            raise TypeError(
                f"{name} must be a pair (S [B, H, K, V], z [B, H, K]) when normalize=True, "
                f"got {got}"
            )
        S, z = state
        if S is None or z is None:
            raise TypeError(f"{name} must hold two arrays (S, z) when normalize=True")
        checks.check_shapes(dims, **{f"{name}[0]": (S, "B H K V"), f"{name}[1]": (z, "B H K")})
        return S, z
    if isinstance(state, (tuple, list)):
        raise TypeError(
            f"{name} must be one array S [B, H, K, V] when normalize=False, got a "
            f"{type(state).__name__}; pass normalize=True to carry the pair (S, z)"
        )
    checks.check_shapes(dims, **{name: (state, "B H K V")})
    return state, None


def check_common(
    scale: Any, feature_map: Any, normalize: Any, output_final_state: Any, head_dim: int
) -> float:
    """Scalar options of every form; returns the resolved scale."""
    check_feature_map(feature_map)
    check_flag("normalize", normalize)
    check_flag("output_final_state", output_final_state)
    return check_scale(scale, head_dim)


def check_feature_dims(fq: Any, fk: Any, dims: dict[str, int]) -> dict[str, int]:
    """After the feature map: ``phi(q), phi(k)`` share a feature size, which becomes ``K``."""
    if fq.shape[-1] != fk.shape[-1]:
        raise ValueError(
            f"feature_map gave phi(q) of shape {tuple(fq.shape)} but phi(k) of shape "
            f"{tuple(fk.shape)}: both need the same feature dimension"
        )
    out = dict(dims)
    out["K"] = int(fk.shape[-1])
    return out

"""Linear attention in the registry: inputs, the reference and every implementation.

Glossary of dimension letters
-----------------------------
B  batch size
T  sequence length
H  number of heads
K  head dimension of queries and keys
V  head dimension of values

Cases: ``"plain"`` (identity feature map, no normaliser, a random ``S_0``) and
``"elu1_normalized"`` (``phi = elu + 1``, the normaliser, a random pair ``(S_0, z_0)`` with
``z_0 > 0``). Both return the final state, so the registry compares it too.
"""

from __future__ import annotations

from typing import Any

from course_lib.registry import Impl, Mechanism, Sizes, register, register_mechanism

_PKG = "course_lib.linear_attention"
CASES = ("plain", "elu1_normalized")


def make_inputs(rand: Any, sizes: Sizes, case: str) -> dict[str, Any]:
    """``q, k [B, T, H, K]``, ``v [B, T, H, V]``, ``initial_state`` and the case's options."""
    B, T, H, K, V = sizes.B, sizes.T, sizes.H, sizes.K, sizes.V
    q = rand.normal((B, T, H, K))
    k = rand.normal((B, T, H, K))
    v = rand.normal((B, T, H, V))
    S0 = rand.normal((B, H, K, V))
    if case == "plain":
        return {
            "q": q,
            "k": k,
            "v": v,
            "initial_state": S0,
            "output_final_state": True,
            "feature_map": None,
            "normalize": False,
        }
    # elu(x) + 1 > 0 for every key, so a positive z_0 keeps the denominator away from 0.
    z0 = rand.uniform((B, H, K), 0.5, 1.5)
    return {
        "q": q,
        "k": k,
        "v": v,
        "initial_state": (S0, z0),
        "output_final_state": True,
        "feature_map": "elu1",
        "normalize": True,
    }


register_mechanism(
    Mechanism(
        name="linear_attention",
        chapter=3,
        summary="S_t = S_{t-1} + phi(k_t) v_t^T, o_t = S_t^T phi(q_t) (optionally normalised)",
        make_inputs=f"{_PKG}.registrations:make_inputs",
        reference=f"{_PKG}.numpy_ref:linear_attention_recurrent",
        cases=CASES,
    )
)

for _form in ("parallel", "recurrent"):
    register(Impl("linear_attention", "numpy", _form, f"{_PKG}.numpy_ref:linear_attention_{_form}"))
    register(
        Impl(
            "linear_attention",
            "torch",
            _form,
            f"{_PKG}.torch_impl:linear_attention_{_form}",
            differentiable=True,
        )
    )
register(
    Impl(
        "linear_attention",
        "numpy",
        "chunkwise",
        f"{_PKG}.numpy_ref:linear_attention_chunkwise",
        kwargs={"chunk_size": 16},
    )
)
register(
    Impl(
        "linear_attention",
        "torch",
        "chunkwise",
        f"{_PKG}.torch_impl:linear_attention_chunkwise",
        kwargs={"chunk_size": 16},
        differentiable=True,
    )
)
register(
    Impl(
        "linear_attention",
        "triton",
        "chunkwise",
        f"{_PKG}.triton_kernels:linear_attention_chunkwise",
        kwargs={"chunk_size": 64},
        differentiable=True,
    )
)
# The one-kernel forward (state in registers, no per-chunk states in memory); the backward
# recomputes the chunk states and reuses the chunkwise kernels.
register(
    Impl(
        "linear_attention",
        "triton",
        "fused_chunk",
        f"{_PKG}.triton_kernels:linear_attention_fused_chunk",
        kwargs={"chunk_size": 64},
        differentiable=True,
    )
)

"""Registry entries for softmax attention (chapter 01).

Glossary: B batch, T queries (= S keys here), H heads, K query/key head dim, V value head dim.
"""

from __future__ import annotations

from typing import Any

from course_lib.registry import Impl, Mechanism, Sizes, register, register_mechanism

_PKG = "course_lib.softmax_attention"


def make_inputs(rand: Any, sizes: Sizes, case: str) -> dict[str, Any]:
    """``q, k [B, T, H, K]``, ``v [B, T, H, V]`` (self-attention, so S = T) and ``causal``."""
    B, T, H, K, V = sizes.B, sizes.T, sizes.H, sizes.K, sizes.V
    return {
        "q": rand.normal((B, T, H, K)),
        "k": rand.normal((B, T, H, K)),
        "v": rand.normal((B, T, H, V)),
        "causal": case == "causal",
    }


register_mechanism(
    Mechanism(
        name="softmax_attention",
        chapter=1,
        summary="o_i = sum_j softmax_j(scale q_i . k_j) v_j",
        make_inputs=f"{_PKG}.registrations:make_inputs",
        reference=f"{_PKG}.numpy_ref:softmax_attention",
        cases=("causal", "noncausal"),
    )
)

register(Impl("softmax_attention", "numpy", "parallel", f"{_PKG}.numpy_ref:softmax_attention"))
register(
    Impl(
        "softmax_attention",
        "numpy",
        "tiled",
        f"{_PKG}.numpy_ref:softmax_attention_tiled",
        kwargs={"block_q": 16, "block_k": 16},
    )
)
register(
    Impl(
        "softmax_attention",
        "torch",
        "parallel",
        f"{_PKG}.torch_impl:softmax_attention",
        differentiable=True,
    )
)
register(
    Impl(
        "softmax_attention",
        "torch",
        "tiled",
        f"{_PKG}.torch_impl:softmax_attention_tiled",
        kwargs={"block_q": 16, "block_k": 16},
        differentiable=True,
    )
)
register(
    Impl(
        "softmax_attention",
        "triton",
        "flash",
        f"{_PKG}.triton_kernels:flash_attention",
        differentiable=True,
    )
)

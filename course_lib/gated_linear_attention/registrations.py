"""Gated linear attention in the registry: one mechanism, five gate cases.

Glossary of dimension letters: ``B`` batch, ``T`` time, ``H`` heads, ``K`` key/query head
dimension, ``V`` value head dimension.

The cases are the rows of the chapter's table: ``none`` (G = 1), ``constant`` (log gamma
per head, RetNet), ``scalar`` (data-dependent alpha_t per head, Mamba-2 / simple GLA),
``vector`` (alpha_t 1^T, GLA) and ``outer`` (alpha_t beta_t^T).
"""

from __future__ import annotations

from typing import Any

from course_lib.registry import Impl, Mechanism, Sizes, register, register_mechanism

CASES = ("none", "constant", "scalar", "vector", "outer")
_MOD = "course_lib.gated_linear_attention"


def make_inputs(rand: Any, sizes: Sizes, case: str) -> dict[str, Any]:
    """q, k, v, the case's log gates, an initial state, and ``output_final_state=True``.

    Log gates are drawn in [-1, -0.01]: decays from 0.37 to 0.99 per step, so the state
    both remembers and forgets within the test lengths.
    """
    B, T, H, K, V = sizes.B, sizes.T, sizes.H, sizes.K, sizes.V
    inputs: dict[str, Any] = {
        "q": rand.normal((B, T, H, K)),
        "k": rand.normal((B, T, H, K)),
        "v": rand.normal((B, T, H, V)),
        "gk": None,
        "gv": None,
    }
    if case == "constant":
        inputs["gk"] = rand.uniform((H,), -1.0, -0.01)
    elif case == "scalar":
        inputs["gk"] = rand.uniform((B, T, H), -1.0, -0.01)
    elif case in ("vector", "outer"):
        inputs["gk"] = rand.uniform((B, T, H, K), -1.0, -0.01)
    if case == "outer":
        inputs["gv"] = rand.uniform((B, T, H, V), -1.0, -0.01)
    inputs["initial_state"] = rand.normal((B, H, K, V), 0.5)
    inputs["output_final_state"] = True
    return inputs


def triton_chunk(
    q: Any,
    k: Any,
    v: Any,
    gk: Any = None,
    gv: Any = None,
    scale: float | None = None,
    initial_state: Any = None,
    output_final_state: bool = False,
) -> tuple[Any, Any]:
    """The common signature over the Triton kernels: a ``[B, T, H]`` gate goes to
    ``chunk_simple_gla``, a ``[B, T, H, K]`` gate to ``chunk_gla``."""
    return _triton_dispatch(q, k, v, gk, gv, scale, initial_state, output_final_state, "")


def triton_fused_chunk(
    q: Any,
    k: Any,
    v: Any,
    gk: Any = None,
    gv: Any = None,
    scale: float | None = None,
    initial_state: Any = None,
    output_final_state: bool = False,
) -> tuple[Any, Any]:
    """As :func:`triton_chunk` with the fused forward: ``fused_chunk_simple_gla`` for a
    ``[B, T, H]`` gate, ``fused_chunk_gla`` for a ``[B, T, H, K]`` gate."""
    return _triton_dispatch(q, k, v, gk, gv, scale, initial_state, output_final_state, "fused_")


def _triton_dispatch(q, k, v, gk, gv, scale, initial_state, output_final_state, prefix):
    from course_lib.gated_linear_attention import triton_kernels as tk

    if gv is not None:
        raise ValueError("gv: the Triton kernels take key-side gates only (gv must be None)")
    if gk is not None and gk.dim() == 3:
        fn = getattr(tk, f"{prefix}chunk_simple_gla")
        return fn(q, k, v, gk, scale, initial_state, output_final_state)
    if gk is not None and gk.dim() == 4:
        fn = getattr(tk, f"{prefix}chunk_gla")
        return fn(q, k, v, gk, scale, initial_state, output_final_state)
    raise ValueError("gk must have shape [B, T, H] or [B, T, H, K] for the Triton kernels")


register_mechanism(
    Mechanism(
        name="gated_linear_attention",
        chapter=4,
        summary="S_t = (exp(gk_t) exp(gv_t)^T) ⊙ S_{t-1} + k_t v_t^T",
        make_inputs=f"{_MOD}.registrations:make_inputs",
        reference=f"{_MOD}.numpy_ref:gated_linear_attention_recurrent",
        cases=CASES,
        fp32_inputs=("gk", "gv", "initial_state"),
    )
)

for _form in ("recurrent", "parallel", "chunkwise"):
    register(
        Impl(
            "gated_linear_attention",
            "numpy",
            _form,
            f"{_MOD}.numpy_ref:gated_linear_attention_{_form}",
            kwargs={"chunk_size": 16} if _form == "chunkwise" else {},
        )
    )
    register(
        Impl(
            "gated_linear_attention",
            "torch",
            _form,
            f"{_MOD}.torch_impl:gated_linear_attention_{_form}",
            kwargs={"chunk_size": 16} if _form == "chunkwise" else {},
            differentiable=True,
        )
    )

register(
    Impl(
        "gated_linear_attention",
        "triton",
        "chunk",
        f"{_MOD}.registrations:triton_chunk",
        cases=("scalar", "vector"),
        differentiable=True,
    )
)

register(
    Impl(
        "gated_linear_attention",
        "triton",
        "fused_chunk",
        f"{_MOD}.registrations:triton_fused_chunk",
        cases=("scalar", "vector"),
        differentiable=True,
    )
)

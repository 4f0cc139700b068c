"""Registry entries for chapter 07: the selective scan and the Mamba block.

Letters as in :class:`course_lib.registry.Sizes` (SSM family): ``B`` batch, ``T`` time,
``D`` channels (the Mamba block's ``d_model``), ``N`` state size.
"""

from __future__ import annotations

import math
from typing import Any

from course_lib.registry import Impl, Mechanism, Sizes, register, register_mechanism

_NP = "course_lib.selective_ssm.numpy_ref"
_TORCH = "course_lib.selective_ssm.torch_impl"
_TRITON = "course_lib.selective_ssm.triton_kernels"


def make_inputs(rand: Any, sizes: Sizes, case: str) -> dict[str, Any]:
    """Selective-scan inputs. ``plain``: positive ``delta`` used as the step size as is.
    ``full``: raw ``delta`` through ``softplus(delta + delta_bias)``, skip ``D``, gate
    ``z`` and an initial state. Both ask for the last state."""
    B, T, D, N = sizes.B, sizes.T, sizes.D, sizes.N
    inputs: dict[str, Any] = {
        "u": rand.normal((B, T, D)),
        "A": rand.uniform((D, N), -1.5, -0.2),
        "B": rand.normal((B, T, N)),
        "C": rand.normal((B, T, N)),
        "return_last_state": True,
    }
    if case == "plain":
        inputs["delta"] = rand.uniform((B, T, D), 0.05, 1.0)
        return inputs
    inputs.update(
        delta=rand.normal((B, T, D), 0.5),
        D=rand.normal((D,)),
        z=rand.normal((B, T, D)),
        delta_bias=rand.normal((D,), 0.5),
        delta_softplus=True,
        initial_state=rand.normal((B, D, N)),
    )
    return inputs


def make_block_inputs(rand: Any, sizes: Sizes, case: str) -> dict[str, Any]:
    """``x`` [B, T, M] with ``M = sizes.D`` and random parameters of one Mamba block
    (expand 2, conv width 4, state ``sizes.N``, ``dt_rank = ceil(M / 16)``)."""
    M, N, W = sizes.D, sizes.N, 4
    Di, R = 2 * M, math.ceil(M / 16)
    params = {
        "in_proj_weight": rand.normal((2 * Di, M), M**-0.5),
        "conv1d_weight": rand.normal((Di, W), 0.5),
        "conv1d_bias": rand.normal((Di,), 0.1),
        "x_proj_weight": rand.normal((R + 2 * N, Di), Di**-0.5),
        "dt_proj_weight": rand.normal((Di, R), R**-0.5),
        "dt_proj_bias": rand.uniform((Di,), -4.0, -1.0),
        "A_log": rand.uniform((Di, N), -0.5, 1.5),
        "D": rand.normal((Di,)),
        "out_proj_weight": rand.normal((M, Di), Di**-0.5),
    }
    return {"x": rand.normal((sizes.B, sizes.T, M)), "params": params}


register_mechanism(
    Mechanism(
        name="selective_scan",
        chapter=7,
        summary="h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t h_t + D u_t (Mamba)",
        make_inputs=f"{__name__}:make_inputs",
        reference=f"{_NP}:selective_scan_sequential",
        cases=("plain", "full"),
        fp32_inputs=("A",),
        family="ssm",
    )
)
register_mechanism(
    Mechanism(
        name="mamba_block",
        chapter=7,
        summary="in_proj -> causal conv -> SiLU -> selective scan -> gate silu(z) -> out_proj",
        make_inputs=f"{__name__}:make_block_inputs",
        reference=f"{_NP}:mamba_block_forward",
        family="ssm",
    )
)

for _form in ("sequential", "parallel", "chunked"):
    register(
        Impl(
            "selective_scan",
            "numpy",
            _form,
            f"{_NP}:selective_scan_{_form}",
            kwargs={"chunk_size": 16} if _form == "chunked" else {},
        )
    )
    register(
        Impl(
            "selective_scan",
            "torch",
            _form,
            f"{_TORCH}:selective_scan_{_form}",
            kwargs={"chunk_size": 16} if _form == "chunked" else {},
            differentiable=True,
        )
    )
register(Impl("selective_scan", "triton", "scan", f"{_TRITON}:selective_scan", differentiable=True))
# the same backward; a forward that scans blocks of steps in parallel (associative scan)
register(
    Impl(
        "selective_scan",
        "triton",
        "block_scan",
        f"{_TRITON}:selective_scan_blockwise",
        differentiable=True,
    )
)
# the block forward again, with a backward that also scans blocks of steps (reverse scan)
register(
    Impl(
        "selective_scan",
        "triton",
        "block_adjoint",
        f"{_TRITON}:selective_scan_block_adjoint",
        differentiable=True,
    )
)

register(Impl("mamba_block", "numpy", "forward", f"{_NP}:mamba_block_forward"))
register(Impl("mamba_block", "torch", "forward", f"{_TORCH}:mamba_block_forward"))

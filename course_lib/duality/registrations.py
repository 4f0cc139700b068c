"""Registry entries for chapter 08: one SSD layer, three forms, two backends.

Letters as in :class:`course_lib.registry.Sizes`: ``B`` batch, ``T`` time, ``H`` heads,
``V`` channels per head (``P`` in Mamba-2), ``K`` state size (``N`` in Mamba-2).
"""

from __future__ import annotations

from typing import Any

from course_lib.registry import Impl, Mechanism, Sizes, register, register_mechanism

_NP = "course_lib.duality.numpy_ref"
_TORCH = "course_lib.duality.torch_impl"


def make_inputs(rand: Any, sizes: Sizes, case: str) -> dict[str, Any]:
    """``heads``: ``B, C`` per head [B, T, H, K]; ``shared``: one ``B, C`` [B, T, K] for all
    heads (Mamba-2's single group). Positive ``dt``, negative ``A``, an initial state."""
    B, T, H, N, P = sizes.B, sizes.T, sizes.H, sizes.K, sizes.V
    bc_shape = (B, T, H, N) if case == "heads" else (B, T, N)
    return {
        "x": rand.normal((B, T, H, P)),
        "dt": rand.uniform((B, T, H), 0.01, 0.5),
        "A": rand.uniform((H,), -2.0, -0.1),
        "B": rand.normal(bc_shape, N**-0.5),
        "C": rand.normal(bc_shape, N**-0.5),
        "initial_state": rand.normal((B, H, N, P)),
        "output_final_state": True,
    }


register_mechanism(
    Mechanism(
        name="ssd",
        chapter=8,
        summary="h_t = exp(dt_t a) h_{t-1} + dt_t B_t x_t^T = GLA with q=C, k=B, v=dt x",
        make_inputs=f"{__name__}:make_inputs",
        reference=f"{_NP}:ssd_scan",
        cases=("heads", "shared"),
        fp32_inputs=("A",),
        family="attention",
    )
)

for _form, _fn in (("scan", "ssd_scan"), ("gla", "ssd_as_gla"), ("quadratic", "ssd_quadratic")):
    register(Impl("ssd", "numpy", _form, f"{_NP}:{_fn}"))
    register(Impl("ssd", "torch", _form, f"{_TORCH}:{_fn}", differentiable=True))

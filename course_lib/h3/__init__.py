"""Chapter 06: the H3 layer (Fu et al. 2023), a shift SSM and a diagonal SSM with gates.

``numpy_ref`` is the float64 reference; ``torch_impl`` has the same functions, vectorised
and differentiable. The numpy names are re-exported here.
"""

from course_lib.h3.numpy_ref import (
    h3_fft,
    h3_forward,
    h3_init_state,
    h3_recurrent,
    h3_step,
    init_h3_params,
    shift_ssm,
    shift_ssm_matrices,
    shift_ssm_recurrent,
)

__all__ = [
    "h3_fft",
    "h3_forward",
    "h3_init_state",
    "h3_recurrent",
    "h3_step",
    "init_h3_params",
    "shift_ssm",
    "shift_ssm_matrices",
    "shift_ssm_recurrent",
]

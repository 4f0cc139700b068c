"""Chapter 05: linear time-invariant state space models (S4, S4D).

``numpy_ref`` is the float64 reference (discretisation, kernels, the recurrent,
convolution and FFT forms, S4D initialisations); ``torch_impl`` has the same functions,
vectorised and differentiable. The numpy names are re-exported here.
"""

from course_lib.ssm.numpy_ref import (
    causal_conv,
    discretize,
    discretize_bilinear,
    discretize_zoh,
    expm,
    fft_conv,
    impulse_response,
    log_dt_init,
    lti_ssm_convolution,
    lti_ssm_fft,
    lti_ssm_recurrent,
    poles,
    s4d_inv_init,
    s4d_lin_init,
    s4d_real_init,
    ssm_kernel,
    state_kernel,
)

__all__ = [
    "causal_conv",
    "discretize",
    "discretize_bilinear",
    "discretize_zoh",
    "expm",
    "fft_conv",
    "impulse_response",
    "log_dt_init",
    "lti_ssm_convolution",
    "lti_ssm_fft",
    "lti_ssm_recurrent",
    "poles",
    "s4d_inv_init",
    "s4d_lin_init",
    "s4d_real_init",
    "ssm_kernel",
    "state_kernel",
]

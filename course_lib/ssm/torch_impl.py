"""Linear time-invariant state space models in PyTorch (chapter 05).

Glossary of letters (channels-last):

    B  batch size (the input matrix is the argument ``B``)
    T  sequence length
    D  channels, each its own single-input single-output SSM
    N  state size of one channel
    L  kernel length

Same functions, names and signatures as :mod:`course_lib.ssm.numpy_ref` (read its
docstring for the equations), vectorised and differentiable:

* discretisation uses ``torch.linalg.matrix_exp`` (dense ZOH, through the augmented matrix
  ``[[A, B], [0, 0]]``) and ``torch.linalg.solve`` (dense bilinear);
* the powers ``Abar^j`` are a cumulative product (diagonal A) or doubling,
  ``[v, Av, ..., A^{m-1} v] -> [.., A^m v, ..., A^{2m-1} v]`` (dense A), so no Python loop
  over time except in the recurrent form, which is a loop by definition;
* the convolution form multiplies by the Toeplitz matrix of the kernel (O(T^2)); the FFT
  form uses ``torch.fft.rfft`` with zero padding (O(T log T)).

Computation is in float64 for float64 inputs and float32 otherwise (complex128 / complex64
for complex systems), and ``y`` comes back in the dtype of ``x``.

Why no Triton kernel: a time-invariant filter makes the layer one long convolution, and
the FFT form (cuFFT on a GPU) already costs O(T log T); a hand-written scan would redo the
O(T) sequential recurrence. The scan kernel belongs to chapter 07, where selectivity makes
the filter depend on time and the convolution view is lost.
"""

from __future__ import annotations

import torch

from course_lib import checks
from course_lib.ssm.numpy_ref import METHODS, check_lti_inputs, check_system

# --------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64/complex128 inputs, float32 for everything else (fp32 accumulation)."""
    return torch.float64 if t.dtype in (torch.float64, torch.complex128) else torch.float32


def _complex_of(real: torch.dtype) -> torch.dtype:
    return torch.complex128 if real == torch.float64 else torch.complex64


def _cast(A: torch.Tensor, real: torch.dtype, *ms: torch.Tensor | None):
    """A and the others in the compute dtype: complex when A is complex, else real."""
    dtype = _complex_of(real) if A.is_complex() else real
    return tuple(None if m is None else m.to(dtype) for m in (A, *ms))


# --------------------------------------------------------------------------------------
# initialisations: torch tensors of the numpy reference's values
# --------------------------------------------------------------------------------------


def s4d_lin_init(D: int, N: int) -> torch.Tensor:
    """S4D-Lin ``A_n = -1/2 + i pi n``, complex128 [D, N] (see the numpy reference)."""
    from course_lib.ssm import numpy_ref

    return torch.from_numpy(numpy_ref.s4d_lin_init(D, N))


def s4d_inv_init(D: int, N: int) -> torch.Tensor:
    """S4D-Inv, complex128 [D, N] (see the numpy reference)."""
    from course_lib.ssm import numpy_ref

    return torch.from_numpy(numpy_ref.s4d_inv_init(D, N))


def s4d_real_init(D: int, N: int) -> torch.Tensor:
    """S4D-Real ``A_n = -(n + 1)``, float64 [D, N]."""
    from course_lib.ssm import numpy_ref

    return torch.from_numpy(numpy_ref.s4d_real_init(D, N))


def log_dt_init(D: int, dt_min: float = 1e-3, dt_max: float = 1e-1, seed: int = 0) -> torch.Tensor:
    """log dt ~ Uniform(log dt_min, log dt_max), float64 [D] (same draws as numpy)."""
    from course_lib.ssm import numpy_ref

    return torch.from_numpy(numpy_ref.log_dt_init(D, dt_min, dt_max, seed))


# --------------------------------------------------------------------------------------
# discretisation
# --------------------------------------------------------------------------------------


def _zoh(A, B, dt):
    if A.dim() == 2:
        dtA = dt[:, None] * A  # [D, N]
        zero = A == 0
        phi = torch.where(zero, dt[:, None].to(A.dtype), torch.expm1(dtA) / torch.where(zero, 1, A))
        return torch.exp(dtA), phi * B
    Dn, N = B.shape
    top = torch.cat([A, B[:, :, None]], dim=2)  # [D, N, N+1]
    aug = torch.cat([top, top.new_zeros(Dn, 1, N + 1)], dim=1)  # [D, N+1, N+1]
    E = torch.linalg.matrix_exp(dt[:, None, None] * aug)
    return E[:, :N, :N], E[:, :N, N]


def _bilinear(A, B, dt):
    if A.dim() == 2:
        half = dt[:, None] / 2 * A  # [D, N]
        return (1 + half) / (1 - half), dt[:, None] * B / (1 - half)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    half = dt[:, None, None] / 2 * A  # [D, N, N]
    Abar = torch.linalg.solve(eye - half, eye + half)
    Bbar = torch.linalg.solve(eye - half, (dt[:, None] * B)[..., None])[..., 0]
    return Abar, Bbar


def _discretize(A, B, dt, method):
    return (_zoh if method == "zoh" else _bilinear)(A, B, dt)


def discretize_zoh(
    A: torch.Tensor, B: torch.Tensor, dt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-order hold: ``Abar = exp(dt A)``, ``Bbar = A^{-1}(exp(dt A) - I) B``."""
    check_system(A, B, dt)
    real = _real_dtype(A)
    A, B = _cast(A, real, B)
    return _zoh(A, B, dt.to(real))


def discretize_bilinear(
    A: torch.Tensor, B: torch.Tensor, dt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear: ``Abar = (I - dt/2 A)^{-1}(I + dt/2 A)``, ``Bbar = (I - dt/2 A)^{-1} dt B``."""
    check_system(A, B, dt)
    real = _real_dtype(A)
    A, B = _cast(A, real, B)
    return _bilinear(A, B, dt.to(real))


def discretize(
    A: torch.Tensor, B: torch.Tensor, dt: torch.Tensor, method: str = "zoh"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``discretize_zoh`` or ``discretize_bilinear`` by name."""
    checks.check_choice("method", method, METHODS)
    return (discretize_zoh if method == "zoh" else discretize_bilinear)(A, B, dt)


def poles(A: torch.Tensor, dt: torch.Tensor, method: str = "zoh") -> torch.Tensor:
    """Eigenvalues of ``Abar``, ``[D, N]`` (the N kept poles of a complex system)."""
    checks.check_choice("method", method, METHODS)
    Abar, _ = discretize(A, A.new_zeros(A.shape[:2]), dt, method)
    return Abar if Abar.dim() == 2 else torch.linalg.eigvals(Abar)


# --------------------------------------------------------------------------------------
# kernels and convolutions
# --------------------------------------------------------------------------------------


def _power_apply(Abar: torch.Tensor, v: torch.Tensor, L: int) -> torch.Tensor:
    """``[v, Abar v, ..., Abar^{L-1} v]`` as ``[D, L, N]``, without a loop over L.

    Diagonal Abar: a cumulative product of Abar. Dense Abar: doubling, log2(L) matmuls.
    """
    Dn, N = v.shape
    if Abar.dim() == 2:
        steps = torch.cat([torch.ones_like(Abar)[:, None], Abar[:, None].expand(Dn, L - 1, N)], 1)
        return torch.cumprod(steps, dim=1) * v[:, None]  # [D, L, N]
    P, Apow = v[:, None], Abar  # [D, 1, N], Abar^1
    while P.shape[1] < L:
        P = torch.cat([P, torch.einsum("dnm,dlm->dln", Apow, P)], dim=1)  # [D, 2l, N]
        Apow = Apow @ Apow
    return P[:, :L]


def _transpose(Abar: torch.Tensor) -> torch.Tensor:
    return Abar if Abar.dim() == 2 else Abar.transpose(-1, -2)


def _readout(y: torch.Tensor, complex_: bool) -> torch.Tensor:
    return 2 * y.real if complex_ else y


def state_kernel(Abar: torch.Tensor, Bbar: torch.Tensor, L: int) -> torch.Tensor:
    """``P_j = Abar^j Bbar``, j = 0..L-1, ``[D, L, N]``."""
    L = checks.check_positive_int("L", L)
    return _power_apply(Abar, Bbar, L)


def ssm_kernel(Abar: torch.Tensor, Bbar: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """``K_j = C Abar^j Bbar`` (``2 Re(...)`` for complex Abar), ``[D, L]`` real."""
    P = state_kernel(Abar, Bbar, L)  # [D, L, N]
    return _readout(torch.einsum("dn,dln->dl", C.to(P.dtype), P), Abar.is_complex())


def _check_conv(x: torch.Tensor, K: torch.Tensor) -> None:
    dims = checks.check_shapes(x=(x, "B T D"))
    checks.check_shapes(dims, K=(K, "D L"))


def causal_conv(x: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """``y_t = sum_{j=0}^{t} K_j x_{t-j}`` as a product with the [D, T, T] Toeplitz matrix."""
    _check_conv(x, K)
    T, L = x.shape[1], K.shape[1]
    real = _real_dtype(x)
    lag = torch.arange(T, device=x.device)[:, None] - torch.arange(T, device=x.device)  # t - s
    valid = (lag >= 0) & (lag < L)
    Kmat = K.to(real)[:, lag.clamp(0, L - 1)] * valid  # [D, T, T]
    y = torch.einsum("dts,bsd->btd", Kmat, x.to(real))
    return y.to(x.dtype)


def fft_conv(x: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """The causal convolution by FFT, zero-padded to ``n = T + L`` (2T for L = T)."""
    _check_conv(x, K)
    T = x.shape[1]
    real = _real_dtype(x)
    K = K[:, :T].to(real)  # [D, L] with L <= T
    n = T + K.shape[1]
    xf = torch.fft.rfft(x.to(real), n=n, dim=1)  # [B, n//2+1, D]
    kf = torch.fft.rfft(K, n=n, dim=1).T  # [n//2+1, D]
    return torch.fft.irfft(xf * kf, n=n, dim=1)[:, :T].to(x.dtype)  # [B, T, D]


def impulse_response(
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    L: int,
    method: str = "zoh",
    D: torch.Tensor | None = None,
) -> torch.Tensor:
    """Output for x = (1, 0, 0, ...): ``K_j`` plus ``D`` at j = 0, ``[D, L]``."""
    checks.check_choice("method", method, METHODS)
    check_system(A, B, dt, C)
    L = checks.check_positive_int("L", L)
    Abar, Bbar = discretize(A, B, dt, method)
    K = ssm_kernel(Abar, Bbar, C, L)
    if D is not None:
        checks.check_shapes(D=(D, "D"), K=(K, "D L"))
        K = torch.cat([K[:, :1] + D.to(K.dtype)[:, None], K[:, 1:]], dim=1)
    return K


# --------------------------------------------------------------------------------------
# the three forms
# --------------------------------------------------------------------------------------


def _prepare(x, A, B, C, dt, D, method, initial_state):
    check_lti_inputs(x, A, B, C, dt, D, method, initial_state)
    real = _real_dtype(x)
    A, B, C, h0 = _cast(A, real, B, C, initial_state)
    Abar, Bbar = _discretize(A, B, dt.to(real), method)
    skip = x.new_zeros(x.shape[2], dtype=real) if D is None else D.to(real)
    return x.to(real), Abar, Bbar, C, skip, h0


def lti_ssm_recurrent(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    D: torch.Tensor | None = None,
    method: str = "zoh",
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``h_t = Abar h_{t-1} + Bbar x_t``, ``y_t = C h_t + D x_t``, a loop over t.

    x [B, T, D]; A [D, N] or [D, N, N]; B, C [D, N]; dt, D [D]; initial_state [B, D, N].
    Returns ``(y [B, T, D], final_state [B, D, N] or None)``.
    """
    xc, Abar, Bbar, C, skip, h0 = _prepare(x, A, B, C, dt, D, method, initial_state)
    Bsz, _, Dn = xc.shape
    complex_ = Abar.is_complex()
    h = xc.new_zeros((Bsz, Dn, Bbar.shape[1]), dtype=Bbar.dtype) if h0 is None else h0
    ys = []
    for x_t in xc.unbind(1):  # not xc[:, t], whose backward writes all of xc at every t
        Ah = Abar * h if Abar.dim() == 2 else torch.einsum("dnm,bdm->bdn", Abar, h)
        h = Ah + Bbar * x_t[:, :, None]  # [B, D, N]
        ys.append(_readout(torch.einsum("dn,bdn->bd", C, h), complex_) + skip * x_t)
    y = torch.stack(ys, dim=1)  # [B, T, D]
    return y.to(x.dtype), (h if output_final_state else None)


def _lti_by_conv(conv, x, A, B, C, dt, D, method, initial_state, output_final_state):
    xc, Abar, Bbar, C, skip, h0 = _prepare(x, A, B, C, dt, D, method, initial_state)
    T = xc.shape[1]
    complex_ = Abar.is_complex()
    P = _power_apply(Abar, Bbar, T)  # [D, T, N], Abar^j Bbar
    K = _readout(torch.einsum("dn,dln->dl", C, P), complex_)  # [D, T]
    y = conv(xc, K) + skip * xc
    if h0 is not None:  # free response C Abar^{t+1} h_{-1}
        R = _power_apply(_transpose(Abar), C, T + 1)[:, 1:]  # [D, T, N], C Abar^{t+1}
        y = y + _readout(torch.einsum("dtn,bdn->btd", R, h0), complex_)
    final = None
    if output_final_state:
        final = torch.einsum("dsn,bsd->bdn", P.flip(1), xc.to(P.dtype))  # sum P_{T-1-s} x_s
        if h0 is not None:
            AT = Abar**T if Abar.dim() == 2 else torch.linalg.matrix_power(Abar, T)
            final = final + (AT * h0 if Abar.dim() == 2 else torch.einsum("dnm,bdm->bdn", AT, h0))
    return y.to(x.dtype), final


def lti_ssm_convolution(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    D: torch.Tensor | None = None,
    method: str = "zoh",
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unrolled form with the Toeplitz matrix of ``K_j = C Abar^j Bbar``, O(T^2)."""
    return _lti_by_conv(causal_conv, x, A, B, C, dt, D, method, initial_state, output_final_state)


def lti_ssm_fft(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    D: torch.Tensor | None = None,
    method: str = "zoh",
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The convolution through ``torch.fft``, O(T log T)."""
    return _lti_by_conv(fft_conv, x, A, B, C, dt, D, method, initial_state, output_final_state)

"""Linear time-invariant (LTI) state space models: the float64 reference (chapter 05).

Glossary of letters (channels-last, as the rest of the SSM family):

    B  batch size (as a dimension letter; the input matrix is the argument ``B``)
    T  sequence length (number of time steps)
    D  channels; every channel is its own single-input single-output SSM
    N  state size of one channel
    L  length of a convolution kernel (L >= T is never needed; taps past T do nothing)

Continuous system per channel (Gu et al. 2022, S4; Gu et al. 2022, S4D):

    h'(t) = A h(t) + B x(t),        y(t) = C h(t) + D x(t)

with ``A`` either diagonal, stored as its diagonal ``[D, N]`` (real, or complex as in S4D),
or dense ``[D, N, N]``; ``B``, ``C`` ``[D, N]``; ``D`` ``[D]`` the skip (feed-through)
term, named ``D`` as in the papers and in mamba_ssm's selective scan (its shape letter is
the channel count, which is the same letter by coincidence); ``dt`` ``[D]`` the positive
step sizes. A step size turns it into a discrete recurrence (discretisation):

    h_t = Abar h_{t-1} + Bbar x_t,   y_t = C h_t + D x_t,     h_{-1} = initial_state (or 0)

* zero-order hold (ZOH), exact when x is constant over each step:
  ``Abar = exp(dt A)``, ``Bbar = A^{-1} (exp(dt A) - I) B``;
* bilinear (Tustin): ``Abar = (I - dt/2 A)^{-1} (I + dt/2 A)``, ``Bbar = (I - dt/2 A)^{-1} dt B``.

Complex systems. When ``A`` is complex we follow S4D: the N stored modes stand for N
conjugate pairs, i.e. a real system of size 2N, so the output is ``y = 2 Re(C h) + D x``.
``B`` and ``C`` may then be complex (they are promoted); with a real ``A`` they must be real.

The same map x -> y three ways (they agree to rounding, the tests check it):

* recurrent: the loop above, O(T N) per channel, O(N) memory per channel at decode time;
* convolution: unrolled, ``y_t = sum_j K_j x_{t-j} + D x_t`` with the kernel
  ``K_j = C Abar^j Bbar`` (times 2 Re for complex systems), computed directly in O(T^2);
* FFT: the same convolution through the FFT with zero padding, O(T log T).

An initial state adds the free response ``C Abar^{t+1} h_{-1}`` to the output, and the final
state has the closed form ``h_{T-1} = Abar^T h_{-1} + sum_s Abar^{T-1-s} Bbar x_s``; so all three
forms accept ``initial_state`` and return the final state when asked.

Dense ``A`` and the matrix exponential. scipy is not a dependency, so the reference has its
own :func:`expm` (scaling and squaring with a degree-18 Taylor polynomial), and dense ZOH
uses the augmented-matrix identity ``exp(dt [[A, B], [0, 0]]) = [[Abar, Bbar], [0, 1]]``,
which needs no inverse of A (A may be singular).

Why no Triton kernel here: the filter is time-invariant, so the whole layer is one long
convolution, and PyTorch's FFT already does it in O(T log T); a custom scan would do the
O(T) recurrence that the FFT form exists to avoid. (Selective SSMs, chapter 07, lose the
convolution view; that is where the course writes a scan kernel.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib import checks

METHODS = ("zoh", "bilinear")

# --------------------------------------------------------------------------------------
# input checks, shared with torch_impl (same messages for every backend)
# --------------------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def is_complex(x: Any) -> bool:
    """True for a complex numpy array or torch tensor."""
    if _is_torch(x):
        return bool(x.is_complex())
    return bool(np.iscomplexobj(x))


def _all_finite(x: Any) -> bool:
    if _is_torch(x):
        return bool(x.detach().isfinite().all())
    return bool(np.all(np.isfinite(x)))


def check_dt(dt: Any, dims: dict[str, int], name: str = "dt") -> None:
    """``dt`` must be a real ``[D]`` array of positive finite step sizes."""
    checks.check_shapes(dims, **{name: (dt, "D")})
    if not _all_finite(dt):
        raise ValueError(f"{name} (the step sizes) must be finite; it holds inf or NaN")
    low = float((dt.detach() if _is_torch(dt) else dt).min()) if dt.shape[0] else 1.0
    if low <= 0:
        raise ValueError(
            f"{name} (the step sizes) must be positive; its smallest entry is {low:.4g}"
        )


def check_system(
    A: Any, B: Any, dt: Any, C: Any = None, dims: dict[str, int] | None = None
) -> dict[str, int]:
    """Check ``A`` ([D, N] diagonal or [D, N, N] dense), ``B``, ``C`` ([D, N]) and ``dt`` [D].

    ``dims`` are sizes bound earlier (``D`` from ``x``); returns the bound sizes. A real
    ``A`` needs real ``B`` and ``C``.
    """
    checks.check_array("A", A, allow_complex=True)
    if len(A.shape) not in (2, 3):
        raise ValueError(
            "A must have 2 dimensions [D, N] (its diagonal) or 3 dimensions [D, N, N] "
            f"(dense), got shape {tuple(A.shape)}"
        )
    spec = "D N" if len(A.shape) == 2 else "D N N"
    dims = checks.check_shapes(dims, A=(A, spec), B=(B, "D N"), C=(C, "D N"), allow_complex=True)
    if not is_complex(A):
        for name, m in (("B", B), ("C", C)):
            if m is not None and is_complex(m):
                raise TypeError(
                    f"{name} is complex but A is real: pass a complex A (an S4D-style "
                    f"system with conjugate pairs) or a real {name}"
                )
    check_dt(dt, dims)
    return dims


def check_lti_inputs(
    x: Any,
    A: Any,
    B: Any,
    C: Any,
    dt: Any,
    D: Any = None,
    method: str = "zoh",
    initial_state: Any = None,
) -> dict[str, int]:
    """All checks of the three forms, in one place, for numpy arrays and torch tensors.

    x must be real ``[B, T, D]``; the system as in :func:`check_system`; D ``[D]`` real;
    initial_state ``[B, D, N]``, complex only when A is.
    """
    checks.check_choice("method", method, METHODS)
    dims = checks.check_shapes(x=(x, "B T D"))
    dims = check_system(A, B, dt, C, dims)
    dims = checks.check_shapes(dims, D=(D, "D"))
    dims = checks.check_shapes(dims, initial_state=(initial_state, "B D N"), allow_complex=True)
    if initial_state is not None and is_complex(initial_state) and not is_complex(A):
        raise TypeError("initial_state is complex but A is real: a real system has a real state")
    return dims


# --------------------------------------------------------------------------------------
# initialisations (Gu et al. 2022, "On the Parameterization and Initialization of
# Diagonal State Space Models", S4D)
# --------------------------------------------------------------------------------------


def s4d_lin_init(D: int, N: int) -> np.ndarray:
    """S4D-Lin: ``A_n = -1/2 + i pi n``, n = 0..N-1, the same for every channel. [D, N] complex.

    The N complex modes stand for N conjugate pairs (a real state of size 2N).
    """
    D, N = checks.check_positive_int("D", D), checks.check_positive_int("N", N)
    a = -0.5 + 1j * np.pi * np.arange(N)
    return np.tile(a, (D, 1))  # [D, N]


def s4d_inv_init(D: int, N: int) -> np.ndarray:
    """S4D-Inv: ``A_n = -1/2 + i (M/pi) (M/(2n+1) - 1)`` with M = 2N the real state size.

    The imaginary parts (frequencies) fall off like 1/n, as in the S4D paper, whose N is
    the size of the real system (here 2N: N kept modes of N conjugate pairs). [D, N] complex.
    """
    D, N = checks.check_positive_int("D", D), checks.check_positive_int("N", N)
    M = 2 * N
    n = np.arange(N)
    a = -0.5 + 1j * (M / np.pi) * (M / (2 * n + 1) - 1)
    return np.tile(a, (D, 1))  # [D, N]


def s4d_real_init(D: int, N: int) -> np.ndarray:
    """S4D-Real: ``A_n = -(n + 1)``, n = 0..N-1, a real diagonal. [D, N]."""
    D, N = checks.check_positive_int("D", D), checks.check_positive_int("N", N)
    return np.tile(-(np.arange(N) + 1.0), (D, 1))  # [D, N]


def log_dt_init(D: int, dt_min: float = 1e-3, dt_max: float = 1e-1, seed: int = 0) -> np.ndarray:
    """``log dt ~ Uniform(log dt_min, log dt_max)`` per channel (S4/S4D). Returns log dt [D]."""
    D = checks.check_positive_int("D", D)
    dt_min = checks.check_positive_float("dt_min", dt_min)
    dt_max = checks.check_positive_float("dt_max", dt_max)
    if dt_min > dt_max:
        raise ValueError(f"dt_min must be <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    rng = np.random.default_rng(seed)
    return rng.uniform(np.log(dt_min), np.log(dt_max), size=D)


# --------------------------------------------------------------------------------------
# discretisation
# --------------------------------------------------------------------------------------


def expm(M: np.ndarray) -> np.ndarray:
    """Matrix exponential of ``M [..., n, n]`` by scaling and squaring.

    ``exp(M) = (exp(M / 2^s))^(2^s)`` with s chosen so that ``||M / 2^s||_1 <= 1/2``, where a
    degree-18 Taylor polynomial is accurate to float64 rounding (the remainder is below
    0.5^19 / 19! ~ 1e-23).
    """
    M = np.asarray(M)
    out = np.empty_like(M, dtype=np.result_type(M.dtype, np.float64))
    eye = np.eye(M.shape[-1])
    for idx in np.ndindex(M.shape[:-2]):
        m = M[idx]
        norm = float(np.abs(m).sum(axis=0).max()) if m.size else 0.0
        s = max(0, int(np.ceil(np.log2(norm / 0.5)))) if norm > 0 else 0
        m = m / 2.0**s
        term, total = eye.astype(out.dtype), eye.astype(out.dtype)
        for k in range(1, 19):
            term = term @ m / k
            total = total + term
        for _ in range(s):
            total = total @ total
        out[idx] = total
    return out


def _promote(A: np.ndarray, *ms: Any) -> tuple[Any, ...]:
    """float64 copies, complex128 when A is complex."""
    dtype = np.complex128 if np.iscomplexobj(A) else np.float64
    return tuple(None if m is None else np.asarray(m).astype(dtype) for m in (A, *ms))


def discretize_zoh(A: np.ndarray, B: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-order hold: ``Abar = exp(dt A)``, ``Bbar = A^{-1}(exp(dt A) - I) B``.

    Diagonal ``A [D, N]``: elementwise, with ``(exp(dt a) - 1)/a -> dt`` at a = 0.
    Dense ``A [D, N, N]``: ``exp(dt [[A, B], [0, 0]]) = [[Abar, Bbar], [0, 1]]`` (no inverse).
    Returns ``(Abar, Bbar)`` with the shapes of ``(A, B)``.
    """
    check_system(A, B, dt)
    A, B = _promote(A, B)
    dt = np.asarray(dt, dtype=np.float64)
    if A.ndim == 2:
        dtA = dt[:, None] * A  # [D, N]
        safe = np.where(A == 0, 1.0, A)
        phi = np.where(A == 0, dt[:, None], np.expm1(dtA) / safe)  # (e^{dt a} - 1)/a
        return np.exp(dtA), phi * B
    Dn, N = B.shape
    aug = np.zeros((Dn, N + 1, N + 1), dtype=A.dtype)
    aug[:, :N, :N] = A
    aug[:, :N, N] = B
    E = expm(dt[:, None, None] * aug)  # [D, N+1, N+1]
    return E[:, :N, :N], E[:, :N, N]


def discretize_bilinear(
    A: np.ndarray, B: np.ndarray, dt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear (Tustin) discretisation.

    ``Abar = (I - dt/2 A)^{-1}(I + dt/2 A)``, ``Bbar = (I - dt/2 A)^{-1} dt B``.

    Diagonal ``A [D, N]`` elementwise, dense ``A [D, N, N]`` by a linear solve.
    """
    check_system(A, B, dt)
    A, B = _promote(A, B)
    dt = np.asarray(dt, dtype=np.float64)
    if A.ndim == 2:
        half = dt[:, None] / 2 * A  # [D, N]
        return (1 + half) / (1 - half), dt[:, None] * B / (1 - half)
    eye = np.eye(A.shape[-1])
    half = dt[:, None, None] / 2 * A  # [D, N, N]
    Abar = np.linalg.solve(eye - half, eye + half)
    Bbar = np.linalg.solve(eye - half, (dt[:, None] * B)[..., None])[..., 0]
    return Abar, Bbar


def discretize(
    A: np.ndarray, B: np.ndarray, dt: np.ndarray, method: str = "zoh"
) -> tuple[np.ndarray, np.ndarray]:
    """``discretize_zoh`` or ``discretize_bilinear`` by name."""
    checks.check_choice("method", method, METHODS)
    return (discretize_zoh if method == "zoh" else discretize_bilinear)(A, B, dt)


def poles(A: np.ndarray, dt: np.ndarray, method: str = "zoh") -> np.ndarray:
    """Eigenvalues of ``Abar`` (the discrete poles), ``[D, N]``; inside the unit circle = stable.

    For a complex (S4D) system these are the N kept poles; their conjugates are poles too.
    """
    checks.check_choice("method", method, METHODS)
    Abar, _ = discretize(A, np.zeros(A.shape[:2], dtype=A.dtype), dt, method)
    return Abar if Abar.ndim == 2 else np.linalg.eigvals(Abar)


# --------------------------------------------------------------------------------------
# kernels and convolutions
# --------------------------------------------------------------------------------------


def _apply(Abar: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``Abar h`` for a diagonal ``[D, N]`` or dense ``[D, N, N]`` Abar; h is ``[..., D, N]``."""
    if Abar.ndim == 2:
        return Abar * h
    return np.einsum("dnm,...dm->...dn", Abar, h)


def _readout(C: np.ndarray, h: np.ndarray, complex_: bool) -> np.ndarray:
    """``C h`` summed over the state, ``2 Re(C h)`` for a complex (conjugate-pair) system."""
    y = np.einsum("dn,...dn->...d", C, h)
    return 2 * y.real if complex_ else y


def state_kernel(Abar: np.ndarray, Bbar: np.ndarray, L: int) -> np.ndarray:
    """``P_j = Abar^j Bbar`` for j = 0..L-1, ``[D, L, N]``: the state's impulse response."""
    P = np.empty((Bbar.shape[0], L, Bbar.shape[1]), dtype=np.result_type(Abar, Bbar))
    p = Bbar
    for j in range(L):
        P[:, j] = p
        p = _apply(Abar, p)
    return P


def ssm_kernel(Abar: np.ndarray, Bbar: np.ndarray, C: np.ndarray, L: int) -> np.ndarray:
    """The convolution kernel ``K_j = C Abar^j Bbar``, j = 0..L-1, ``[D, L]`` (real).

    For a complex system (complex Abar) ``K_j = 2 Re(C Abar^j Bbar)``.
    """
    L = checks.check_positive_int("L", L)
    complex_ = np.iscomplexobj(Abar)
    return _readout(C, state_kernel(Abar, Bbar, L).transpose(1, 0, 2), complex_).T  # [D, L]


def _check_conv(x: Any, K: Any) -> None:
    dims = checks.check_shapes(x=(x, "B T D"))
    checks.check_shapes(dims, K=(K, "D L"))


def causal_conv(x: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Direct causal convolution per channel: ``y_t = sum_{j=0}^{t} K_j x_{t-j}``. O(T L).

    x ``[B, T, D]``, K ``[D, L]`` (taps past t are not used) -> y ``[B, T, D]``.
    """
    _check_conv(x, K)
    T, L = x.shape[1], K.shape[1]
    y = np.zeros(x.shape, dtype=np.float64)
    for t in range(T):
        for j in range(min(t + 1, L)):
            y[:, t] += K[:, j] * x[:, t - j]
    return y


def fft_conv(x: np.ndarray, K: np.ndarray) -> np.ndarray:
    """The same causal convolution through the FFT, O(T log T).

    Both sequences are zero-padded to ``n = T + L`` (2T when L = T), so the circular
    convolution the FFT computes has no wrap-around in its first T outputs.
    """
    _check_conv(x, K)
    T = x.shape[1]
    K = K[:, :T]  # [D, L] with L <= T: later taps never reach an output
    n = T + K.shape[1]
    xf = np.fft.rfft(x, n=n, axis=1)  # [B, n//2+1, D]
    kf = np.fft.rfft(K, n=n, axis=1).T  # [n//2+1, D]
    return np.fft.irfft(xf * kf, n=n, axis=1)[:, :T]  # [B, T, D]


def impulse_response(
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    dt: np.ndarray,
    L: int,
    method: str = "zoh",
    D: np.ndarray | None = None,
) -> np.ndarray:
    """Output for the input x = (1, 0, 0, ...): ``K_j`` plus ``D`` at j = 0. ``[D, L]``."""
    checks.check_choice("method", method, METHODS)
    check_system(A, B, dt, C)
    Abar, Bbar = discretize(A, B, dt, method)
    K = ssm_kernel(Abar, Bbar, _promote(A, C)[1], L)
    if D is not None:
        checks.check_shapes(D=(D, "D"), K=(K, "D L"))
        K[:, 0] += D
    return K


# --------------------------------------------------------------------------------------
# the three forms
# --------------------------------------------------------------------------------------


def _prepare(x, A, B, C, dt, D, method, initial_state):
    """Validate, discretise and promote; returns everything the forms need."""
    check_lti_inputs(x, A, B, C, dt, D, method, initial_state)
    complex_ = np.iscomplexobj(A)
    Abar, Bbar = discretize(A, B, dt, method)
    _, C, h0 = _promote(A, C, initial_state)
    x = np.asarray(x, dtype=np.float64)
    skip = np.zeros(x.shape[2]) if D is None else np.asarray(D, dtype=np.float64)
    return x, Abar, Bbar, C, skip, h0, complex_


def lti_ssm_recurrent(
    x: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    dt: np.ndarray,
    D: np.ndarray | None = None,
    method: str = "zoh",
    initial_state: np.ndarray | None = None,
    output_final_state: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The recurrence, one step at a time.

    ``h_t = Abar h_{t-1} + Bbar x_t``, ``y_t = C h_t + D x_t`` (2 Re(C h_t) for complex A).

    x ``[B, T, D]`` real; A ``[D, N]`` or ``[D, N, N]``; B, C ``[D, N]``; dt, D ``[D]``;
    initial_state ``[B, D, N]``. Returns ``(y [B, T, D], final_state [B, D, N] or None)``;
    the state is complex when A is.
    """
    x, Abar, Bbar, C, skip, h0, complex_ = _prepare(x, A, B, C, dt, D, method, initial_state)
    Bsz, T, Dn = x.shape
    h = np.zeros((Bsz, Dn, Bbar.shape[1]), dtype=Bbar.dtype) if h0 is None else h0
    y = np.empty_like(x)
    for t in range(T):
        h = _apply(Abar, h) + Bbar * x[:, t, :, None]  # [B, D, N]
        y[:, t] = _readout(C, h, complex_) + skip * x[:, t]
    return y, (h if output_final_state else None)


def _free_response(Abar, C, h0, T, complex_):
    """Output of the zero-input system started from h_{-1}: ``C Abar^{t+1} h_{-1}``. [B, T, D]."""
    y = np.empty((h0.shape[0], T, h0.shape[1]))
    h = h0
    for t in range(T):
        h = _apply(Abar, h)
        y[:, t] = _readout(C, h, complex_)
    return y


def _final_state(Abar, Bbar, x, h0):
    """Closed form ``h_{T-1} = Abar^T h_{-1} + sum_s Abar^{T-1-s} Bbar x_s``. [B, D, N]."""
    T = x.shape[1]
    P = state_kernel(Abar, Bbar, T)  # [D, T, N]
    h = np.einsum("dsn,bsd->bdn", P[:, ::-1], x)  # P_{T-1-s} x_s
    if h0 is not None:
        hp = h0
        for _ in range(T):
            hp = _apply(Abar, hp)
        h = h + hp
    return h


def _lti_by_conv(conv, x, A, B, C, dt, D, method, initial_state, output_final_state):
    x, Abar, Bbar, C, skip, h0, complex_ = _prepare(x, A, B, C, dt, D, method, initial_state)
    T = x.shape[1]
    K = ssm_kernel(Abar, Bbar, C, T)  # [D, T]
    y = conv(x, K) + skip * x
    if h0 is not None:
        y = y + _free_response(Abar, C, h0, T, complex_)
    final = _final_state(Abar, Bbar, x, h0) if output_final_state else None
    return y, final


def lti_ssm_convolution(
    x: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    dt: np.ndarray,
    D: np.ndarray | None = None,
    method: str = "zoh",
    initial_state: np.ndarray | None = None,
    output_final_state: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Unrolled: ``y_t = sum_{j<=t} K_j x_{t-j} + D x_t (+ C Abar^{t+1} h_{-1})``, direct O(T^2).

    Same arguments and outputs as :func:`lti_ssm_recurrent`; the final state in closed form.
    """
    return _lti_by_conv(causal_conv, x, A, B, C, dt, D, method, initial_state, output_final_state)


def lti_ssm_fft(
    x: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    dt: np.ndarray,
    D: np.ndarray | None = None,
    method: str = "zoh",
    initial_state: np.ndarray | None = None,
    output_final_state: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The convolution form through the FFT, O(T log T). Same arguments and outputs."""
    return _lti_by_conv(fft_conv, x, A, B, C, dt, D, method, initial_state, output_final_state)

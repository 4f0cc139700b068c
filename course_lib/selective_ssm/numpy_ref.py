"""Selective state space model (Mamba, Gu & Dao 2023): float64 numpy reference.

Glossary of dimension letters (channels-last, as mamba_ssm's selective scan):

* ``B`` batch (lowercase ``b`` in loops; the input matrix is the argument ``B``)
* ``T`` time steps
* ``D`` channels (``d_inner`` inside the Mamba block; the skip vector is the argument ``D``)
* ``N`` state size per channel
* ``M`` model width ``d_model`` of the Mamba block, ``R`` the rank ``dt_rank`` of the
  Delta projection, ``W`` the causal convolution width ``d_conv``

The selective scan (Gu & Dao 2023, Algorithm 2) makes the step size ``Delta_t``, the input
matrix ``B_t`` and the output matrix ``C_t`` functions of the input, then discretises the
diagonal continuous system ``h' = A h + B u`` with zero-order hold on ``A`` and Euler on
``B`` (the simplification the paper uses):

    dt_t      = softplus(delta_t + delta_bias)          (or delta_t + delta_bias)
    h_t       = exp(dt_t A) * h_{t-1} + (dt_t B_t) u_t  # [D, N] per batch element
    y_t       = h_t C_t + D * u_t                       # [D]
    out_t     = y_t * silu(z_t)                         # when a gate z is given

Every channel ``d`` has its own ``N`` states and its own row ``A[d]``; ``B_t`` and ``C_t``
are shared by the channels. Because the multiplier ``exp(dt_t A)`` changes with ``t`` the
recurrence is no longer a convolution; it is a first-order linear recurrence, which an
associative scan on pairs ``(a, b)`` evaluates in ``log2(T)`` parallel steps (Blelloch
1990; Martin & Cundy 2018; Smith et al. 2023 for S5).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from course_lib import checks

ScanResult = Any  # np.ndarray, or (out, last_state) when return_last_state


# --------------------------------------------------------------------------------------
# Input checks shared with the torch and Triton backends
# --------------------------------------------------------------------------------------


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_scan_inputs(
    u: Any,
    delta: Any,
    A: Any,
    B: Any,
    C: Any,
    D: Any = None,
    z: Any = None,
    delta_bias: Any = None,
    delta_softplus: Any = False,
    initial_state: Any = None,
    return_last_state: Any = False,
) -> dict[str, int]:
    """Validate the selective-scan arguments (every backend calls this); return the sizes."""
    dims = checks.check_shapes(
        u=(u, "B T D"),
        delta=(delta, "B T D"),
        B=(B, "B T N"),
        C=(C, "B T N"),
        A=(A, "D N"),
        D=(D, "D"),
        z=(z, "B T D"),
        delta_bias=(delta_bias, "D"),
        initial_state=(initial_state, "B D N"),
    )
    if dims["T"] < 1:
        raise ValueError(f"u must have at least one time step, got shape {tuple(u.shape)}")
    _check_bool("delta_softplus", delta_softplus)
    _check_bool("return_last_state", return_last_state)
    return dims


def check_step_inputs(
    u_t: Any,
    delta_t: Any,
    A: Any,
    B_t: Any,
    C_t: Any,
    state: Any,
    D: Any = None,
    z_t: Any = None,
    delta_bias: Any = None,
    delta_softplus: Any = False,
) -> dict[str, int]:
    """Validate the arguments of one decoding step; return the sizes."""
    if state is None:
        raise TypeError("state must be an array [B, D, N] (zeros before the first token)")
    dims = checks.check_shapes(
        u_t=(u_t, "B D"),
        delta_t=(delta_t, "B D"),
        B_t=(B_t, "B N"),
        C_t=(C_t, "B N"),
        A=(A, "D N"),
        state=(state, "B D N"),
        D=(D, "D"),
        z_t=(z_t, "B D"),
        delta_bias=(delta_bias, "D"),
    )
    _check_bool("delta_softplus", delta_softplus)
    return dims


# --------------------------------------------------------------------------------------
# Discretisation
# --------------------------------------------------------------------------------------


def softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x))`` without overflow."""
    return np.logaddexp(0.0, x)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def step_sizes(
    delta: np.ndarray, delta_bias: np.ndarray | None, delta_softplus: bool
) -> np.ndarray:
    """``dt = softplus(delta + delta_bias)`` (or without softplus); same shape as delta."""
    dt = delta if delta_bias is None else delta + delta_bias
    return softplus(dt) if delta_softplus else dt


def discretize(
    u: np.ndarray, dt: np.ndarray, A: np.ndarray, B: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step multiplier and input of the recurrence ``h_t = a_t * h_{t-1} + b_t``.

    ``a_t = exp(dt_t A)`` (zero-order hold) and ``b_t = dt_t B_t u_t`` (Euler), both
    ``[B, T, D, N]``; ``u, dt`` are ``[B, T, D]``, ``A`` is ``[D, N]``, ``B`` ``[B, T, N]``.
    """
    a = np.exp(np.einsum("btd,dn->btdn", dt, A))  # [B, T, D, N]
    b = np.einsum("btd,btn->btdn", dt * u, B)  # [B, T, D, N]
    return a, b


def _readout(
    h: np.ndarray, C: np.ndarray, u: np.ndarray, D: np.ndarray | None, z: np.ndarray | None
) -> np.ndarray:
    """``out = (h C + D u) * silu(z)`` from all states ``h`` [B, T, D, N]."""
    y = np.einsum("btdn,btn->btd", h, C)  # [B, T, D]
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * silu(z)
    return y


def _as64(*arrays: Any) -> list[Any]:
    return [None if x is None else np.asarray(x, dtype=np.float64) for x in arrays]


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    u, delta, A, B, C, D, z, delta_bias, h0 = _as64(
        u, delta, A, B, C, D, z, delta_bias, initial_state
    )
    dt = step_sizes(delta, delta_bias, delta_softplus)  # [B, T, D]
    a, b = discretize(u, dt, A, B)  # [B, T, D, N] each
    if h0 is None:
        h0 = np.zeros(a.shape[:1] + a.shape[2:])  # [B, D, N]
    return u, C, D, z, a, b, h0


def _finish(out: np.ndarray, last: np.ndarray, return_last_state: bool) -> ScanResult:
    return (out, last) if return_last_state else out


# --------------------------------------------------------------------------------------
# Three forms of the scan
# --------------------------------------------------------------------------------------


def selective_scan_sequential(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: np.ndarray | None = None,
    z: np.ndarray | None = None,
    delta_bias: np.ndarray | None = None,
    delta_softplus: bool = False,
    initial_state: np.ndarray | None = None,
    return_last_state: bool = False,
) -> ScanResult:
    """The recurrence, one time step after the other (the definition).

    ``h_t = exp(dt_t A) * h_{t-1} + dt_t B_t u_t``; ``y_t = h_t C_t + D u_t``;
    ``out_t = y_t * silu(z_t)``.

    Shapes: ``u, delta, z`` [B, T, D]; ``A`` [D, N]; ``B, C`` [B, T, N]; ``D, delta_bias``
    [D]; ``initial_state`` [B, D, N]. Returns ``out`` [B, T, D], and the last state
    [B, D, N] as ``(out, last_state)`` when ``return_last_state``.
    """
    check_scan_inputs(**locals())
    u, C, D, z, a, b, h = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                   initial_state)  # fmt: skip
    hs = np.empty_like(a)  # [B, T, D, N]
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]  # [B, D, N]
        hs[:, t] = h
    return _finish(_readout(hs, C, u, D, z), h, return_last_state)


def combine(
    a1: np.ndarray, b1: np.ndarray, a2: np.ndarray, b2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Compose two steps of ``h -> a h + b``: first ``(a1, b1)``, then ``(a2, b2)``.

    ``a2 (a1 h + b1) + b2 = (a1 a2) h + (a2 b1 + b2)``, so
    ``(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)``. The operator is associative (not
    commutative), which is all a parallel scan needs.
    """
    return a1 * a2, a2 * b1 + b2


def associative_scan(a: np.ndarray, b: np.ndarray, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive scan of :func:`combine` along ``axis`` (Hillis & Steele 1986).

    Returns ``(a_cum, h)`` with ``a_cum[t] = a[0] ... a[t]`` and ``h[t]`` the state after
    step ``t`` started from zero: ``h[t] = a[t] h[t-1] + b[t]``. Each of the
    ``ceil(log2(T))`` rounds combines every element with the one ``offset`` steps before
    it, as whole-array operations; elements with nothing that far back keep their value.
    """
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, 0).copy()  # [T, ...]
    b = np.moveaxis(np.asarray(b, dtype=np.float64), axis, 0).copy()  # [T, ...]
    T, offset = a.shape[0], 1
    while offset < T:
        a_new, b_new = combine(a[:-offset], b[:-offset], a[offset:], b[offset:])
        a[offset:], b[offset:] = a_new, b_new
        offset *= 2
    return np.moveaxis(a, 0, axis), np.moveaxis(b, 0, axis)


def selective_scan_parallel(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: np.ndarray | None = None,
    z: np.ndarray | None = None,
    delta_bias: np.ndarray | None = None,
    delta_softplus: bool = False,
    initial_state: np.ndarray | None = None,
    return_last_state: bool = False,
) -> ScanResult:
    """All states at once with the associative scan: ``log2(T)`` rounds instead of ``T``.

    The initial state enters as ``h_t = a_cum[t] h_0 + h_t|zero start``. Same arguments,
    shapes and result as :func:`selective_scan_sequential`.
    """
    check_scan_inputs(**locals())
    u, C, D, z, a, b, h0 = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                    initial_state)  # fmt: skip
    a_cum, hs = associative_scan(a, b, axis=1)  # [B, T, D, N] each
    hs = hs + a_cum * h0[:, None]  # [B, T, D, N]
    return _finish(_readout(hs, C, u, D, z), hs[:, -1], return_last_state)


def selective_scan_chunked(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: np.ndarray | None = None,
    z: np.ndarray | None = None,
    delta_bias: np.ndarray | None = None,
    delta_softplus: bool = False,
    initial_state: np.ndarray | None = None,
    return_last_state: bool = False,
    chunk_size: int = 64,
) -> ScanResult:
    """Scan inside chunks of ``chunk_size`` steps, carry the state from chunk to chunk.

    Inside a chunk starting with state ``h_prev``: ``h_t = a_cum[t] h_prev + h_t|zero``;
    the chunk's last state is the next chunk's ``h_prev``. This is how the GPU kernels
    split long sequences. Same result as :func:`selective_scan_sequential`.
    """
    check_scan_inputs(**{k: v for k, v in locals().items() if k != "chunk_size"})
    checks.check_positive_int("chunk_size", chunk_size)
    u, C, D, z, a, b, h = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                   initial_state)  # fmt: skip
    hs = np.empty_like(a)  # [B, T, D, N]
    for start in range(0, a.shape[1], chunk_size):
        part = slice(start, start + chunk_size)
        a_cum, h_local = associative_scan(a[:, part], b[:, part], axis=1)  # [B, L, D, N]
        hs[:, part] = h_local + a_cum * h[:, None]
        h = hs[:, part][:, -1]  # [B, D, N]
    return _finish(_readout(hs, C, u, D, z), h, return_last_state)


def selective_scan_step(
    u_t: np.ndarray,
    delta_t: np.ndarray,
    A: np.ndarray,
    B_t: np.ndarray,
    C_t: np.ndarray,
    state: np.ndarray,
    D: np.ndarray | None = None,
    z_t: np.ndarray | None = None,
    delta_bias: np.ndarray | None = None,
    delta_softplus: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One decoding step: O(D N) work and memory whatever the length so far.

    ``u_t, delta_t, z_t`` [B, D]; ``B_t, C_t`` [B, N]; ``state`` [B, D, N]. Returns
    ``(y_t [B, D], new_state [B, D, N])``.
    """
    check_step_inputs(**locals())
    u_t, delta_t, A, B_t, C_t, h, D, z_t, delta_bias = _as64(
        u_t, delta_t, A, B_t, C_t, state, D, z_t, delta_bias
    )
    dt = step_sizes(delta_t, delta_bias, delta_softplus)  # [B, D]
    a = np.exp(dt[..., None] * A)  # [B, D, N]
    h = a * h + np.einsum("bd,bn->bdn", dt * u_t, B_t)  # [B, D, N]
    y = np.einsum("bdn,bn->bd", h, C_t)  # [B, D]
    if D is not None:
        y = y + D * u_t
    if z_t is not None:
        y = y * silu(z_t)
    return y, h


# --------------------------------------------------------------------------------------
# The Mamba block (Gu & Dao 2023, Figure 3)
# --------------------------------------------------------------------------------------

PARAM_SHAPES = {
    "in_proj_weight": "2D M",  # x and z, stacked
    "conv1d_weight": "D W",
    "conv1d_bias": "D",
    "x_proj_weight": "R+2N D",  # dt (low rank), B, C, stacked
    "dt_proj_weight": "D R",
    "dt_proj_bias": "D",
    "A_log": "D N",
    "D": "D",
    "out_proj_weight": "M D",
}


def mamba_dims(params: dict[str, Any]) -> dict[str, int]:
    """Read ``M, D, N, R, W`` from the parameters and check every shape against them."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    missing = [k for k in PARAM_SHAPES if k not in params]
    if missing:
        raise ValueError(f"params is missing {missing}; see init_mamba_params")
    if len(params["A_log"].shape) != 2:
        raise ValueError(f"params['A_log'] must be [D, N], got {tuple(params['A_log'].shape)}")
    Di, N = (int(s) for s in params["A_log"].shape)
    R = int(params["dt_proj_weight"].shape[-1])
    M = int(params["out_proj_weight"].shape[0])
    W = int(params["conv1d_weight"].shape[-1])
    want = {
        "in_proj_weight": (2 * Di, M),
        "conv1d_weight": (Di, W),
        "conv1d_bias": (Di,),
        "x_proj_weight": (R + 2 * N, Di),
        "dt_proj_weight": (Di, R),
        "dt_proj_bias": (Di,),
        "A_log": (Di, N),
        "D": (Di,),
        "out_proj_weight": (M, Di),
    }
    for name, shape in want.items():
        got = tuple(int(s) for s in params[name].shape)
        if got != shape:
            raise ValueError(
                f"params[{name!r}] must have shape {shape} ([{PARAM_SHAPES[name]}] with "
                f"M={M}, D={Di}, N={N}, R={R}, W={W}), got {got}"
            )
    return {"M": M, "D": Di, "N": N, "R": R, "W": W}


def init_mamba_params(
    d_model: int,
    d_state: int = 16,
    expand: int = 2,
    d_conv: int = 4,
    dt_rank: int | None = None,
    seed: int = 0,
    dt_min: float = 1e-3,
    dt_max: float = 0.1,
    dt_init_floor: float = 1e-4,
) -> dict[str, np.ndarray]:
    """Parameters of one Mamba block with the paper's initialisation (float64).

    * ``A = -[1, 2, ..., N]`` for every channel (S4D-Real, Gu et al. 2022), stored as
      ``A_log = log(-A)`` so that ``A = -exp(A_log)`` stays negative while training;
    * ``dt_proj_bias = softplus^{-1}(dt)`` with ``dt`` log-uniform in ``[dt_min, dt_max]``,
      so that ``softplus(bias)`` starts in that range; ``dt_proj_weight`` uniform with
      std ``dt_rank^-1/2``;
    * ``D = 1``; linear and convolution weights uniform in ``+-1/sqrt(fan_in)`` (PyTorch's
      default); ``dt_rank = ceil(d_model / 16)``, ``d_inner = expand * d_model``.
    """
    M = checks.check_positive_int("d_model", d_model)
    N = checks.check_positive_int("d_state", d_state)
    Di = M * checks.check_positive_int("expand", expand)
    W = checks.check_positive_int("d_conv", d_conv)
    R = math.ceil(M / 16) if dt_rank is None else checks.check_positive_int("dt_rank", dt_rank)
    rng = np.random.default_rng(seed)

    def linear(out_f: int, in_f: int) -> np.ndarray:
        bound = 1.0 / math.sqrt(in_f)
        return rng.uniform(-bound, bound, size=(out_f, in_f))

    dt = np.exp(rng.uniform(size=Di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = np.maximum(dt, dt_init_floor)
    return {
        "in_proj_weight": linear(2 * Di, M),
        "conv1d_weight": linear(Di, W),  # depthwise: fan_in = W
        "conv1d_bias": linear(Di, W)[:, 0],
        "x_proj_weight": linear(R + 2 * N, Di),
        "dt_proj_weight": rng.uniform(-(R**-0.5), R**-0.5, size=(Di, R)),
        "dt_proj_bias": dt + np.log(-np.expm1(-dt)),  # softplus^{-1}(dt)
        "A_log": np.log(np.tile(np.arange(1, N + 1, dtype=np.float64), (Di, 1))),
        "D": np.ones(Di),
        "out_proj_weight": linear(M, Di),
    }


def causal_conv1d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Depthwise causal convolution: ``y_t = sum_j weight[:, j] x_{t-W+1+j} + bias``.

    ``x`` [B, T, D], ``weight`` [D, W], ``bias`` [D]; inputs before ``t = 0`` are zero.
    """
    W = weight.shape[1]
    padded = np.pad(x, ((0, 0), (W - 1, 0), (0, 0)))  # [B, T+W-1, D]
    T = x.shape[1]
    y = sum(weight[:, j] * padded[:, j : j + T] for j in range(W))
    return y + bias


def _mamba_inner(xc: np.ndarray, params: dict[str, np.ndarray], N: int, R: int):
    """From conv output to the scan's inputs: ``delta`` [.., D], ``B, C`` [.., N], ``A``."""
    x_dbl = xc @ params["x_proj_weight"].T  # [..., R + 2N]
    delta = x_dbl[..., :R] @ params["dt_proj_weight"].T  # [..., D]
    Bm, Cm = x_dbl[..., R : R + N], x_dbl[..., R + N :]  # [..., N] each
    A = -np.exp(params["A_log"])  # [D, N]
    return delta, A, Bm, Cm


def mamba_block_forward(x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """The Mamba block on a whole sequence ``x`` [B, T, M] -> [B, T, M].

    ``x, z = split(x W_in^T)``; ``x = silu(conv1d_causal(x))``; ``(dt_low, B, C) = x W_x^T``;
    ``delta = dt_low W_dt^T``; ``y = selective_scan(x, delta, A=-exp(A_log), B, C, D, z,
    delta_bias=dt_proj_bias, delta_softplus=True)``; ``out = y W_out^T``.
    """
    dims = mamba_dims(params)
    checks.check_shapes(x=(x, f"B T {dims['M']}"))
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    xz = np.asarray(x, dtype=np.float64) @ p["in_proj_weight"].T  # [B, T, 2D]
    xi, z = xz[..., : dims["D"]], xz[..., dims["D"] :]  # [B, T, D] each
    xc = silu(causal_conv1d(xi, p["conv1d_weight"], p["conv1d_bias"]))  # [B, T, D]
    delta, A, Bm, Cm = _mamba_inner(xc, p, dims["N"], dims["R"])
    y = selective_scan_sequential(
        xc, delta, A, Bm, Cm, D=p["D"], z=z, delta_bias=p["dt_proj_bias"], delta_softplus=True
    )  # [B, T, D]
    return y @ p["out_proj_weight"].T  # [B, T, M]


def mamba_block_initial_state(
    params: dict[str, np.ndarray], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Zero decoding state: conv buffer [B, D, W] (last W inputs) and SSM state [B, D, N]."""
    dims = mamba_dims(params)
    b = checks.check_positive_int("batch_size", batch_size)
    return np.zeros((b, dims["D"], dims["W"])), np.zeros((b, dims["D"], dims["N"]))


def mamba_block_step(
    x_t: np.ndarray, params: dict[str, np.ndarray], state: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """One token through the block: ``x_t`` [B, M] -> ``(out_t [B, M], new_state)``.

    ``state = (conv_buffer [B, D, W], ssm_state [B, D, N])``; the conv buffer holds the last
    ``W`` conv inputs, oldest first. Steps from :func:`mamba_block_initial_state` reproduce
    :func:`mamba_block_forward` token by token.
    """
    dims = mamba_dims(params)
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError("state must be a pair (conv_buffer [B, D, W], ssm_state [B, D, N])")
    checks.check_shapes(
        x_t=(x_t, f"B {dims['M']}"),
        conv_buffer=(state[0], f"B {dims['D']} {dims['W']}"),
        ssm_state=(state[1], f"B {dims['D']} {dims['N']}"),
    )
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    xz = np.asarray(x_t, dtype=np.float64) @ p["in_proj_weight"].T  # [B, 2D]
    xi, z = xz[..., : dims["D"]], xz[..., dims["D"] :]  # [B, D] each
    buf = np.concatenate([state[0][..., 1:], xi[..., None]], axis=-1)  # [B, D, W]
    xc = silu(np.einsum("bdw,dw->bd", buf, p["conv1d_weight"]) + p["conv1d_bias"])  # [B, D]
    delta, A, Bm, Cm = _mamba_inner(xc, p, dims["N"], dims["R"])
    y, h = selective_scan_step(
        xc, delta, A, Bm, Cm, state[1], D=p["D"], z_t=z, delta_bias=p["dt_proj_bias"],
        delta_softplus=True,
    )  # fmt: skip
    return y @ p["out_proj_weight"].T, (buf, h)

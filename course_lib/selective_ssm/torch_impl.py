"""Selective SSM and Mamba block in PyTorch: vectorised, differentiable, fp32 accumulation.

Glossary of dimension letters (as in :mod:`course_lib.selective_ssm.numpy_ref`):

* ``B`` batch, ``T`` time steps, ``D`` channels, ``N`` state size per channel
* ``L`` chunk length, ``c`` number of chunks
* ``M`` Mamba model width, ``R`` rank of the Delta projection, ``W`` conv width

Same functions, names and signatures as the numpy reference (Gu & Dao 2023):
``h_t = exp(dt_t A) * h_{t-1} + dt_t B_t u_t``, ``out_t = (h_t C_t + D u_t) * silu(z_t)``.
Inputs of any float dtype are computed in float32 (float64 stays float64) and the outputs
come back in the dtype of ``u``; the last state is returned in float32 (or float64), as
mamba_ssm does. Only :func:`selective_scan_sequential` loops over time; the parallel form
runs ``ceil(log2 T)`` whole-tensor rounds of the associative scan.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from course_lib import checks
from course_lib.selective_ssm.numpy_ref import (
    check_scan_inputs,
    check_step_inputs,
    mamba_dims,
)

Tensor = torch.Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _up(x: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if x is None else x.to(dtype)


def step_sizes(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    """``dt = softplus(delta + delta_bias)`` (or without softplus); same shape as delta."""
    dt = delta if delta_bias is None else delta + delta_bias
    return F.softplus(dt) if delta_softplus else dt


def discretize(u: Tensor, dt: Tensor, A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """``a_t = exp(dt_t A)`` and ``b_t = dt_t B_t u_t``, both [B, T, D, N]."""
    a = torch.exp(torch.einsum("btd,dn->btdn", dt, A))  # [B, T, D, N]
    b = torch.einsum("btd,btn->btdn", dt * u, B)  # [B, T, D, N]
    return a, b


def _readout(h: Tensor, C: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    y = torch.einsum("btdn,btn->btd", h, C)  # [B, T, D]
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * F.silu(z)
    return y


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    cd = _compute_dtype(u)
    u, delta, A, B, C, D, z, delta_bias, h0 = (
        _up(x, cd) for x in (u, delta, A, B, C, D, z, delta_bias, initial_state)
    )
    dt = step_sizes(delta, delta_bias, delta_softplus)  # [B, T, D]
    a, b = discretize(u, dt, A, B)  # [B, T, D, N] each
    if h0 is None:
        h0 = a.new_zeros(a.shape[:1] + a.shape[2:])  # [B, D, N]
    return u, C, D, z, a, b, h0


def _finish(out: Tensor, last: Tensor, like: Tensor, return_last_state: bool) -> Any:
    out = out.to(like.dtype)
    return (out, last) if return_last_state else out


def selective_scan_sequential(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_last_state: bool = False,
) -> Any:
    """The recurrence step by step (a Python loop over ``T``).

    Shapes: ``u, delta, z`` [B, T, D]; ``A`` [D, N]; ``B, C`` [B, T, N]; ``D, delta_bias``
    [D]; ``initial_state`` [B, D, N]. Returns ``out`` [B, T, D] (dtype of ``u``), or
    ``(out, last_state [B, D, N])`` when ``return_last_state``.
    """
    check_scan_inputs(**locals())
    u_in = u
    u, C, D, z, a, b, h = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                   initial_state)  # fmt: skip
    hs = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1), strict=True):  # not a[:, t]: its backward
        # would write a gradient of all of a at every step (T^2 work)
        h = a_t * h + b_t  # [B, D, N]
        hs.append(h)
    return _finish(_readout(torch.stack(hs, 1), C, u, D, z), h, u_in, return_last_state)


def combine(a1: Tensor, b1: Tensor, a2: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """``(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)``: step 1 followed by step 2."""
    return a1 * a2, a2 * b1 + b2


def associative_scan(a: Tensor, b: Tensor, axis: int = 1) -> tuple[Tensor, Tensor]:
    """Inclusive Hillis-Steele scan of :func:`combine` along ``axis``.

    Returns ``(a_cum, h)``: ``a_cum[t] = prod_{s<=t} a[s]`` and ``h[t] = a[t] h[t-1] + b[t]``
    from ``h[-1] = 0``. Each round pairs every element with the one ``offset`` before it
    (out of place, so autograd sees plain tensor operations); ``ceil(log2 T)`` rounds.
    """
    a, b = a.movedim(axis, 0), b.movedim(axis, 0)  # [T, ...]
    T, offset = a.shape[0], 1
    while offset < T:
        a_new, b_new = combine(a[:-offset], b[:-offset], a[offset:], b[offset:])
        a = torch.cat([a[:offset], a_new], 0)
        b = torch.cat([b[:offset], b_new], 0)
        offset *= 2
    return a.movedim(0, axis), b.movedim(0, axis)


def selective_scan_parallel(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_last_state: bool = False,
) -> Any:
    """All states by the associative scan; ``h_t = a_cum[t] h_0 + h_t|zero start``."""
    check_scan_inputs(**locals())
    u_in = u
    u, C, D, z, a, b, h0 = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                    initial_state)  # fmt: skip
    a_cum, hs = associative_scan(a, b, axis=1)  # [B, T, D, N]
    hs = hs + a_cum * h0[:, None]
    return _finish(_readout(hs, C, u, D, z), hs[:, -1], u_in, return_last_state)


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_last_state: bool = False,
    chunk_size: int = 64,
) -> Any:
    """Scan inside chunks of ``L = chunk_size`` steps, then pass states between chunks.

    1. pad ``T`` to ``c L`` with identity steps ``(a, b) = (1, 0)`` and view as chunks;
    2. scan every chunk from a zero state at once (the chunks are a batch dimension);
    3. the chunk summaries ``(a_cum[L-1], h[L-1])`` are themselves steps: scanning them
       gives the state entering each chunk, which is added as ``a_cum[t] h_enter``.
    """
    check_scan_inputs(**{k: v for k, v in locals().items() if k != "chunk_size"})
    L = checks.check_positive_int("chunk_size", chunk_size)
    u_in = u
    u, C, D, z, a, b, h0 = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                    initial_state)  # fmt: skip
    Bsz, T, Dd, N = a.shape
    c = -(-T // L)
    pad = c * L - T
    a = F.pad(a, (0, 0, 0, 0, 0, pad), value=1.0).view(Bsz, c, L, Dd, N)  # [B, c, L, D, N]
    b = F.pad(b, (0, 0, 0, 0, 0, pad)).view(Bsz, c, L, Dd, N)  # [B, c, L, D, N]
    a_cum, h_local = associative_scan(a, b, axis=2)  # [B, c, L, D, N]
    # state after each chunk from h0: scan the chunk summaries, h0 folded into the first
    a_chunk, b_chunk = a_cum[:, :, -1], h_local[:, :, -1]  # [B, c, D, N]
    b_chunk = torch.cat([b_chunk[:, :1] + a_chunk[:, :1] * h0[:, None], b_chunk[:, 1:]], 1)
    _, h_after = associative_scan(a_chunk, b_chunk, axis=1)  # [B, c, D, N]
    h_enter = torch.cat([h0[:, None], h_after[:, :-1]], 1)  # [B, c, D, N]
    hs = h_local + a_cum * h_enter[:, :, None]  # [B, c, L, D, N]
    hs = hs.reshape(Bsz, c * L, Dd, N)[:, :T]  # [B, T, D, N]
    return _finish(_readout(hs, C, u, D, z), h_after[:, -1], u_in, return_last_state)


def selective_scan_step(
    u_t: Tensor,
    delta_t: Tensor,
    A: Tensor,
    B_t: Tensor,
    C_t: Tensor,
    state: Tensor,
    D: Tensor | None = None,
    z_t: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> tuple[Tensor, Tensor]:
    """One decoding step. ``u_t, delta_t, z_t`` [B, D]; ``B_t, C_t`` [B, N]; ``state``
    [B, D, N]. Returns ``(y_t [B, D] in u_t's dtype, new_state [B, D, N] in fp32/fp64)``."""
    check_step_inputs(**locals())
    cd = _compute_dtype(u_t)
    u, dl, A, Bt, Ct, h, D, z, bias = (
        _up(x, cd) for x in (u_t, delta_t, A, B_t, C_t, state, D, z_t, delta_bias)
    )
    dt = step_sizes(dl, bias, delta_softplus)  # [B, D]
    h = torch.exp(dt[..., None] * A) * h + torch.einsum("bd,bn->bdn", dt * u, Bt)  # [B, D, N]
    y = torch.einsum("bdn,bn->bd", h, Ct)  # [B, D]
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * F.silu(z)
    return y.to(u_t.dtype), h


# --------------------------------------------------------------------------------------
# The Mamba block
# --------------------------------------------------------------------------------------


def init_mamba_params(
    d_model: int,
    d_state: int = 16,
    expand: int = 2,
    d_conv: int = 4,
    dt_rank: int | None = None,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: Any = "cpu",
) -> dict[str, Tensor]:
    """The numpy reference's initialisation (same seed, same numbers) as tensors."""
    from course_lib.selective_ssm.numpy_ref import init_mamba_params as init_np

    params = init_np(d_model, d_state, expand, d_conv, dt_rank, seed)
    return {k: torch.tensor(v, dtype=dtype, device=device) for k, v in params.items()}


def _params_like(params: dict[str, Any], x: Tensor) -> dict[str, Tensor]:
    """Parameters as tensors in the compute dtype on ``x``'s device (numpy is accepted)."""
    cd = _compute_dtype(x)
    return {k: torch.as_tensor(v).to(device=x.device, dtype=cd) for k, v in params.items()}


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Depthwise causal conv: ``x`` [B, T, D], ``weight`` [D, W], ``bias`` [D] -> [B, T, D]."""
    W = weight.shape[1]
    y = F.conv1d(x.transpose(1, 2), weight[:, None, :], bias, padding=W - 1, groups=x.shape[2])
    return y[..., : x.shape[1]].transpose(1, 2)  # [B, T, D]


def _mamba_inner(xc: Tensor, p: dict[str, Tensor], N: int, R: int):
    x_dbl = xc @ p["x_proj_weight"].T  # [..., R + 2N]
    delta = x_dbl[..., :R] @ p["dt_proj_weight"].T  # [..., D]
    return delta, -torch.exp(p["A_log"]), x_dbl[..., R : R + N], x_dbl[..., R + N :]


def mamba_block_forward(x: Tensor, params: dict[str, Any]) -> Tensor:
    """The Mamba block on ``x`` [B, T, M] -> [B, T, M] (see the numpy reference)."""
    dims = mamba_dims(params)
    checks.check_shapes(x=(x, f"B T {dims['M']}"))
    p = _params_like(params, x)
    xz = x.to(p["A_log"].dtype) @ p["in_proj_weight"].T  # [B, T, 2D]
    xi, z = xz[..., : dims["D"]], xz[..., dims["D"] :]  # [B, T, D] each
    xc = F.silu(causal_conv1d(xi, p["conv1d_weight"], p["conv1d_bias"]))  # [B, T, D]
    delta, A, Bm, Cm = _mamba_inner(xc, p, dims["N"], dims["R"])
    y = selective_scan_parallel(
        xc, delta, A, Bm, Cm, D=p["D"], z=z, delta_bias=p["dt_proj_bias"], delta_softplus=True
    )  # [B, T, D]
    return (y @ p["out_proj_weight"].T).to(x.dtype)  # [B, T, M]


def mamba_block_initial_state(params: dict[str, Any], batch_size: int, *, like: Tensor):
    """Zero decoding state (conv buffer [B, D, W], SSM state [B, D, N]) on ``like``'s device."""
    dims = mamba_dims(params)
    b = checks.check_positive_int("batch_size", batch_size)
    cd = _compute_dtype(like)
    return (
        torch.zeros(b, dims["D"], dims["W"], dtype=cd, device=like.device),
        torch.zeros(b, dims["D"], dims["N"], dtype=cd, device=like.device),
    )


def mamba_block_step(
    x_t: Tensor, params: dict[str, Any], state: tuple[Tensor, Tensor]
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One token: ``x_t`` [B, M] -> ``(out_t [B, M], (conv_buffer, ssm_state))``."""
    dims = mamba_dims(params)
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError("state must be a pair (conv_buffer [B, D, W], ssm_state [B, D, N])")
    checks.check_shapes(
        x_t=(x_t, f"B {dims['M']}"),
        conv_buffer=(state[0], f"B {dims['D']} {dims['W']}"),
        ssm_state=(state[1], f"B {dims['D']} {dims['N']}"),
    )
    p = _params_like(params, x_t)
    xz = x_t.to(p["A_log"].dtype) @ p["in_proj_weight"].T  # [B, 2D]
    xi, z = xz[..., : dims["D"]], xz[..., dims["D"] :]  # [B, D] each
    buf = torch.cat([state[0][..., 1:].to(xi.dtype), xi[..., None]], -1)  # [B, D, W]
    xc = F.silu(torch.einsum("bdw,dw->bd", buf, p["conv1d_weight"]) + p["conv1d_bias"])
    delta, A, Bm, Cm = _mamba_inner(xc, p, dims["N"], dims["R"])
    y, h = selective_scan_step(
        xc, delta, A, Bm, Cm, state[1].to(xc.dtype), D=p["D"], z_t=z,
        delta_bias=p["dt_proj_bias"], delta_softplus=True,
    )  # fmt: skip
    return (y @ p["out_proj_weight"].T).to(x_t.dtype), (buf, h)

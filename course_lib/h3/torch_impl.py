"""H3 (Fu et al. 2023) in PyTorch (chapter 06).

Glossary of letters:

    B  batch size
    T  sequence length
    D  model width (d_model)
    H  number of heads
    K  head size, D / H
    N  state size of the per-head diagonal SSM
    W  length of the shift SSM's filter

Same functions, names and signatures as :mod:`course_lib.h3.numpy_ref` (its docstring has
the equations), vectorised and differentiable. The shift SSM's convolution form is a
depthwise ``conv1d`` (W taps, O(T W) per channel); the diagonal SSM's is the FFT
convolution of :mod:`course_lib.ssm.torch_impl`. Computation in float64 for float64 input,
float32 otherwise; ``y`` in the dtype of ``x``.

No Triton kernel: both SSMs are time-invariant filters, so the FFT convolution (cuFFT on a
GPU) already gives O(T log T); a custom kernel would help only by fusing, as FlashConv does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from course_lib import checks
from course_lib.h3.numpy_ref import FORMS, PARAM_NAMES, check_h3_inputs, check_params
from course_lib.ssm import torch_impl as ssm


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype in (torch.float64, torch.complex128) else torch.float32


# --------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------


def h3_params_to_torch(
    params: dict[str, Any], dtype: torch.dtype = torch.float32, device: Any = "cpu"
) -> dict[str, torch.Tensor]:
    """numpy parameters -> tensors in ``dtype`` (complex ones in the complex of its precision)."""
    check_params(params)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    out = {}
    for name, value in params.items():
        t = torch.as_tensor(np.asarray(value))
        out[name] = t.to(device=device, dtype=cdtype if t.is_complex() else dtype)
    return out


def init_h3_params(
    d_model: int,
    num_heads: int,
    state_size: int,
    seed: int = 0,
    shift_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: Any = "cpu",
) -> dict[str, torch.Tensor]:
    """The numpy reference's :func:`~course_lib.h3.numpy_ref.init_h3_params`, as tensors."""
    from course_lib.h3 import numpy_ref

    params = numpy_ref.init_h3_params(d_model, num_heads, state_size, seed, shift_size)
    return h3_params_to_torch(params, dtype, device)


# --------------------------------------------------------------------------------------
# the shift SSM
# --------------------------------------------------------------------------------------


def shift_ssm_matrices(kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Abar`` [D, W, W] (shift), ``Bbar = e_1`` [D, W] and ``C = kernel`` [D, W]."""
    checks.check_shapes(kernel=(kernel, "D W"))
    Dn, W = kernel.shape
    eye = torch.eye(W, dtype=kernel.dtype, device=kernel.device)
    Abar = torch.diag_embed(eye.new_ones(W - 1), offset=-1).expand(Dn, W, W)  # [D, W, W]
    Bbar = eye[0].expand(Dn, W)  # [D, W]
    return Abar, Bbar, kernel


def shift_ssm(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``y_t = sum_{j<W} kernel[:, j] x_{t-j}`` as a depthwise conv1d. [B, T, D] -> [B, T, D]."""
    dims = checks.check_shapes(x=(x, "B T D"))
    checks.check_shapes(dims, kernel=(kernel, "D W"))
    real = _real_dtype(x)
    W = kernel.shape[1]
    xt = F.pad(x.to(real).transpose(1, 2), (W - 1, 0))  # [B, D, T + W - 1]
    y = F.conv1d(xt, kernel.to(real).flip(-1)[:, None, :], groups=kernel.shape[0])  # [B, D, T]
    return y.transpose(1, 2).to(x.dtype)


def shift_ssm_recurrent(
    x: torch.Tensor,
    kernel: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``h_t = (x_t, h_{t-1}[:-1])``, ``y_t = kernel . h_t``; state [B, D, W]."""
    dims = checks.check_shapes(x=(x, "B T D"))
    dims = checks.check_shapes(dims, kernel=(kernel, "D W"), initial_state=(initial_state, "B D W"))
    real = _real_dtype(x)
    xc, kernel = x.to(real), kernel.to(real)
    Bsz, _, Dn = x.shape
    h = xc.new_zeros(Bsz, Dn, kernel.shape[1]) if initial_state is None else initial_state.to(real)
    ys = []
    for x_t in xc.unbind(1):  # not xc[:, t], whose backward writes all of xc at every t
        h = torch.cat([x_t[..., None], h[..., :-1]], dim=-1)  # [B, D, W]
        ys.append(torch.einsum("dw,bdw->bd", kernel, h))
    return torch.stack(ys, 1).to(x.dtype), (h if output_final_state else None)


# --------------------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------------------


def _heads(a: torch.Tensor, H: int) -> torch.Tensor:
    return a.reshape(*a.shape[:-1], H, a.shape[-1] // H)  # [..., H, K]


def _prepare(x, Wq, Wk, Wv, Wo, shift_kernel, A, B, C, dt, D, num_heads, x_spec="B T D"):
    check_h3_inputs(x, Wq, Wk, Wv, Wo, shift_kernel, A, B, C, dt, D, num_heads, x_spec=x_spec)
    real = _real_dtype(x)
    cplx = torch.complex128 if real == torch.float64 else torch.complex64
    sdtype = cplx if A.is_complex() else real
    A, B, C = (m.to(sdtype) for m in (A, B, C))
    Abar, Bbar = ssm._zoh(A, B, dt.to(real))
    W = {n: w.to(real) for n, w in zip(("Wq", "Wk", "Wv", "Wo"), (Wq, Wk, Wv, Wo), strict=True)}
    return x.to(real), W, shift_kernel.to(real), Abar, Bbar, C, D.to(real)


def _diag_step(Abar, Bbar, C, Dskip, S, kv):
    """One step of the per-head diagonal SSM on the outer products; S [B, H, N, K, K]."""
    S = Abar[None, :, :, None, None] * S + Bbar[None, :, :, None, None] * kv[:, :, None]
    Z = torch.einsum("hn,bhnde->bhde", C, S)  # [B, H, K, K]
    Z = (2 * Z.real if Abar.is_complex() else Z) + Dskip[None, :, None, None] * kv
    return S, Z


def h3_recurrent(
    x: torch.Tensor,
    Wq: torch.Tensor,
    Wk: torch.Tensor,
    Wv: torch.Tensor,
    Wo: torch.Tensor,
    shift_kernel: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    D: torch.Tensor,
    num_heads: int,
) -> torch.Tensor:
    """The H3 layer token by token; x [B, T, D] -> [B, T, D] (see the numpy reference)."""
    xc, Wp, kern, Abar, Bbar, C, Dskip = _prepare(
        x, Wq, Wk, Wv, Wo, shift_kernel, A, B, C, dt, D, num_heads
    )
    H = num_heads
    q, k, v = xc @ Wp["Wq"], xc @ Wp["Wk"], xc @ Wp["Wv"]  # [B, T, D]
    kbar, _ = shift_ssm_recurrent(k, kern)
    q, kbar, v = _heads(q, H), _heads(kbar, H), _heads(v, H)  # [B, T, H, K]
    Bsz, T, _, Kh = q.shape
    S = xc.new_zeros((Bsz, H, Abar.shape[1], Kh, Kh), dtype=Abar.dtype)
    outs = []
    for q_t, k_t, v_t in zip(q.unbind(1), kbar.unbind(1), v.unbind(1), strict=True):
        kv = torch.einsum("bhd,bhe->bhde", k_t, v_t)  # [B, H, K, K]
        S, Z = _diag_step(Abar, Bbar, C, Dskip, S, kv)
        outs.append(torch.einsum("bhd,bhde->bhe", q_t, Z))  # [B, H, K]
    o = torch.stack(outs, 1).reshape(Bsz, T, -1)  # [B, T, D]
    return (o @ Wp["Wo"]).to(x.dtype)


def h3_fft(
    x: torch.Tensor,
    Wq: torch.Tensor,
    Wk: torch.Tensor,
    Wv: torch.Tensor,
    Wo: torch.Tensor,
    shift_kernel: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    D: torch.Tensor,
    num_heads: int,
) -> torch.Tensor:
    """The H3 layer with the shift SSM as a conv1d and the diagonal SSM through the FFT."""
    xc, Wp, kern, Abar, Bbar, C, Dskip = _prepare(
        x, Wq, Wk, Wv, Wo, shift_kernel, A, B, C, dt, D, num_heads
    )
    H = num_heads
    q, k, v = xc @ Wp["Wq"], xc @ Wp["Wk"], xc @ Wp["Wv"]  # [B, T, D]
    kbar = shift_ssm(k, kern)
    q, kbar, v = _heads(q, H), _heads(kbar, H), _heads(v, H)  # [B, T, H, K]
    Bsz, T, _, Kh = q.shape
    kv = torch.einsum("bthd,bthe->bthde", kbar, v).reshape(Bsz, T, H * Kh * Kh)  # (h d e)
    decay = ssm.ssm_kernel(Abar, Bbar, C, T).repeat_interleave(Kh * Kh, dim=0)  # [H*K*K, T]
    Z = ssm.fft_conv(kv, decay) + Dskip.repeat_interleave(Kh * Kh) * kv
    o = torch.einsum("bthd,bthde->bthe", q, Z.reshape(Bsz, T, H, Kh, Kh))  # [B, T, H, K]
    return (o.reshape(Bsz, T, -1) @ Wp["Wo"]).to(x.dtype)


def h3_forward(
    x: torch.Tensor, params: dict[str, torch.Tensor], num_heads: int, form: str = "fft"
) -> torch.Tensor:
    """The H3 layer with its parameters in a dict; form ``"fft"`` or ``"recurrent"``."""
    checks.check_choice("form", form, FORMS)
    check_params(params)
    fn = h3_fft if form == "fft" else h3_recurrent
    return fn(x, **params, num_heads=num_heads)


def h3_init_state(
    batch_size: int, params: dict[str, torch.Tensor], num_heads: int
) -> dict[str, torch.Tensor]:
    """Zero decoding state: ``shift`` [B, D, W], ``ssm`` [B, H, N, K, K] (complex if A is)."""
    check_params(params)
    Bsz = checks.check_positive_int("batch_size", batch_size)
    H = checks.check_positive_int("num_heads", num_heads)
    kern, A = params["shift_kernel"], params["A"]
    real = _real_dtype(kern)
    sdtype = (
        (torch.complex128 if real == torch.float64 else torch.complex64) if A.is_complex() else real
    )
    Dm, W = kern.shape
    Kh = Dm // H
    return {
        "shift": kern.new_zeros((Bsz, Dm, W), dtype=real),
        "ssm": kern.new_zeros((Bsz, H, A.shape[1], Kh, Kh), dtype=sdtype),
    }


def h3_step(
    x_t: torch.Tensor, params: dict[str, torch.Tensor], state: dict | None, num_heads: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Decode one token: x_t [B, D] -> (y_t [B, D], new state); state None means zeros."""
    from course_lib.h3.numpy_ref import _check_state

    check_params(params)
    xc, Wp, kern, Abar, Bbar, C, Dskip = _prepare(
        x_t, *(params[n] for n in PARAM_NAMES), num_heads, x_spec="B D"
    )
    if state is None:
        state = h3_init_state(x_t.shape[0], params, num_heads)
    _check_state(state, x_t.shape[0], params, num_heads)
    H = num_heads
    q, k, v = xc @ Wp["Wq"], xc @ Wp["Wk"], xc @ Wp["Wv"]  # [B, D]
    buf = torch.cat([k[..., None], state["shift"].to(xc.dtype)[..., :-1]], dim=-1)  # [B, D, W]
    kbar = torch.einsum("dw,bdw->bd", kern, buf)
    kv = torch.einsum("bhd,bhe->bhde", _heads(kbar, H), _heads(v, H))  # [B, H, K, K]
    S, Z = _diag_step(Abar, Bbar, C, Dskip, state["ssm"].to(Abar.dtype), kv)
    o = torch.einsum("bhd,bhde->bhe", _heads(q, H), Z).reshape(x_t.shape[0], -1)  # [B, D]
    return (o @ Wp["Wo"]).to(x_t.dtype), {"shift": buf, "ssm": S}

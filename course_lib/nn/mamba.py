"""The Mamba block of Gu & Dao 2023 as an ``nn.Module``, with a fixed-size decoding cache.

Glossary of dimension letters:

* ``B`` -- batch size (the input matrix of the scan is ``B_t``)
* ``T`` -- sequence length
* ``M`` -- model width (``d_model``)
* ``D`` -- inner channels (``d_inner = expand * d_model``; the skip vector is ``D`` too)
* ``N`` -- state size per channel (``d_state``)
* ``R`` -- rank of the step-size projection (``dt_rank = ceil(M / 16)``)
* ``W`` -- width of the causal depthwise convolution (``d_conv``)

For ``x [B, T, M]`` (Gu & Dao 2023, Figure 3 and Algorithm 2)::

    (u, z) = x W_in                                   # [B, T, D] each, expand = 2
    u = silu(causal_depthwise_conv1d(u))              # width W = 4
    (dt, B_t, C_t) = u W_x                            # [R], [N], [N] per token
    delta = softplus(dt W_dt + b_dt)                  # [B, T, D], positive step sizes
    A = -exp(A_log)                                   # [D, N], negative real
    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t  # selective scan, state [D, N]
    y_t = h_t C_t + D * u_t                           # skip connection
    out = (y * silu(z)) W_out                         # [B, T, M]

Initialisation follows the paper: ``A = -[1, ..., N]`` in every channel (S4D-Real),
``softplus(b_dt)`` log-uniform in ``[dt_min, dt_max] = [0.001, 0.1]``, ``W_dt`` uniform
with scale ``R^(-1/2)``, ``D = 1``. Parameter names match ``mamba_ssm``'s and the numpy
reference's (:func:`course_lib.selective_ssm.numpy_ref.init_mamba_params`), see
:meth:`MambaBlock.to_params`.

Decoding keeps the last ``W`` convolution inputs ``[B, D, W]`` and the scan state
``[B, D, N]``: a :class:`StateCache` whose size does not depend on the position.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import check_positive_float, check_positive_int
from course_lib.nn._common import (
    check_backend,
    check_cache_type,
    check_sequence,
    check_token,
    load_function,
)
from course_lib.nn.cache import StateCache


class MambaBlock(nn.Module):
    """Selective SSM block: ``[B, T, M] -> [B, T, M]``.

    Args:
        d_model: model width ``M``.
        d_state: state size ``N`` per channel (16 in the paper).
        expand: ``d_inner = expand * d_model`` (2 in the paper).
        d_conv: width ``W`` of the causal convolution (4 in the paper).
        dt_rank: rank ``R`` of the step-size projection; default ``ceil(d_model / 16)``.
        dt_min, dt_max, dt_init_floor: range of the initial step sizes.
        chunk_size: chunk length of the torch scan.
        backend: ``"torch"`` or ``"triton"`` (the registered selective-scan kernel).
        form: the registered form used when ``backend`` is not torch (``"block_adjoint"``:
            the block forward, on an H200 0.90-1.09x mamba_ssm's CUDA scan at L = 4096 to
            65536, with the block backward, 22% faster forward+backward than
            ``"block_scan"``'s step backward at L = 32768, BENCHMARKS.md).
    """

    mechanism = "selective_scan"

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 64,
        backend: str = "torch",
        form: str = "block_adjoint",
    ) -> None:
        super().__init__()
        self.d_model = M = check_positive_int("d_model", d_model)
        self.d_state = N = check_positive_int("d_state", d_state)
        self.d_inner = D = M * check_positive_int("expand", expand)
        self.d_conv = W = check_positive_int("d_conv", d_conv)
        self.dt_rank = R = (
            math.ceil(M / 16) if dt_rank is None else check_positive_int("dt_rank", dt_rank)
        )
        check_positive_float("dt_min", dt_min)
        check_positive_float("dt_max", dt_max)
        if dt_min > dt_max:
            raise ValueError(f"dt_min={dt_min} must not exceed dt_max={dt_max}")
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.backend = check_backend(backend)
        self.form = form
        self.in_proj = nn.Linear(M, 2 * D, bias=False)
        self.conv1d = nn.Conv1d(D, D, kernel_size=W, groups=D, padding=W - 1, bias=True)
        self.x_proj = nn.Linear(D, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, D, bias=True)
        self.A_log = nn.Parameter(torch.empty(D, N))
        self.D = nn.Parameter(torch.empty(D))
        self.out_proj = nn.Linear(D, M, bias=False)
        self._init_ssm(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_ssm(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """The paper's initialisation of ``A``, ``D`` and the step-size projection."""
        bound = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = log_dt.exp().clamp(min=dt_init_floor)  # [D], log-uniform in [dt_min, dt_max]
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^{-1}(dt)
        n = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_log.copy_(n.log().expand(self.d_inner, -1))  # A = -[1, ..., N] (S4D-Real)
        self.D.fill_(1.0)

    def _scan_inputs(self, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """From convolved inputs ``u [..., D]`` to ``delta [..., D]``, ``B, C [..., N]``."""
        R, N = self.dt_rank, self.d_state
        x_dbl = self.x_proj(u)  # [..., R + 2N]
        dt, B_t, C_t = x_dbl.split([R, N, N], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # [..., D]; bias added inside the scan
        return delta, B_t, C_t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, T, M] -> out [B, T, M]`` with the chunked selective scan."""
        check_sequence(x, self.d_model)
        T = x.shape[1]
        u, z = self.in_proj(x).chunk(2, dim=-1)  # [B, T, D] each
        u = self.conv1d(u.transpose(1, 2))[..., :T].transpose(1, 2)  # [B, T, D], causal
        u = F.silu(u)
        delta, B_t, C_t = self._scan_inputs(u)
        scan = load_function(
            self.mechanism,
            self.backend,
            self.form,
            "course_lib.selective_ssm.torch_impl:selective_scan_chunked",
        )
        kwargs: dict[str, Any] = {}
        if self.backend == "torch":
            kwargs["chunk_size"] = min(self.chunk_size, T)  # no padding past T
        y = scan(
            u,
            delta,
            -self.A_log.exp(),
            B_t,
            C_t,
            D=self.D,
            z=z,
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
            **kwargs,
        )  # [B, T, D]
        return self.out_proj(y)  # [B, T, M]

    def init_cache(
        self, batch_size: int, device: Any = None, dtype: torch.dtype | None = None
    ) -> StateCache:
        """Zero convolution window ``conv [B, D, W]`` and scan state ``ssm [B, D, N]``."""
        b = check_positive_int("batch_size", batch_size)
        dtype = dtype or torch.get_default_dtype()
        return StateCache(
            conv=torch.zeros(b, self.d_inner, self.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(b, self.d_inner, self.d_state, device=device, dtype=dtype),
        )

    def step(self, x_t: torch.Tensor, cache: StateCache) -> tuple[torch.Tensor, StateCache]:
        """One token ``x_t [B, M]``: shift the convolution window, one scan step."""
        check_token(x_t, self.d_model)
        check_cache_type(cache, StateCache, type(self).__name__)
        from course_lib.selective_ssm.torch_impl import selective_scan_step

        u, z = self.in_proj(x_t).chunk(2, dim=-1)  # [B, D] each
        window = torch.cat([cache["conv"][..., 1:], u[..., None]], dim=-1)  # [B, D, W]
        cache["conv"] = window
        weight = self.conv1d.weight[:, 0]  # [D, W]
        u = F.silu(torch.einsum("bdw,dw->bd", window, weight) + self.conv1d.bias)  # [B, D]
        delta, B_t, C_t = self._scan_inputs(u)
        y, cache["ssm"] = selective_scan_step(
            u,
            delta,
            -self.A_log.exp(),
            B_t,
            C_t,
            cache["ssm"],
            D=self.D,
            z_t=z,
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
        )  # [B, D], [B, D, N]
        cache.position += 1
        return self.out_proj(y), cache  # [B, M]

    def to_params(self) -> dict[str, torch.Tensor]:
        """The parameters under the names of ``selective_ssm``'s ``mamba_block_forward``."""
        return {
            "in_proj_weight": self.in_proj.weight,
            "conv1d_weight": self.conv1d.weight[:, 0],  # [D, W]
            "conv1d_bias": self.conv1d.bias,
            "x_proj_weight": self.x_proj.weight,
            "dt_proj_weight": self.dt_proj.weight,
            "dt_proj_bias": self.dt_proj.bias,
            "A_log": self.A_log,
            "D": self.D,
            "out_proj_weight": self.out_proj.weight,
        }

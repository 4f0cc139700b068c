"""The H3 layer of Fu et al. 2023 as an ``nn.Module``, with a fixed-size decoding cache.

Glossary of dimension letters:

* ``B`` -- batch size
* ``T`` -- sequence length
* ``D`` -- model width (``d_model``)
* ``H`` -- heads
* ``K`` -- head size, ``D / H``
* ``N`` -- state size of each head's diagonal SSM
* ``W`` -- length of the shift SSM's filter

For ``x [B, T, D]`` (Fu et al. 2023, section 3; the equations are in
:mod:`course_lib.h3.numpy_ref`)::

    q = x W_q,  k = x W_k,  v = x W_v
    kbar = SSM_shift(k)                               # short causal filter per channel
    S_t = Abar_h S_{t-1} + Bbar_h kbar_t v_t^T        # diagonal SSM per head, [N, K, K]
    o_t = (C_h S_t + D_h kbar_t v_t^T)^T q_t          # [K] per head
    y = concat_heads(o) W_o

This module holds the parameters of :func:`course_lib.h3.torch_impl.h3_forward` as
``nn.Parameter`` and rebuilds that function's ``params`` dict on every call, so the
functional code is the one place the maths lives. The diagonal SSM is complex (S4D-Lin
initialisation, Gu et al. 2022); to keep every parameter real and ``A`` stable under
training it is stored as::

    A = -exp(A_log_real) + i A_imag       # Re(A) < 0 always
    B, C = view_as_complex([H, N, 2])     # real and imaginary parts
    dt = exp(log_dt)                      # positive step sizes, [H]

Training uses the FFT form (O(T log T)); decoding keeps the shift buffer ``[B, D, W]`` and
the SSM state ``[B, H, N, K, K]`` (complex) in a :class:`StateCache`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from course_lib.checks import check_choice, check_positive_int
from course_lib.nn._common import (
    check_backend,
    check_cache_type,
    check_sequence,
    check_token,
    load_function,
)
from course_lib.nn.cache import StateCache


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class H3Block(nn.Module):
    """H3 layer: ``[B, T, D] -> [B, T, D]``.

    Args:
        d_model: model width ``D``.
        num_heads: ``H``; must divide ``d_model``.
        state_size: ``N`` of each head's diagonal SSM.
        shift_size: filter length ``W`` of the shift SSM (default ``state_size``, as the
            functional initialiser).
        backend: ``"torch"`` (H3 has no Triton kernel: its SSMs are time-invariant filters
            and the FFT already gives O(T log T)).
        form: ``"fft"`` or ``"recurrent"``, the sequence form ``forward`` uses.
    """

    mechanism = "h3"

    def __init__(
        self,
        d_model: int,
        num_heads: int = 1,
        state_size: int = 16,
        shift_size: int | None = None,
        backend: str = "torch",
        form: str = "fft",
    ) -> None:
        super().__init__()
        from course_lib.h3 import numpy_ref

        self.d_model = check_positive_int("d_model", d_model)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.state_size = check_positive_int("state_size", state_size)
        self.backend = check_backend(backend)
        self.form = check_choice("form", form, numpy_ref.FORMS)
        # Draw the functional initialiser's seed from torch's generator, so that
        # torch.manual_seed makes the block reproducible like any other module.
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        p = numpy_ref.init_h3_params(d_model, num_heads, state_size, seed, shift_size)
        self.shift_size = int(p["shift_kernel"].shape[1])

        def real(a: Any) -> nn.Parameter:
            return nn.Parameter(torch.as_tensor(a).to(torch.float32))

        def pair(a: Any) -> nn.Parameter:  # complex [H, N] -> real [H, N, 2]
            return nn.Parameter(torch.view_as_real(torch.as_tensor(a)).to(torch.float32))

        self.Wq, self.Wk, self.Wv, self.Wo = (real(p[n]) for n in ("Wq", "Wk", "Wv", "Wo"))
        self.shift_kernel = real(p["shift_kernel"])  # [D, W]
        self.A_log_real = real(torch.as_tensor(-p["A"].real).log())  # [H, N]
        self.A_imag = real(p["A"].imag)  # [H, N]
        self.B = pair(p["B"])  # [H, N, 2]
        self.C = pair(p["C"])  # [H, N, 2]
        self.log_dt = real(torch.as_tensor(p["dt"]).log())  # [H]
        self.D = real(p["D"])  # [H]

    def h3_params(self) -> dict[str, torch.Tensor]:
        """The ``params`` dict of :func:`course_lib.h3.torch_impl.h3_forward`."""
        return {
            "Wq": self.Wq,
            "Wk": self.Wk,
            "Wv": self.Wv,
            "Wo": self.Wo,
            "shift_kernel": self.shift_kernel,
            "A": torch.complex(-self.A_log_real.exp(), self.A_imag),  # [H, N]
            "B": torch.view_as_complex(self.B),  # [H, N]
            "C": torch.view_as_complex(self.C),  # [H, N]
            "dt": self.log_dt.exp(),  # [H]
            "D": self.D,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, T, D] -> y [B, T, D]`` with the FFT (or recurrent) form."""
        check_sequence(x, self.d_model)
        fn = load_function(
            self.mechanism, self.backend, self.form, f"course_lib.h3.torch_impl:h3_{self.form}"
        )
        return fn(x, **self.h3_params(), num_heads=self.num_heads)  # [B, T, D]

    def init_cache(
        self, batch_size: int, device: Any = None, dtype: torch.dtype | None = None
    ) -> StateCache:
        """Zero shift buffer ``shift [B, D, W]`` and SSM state ``ssm [B, H, N, K, K]``."""
        b = check_positive_int("batch_size", batch_size)
        dtype = dtype or torch.get_default_dtype()
        H, K = self.num_heads, self.d_model // self.num_heads
        return StateCache(
            shift=torch.zeros(b, self.d_model, self.shift_size, device=device, dtype=dtype),
            ssm=torch.zeros(
                b, H, self.state_size, K, K, device=device, dtype=_complex_dtype(dtype)
            ),
        )

    def step(self, x_t: torch.Tensor, cache: StateCache) -> tuple[torch.Tensor, StateCache]:
        """One token ``x_t [B, D]``: push ``k_t`` into the shift buffer, one SSM step."""
        check_token(x_t, self.d_model)
        check_cache_type(cache, StateCache, type(self).__name__)
        from course_lib.h3.torch_impl import h3_step

        state = {"shift": cache["shift"], "ssm": cache["ssm"]}
        y_t, new = h3_step(x_t, self.h3_params(), state, self.num_heads)  # [B, D]
        cache["shift"], cache["ssm"] = new["shift"], new["ssm"]
        cache.position += 1
        return y_t, cache

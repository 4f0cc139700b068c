"""The gated linear attention (GLA) layer of Yang et al. 2023 as an ``nn.Module``.

Glossary of dimension letters:

* ``B`` -- batch size
* ``T`` -- sequence length
* ``D`` -- model width (``d_model``)
* ``H`` -- heads
* ``K`` -- key head dimension (``expand_k * D / H``; the paper uses ``expand_k = 1/2``)
* ``V`` -- value head dimension (``expand_v * D / H``; the paper uses ``expand_v = 1``)
* ``R`` -- rank of the gate projection (16)

For ``x [B, T, D]`` (Yang et al. 2023, section 4.1)::

    q = x W_q,  k = x W_k,  v = x W_v                        # split into H heads
    log alpha_t = logsigmoid(x_t W_a1 W_a2 + b_a) / tau      # [H, K], tau = 16
    S_t = diag(alpha_t) S_{t-1} + k_t v_t^T                  # [K, V] per head
    o_t = S_t^T q_t * K^(-1/2)
    r_t = swish(x_t W_r + b_r)                               # output gate
    y_t = (r_t * GroupNorm_H(o_t)) W_o                       # LayerNorm within each head

The gate projection is low-rank (``W_a1 [D, R]``, ``W_a2 [R, H*K]``) to keep it cheap, and
the temperature ``tau`` keeps the decays ``alpha`` close to 1 at initialisation, so the
state forgets slowly until training asks otherwise. Training uses the chunkwise form;
decoding carries ``S [B, H, K, V]`` in a fixed-size :class:`StateCache`.
"""

from __future__ import annotations

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
    split_heads,
)
from course_lib.nn.cache import StateCache


def _head_dim(name: str, width: float, num_heads: int) -> int:
    dim = int(width)
    if dim <= 0 or dim % num_heads:
        raise ValueError(
            f"{name} gives width {dim}, which must be a positive multiple of num_heads={num_heads}"
        )
    return dim // num_heads


class GatedLinearAttention(nn.Module):
    """GLA layer with a data-dependent vector gate: ``[B, T, D] -> [B, T, D]``.

    Args:
        d_model: model width ``D``.
        num_heads: ``H``.
        expand_k, expand_v: total key / value width as a multiple of ``D``.
        gate_rank: rank ``R`` of the gate projection ``W_a1 W_a2`` (16 in the paper).
        gate_temperature: ``tau`` dividing the log-sigmoid gate (16 in the paper).
        chunk_size: chunk length of the training form.
        backend: ``"torch"`` or ``"triton"``.
        form: the registered form used when ``backend`` is not torch (``"chunk"``).
    """

    mechanism = "gated_linear_attention"

    def __init__(
        self,
        d_model: int,
        num_heads: int = 1,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_rank: int = 16,
        gate_temperature: float = 16.0,
        chunk_size: int = 64,
        norm_eps: float = 1e-5,
        backend: str = "torch",
        form: str = "chunk",
    ) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.key_dim = _head_dim("expand_k", d_model * expand_k, num_heads)
        self.value_dim = _head_dim("expand_v", d_model * expand_v, num_heads)
        self.gate_rank = check_positive_int("gate_rank", gate_rank)
        self.gate_temperature = check_positive_float("gate_temperature", gate_temperature)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.norm_eps = check_positive_float("norm_eps", norm_eps)
        self.backend = check_backend(backend)
        self.form = form
        H, K, V = self.num_heads, self.key_dim, self.value_dim
        self.q_proj = nn.Linear(d_model, H * K, bias=False)
        self.k_proj = nn.Linear(d_model, H * K, bias=False)
        self.v_proj = nn.Linear(d_model, H * V, bias=False)
        self.gate_down = nn.Linear(d_model, gate_rank, bias=False)  # W_a1 [D, R]
        self.gate_up = nn.Linear(gate_rank, H * K, bias=True)  # W_a2 [R, H*K], b_a
        self.out_gate = nn.Linear(d_model, H * V, bias=True)  # W_r, b_r
        self.norm = nn.GroupNorm(H, H * V, eps=norm_eps)  # LayerNorm within each head
        self.o_proj = nn.Linear(H * V, d_model, bias=False)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        H = self.num_heads
        q = split_heads(self.q_proj(x), H)  # [..., H, K]
        k = split_heads(self.k_proj(x), H)  # [..., H, K]
        v = split_heads(self.v_proj(x), H)  # [..., H, V]
        logits = self.gate_up(self.gate_down(x))  # [..., H*K]
        gk = split_heads(F.logsigmoid(logits) / self.gate_temperature, H)  # [..., H, K], <= 0
        return q, k, v, gk

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """``y = (swish(x W_r + b_r) * GroupNorm(o)) W_o`` for ``o [..., H, V]``."""
        lead = o.shape[:-2]
        o = self.norm(o.reshape(-1, self.num_heads * self.value_dim)).reshape(*lead, -1)
        return self.o_proj(F.silu(self.out_gate(x)) * o)  # [..., D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, T, D] -> y [B, T, D]`` with the chunkwise form."""
        check_sequence(x, self.d_model)
        q, k, v, gk = self._project(x)  # [B, T, H, K]
        fn = load_function(
            self.mechanism,
            self.backend,
            self.form,
            "course_lib.gated_linear_attention.torch_impl:gated_linear_attention_chunkwise",
        )
        kwargs: dict[str, Any] = {}
        if self.backend == "torch":
            kwargs["chunk_size"] = min(self.chunk_size, x.shape[1])  # no padding past T
        o, _ = fn(q, k, v, gk=gk, **kwargs)  # [B, T, H, V]
        return self._output(x, o)

    def init_cache(
        self, batch_size: int, device: Any = None, dtype: torch.dtype | None = None
    ) -> StateCache:
        """Zero state ``S [B, H, K, V]``."""
        B = check_positive_int("batch_size", batch_size)
        shape = (B, self.num_heads, self.key_dim, self.value_dim)
        return StateCache(
            S=torch.zeros(shape, device=device, dtype=dtype or torch.get_default_dtype())
        )

    def step(self, x_t: torch.Tensor, cache: StateCache) -> tuple[torch.Tensor, StateCache]:
        """One token ``x_t [B, D]``: ``S <- diag(alpha_t) S + k_t v_t^T``, read with ``q_t``."""
        check_token(x_t, self.d_model)
        check_cache_type(cache, StateCache, type(self).__name__)
        from course_lib.gated_linear_attention.torch_impl import gated_linear_attention_step

        q_t, k_t, v_t, gk_t = self._project(x_t)  # [B, H, K]
        o_t, cache["S"] = gated_linear_attention_step(q_t, k_t, v_t, cache["S"], gk_t=gk_t)
        cache.position += 1
        return self._output(x_t, o_t), cache  # [B, D]

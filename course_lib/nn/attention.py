"""Causal multi-head softmax attention as an ``nn.Module``, with a growing KV cache.

Glossary of dimension letters:

* ``B`` -- batch size
* ``T`` -- sequence length (queries)
* ``S`` -- number of cached tokens (keys and values)
* ``D`` -- model width (``d_model``)
* ``H`` -- heads
* ``K`` -- head dimension of queries and keys
* ``V`` -- head dimension of values

For ``x [B, T, D]`` (Vaswani et al. 2017)::

    q = x W_q,  k = x W_k,  v = x W_v            # split into H heads
    o_t = sum_{s <= t} softmax_s(q_t . k_s * scale) v_s
    y = concat_heads(o) W_o

Positions enter through rotary embeddings (Su et al. 2021) on ``q`` and ``k`` (switch off
with ``rotary=False``): without them causal attention can only tell positions apart through
the mask. Decoding one token appends its key and value to a :class:`KVCache` and attends
over all of them, so the cache grows with the position.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from course_lib.checks import check_positive_int
from course_lib.nn._common import (
    check_backend,
    check_cache_type,
    check_sequence,
    check_token,
    load_function,
    split_heads,
)
from course_lib.nn.cache import KVCache


def rotary_embedding(
    x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0
) -> torch.Tensor:
    """Rotate feature pairs ``(x_i, x_{i+K/2})`` by the angle ``position * base^(-2i/K)``.

    ``x [B, T, H, K]`` (``K`` even), ``positions [T]``; returns ``[B, T, H, K]``. Because a
    rotation by ``m`` then the inverse of ``n`` is a rotation by ``m - n``, the dot product
    of a rotated query and key depends only on their distance (Su et al. 2021).
    """
    half = x.shape[-1] // 2
    freq = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) / half)  # [K/2]
    angle = positions.to(torch.float64)[:, None] * freq  # [T, K/2]
    cos = angle.cos().to(x.dtype)[None, :, None, :]  # [1, T, 1, K/2]
    sin = angle.sin().to(x.dtype)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # [B, T, H, K]


class MultiHeadAttention(nn.Module):
    """Causal multi-head softmax attention: ``[B, T, D] -> [B, T, D]``.

    Args:
        d_model: model width ``D``.
        num_heads: ``H``; ``head_dim`` defaults to ``D // H``.
        rotary: apply rotary position embeddings to ``q`` and ``k``.
        bias: biases on the four projections.
        backend: ``"torch"`` or ``"triton"`` (the registered softmax-attention kernel).
        form: the registered form used when ``backend`` is not torch (``"flash"``).
    """

    mechanism = "softmax_attention"

    def __init__(
        self,
        d_model: int,
        num_heads: int = 1,
        head_dim: int | None = None,
        rotary: bool = True,
        bias: bool = False,
        backend: str = "torch",
        form: str = "flash",
    ) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.num_heads = check_positive_int("num_heads", num_heads)
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
            head_dim = d_model // num_heads
        self.head_dim = check_positive_int("head_dim", head_dim)
        if rotary and head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
        self.rotary = rotary
        self.backend = check_backend(backend)
        self.form = form
        inner = self.num_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=bias)
        self.k_proj = nn.Linear(d_model, inner, bias=bias)
        self.v_proj = nn.Linear(d_model, inner, bias=bias)
        self.o_proj = nn.Linear(inner, d_model, bias=bias)

    def _attention(self) -> Any:
        return load_function(
            self.mechanism,
            self.backend,
            self.form,
            "course_lib.softmax_attention.torch_impl:softmax_attention",
        )

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q = split_heads(self.q_proj(x), self.num_heads)  # [B, T, H, K]
        k = split_heads(self.k_proj(x), self.num_heads)  # [B, T, H, K]
        v = split_heads(self.v_proj(x), self.num_heads)  # [B, T, H, V]
        if self.rotary:
            q, k = rotary_embedding(q, positions), rotary_embedding(k, positions)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, T, D] -> y [B, T, D]``, causal."""
        check_sequence(x, self.d_model)
        positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self._qkv(x, positions)
        o = self._attention()(q, k, v, causal=True)  # [B, T, H, V]
        return self.o_proj(o.flatten(-2))  # [B, T, D]

    def init_cache(
        self, batch_size: int, device: Any = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        check_positive_int("batch_size", batch_size)
        H, E = self.num_heads, self.head_dim
        return KVCache(batch_size, H, E, E, device=device, dtype=dtype)

    def step(self, x_t: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One token ``x_t [B, D]``: append its key and value, attend over the cache."""
        check_token(x_t, self.d_model)
        check_cache_type(cache, KVCache, type(self).__name__)
        positions = torch.tensor([cache.position], device=x_t.device)
        q, k, v = self._qkv(x_t[:, None], positions)  # [B, 1, H, K]
        keys, values = cache.append(k[:, 0], v[:, 0])  # [B, S, H, K], [B, S, H, V]
        # Causal masking is aligned bottom-right: the single query sees the whole cache.
        o = self._attention()(q, keys, values, causal=True)  # [B, 1, H, V]
        return self.o_proj(o[:, 0].flatten(-2)), cache  # [B, D]

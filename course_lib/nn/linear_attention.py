"""Causal linear attention as an ``nn.Module``, with a fixed-size state cache.

Glossary of dimension letters:

* ``B`` -- batch size
* ``T`` -- sequence length
* ``D`` -- model width (``d_model``)
* ``H`` -- heads
* ``K`` -- head dimension of queries and keys
* ``V`` -- head dimension of values

For ``x [B, T, D]`` (Katharopoulos et al. 2020), with a feature map ``phi``::

    q = phi(x W_q),  k = phi(x W_k),  v = x W_v        # split into H heads
    S_t = S_{t-1} + k_t v_t^T                          # [K, V] per head
    z_t = z_{t-1} + k_t                                # [K]    (only with normalize)
    o_t = q_t^T S_t * scale   or, normalised,   q_t^T S_t / (q_t . z_t)
    y = concat_heads(o) W_o

Training uses the chunkwise form; decoding carries ``S`` (and ``z``) in a
:class:`StateCache` whose size does not depend on the position.
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
    split_heads,
)
from course_lib.nn.cache import StateCache

FEATURE_MAPS = ("identity", "elu1", "relu")


class LinearAttention(nn.Module):
    """Causal linear attention: ``[B, T, D] -> [B, T, D]``.

    Args:
        d_model: model width ``D``.
        num_heads: ``H``; ``head_dim`` defaults to ``D // H`` (used for ``K`` and ``V``).
        feature_map: ``"elu1"`` (elu(x) + 1, Katharopoulos et al. 2020), ``"relu"`` or
            ``"identity"``.
        normalize: divide by ``q_t . z_t`` (the causal softmax-like normaliser); needs a
            positive feature map.
        chunk_size: chunk length of the training form.
        backend: ``"torch"`` or ``"triton"``.
        form: the registered form used when ``backend`` is not torch (``"chunkwise"``).
    """

    mechanism = "linear_attention"

    def __init__(
        self,
        d_model: int,
        num_heads: int = 1,
        head_dim: int | None = None,
        feature_map: str = "elu1",
        normalize: bool = True,
        chunk_size: int = 64,
        bias: bool = False,
        backend: str = "torch",
        form: str = "chunkwise",
    ) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.num_heads = check_positive_int("num_heads", num_heads)
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
            head_dim = d_model // num_heads
        self.head_dim = check_positive_int("head_dim", head_dim)
        self.feature_map = check_choice("feature_map", feature_map, FEATURE_MAPS)
        if normalize and feature_map == "identity":
            raise ValueError(
                "normalize=True needs a positive feature_map ('elu1' or 'relu'), got 'identity'"
            )
        self.normalize = bool(normalize)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.backend = check_backend(backend)
        self.form = form
        inner = self.num_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=bias)
        self.k_proj = nn.Linear(d_model, inner, bias=bias)
        self.v_proj = nn.Linear(d_model, inner, bias=bias)
        self.o_proj = nn.Linear(inner, d_model, bias=bias)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q = split_heads(self.q_proj(x), self.num_heads)  # [..., H, K]
        k = split_heads(self.k_proj(x), self.num_heads)  # [..., H, K]
        v = split_heads(self.v_proj(x), self.num_heads)  # [..., H, V]
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, T, D] -> y [B, T, D]`` with the chunkwise form."""
        check_sequence(x, self.d_model)
        q, k, v = self._qkv(x)  # [B, T, H, K]
        fn = load_function(
            self.mechanism,
            self.backend,
            self.form,
            "course_lib.linear_attention.torch_impl:linear_attention_chunkwise",
        )
        kwargs: dict[str, Any] = {"feature_map": self.feature_map, "normalize": self.normalize}
        if self.backend == "torch":
            kwargs["chunk_size"] = min(self.chunk_size, x.shape[1])  # no padding past T
        o, _ = fn(q, k, v, **kwargs)  # [B, T, H, V]
        return self.o_proj(o.flatten(-2))  # [B, T, D]

    def init_cache(
        self, batch_size: int, device: Any = None, dtype: torch.dtype | None = None
    ) -> StateCache:
        """Zero state ``S [B, H, K, V]`` (and normaliser ``z [B, H, K]``)."""
        B, H, E = check_positive_int("batch_size", batch_size), self.num_heads, self.head_dim
        dtype = dtype or torch.get_default_dtype()
        states = {"S": torch.zeros(B, H, E, E, device=device, dtype=dtype)}
        if self.normalize:
            states["z"] = torch.zeros(B, H, E, device=device, dtype=dtype)
        return StateCache(**states)

    def step(self, x_t: torch.Tensor, cache: StateCache) -> tuple[torch.Tensor, StateCache]:
        """One token ``x_t [B, D]``: ``S <- S + k_t v_t^T``, read out with ``q_t``."""
        check_token(x_t, self.d_model)
        check_cache_type(cache, StateCache, type(self).__name__)
        from course_lib.linear_attention.torch_impl import linear_attention_step

        q_t, k_t, v_t = self._qkv(x_t)  # [B, H, K]
        state = (cache["S"], cache["z"]) if self.normalize else cache["S"]
        o_t, new_state = linear_attention_step(
            q_t, k_t, v_t, state, feature_map=self.feature_map, normalize=self.normalize
        )  # [B, H, V]
        if self.normalize:
            cache["S"], cache["z"] = new_state
        else:
            cache["S"] = new_state
        cache.position += 1
        return self.o_proj(o_t.flatten(-2)), cache  # [B, D]

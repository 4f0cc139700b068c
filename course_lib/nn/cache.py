"""Decode-time caches: what a model keeps between tokens, and how many bytes it costs.

Glossary of dimension letters:

* ``B`` -- batch size
* ``S`` -- number of tokens seen so far (the cache's length)
* ``H`` -- heads
* ``K`` -- key (and query) head dimension
* ``V`` -- value head dimension

Softmax attention must remember every past key and value: its :class:`KVCache` grows by
``B * H * (K + V)`` numbers per token, so its size is linear in the position. Linear
attention, gated linear attention, H3 and Mamba keep a fixed-size recurrent state instead
(a ``[B, H, K, V]`` matrix, or ``[B, D, N]`` SSM states and a short convolution window):
:class:`StateCache` has the same size at token 1 and at token 100,000. Both report
``nbytes`` so chapter 09 can plot cache size against position; :class:`ModelCache` holds
one cache per layer of a :class:`~course_lib.nn.lm.TinyLM`.

Caches are updated in place by the blocks' ``step`` methods, which also return them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from course_lib.checks import check_shapes


def _tensor_bytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


class KVCache:
    """Past keys ``[B, S, H, K]`` and values ``[B, S, H, V]``, growing by one token a step.

    Storage is a buffer whose capacity doubles when full, so appending is amortised O(1)
    copies per token. ``nbytes`` counts the ``S`` tokens held (what the model needs);
    ``allocated_bytes`` counts the whole buffer.
    """

    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        key_dim: int,
        value_dim: int,
        device: Any = None,
        dtype: torch.dtype | None = None,
        capacity: int = 16,
    ) -> None:
        self.shape = (batch_size, num_heads, key_dim, value_dim)
        dtype = dtype or torch.get_default_dtype()
        B, H, K, V = self.shape
        self._k = torch.zeros(B, capacity, H, K, device=device, dtype=dtype)  # [B, cap, H, K]
        self._v = torch.zeros(B, capacity, H, V, device=device, dtype=dtype)  # [B, cap, H, V]
        self.seq_len = 0

    @property
    def position(self) -> int:
        """Number of tokens seen so far (the position of the next token)."""
        return self.seq_len

    @property
    def keys(self) -> torch.Tensor:
        return self._k[:, : self.seq_len]  # [B, S, H, K]

    @property
    def values(self) -> torch.Tensor:
        return self._v[:, : self.seq_len]  # [B, S, H, V]

    def append(self, k_t: torch.Tensor, v_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one token's ``k_t [B, H, K]`` and ``v_t [B, H, V]``; return all keys, values."""
        B, H, K, V = self.shape
        check_shapes({"B": B, "H": H, "K": K, "V": V}, k_t=(k_t, "B H K"), v_t=(v_t, "B H V"))
        if self.seq_len == self._k.shape[1]:
            self._k = torch.cat([self._k, torch.zeros_like(self._k)], dim=1)  # double capacity
            self._v = torch.cat([self._v, torch.zeros_like(self._v)], dim=1)
        self._k[:, self.seq_len] = k_t.to(self._k.dtype)
        self._v[:, self.seq_len] = v_t.to(self._v.dtype)
        self.seq_len += 1
        return self.keys, self.values

    @property
    def nbytes(self) -> int:
        """Bytes of the keys and values held: ``B * S * H * (K + V) * itemsize``."""
        return _tensor_bytes(self.keys) + _tensor_bytes(self.values)

    @property
    def allocated_bytes(self) -> int:
        return _tensor_bytes(self._k) + _tensor_bytes(self._v)

    def __repr__(self) -> str:
        B, H, K, V = self.shape
        return f"KVCache(B={B}, S={self.seq_len}, H={H}, K={K}, V={V}, nbytes={self.nbytes})"


class StateCache:
    """Named fixed-size state tensors (a recurrent state, a convolution window, ...).

    ``cache["S"] = new_S`` replaces a state; its shape may never change, which is the point:
    ``nbytes`` is the same at every position. ``position`` counts the steps taken.
    """

    def __init__(self, **states: Any) -> None:
        self._states: dict[str, torch.Tensor] = {}
        for name, x in states.items():
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch tensor, got {type(x).__name__}")
            self._states[name] = x
        self.position = 0

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._states[name]

    def __setitem__(self, name: str, x: torch.Tensor) -> None:
        if name not in self._states:
            raise KeyError(f"{name!r} is not a state of this cache: {sorted(self._states)}")
        old = self._states[name]
        if tuple(x.shape) != tuple(old.shape):
            raise ValueError(
                f"{name} must keep its shape {tuple(old.shape)} (a fixed-size state), "
                f"got {tuple(x.shape)}"
            )
        self._states[name] = x

    def __contains__(self, name: object) -> bool:
        return name in self._states

    def keys(self) -> list[str]:
        return list(self._states)

    @property
    def nbytes(self) -> int:
        """Bytes of every state tensor; independent of ``position``."""
        return sum(_tensor_bytes(x) for x in self._states.values())

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}={tuple(x.shape)}" for n, x in self._states.items())
        return f"StateCache({shapes}, position={self.position}, nbytes={self.nbytes})"


class ModelCache:
    """One cache per layer of a model, plus the position of the next token."""

    def __init__(self, layers: list[KVCache | StateCache]) -> None:
        self.layers = list(layers)
        self.position = 0

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> KVCache | StateCache:
        return self.layers[i]

    def __iter__(self) -> Iterator[KVCache | StateCache]:
        return iter(self.layers)

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def layer_bytes(self) -> list[int]:
        return [layer.nbytes for layer in self.layers]

    def __repr__(self) -> str:
        return (
            f"ModelCache({len(self.layers)} layers, position={self.position}, nbytes={self.nbytes})"
        )

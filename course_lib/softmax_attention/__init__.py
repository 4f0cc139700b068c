"""Softmax attention (chapter 01): numpy reference, PyTorch and a FlashAttention-style
Triton kernel.

Glossary: B batch, T queries, S keys/values, H heads, K query/key head dim, V value head dim.
Layout ``q [B, T, H, K]``, ``k [B, S, H, K]``, ``v [B, S, H, V]`` -> ``o [B, T, H, V]``.

Submodules: :mod:`.numpy_ref` (float64 ground truth), :mod:`.torch_impl` (vectorised,
autograd) and :mod:`.triton_kernels` (imported on demand, it needs Triton). Importing this
package imports neither torch nor Triton.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = {"numpy_ref", "torch_impl", "triton_kernels", "registrations"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)

"""Gated linear attention (chapter 04): ``S_t = G_t ⊙ S_{t-1} + k_t v_t^T``.

Glossary: ``B`` batch, ``T`` time, ``H`` heads, ``K`` key/query head dimension, ``V`` value
head dimension.

* :mod:`~course_lib.gated_linear_attention.numpy_ref` -- float64 ground truth: the
  recurrent, parallel (decay mask) and chunkwise forms, one decoding step, helpers;
* :mod:`~course_lib.gated_linear_attention.torch_impl` -- the same functions, vectorised
  and differentiable;
* :mod:`~course_lib.gated_linear_attention.triton_kernels` -- ``chunk_gla``,
  ``chunk_simple_gla`` and ``gla_decode_step`` (needs Triton).

Submodules load on first use, so importing the package (and the registry) stays cheap.
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

"""course_lib: every mechanism of the course "Linearizing Attention", three ways.

One folder per mechanism (softmax_attention, linear_attention, gated_linear_attention,
ssm, h3, selective_ssm, duality), each with ``numpy_ref.py`` (float64 ground truth),
``torch_impl.py`` (vectorised, autograd) and, where it has one, ``triton_kernels.py``;
``registrations.py`` puts them in the :mod:`course_lib.registry`.

Importing the package is cheap: it imports neither torch nor Triton. Submodules load on
first attribute access (``course_lib.linear_attention``) or explicit import.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "checks",
    "registry",
    "runtime",
    "testing",
    "softmax_attention",
    "linear_attention",
    "gated_linear_attention",
    "ssm",
    "h3",
    "selective_ssm",
    "duality",
    "nn",
    "bench",
    "viz",
    "grading",
    "tasks",
    "notebook_tools",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)

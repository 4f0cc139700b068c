"""Shared helpers of the blocks: picking a backend's function and checking block inputs.

Glossary of dimension letters:

* ``B`` -- batch size
* ``T`` -- sequence length
* ``D`` -- model width (``d_model``)
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import torch

from course_lib.checks import check_choice, check_shapes

BLOCK_BACKENDS = ("torch", "triton")


def check_backend(backend: str) -> str:
    return check_choice("backend", backend, BLOCK_BACKENDS)


def load_function(mechanism: str, backend: str, form: str, torch_target: str) -> Callable[..., Any]:
    """The sequence function a block calls.

    ``backend="torch"`` imports ``torch_target`` (``"module:attr"``, the function the registry
    lists as the torch implementation); any other backend is looked up in the registry as
    ``mechanism/backend/form`` (with the registration's fixed ``kwargs``, e.g. a chunk size),
    which raises a ``ValueError`` listing what is registered.
    """
    if check_backend(backend) == "torch":
        module, _, attr = torch_target.partition(":")
        return getattr(importlib.import_module(module), attr)
    from course_lib import registry

    impl = registry.get(mechanism, backend, form)
    return functools.partial(impl.load(), **impl.kwargs)


def check_sequence(x: Any, d_model: int, name: str = "x") -> dict[str, int]:
    """``x`` must be a float tensor ``[B, T, D]`` with ``D == d_model``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(x).__name__}")
    return check_shapes({"D": d_model}, **{name: (x, "B T D")})


def check_token(x_t: Any, d_model: int, name: str = "x_t") -> dict[str, int]:
    """``x_t`` must be a float tensor ``[B, D]`` with ``D == d_model`` (one decode step)."""
    if not isinstance(x_t, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(x_t).__name__}")
    return check_shapes({"D": d_model}, **{name: (x_t, "B D")})


def check_cache_type(cache: Any, kind: type, block: str) -> None:
    if not isinstance(cache, kind):
        raise TypeError(
            f"cache must be a {kind.__name__} from {block}.init_cache(...), "
            f"got {type(cache).__name__}"
        )


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[..., H * E] -> [..., H, E]``."""
    return x.unflatten(-1, (num_heads, x.shape[-1] // num_heads))

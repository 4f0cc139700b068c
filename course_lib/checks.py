"""Input validation shared by every backend.

Each public function checks its arguments here, at the entry point, before any array
maths or kernel launch: a learner who passes ``k`` with the wrong head dimension gets a
``ValueError`` that names ``k`` and the expected shape, never a broadcasting accident or a
crash inside a Triton kernel. The same calls serve numpy arrays and torch tensors.

Shapes are written as strings of dimension letters, e.g. ``"B T H K"``. Letters bind to
sizes on first use and must agree afterwards; a literal number fixes a size.

>>> dims = check_shapes(q=(q, "B T H K"), k=(k, "B T H K"), v=(v, "B T H V"))
>>> dims["K"]
64
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _is_float(x: Any) -> bool:
    if _is_torch(x):
        return x.is_floating_point()
    return np.issubdtype(np.asarray(x).dtype, np.floating)


def _is_complex(x: Any) -> bool:
    if _is_torch(x):
        return x.is_complex()
    return np.issubdtype(np.asarray(x).dtype, np.complexfloating)


def check_array(name: str, x: Any, *, allow_complex: bool = False) -> None:
    """``x`` must be a numpy array or torch tensor of a floating (or complex) dtype."""
    if not (isinstance(x, np.ndarray) or _is_torch(x)):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if _is_float(x) or (allow_complex and _is_complex(x)):
        return
    kind = "a floating or complex" if allow_complex else "a floating-point"
    raise TypeError(f"{name} must have {kind} dtype, got {x.dtype}")


def check_shapes(
    dims: dict[str, int] | None = None, *, allow_complex: bool = False, **specs: Any
) -> dict[str, int]:
    """Check each ``name=(array, "LETTERS")``; return the letter -> size bindings.

    ``None`` arrays are skipped, so optional arguments can be passed straight through.
    Pass ``dims`` to start from bindings made by an earlier call.
    """
    bound: dict[str, int] = dict(dims or {})
    for name, (x, spec) in specs.items():
        if x is None:
            continue
        check_array(name, x, allow_complex=allow_complex)
        letters = spec.split()
        if len(x.shape) != len(letters):
            raise ValueError(
                f"{name} must have {len(letters)} dimensions [{', '.join(letters)}], "
                f"got shape {tuple(x.shape)}"
            )
        for axis, (letter, size) in enumerate(zip(letters, x.shape, strict=True)):
            want = int(letter) if letter.isdigit() else bound.setdefault(letter, int(size))
            if int(size) != want:
                raise ValueError(
                    f"{name} has shape {tuple(x.shape)} but [{', '.join(letters)}] expects "
                    f"{letter}={want} at axis {axis} (from {_expected(letters, bound)})"
                )
    return bound


def _expected(letters: list[str], bound: dict[str, int]) -> str:
    return "(" + ", ".join(f"{c}={bound.get(c, c)}" for c in letters) + ")"


def check_same_dtype(**arrays: Any) -> None:
    """All given (non-None) arrays share one dtype; names the first that differs."""
    named = [(n, a) for n, a in arrays.items() if a is not None]
    if not named:
        return
    first_name, first = named[0]
    for name, a in named[1:]:
        if a.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {a.dtype} but {first_name} has {first.dtype}: "
                "pass all of them in one dtype"
            )


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    if not value > 0 or not np.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_log_gate(name: str, g: Any) -> None:
    """Log-space gates must be finite and <= 0 (a decay factor exp(g) in (0, 1])."""
    if g is None or (g.numel() if _is_torch(g) else g.size) == 0:
        return
    if not bool((g.isfinite() if _is_torch(g) else np.isfinite(g)).all()):
        raise ValueError(f"{name} (a log gate) must be finite; it holds inf or NaN")
    gmax = float(g.max())
    if gmax > 0:
        raise ValueError(
            f"{name} (a log gate) must be <= 0 so that exp({name}) is a decay in (0, 1]; "
            f"its largest entry is {gmax:.4g}"
        )

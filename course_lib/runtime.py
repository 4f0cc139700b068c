"""Where the course's code runs: the device, the Triton mode, and output allocation.

The Triton mode is decided once, before any ``@triton.jit`` kernel is defined, because
Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, not when it is launched:

* ``compiled``    -- a CUDA GPU is visible: kernels are compiled for it.
* ``interpreter`` -- no CUDA GPU: kernels run in Triton's CPU interpreter
  (``TRITON_INTERPRET=1``). Slow, no bf16, but every line of the kernel executes.
* ``unavailable`` -- Triton is not installed (macOS, Windows): Triton backends are skipped.

Override with ``COURSE_TRITON_MODE=compiled|interpreter`` in the environment before
``course_lib`` touches Triton. ``TRITON_INTERPRET=1`` set by the user is respected too.

Every module that defines kernels starts with ``runtime.require_triton()`` so that the
decision is made before its decorators run. Nothing here imports torch at module import
time: ``import course_lib`` stays fast.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from functools import cache
from typing import Any

MODES = ("compiled", "interpreter", "unavailable")
_OVERRIDE_VAR = "COURSE_TRITON_MODE"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@cache
def triton_mode() -> str:
    """Decide (once per process) how Triton kernels run; sets ``TRITON_INTERPRET``."""
    if importlib.util.find_spec("triton") is None:
        return "unavailable"
    override = os.environ.get(_OVERRIDE_VAR, "").strip().lower()
    if override and override not in ("compiled", "interpreter"):
        raise ValueError(
            f"{_OVERRIDE_VAR}={override!r}: expected 'compiled' or 'interpreter' (or unset)"
        )
    if override:
        mode = override
    elif os.environ.get("TRITON_INTERPRET", "0") == "1":
        mode = "interpreter"
    else:
        mode = "compiled" if _cuda_available() else "interpreter"
    if mode == "interpreter":
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            # Kernels already decorated in compiled mode would fail at launch with
            # "0 active drivers"; say so instead of letting that happen later.
            import warnings

            warnings.warn(
                "triton was imported before course_lib chose the interpreter; kernels "
                "defined before this point will not run on the CPU",
                RuntimeWarning,
                stacklevel=2,
            )
        os.environ["TRITON_INTERPRET"] = "1"
    return mode


def require_triton() -> str:
    """Called at the top of every kernel module: fixes the mode, fails clearly if none."""
    mode = triton_mode()
    if mode == "unavailable":
        raise ImportError(
            "Triton is not installed (it ships for Linux only); the numpy and torch "
            "backends of course_lib work without it"
        )
    return mode


def triton_available() -> bool:
    return triton_mode() != "unavailable"


def default_device() -> str:
    """``"cuda"`` when a CUDA GPU is visible, else ``"cpu"``."""
    return "cuda" if _cuda_available() else "cpu"


def supports_bf16(device: Any = None) -> bool:
    """bf16 needs compute capability >= 8.0 on CUDA; the Triton interpreter has none."""
    import torch

    device = torch.device(device if device is not None else default_device())
    if device.type != "cuda":
        return triton_mode() != "interpreter"
    return torch.cuda.get_device_capability(device)[0] >= 8


def device_capability(device: Any) -> tuple[int, int] | None:
    """CUDA compute capability of ``device``, e.g. (7, 5) on a T4; None in the Triton
    interpreter or off CUDA. Launchers pick smaller tiles below (8, 0) and treat None as
    8.0 or newer."""
    import torch

    device = torch.device(device)
    if triton_mode() == "interpreter" or device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))


def check_bf16_supported(**tensors: Any) -> None:
    """Refuse a bfloat16 tensor on a GPU below compute capability 8.0 (a T4: no bf16 in
    Triton there), naming it. Call with the launcher's inputs; None entries are skipped."""
    import torch

    for name, x in tensors.items():
        if x is None or x.dtype != torch.bfloat16:
            continue
        cap = device_capability(x.device)
        if cap is not None and cap < (8, 0):
            raise TypeError(
                f"{name} is bfloat16, but this GPU (compute capability {cap[0]}.{cap[1]}) "
                "has no bf16 support in Triton; use float16 or float32"
            )


_POISON = {"on": False}


class poison_outputs:
    """Context manager: outputs allocated through :func:`new_empty` are filled with NaN.

    Tests wrap kernel calls in it, so that an element a kernel forgets to write stays NaN
    and fails the comparison instead of passing by luck with whatever memory held.
    """

    def __enter__(self) -> poison_outputs:
        self._before = _POISON["on"]
        _POISON["on"] = True
        return self

    def __exit__(self, *exc: object) -> None:
        _POISON["on"] = self._before


def new_empty(shape: tuple[int, ...], *, dtype: Any, device: Any) -> Any:
    """``torch.empty`` for kernel outputs; NaN-filled inside :class:`poison_outputs`."""
    import torch

    if _POISON["on"]:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def report() -> dict[str, str]:
    """Device, Triton mode and versions, as printed by ``python -m course_lib``."""
    info: dict[str, str] = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
    }
    import numpy

    info["numpy"] = numpy.__version__
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        info["torch"] = "not installed"
        return info
    info["torch"] = torch.__version__
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        info["device"] = f"cuda: {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]})"
        if cap[0] < 8:
            info["note"] = (
                "compute capability below 8.0: Triton is not officially supported here and "
                "bf16 does not exist (the course uses fp16/fp32; the kernels refuse bf16); "
                "the kernels pick smaller tiles that fit 64 KB of shared memory, checked by "
                "compiling for sm_75 but not yet run on such a GPU (see README)"
            )
    else:
        info["device"] = "cpu"
    mode = triton_mode()
    if mode != "unavailable":
        import triton

        info["triton"] = triton.__version__
    info["triton_mode"] = mode
    for name in ("ipywidgets", "matplotlib"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = "not installed"
    return info

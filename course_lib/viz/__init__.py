"""Widgets of the course: matplotlib figures driven by ipywidgets 7 or 8 controls.

* :class:`StateMatrixViewer` (chapters 03, 04)   * :class:`GatingDecayExplorer` (04)
* :class:`SSMFilterViewer` (05)                   * :class:`SelectivityViewer` (07)
* :class:`RuntimeScalingExplorer` (09)

Each displays as controls above a figure; ``widget.data()`` returns what it draws.
"""

from __future__ import annotations

import importlib
from typing import Any

_WIDGETS = {
    "StateMatrixViewer": "state_matrix",
    "GatingDecayExplorer": "gating",
    "SSMFilterViewer": "ssm_filter",
    "SelectivityViewer": "selectivity",
    "RuntimeScalingExplorer": "scaling",
}


def __getattr__(name: str) -> Any:
    if name in _WIDGETS:
        return getattr(importlib.import_module(f"{__name__}.{_WIDGETS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

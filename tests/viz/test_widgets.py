"""Widget callbacks without a browser: moving a control changes what the figure shows."""

from __future__ import annotations

import numpy as np
import pytest

from course_lib import viz
from course_lib.viz.state_matrix import retrieval_error, state_trajectory

# (widget, control to move, new value, a data key that must change)
MOVES = [
    ("StateMatrixViewer", "t", 5, "state"),
    ("StateMatrixViewer", "gated", True, "norms"),
    ("GatingDecayExplorer", "strength", 0.6, "weight"),
    ("GatingDecayExplorer", "kind", "constant (RetNet)", "log_gates"),
    ("GatingDecayExplorer", "reset", True, "weight"),
    ("SSMFilterViewer", "a_re", -2.0, "kernel"),
    ("SSMFilterViewer", "log10_dt", -2.0, "pole"),
    ("SSMFilterViewer", "method", "bilinear", "pole"),
    ("SelectivityViewer", "log10_dt_other", 0.5, "states"),
    ("SelectivityViewer", "log10_dt_important", -2.5, "states"),
]


def _changed(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or not np.allclose(a, b)


@pytest.mark.parametrize(("name", "control", "value", "key"), MOVES)
def test_moving_a_control_changes_the_figure(name, control, value, key) -> None:
    widget = getattr(viz, name)()
    before = widget.data()[key]
    png_before = widget._image().data
    widget.controls[control].value = value
    assert _changed(before, widget.data()[key])
    assert widget._image().data != png_before
    assert all(
        ax.get_xlabel() and ax.get_ylabel()
        for ax in widget.fig.axes
        if ax.get_label() != "<colorbar>"
    )


def test_show_displays_controls_and_a_static_image(capsys) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.instance()
    widget = viz.SSMFilterViewer()
    widget.show()
    handle = widget._handle
    assert handle is not None
    widget.controls["a_im"].value = 6.0  # updates in place through the display handle


def test_state_capacity_story() -> None:
    # Without a gate, pairs written long ago are read back worse once n exceeds d.
    states, k, v = state_trajectory(T=64, d=16, log_gate=0.0, seed=1)
    early = retrieval_error(states[7], k[:8], v[:8]).mean()  # n = d/2
    late = retrieval_error(states[63], k[:64], v[:64]).mean()  # n = 4d
    assert early < late


def test_gate_forgets_old_pairs() -> None:
    states, k, v = state_trajectory(T=40, d=16, log_gate=-0.5, seed=2)
    err = retrieval_error(states[-1], k, v)
    assert err[:5].mean() > 0.95  # decayed by exp(-0.5 * 35): essentially forgotten
    assert err[-1] < err[:5].mean()


def test_ssm_pole_inside_unit_circle_when_stable() -> None:
    widget = viz.SSMFilterViewer()
    for a_re in (-0.1, -1.0, -3.0):
        widget.controls["a_re"].value = a_re
        assert np.hypot(*widget.data()["pole"]) < 1.0


def test_large_delta_resets_small_delta_keeps() -> None:
    from course_lib.viz.selectivity import selective_trace

    keep = selective_trace(30, [5], dt_important=2.0, dt_other=1e-3)
    # after the marked token, a tiny Delta leaves the state almost unchanged
    assert np.allclose(keep["states"][6:], keep["states"][5], rtol=0.05)
    reset = selective_trace(30, [5], dt_important=2.0, dt_other=5.0)
    assert reset["decay"][10, 0] < 0.1

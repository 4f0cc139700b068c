"""Selectivity viewer (chapter 07): what a selective SSM keeps and what it forgets.

An input sequence with a few marked tokens. The step size is input dependent: marked
tokens get ``Delta_important`` and the rest ``Delta_other``. With ``A < 0`` the per-step
decay is ``exp(Delta A)``: a large Delta resets the state and writes the token in strongly
(focus), a small Delta keeps the state and barely writes (ignore). The state trace shows the
result, one line per state channel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from course_lib.selective_ssm.numpy_ref import selective_scan_step
from course_lib.viz.base import FigureWidget, slider


def selective_trace(
    T: int, important: list[int], dt_important: float, dt_other: float, N: int = 4, seed: int = 0
) -> dict[str, np.ndarray]:
    """Run one channel of a selective scan step by step; returns dt, decay, states, outputs."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.2, 1.0, size=T) * np.where(np.isin(np.arange(T), important), 3.0, 1.0)
    dt = np.where(np.isin(np.arange(T), important), dt_important, dt_other)
    A = -np.arange(1, N + 1, dtype=float)[None] * 0.5  # [D=1, N]
    Bt = np.ones((1, N))
    state = np.zeros((1, 1, N))
    states, ys = [], []
    for t in range(T):
        y, state = selective_scan_step(u[t : t + 1][None], dt[t : t + 1][None], A, Bt, Bt, state)
        states.append(state[0, 0])
        ys.append(y[0, 0])
    decay = np.exp(dt[:, None] * A[0])  # [T, N]
    return {"u": u, "dt": dt, "decay": decay, "states": np.array(states), "y": np.array(ys)}


class SelectivityViewer(FigureWidget):
    figsize = (10.0, 5.0)

    def __init__(self, T: int = 40, important: tuple[int, ...] = (6, 20, 31)) -> None:
        self.T, self.important = T, list(important)
        controls = {
            "log10_dt_important": slider("log10 Delta (marked)", 0.3, -3.0, 1.0, 0.1),
            "log10_dt_other": slider("log10 Delta (others)", -2.0, -3.0, 1.0, 0.1),
        }
        super().__init__(controls)

    def draw(self, fig: Figure, log10_dt_important: float, log10_dt_other: float) -> dict[str, Any]:
        tr = selective_trace(self.T, self.important, 10**log10_dt_important, 10**log10_dt_other)
        ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
        t = np.arange(self.T)
        ax1.bar(t, tr["u"], color=["C3" if i in self.important else "C0" for i in t])
        ax1.set(xlabel="t", ylabel="input u_t", title="marked tokens in red")
        ax2.semilogy(t, tr["dt"], marker="o", label="Delta_t")
        ax2.plot(t, tr["decay"][:, 0], marker=".", label="decay exp(Delta_t a_1)")
        ax2.set(xlabel="t", ylabel="Delta_t, decay")
        ax2.legend(fontsize=8, loc="lower left")
        ax3.plot(t, tr["states"])
        ax3.set(xlabel="t", ylabel="state h_t (N lines)")
        return tr

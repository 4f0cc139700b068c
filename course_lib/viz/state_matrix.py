"""State-matrix viewer (chapters 03 and 04): what the state S_t holds as t grows.

Random unit keys and values are written one per step, ``S_t = g S_{t-1} + k_t v_t^T``
(``g = 1`` without gating). The viewer shows S_t as a heatmap, ||S_t|| against t, and for
every key written so far the retrieval error ``||S_t^T k_j - v_j|| / ||v_j||``: with d
orthogonal directions the first d pairs can be read back; past d they interfere, and a gate
trades that interference for forgetting the oldest pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from course_lib.gated_linear_attention.numpy_ref import gated_linear_attention_step
from course_lib.viz.base import FigureWidget, slider


def state_trajectory(
    T: int = 48, d: int = 16, log_gate: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """States S_1..S_T ``[T, d, d]`` for random unit keys/values ``[T, d]``, one head."""
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((T, d))
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    v = rng.standard_normal((T, d))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    S = np.zeros((1, 1, d, d))
    gk = None if log_gate == 0.0 else np.full((1, 1, d), log_gate)  # [B, H, K] per step
    states = []
    for t in range(T):
        step = (k[t][None, None], k[t][None, None], v[t][None, None], S)
        _, S = gated_linear_attention_step(*step, gk_t=gk, scale=1.0)
        states.append(S[0, 0])
    return np.stack(states), k, v


def retrieval_error(S: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``||S^T k_j - v_j|| / ||v_j||`` for each stored pair j; ``S [d, d]``, ``k, v [n, d]``."""
    read = k @ S  # [n, d]: row j is S^T k_j
    return np.linalg.norm(read - v, axis=1) / np.linalg.norm(v, axis=1)


class StateMatrixViewer(FigureWidget):
    """Slider over t; gate strength 0 (no gating) to strong decay."""

    def __init__(self, T: int = 48, d: int = 16, seed: int = 0) -> None:
        import ipywidgets as w

        self.T, self.d, self.seed = T, d, seed
        controls = {
            "t": slider("step t", T // 2, 1, T, 1),
            "gated": w.Checkbox(value=False, description="gating"),
            "log_gate": slider("log gate", -0.1, -1.0, -0.01, 0.01),
        }
        super().__init__(controls)

    def draw(self, fig: Figure, t: int, gated: bool, log_gate: float) -> dict[str, Any]:
        g = log_gate if gated else 0.0
        states, k, v = state_trajectory(self.T, self.d, g, self.seed)
        S = states[t - 1]
        norms = np.linalg.norm(states, axis=(1, 2))
        err = retrieval_error(S, k[:t], v[:t])
        ax1, ax2, ax3 = fig.subplots(1, 3)
        lim = float(np.abs(states).max())
        im = ax1.imshow(S, cmap="RdBu_r", vmin=-lim, vmax=lim)
        fig.colorbar(im, ax=ax1, shrink=0.8)
        ax1.set(title=f"S_t at t={t}", xlabel="value dim", ylabel="key dim")
        ax2.plot(np.arange(1, self.T + 1), norms)
        ax2.axvline(t, color="k", ls=":")
        ax2.set(title="Frobenius norm of S_t", xlabel="t", ylabel="||S_t||")
        ax3.bar(np.arange(1, t + 1), err)
        ax3.axvline(self.d + 0.5, color="r", ls="--", label="d (state width)")
        ax3.set(
            title="retrieval error of pair j",
            xlabel="j (when written)",
            ylabel="rel. error",
            ylim=(0, max(1.5, float(err.max()))),
        )
        ax3.legend(loc="upper right")
        return {"state": S, "norms": norms, "retrieval_error": err}

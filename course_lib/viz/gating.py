"""Gating-decay explorer (chapter 04): how a gate turns into a decay over distance.

For one head, the cumulative log gates ``G_t = sum_{s<=t} g_s`` give the decay mask
``D_ij = exp(G_i - G_j)``: the weight a token j still has when read at step i. The widget
shows the mask for each gate of the chapter's table and, for the query at the last step,
the weight of each past token against its distance. The data-dependent gate can reset:
on a marked token its log gate is very negative, so everything before it is forgotten.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from course_lib.gated_linear_attention.numpy_ref import cumulative_log_gates, decay_mask
from course_lib.viz.base import FigureWidget, slider

GATES = ("none (linear attention)", "constant (RetNet)", "data-dependent scalar", "vector (GLA)")


def log_gates(
    kind: str, T: int, strength: float, reset_at: int | None, seed: int = 0
) -> np.ndarray:
    """Log gates ``[T, C]`` (C = 1 for scalar kinds, 4 channels for the vector gate)."""
    rng = np.random.default_rng(seed)
    if kind == GATES[0]:
        g = np.zeros((T, 1))
    elif kind == GATES[1]:
        g = np.full((T, 1), -strength)
    elif kind == GATES[2]:
        g = -strength * rng.uniform(0.2, 1.8, size=(T, 1))
    else:  # per-channel rates from slow to fast, each data-dependent
        rates = np.array([0.1, 0.5, 1.0, 2.0])
        g = -strength * rates * rng.uniform(0.5, 1.5, size=(T, 4))
    if reset_at is not None and kind in GATES[2:]:
        g[reset_at] = -30.0  # exp(-30) ~ 1e-13: the state is wiped at this token
    return g


class GatingDecayExplorer(FigureWidget):
    def __init__(self, T: int = 32, seed: int = 0) -> None:
        import ipywidgets as w

        self.T, self.seed = T, seed
        controls = {
            "kind": w.Dropdown(options=GATES, value=GATES[2], description="gate"),
            "strength": slider("strength", 0.15, 0.01, 1.0, 0.01),
            "reset": w.Checkbox(value=False, description=f"reset at token {T // 2}"),
        }
        super().__init__(controls)

    def draw(self, fig: Figure, kind: str, strength: float, reset: bool) -> dict[str, Any]:
        g = log_gates(kind, self.T, strength, self.T // 2 if reset else None, self.seed)
        G = cumulative_log_gates(g[None])[0]  # [T, C]
        masks = decay_mask(G.T)  # [C, T, T]
        weight = masks[:, -1, :]  # [C, T]: weight of token j at the last step
        distance = self.T - 1 - np.arange(self.T)
        ax1, ax2 = fig.subplots(1, 2)
        ax1.imshow(masks.mean(0), cmap="viridis", vmin=0, vmax=1)
        ax1.set(title="decay mask exp(G_i - G_j) (channel mean)", xlabel="key j", ylabel="query i")
        for c in range(weight.shape[0]):
            ax2.semilogy(distance, np.maximum(weight[c], 1e-16), marker=".", label=f"channel {c}")
        ax2.set(
            title="weight of a past token at the last step",
            xlabel="distance i - j",
            ylabel="exp(G_i - G_j)",
            ylim=(1e-8, 2),
        )
        if weight.shape[0] > 1:
            ax2.legend(fontsize=8)
        return {"log_gates": g, "mask": masks, "weight": weight}

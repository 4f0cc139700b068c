"""SSM filter viewer (chapter 05): poles in the complex plane and the impulse response.

One diagonal SSM mode ``A = a_re + i a_im`` (with its conjugate, so the response is real)
discretised with step ``dt``. The pole ``exp(dt A)`` (ZOH) or ``(1 + dt A/2)/(1 - dt A/2)``
(bilinear) sits inside the unit circle when ``a_re < 0``; its radius sets how fast the
filter forgets and its angle how fast it oscillates. The impulse response ``K_j = C Abar^j B``
is the convolution filter the layer applies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from course_lib.ssm.numpy_ref import impulse_response, poles
from course_lib.viz.base import FigureWidget, slider


class SSMFilterViewer(FigureWidget):
    def __init__(self, L: int = 64) -> None:
        import ipywidgets as w

        self.L = L
        controls = {
            "a_re": slider("Re(A)", -0.5, -3.0, 0.0, 0.05),
            "a_im": slider("Im(A)", 3.0, 0.0, 12.0, 0.25),
            "log10_dt": slider("log10 dt", -1.0, -3.0, 0.0, 0.1),
            "method": w.Dropdown(options=("zoh", "bilinear"), value="zoh", description="method"),
        }
        super().__init__(controls)

    def draw(
        self, fig: Figure, a_re: float, a_im: float, log10_dt: float, method: str
    ) -> dict[str, Any]:
        A = np.array([[complex(a_re, a_im)]])  # [D=1, N=1], the conjugate is implied
        B = np.ones((1, 1), dtype=complex)
        C = np.ones((1, 1), dtype=complex)
        dt = np.array([10.0**log10_dt])
        p = poles(A, dt, method)[0, 0]
        K = impulse_response(A, B, C, dt, self.L, method)[0].real  # [L]
        ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
        theta = np.linspace(0, 2 * np.pi, 200)
        ax1.plot(np.cos(theta), np.sin(theta), color="0.6", lw=1)
        ax1.plot([p.real, p.real], [p.imag, -p.imag], "x", ms=10, mew=2, color="C3")
        ax1.set(
            title=f"poles, |p| = {abs(p):.3f}",
            xlabel="Re",
            ylabel="Im",
            xlim=(-1.2, 1.2),
            ylim=(-1.2, 1.2),
            aspect="equal",
        )
        ax2.stem(np.arange(self.L), K)
        ax2.set(title="impulse response K_j = C Abar^j Bbar", xlabel="lag j", ylabel="K_j")
        return {"pole": np.array([p.real, p.imag]), "kernel": K}

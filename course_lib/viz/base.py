"""What every course widget shares: controls, a matplotlib figure, and a display handle.

A widget is a row of ipywidgets controls above a figure. The figure is shown as a plain
PNG image through an IPython display handle and replaced in place when a control moves:

* it renders the same in JupyterLab (ipywidgets 8), classic Jupyter and Colab
  (ipywidgets 7), with no custom widget manager and no interactive matplotlib backend;
* a notebook stored after execution keeps the default figure as an ordinary image output,
  so a static render (GitHub, nbviewer) is not empty;
* callbacks are plain Python: tests set ``widget.controls[name].value`` and read
  :meth:`FigureWidget.data` without a browser.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.figure import Figure


class FigureWidget:
    """Base class: subclasses build ``self.controls`` and implement :meth:`draw`."""

    figsize: tuple[float, float] = (10.0, 3.6)

    def __init__(self, controls: dict[str, Any]) -> None:
        self.controls = controls
        self.fig = Figure(figsize=self.figsize, layout="constrained")
        self._handle: Any = None
        self._data: dict[str, np.ndarray] = {}
        for control in controls.values():
            if hasattr(control, "observe"):
                control.observe(self._on_change, names="value")
        self.redraw()

    # -- subclass interface -------------------------------------------------------------
    def draw(self, fig: Figure, **values: Any) -> dict[str, np.ndarray]:
        """Draw the figure for the current control values; return the arrays it shows."""
        raise NotImplementedError

    # -- machinery ------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        return {name: c.value for name, c in self.controls.items() if hasattr(c, "value")}

    def redraw(self) -> None:
        self.fig.clear()
        self._data = {k: np.asarray(v) for k, v in self.draw(self.fig, **self.values()).items()}
        if self._handle is not None:
            self._handle.update(self._image())

    def data(self) -> dict[str, np.ndarray]:
        """The arrays behind the current figure (what tests compare)."""
        return dict(self._data)

    def _on_change(self, _change: Any) -> None:
        self.redraw()

    def _image(self) -> Any:
        from IPython.display import Image

        buffer = io.BytesIO()
        self.fig.savefig(buffer, format="png", dpi=90)
        return Image(data=buffer.getvalue(), format="png")

    def layout(self) -> Any:
        import ipywidgets as w

        return w.HBox(list(self.controls.values()), layout=w.Layout(flex_flow="row wrap"))

    def show(self) -> None:
        """Display the controls and the figure below them."""
        from IPython.display import display

        display(self.layout())
        self._handle = display(self._image(), display_id=True)
        return self

    def _ipython_display_(self) -> None:
        self.show()


def slider(description: str, value: float, low: float, high: float, step: float) -> Any:
    import ipywidgets as w

    cls = (
        w.IntSlider
        if all(float(x).is_integer() for x in (value, low, high, step))
        else w.FloatSlider
    )
    kind = int if cls is w.IntSlider else float
    return cls(
        value=kind(value),
        min=kind(low),
        max=kind(high),
        step=kind(step),
        description=description,
        continuous_update=False,
        style={"description_width": "initial"},
    )

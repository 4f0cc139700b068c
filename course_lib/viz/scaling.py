"""Runtime-scaling explorer (chapter 09): time against sequence length, measured not asserted.

Glossary: ``T`` sequence length; ``t(T)`` milliseconds per call (median); a *series* is one
implementation on one input case (``mechanism/backend/form``) or a peer (``peer:...``),
as in :mod:`course_lib.bench`; a *panel* is one source of results ("recorded: cpu",
"recorded: h200" or "this machine").

The widget reads benchmark results (the dict :func:`course_lib.bench.run_benchmark`
returns, or a recorded ``results.json``) and draws ``t`` against ``T`` on log-log axes:

* each series' legend entry carries its fitted log-log slope (:func:`analysis.fit_loglog`):
  about 2 for attention that builds the ``T x T`` score matrix, about 1 for a linear-time
  scan, near 0 while a call is dominated by fixed overheads;
* where a mechanism (its fastest shown series) becomes faster than softmax attention (its
  fastest shown series) is marked with a dotted line and a star
  (:func:`analysis.crossover_length`, log-log interpolation between measured lengths).

Controls pick the mechanisms, the backends, ``fwd`` or ``fwdbwd``, and the view: recorded
results (``benchmarks/results/<name>/results.json``), a run on this machine (the button,
with a progress bar), or both side by side. Its default is a static figure (the recorded
CPU results, or a quick tiny run where none are recorded), so a stored notebook shows it.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from course_lib.bench import analysis
from course_lib.viz.base import FigureWidget

VIEWS = ("recorded", "this machine", "side by side")
BACKEND_CHOICES = ("numpy", "torch", "triton", "peer")
KNOWN_RECORDINGS = ("cpu", "h200")  # offered even before they exist, with a message
DEFAULT_MECHANISMS = (
    "softmax_attention",
    "linear_attention",
    "gated_linear_attention",
    "selective_scan",
)
LENGTHS = tuple(2**i for i in range(3, 17))  # 8 .. 65536, offered by the length slider
# The quick run behind the default figure when nothing is recorded: tiny, a few seconds.
QUICK_RUN = {
    "mechanisms": ("softmax_attention", "linear_attention", "selective_scan"),
    "backends": ("torch",),
    "lengths": (32, 64, 128, 256),
    "batch": 1,
    "heads": 2,
    "head_dim": 16,
    "d_state": 8,
    "min_run_time": 0.01,
    "check_length": 16,
}
BASELINE = "softmax_attention"


def default_results_dir() -> Path:
    """``benchmarks/results`` of the course checkout that holds this package."""
    return Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def recorded_path(name: str, results_dir: str | Path | None = None) -> Path:
    """Where the recording ``name`` lives: ``<results_dir>/<name>/results.json``."""
    return Path(results_dir or default_results_dir()) / name / "results.json"


def find_recordings(results_dir: str | Path | None = None) -> list[str]:
    """The known recordings (``cpu``, ``h200``) and every folder holding a results.json."""
    root = Path(results_dir or default_results_dir())
    names = list(KNOWN_RECORDINGS)
    if root.is_dir():
        names += sorted(
            p.name for p in root.iterdir() if (p / "results.json").is_file() and p.name not in names
        )
    return names


def load_recording(
    name: str, results_dir: str | Path | None = None
) -> tuple[dict[str, Any] | None, str]:
    """``(results, "")`` or ``(None, message saying why not)``."""
    path = recorded_path(name, results_dir)
    if not path.is_file():
        return None, (
            f"No recorded '{name}' results yet:\n{path} does not exist.\n"
            f"Record them with  python -m course_lib.bench --out benchmarks/results/{name}"
        )
    try:
        return analysis.load_results(path), ""
    except (OSError, ValueError) as err:
        return None, f"Could not read {path}:\n{type(err).__name__}: {err}"


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Objects alive now are left out of garbage collections until the block ends.

    The benchmark calls ``gc.collect()`` around every point it times; in a process that has
    imported torch (and a notebook's state) each full collection walks hundreds of
    thousands of objects, often costing more than the timing itself. Freezing them first
    keeps those collections short; they are unfrozen afterwards.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def merge_results(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One results dict from several runs of :func:`run_benchmark` (same machine and sizes).

    Series, timings, peers and ratios are pooled; lengths and modes are the union; the
    analysis (slopes, crossovers) is recomputed on the pooled timings.
    """
    if not parts:
        raise ValueError("parts must hold at least one results dict")
    first = parts[0]
    merged: dict[str, Any] = {
        "schema": first.get("schema"),
        "machine": dict(first.get("machine", {})),
        "config": dict(first.get("config", {})),
        "series": {},
        "timings": [],
        "peers": {},
        "ratios": [],
    }
    lengths: set[int] = set()
    modes: list[str] = []
    for part in parts:
        merged["series"].update(part["series"])
        merged["timings"] += list(part["timings"])
        merged["peers"].update(part.get("peers", {}))
        merged["ratios"] += list(part.get("ratios", []))
        lengths |= set(part.get("config", {}).get("lengths", []))
        modes += [m for m in part.get("config", {}).get("modes", []) if m not in modes]
    merged["config"]["lengths"] = sorted(lengths)
    merged["config"]["modes"] = modes
    merged["analysis"] = analysis.summarize(merged)
    return merged


def shown_series(
    results: Mapping[str, Any], mechanisms: Sequence[str], backends: Sequence[str]
) -> list[str]:
    """The series whose mechanism and backend (``"peer"`` for peers) are both selected."""
    return [
        name
        for name, info in results["series"].items()
        if info["mechanism"] in mechanisms and info["backend"] in backends
    ]


def fastest(curves: Sequence[Mapping[int, float]]) -> dict[int, float]:
    """``{T: the smallest time at T}`` over several series."""
    best: dict[int, float] = {}
    for t in curves:
        for T, ms in t.items():
            best[T] = min(best.get(T, math.inf), ms)
    return best


def scaling_data(
    results: Mapping[str, Any], mechanisms: Sequence[str], backends: Sequence[str], mode: str
) -> dict[str, Any]:
    """What one panel shows: the curves, their fitted slopes and the crossovers.

    Returns ``{"curves": {series: {T: ms}}, "slopes": {series: slope or None},
    "crossovers": {mechanism: (T or None, ms at T or None, note)}}``. A mechanism's
    crossover compares its fastest shown series with the fastest shown softmax series.
    """
    curves = {}
    for name in shown_series(results, mechanisms, backends):
        t = analysis.times(results, name, mode)
        if t:
            curves[name] = t
    slopes = {name: analysis.fit_loglog(t) for name, t in curves.items()}
    by_mech: dict[str, list[dict[int, float]]] = {}
    for name, t in curves.items():
        info = results["series"][name]
        if info["kind"] == "impl":  # peers are drawn, but a mechanism is its course impls
            by_mech.setdefault(info["mechanism"], []).append(t)
    crossovers: dict[str, tuple[float | None, float | None, str]] = {}
    if BASELINE in by_mech:
        base = fastest(by_mech[BASELINE])
        for mech, ts in by_mech.items():
            if mech == BASELINE:
                continue
            T, note = analysis.crossover_length(fastest(ts), base)
            if note == "none in range":
                longest = max(set(base) & set(fastest(ts)))
                note = f"slower than softmax at every measured T (up to {longest})"
            crossovers[mech] = (T, _interp_loglog(base, T) if T else None, note)
    return {"curves": curves, "slopes": slopes, "crossovers": crossovers}


def _interp_loglog(t: Mapping[int, float], T: float) -> float:
    Ts = sorted(t)
    return float(np.exp(np.interp(np.log(T), np.log(Ts), np.log([t[x] for x in Ts]))))


def _title(results: Mapping[str, Any], panel: str, mode: str) -> str:
    m, cfg = results.get("machine", {}), results.get("config", {})
    where = m.get("gpu") or m.get("cpu") or m.get("device", "?")
    sizes = ", ".join(f"{k}={v}" for k, v in cfg.get("sizes", {}).items() if k != "T")
    return f"{panel} ({mode}): {where}\n{cfg.get('dtype', '')} {sizes}"


class RuntimeScalingExplorer(FigureWidget):
    """Time against length, log-log, for the mechanisms and backends picked.

    Args:
        results_dir: folder of recordings (default: the checkout's ``benchmarks/results``).
        local: results already measured on this machine (e.g. the notebook's own run).
        recorded: ``{name: results dict}`` to use instead of reading ``results_dir``.
        run_kwargs: extra arguments of :func:`course_lib.bench.run_benchmark` for the run
            button (``batch``, ``heads``, ``head_dim``, ``threads``, ``min_run_time``...).
        quick_run: when no recording can be shown and no ``local`` results are given, run
            the tiny :data:`QUICK_RUN` so the default figure is not empty.
    """

    figsize = (11.0, 4.6)

    def __init__(
        self,
        results_dir: str | Path | None = None,
        local: Mapping[str, Any] | None = None,
        recorded: Mapping[str, Mapping[str, Any]] | None = None,
        run_kwargs: Mapping[str, Any] | None = None,
        quick_run: bool = True,
    ) -> None:
        import ipywidgets as w

        from course_lib import registry

        self.results_dir = results_dir
        self.local: dict[str, Any] | None = dict(local) if local is not None else None
        self._recorded = {k: dict(v) for k, v in (recorded or {}).items()}
        self._loaded: dict[str, tuple[dict[str, Any] | None, str]] = {}
        self.run_kwargs = dict(run_kwargs or {})
        names = list(self._recorded) or find_recordings(results_dir)
        first = next((n for n in names if self.recording(n)[0] is not None), None)
        if first is None and self.local is None and quick_run:
            self.local = self._run_quick()

        mechs = list(registry.mechanisms())
        for res in [*(self.recording(n)[0] for n in names), self.local]:
            for info in (res or {}).get("series", {}).values():
                if info["mechanism"] not in mechs:
                    mechs.append(info["mechanism"])
        style = {"description_width": "initial"}
        controls = {
            "view": w.ToggleButtons(
                options=VIEWS, value="recorded" if first else "this machine", description="show"
            ),
            "recorded": w.Dropdown(
                options=names, value=first or names[0], description="recorded", style=style
            ),
            "mode": w.ToggleButtons(options=("fwd", "fwdbwd"), value="fwd", description="pass"),
            "mechanisms": w.SelectMultiple(
                options=mechs,
                value=tuple(m for m in DEFAULT_MECHANISMS if m in mechs) or tuple(mechs[:1]),
                rows=min(len(mechs), 9),
                description="mechanisms",
                style=style,
            ),
            "backends": w.SelectMultiple(
                options=BACKEND_CHOICES,
                value=("torch", "triton", "peer"),
                rows=4,
                description="backends",
                style=style,
            ),
            "lengths": w.SelectionRangeSlider(
                options=LENGTHS,
                index=(LENGTHS.index(64), LENGTHS.index(1024)),
                description="lengths to run",
                continuous_update=False,
                style=style,
            ),
        }
        # Not in ``controls``: the button has no value and the progress bar and the message
        # change while a run goes on, which must not redraw the figure each time.
        self.run_button = w.Button(description="run on this machine", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="progress")
        self.message = w.HTML(value="")
        self.run_button.on_click(self._on_run)
        super().__init__(controls)

    # -- sources --------------------------------------------------------------------------
    def recording(self, name: str) -> tuple[dict[str, Any] | None, str]:
        if self._recorded:
            if name in self._recorded:
                return self._recorded[name], ""
            return None, f"No recorded '{name}' results were given."
        if name not in self._loaded:
            self._loaded[name] = load_recording(name, self.results_dir)
        return self._loaded[name]

    def _run_quick(self) -> dict[str, Any]:
        from course_lib.bench import run_benchmark

        quick = {**QUICK_RUN, **self.run_kwargs}
        with frozen_gc():
            return run_benchmark(peers=False, progress=False, mode="fwd", **quick)

    # -- the run button -------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Time the selected mechanisms and backends here at the selected lengths.

        One :func:`run_benchmark` call per implementation (the peers of a mechanism with
        its first one), so the progress bar moves after each; the pooled results become
        the "this machine" panel, which is then shown.
        """
        from course_lib import registry
        from course_lib.bench import run_benchmark

        v = self.values()
        lo, hi = v["lengths"]
        lengths = [T for T in LENGTHS if lo <= T <= hi]
        backends = [b for b in v["backends"] if b != "peer"]
        impls = [
            i
            for m in v["mechanisms"]
            if m in registry.mechanisms()
            for i in registry.implementations(m)
            if i.backend in backends
        ]
        if not impls:
            self.message.value = "Nothing to run: pick at least one mechanism and a backend."
            return self.local or {}
        self.progress.max, self.progress.value = len(impls), 0
        self.run_button.disabled = True
        parts, peers_done = [], set()
        kwargs = {"min_run_time": 0.05, **self.run_kwargs}
        try:
            with frozen_gc():
                for i, impl in enumerate(impls):
                    self.message.value = f"timing {impl.name} ({i + 1}/{len(impls)})"
                    parts.append(
                        run_benchmark(
                            mechanisms=impl.mechanism,
                            backends=impl.backend,
                            forms=impl.form,
                            lengths=lengths,
                            mode=v["mode"],
                            peers="peer" in v["backends"] and impl.mechanism not in peers_done,
                            progress=False,
                            **kwargs,
                        )
                    )
                    peers_done.add(impl.mechanism)
                    self.progress.value = i + 1
        finally:
            self.run_button.disabled = False
        self.local = merge_results(parts)
        self.message.value = f"done: {len(impls)} implementations at T = {lengths}"
        if self.controls["view"].value == "recorded":
            self.controls["view"].value = "side by side"  # redraws through the observer
        else:
            self.redraw()
        return self.local

    def _on_run(self, _button: Any) -> None:
        try:
            self.run()
        except Exception as err:  # a callback's exception would vanish: show it instead
            self.message.value = f"the run failed: {type(err).__name__}: {err}"

    # -- drawing --------------------------------------------------------------------------
    def layout(self) -> Any:
        import ipywidgets as w

        c = self.controls
        return w.VBox(
            [
                w.HBox([c["view"], c["recorded"]]),
                w.HBox([c["mechanisms"], c["backends"], w.VBox([c["mode"], c["lengths"]])]),
                w.HBox([self.run_button, self.progress, self.message]),
            ]
        )

    def _panels(self, view: str, recorded: str) -> list[tuple[str, dict | None, str]]:
        rec, why = self.recording(recorded)
        here = (
            self.local,
            ""
            if self.local is not None
            else "Not run on this machine yet:\npress 'run on this machine'.",
        )
        panels = {
            "recorded": [(f"recorded: {recorded}", rec, why)],
            "this machine": [("this machine", *here)],
        }
        panels["side by side"] = panels["recorded"] + panels["this machine"]
        return panels[view]

    def draw(
        self,
        fig: Figure,
        view: str,
        recorded: str,
        mode: str,
        mechanisms: Sequence[str],
        backends: Sequence[str],
        lengths: tuple[int, int],
    ) -> dict[str, Any]:
        from course_lib.bench.plots import _styles

        panels = self._panels(view, recorded)
        axes = np.atleast_1d(fig.subplots(1, len(panels)))
        rows: dict[str, list[Any]] = {
            k: []
            for k in (
                "panel", "series", "T", "ms", "slope_series", "slope",
                "crossover_mechanism", "crossover_T",
            )
        }  # fmt: skip
        for ax, (panel, res, why) in zip(axes, panels, strict=True):
            ax.set_xlabel("sequence length T")
            ax.set_ylabel("time per call (ms, median)")
            if res is None:
                ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=8, wrap=True)
                ax.set_title(panel, fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            d = scaling_data(res, mechanisms, backends, mode)
            styles = _styles(res)
            for name, t in d["curves"].items():
                Ts = sorted(t)
                s = d["slopes"][name]
                label = f"{name} (slope {s:.2f})" if s is not None else f"{name} (one length)"
                ax.plot(Ts, [t[T] for T in Ts], ms=4, lw=1.2, label=label, **styles[name])
                rows["panel"] += [panel] * len(Ts)
                rows["series"] += [name] * len(Ts)
                rows["T"] += Ts
                rows["ms"] += [t[T] for T in Ts]
                rows["slope_series"].append(f"{panel}|{name}")
                rows["slope"].append(np.nan if s is None else s)
            notes = []
            for mech, (T, ms, note) in d["crossovers"].items():
                rows["crossover_mechanism"].append(f"{panel}|{mech}")
                rows["crossover_T"].append(np.nan if T is None else T)
                if T is None:
                    notes.append(f"{mech}: {note}")
                    continue
                ax.axvline(T, color="grey", ls=":", lw=1)
                ax.plot([T], [ms], marker="*", ms=12, color="k", ls="none")
                notes.append(f"{mech} overtakes softmax at T ~ {T:.0f}")
            if not d["curves"]:
                ax.text(
                    0.5,
                    0.5,
                    f"no {mode} timings for this selection",
                    ha="center",
                    va="center",
                    fontsize=8,
                )
            else:
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=6, loc="upper left")
            if notes:
                ax.set_xlabel("\n".join(["sequence length T", *notes]), fontsize=8)
            ax.set_title(_title(res, panel, mode), fontsize=8)
        return {k: np.asarray(v) for k, v in rows.items()}

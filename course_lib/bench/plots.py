"""Plots of a benchmark's results (matplotlib's object API: no pyplot, safe without a display).

Glossary: ``T`` sequence length, ``p`` decode position; a *series* is one implementation on
one case, or a peer (dashed).

* :func:`plot_scaling` -- time per call against ``T`` on log-log axes, the fitted log-log
  slope of each series in its legend entry, and where each linear mechanism overtakes
  softmax attention (dotted vertical lines; "none in range" when it does not).
* :func:`plot_decode` -- per-token latency and cache/state bytes against position.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from course_lib.bench import analysis


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def _title(results: Mapping[str, Any], what: str) -> str:
    m, cfg = results.get("machine", {}), results.get("config", {})
    sizes = ", ".join(f"{k}={v}" for k, v in cfg.get("sizes", {}).items() if k != "T")
    where = m.get("gpu") or m.get("cpu") or m.get("device", "")
    return f"{what} -- {where}, {cfg.get('dtype', '')}\n{sizes}"


_BACKEND_STYLE = {"numpy": ":", "torch": "-", "triton": "-.", "peer": "--"}
_MARKERS = "osv^D<>px*"


def _styles(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Colour by mechanism, line style by backend (peers dashed), marker by form."""
    from matplotlib import colormaps

    colours = colormaps["tab10"].colors
    mechs: list[str] = []
    forms: dict[str, list[str]] = {}
    styles = {}
    for name, info in results["series"].items():
        mech = info["mechanism"]
        if mech not in mechs:
            mechs.append(mech)
        seen = forms.setdefault(mech, [])
        if name not in seen:
            seen.append(name)
        styles[name] = {
            "color": colours[mechs.index(mech) % len(colours)],
            "ls": _BACKEND_STYLE.get(info["backend"], "-"),
            "marker": _MARKERS[seen.index(name) % len(_MARKERS)],
        }
    return styles


def plot_scaling(results: Mapping[str, Any], mode: str = "fwd") -> Any:
    """Time against length, log-log, one line per series; returns the Figure.

    Legend entries carry the fitted log-log slope; the crossovers with softmax attention are
    dotted vertical lines and are listed under the axis.
    """
    curves = {n: analysis.times(results, n, mode) for n in results["series"]}
    curves = {n: t for n, t in curves.items() if t}
    cross = results.get("analysis", {}).get("crossovers", {}).get(mode, [])
    ncol = 1 + len(curves) // 40
    rows = math.ceil(len(curves) / ncol)
    fig, ax = _figure(8 + 4 * ncol, max(6.0, 0.13 * rows + 2.0) + 0.14 * len(cross))
    styles = _styles(results)
    for name, t in curves.items():
        Ts = sorted(t)
        s = analysis.fit_loglog(t)
        label = f"{name} (slope {s:.2f})" if s is not None else f"{name} (one length)"
        ax.plot(Ts, [t[T] for T in Ts], ms=4, lw=1.2, label=label, **styles[name])
    lines = []
    for c in cross:
        if c["T"] is not None:
            ax.axvline(c["T"], color="grey", ls=":", lw=1)
            lines.append(f"{c['series']} overtakes {c['against']} at T = {c['T']:.0f}")
        else:
            lines.append(f"{c['series']} vs {c['against']}: {c['note']}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("\n".join(["sequence length T", *lines]), fontsize=8)
    ax.set_ylabel("time per call (ms, median)")
    ax.set_title(_title(results, f"{mode} time against length"), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=ncol)
    return fig


def plot_decode(results: Mapping[str, Any]) -> Any:
    """Per-token latency (left) and cache/state bytes (right) against position."""
    dec = results["decode"]
    fig, (ax_t, ax_m) = _figure(11, 4.5, ncols=2)
    for name, info in dec["series"].items():
        if info["status"] != "timed":
            continue
        pts = sorted(
            (p["position"], p) for p in dec["points"] if p["series"] == name and p["ms"] is not None
        )
        if not pts:
            continue
        P = [x for x, _ in pts]
        ax_t.plot(P, [p["ms"] for _, p in pts], marker="o", ms=3, label=name)
        ax_m.plot(P, [p["state_bytes"] for _, p in pts], marker="o", ms=3, label=name)
    ax_m.set_title("softmax: KV cache grows with p; the others keep a fixed state", fontsize=8)
    for ax, ylabel in ((ax_t, "ms per token (median)"), (ax_m, "cache / state bytes")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("position p")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(_title(results, "decode: one token at position p"), fontsize=9)
    return fig


def save_plots(results: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """``time_<mode>.png`` per mode and ``decode.png`` when decoding was run."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for mode in results.get("config", {}).get("modes", ["fwd"]):
        if not any(e["mode"] == mode and e["status"] == "ok" for e in results["timings"]):
            continue  # nothing timed in this mode: no empty plot
        path = out / f"time_{mode}.png"
        plot_scaling(results, mode).savefig(path, dpi=120)
        written[f"plot_{mode}"] = str(path)
    if results.get("decode"):
        path = out / "decode.png"
        plot_decode(results).savefig(path, dpi=120)
        written["plot_decode"] = str(path)
    return written

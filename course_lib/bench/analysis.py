"""Reading a benchmark's results: slopes, crossovers, memory floors, markdown tables.

Glossary: ``T`` sequence length, ``t(T)`` milliseconds per call at length ``T``; a *series*
is an implementation on one case (``mechanism/backend/form[case]``) or a peer
(``peer:...``); a mechanism name stands for its fastest course implementation at each ``T``.

* Log-log slope between two lengths: ``s = log(t(T1) / t(T0)) / log(T1 / T0)``; ``s = 2``
  for quadratic attention, ``1`` for a linear-time scan, ``0`` for a launch-bound kernel.
  :func:`fit_slope` is the least-squares slope of ``log t`` on ``log T`` over all points.
* Crossover: the length where a linear mechanism becomes faster than softmax attention,
  from linear interpolation of ``log t_lin - log t_soft`` in ``log T`` between the two
  measured lengths that bracket the sign change (exact for power laws).
* Memory floor: the bytes that must cross the memory bus at least once (inputs read,
  outputs written; for ``fwdbwd`` also the cotangent read and the gradients written) over
  a bandwidth: no kernel can be faster than ``bytes / bandwidth``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A results dict from ``results.json`` (or from a folder that holds one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    return json.loads(p.read_text())


def _mechanisms(results: Mapping[str, Any]) -> list[str]:
    seen: list[str] = []
    for info in results["series"].values():
        if info["kind"] == "impl" and info["mechanism"] not in seen:
            seen.append(info["mechanism"])
    return seen


def times(results: Mapping[str, Any], name: str, mode: str = "fwd") -> dict[int, float]:
    """``{T: ms}`` of one series, peer or (fastest implementation of a) mechanism."""
    ok = [e for e in results["timings"] if e["mode"] == mode and e["status"] == "ok"]
    if name in results["series"]:
        return {int(e["T"]): float(e["ms"]) for e in ok if e["series"] == name}
    members = {
        s
        for s, info in results["series"].items()
        if info["kind"] == "impl" and info["mechanism"] == name
    }
    if not members:
        raise ValueError(f"no series or mechanism named {name!r} in these results")
    best: dict[int, float] = {}
    for e in ok:
        if e["series"] in members:
            T = int(e["T"])
            best[T] = min(best.get(T, math.inf), float(e["ms"]))
    return best


def slope_between(t: Mapping[int, float], T0: int, T1: int) -> float:
    """``log(t[T1] / t[T0]) / log(T1 / T0)``."""
    if T0 == T1:
        raise ValueError("T0 and T1 must differ")
    for T in (T0, T1):
        if T not in t:
            raise ValueError(f"no timing at T={T}; measured: {sorted(t)}")
    return math.log(t[T1] / t[T0]) / math.log(T1 / T0)


def slope(results: Mapping[str, Any], impl: str, t0: int, t1: int, mode: str = "fwd") -> float:
    """The log-log slope of ``impl``'s time between lengths ``t0`` and ``t1``."""
    return slope_between(times(results, impl, mode), int(t0), int(t1))


def fit_loglog(t: Mapping[int, float]) -> float | None:
    """Least-squares slope of ``log t`` against ``log T``; None with fewer than 2 lengths."""
    pts = [(math.log(T), math.log(ms)) for T, ms in t.items() if ms > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxy = sum((x - mx) * (y - my) for x, y in pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sxy / sxx


def fit_slope(results: Mapping[str, Any], name: str, mode: str = "fwd") -> float | None:
    return fit_loglog(times(results, name, mode))


def crossover_length(
    t_linear: Mapping[int, float], t_softmax: Mapping[int, float]
) -> tuple[float | None, str]:
    """The length where ``t_linear`` drops to ``t_softmax`` (log-log interpolation).

    Returns ``(T, note)``: ``T`` is None when there is no crossing in the measured range
    (``note`` says whether the linear one is faster throughout or slower throughout).
    """
    common = sorted(set(t_linear) & set(t_softmax))
    if not common:
        return None, "no common lengths"
    d = [math.log(t_linear[T] / t_softmax[T]) for T in common]  # > 0: linear is slower
    if d[0] <= 0:
        return None, f"faster already at T={common[0]} (crossover at or below the range)"
    for i in range(1, len(common)):
        if d[i] <= 0:
            x0, x1 = math.log(common[i - 1]), math.log(common[i])
            x = x0 + d[i - 1] / (d[i - 1] - d[i]) * (x1 - x0)
            return math.exp(x), "interpolated"
    return None, "none in range"


def crossover(
    results: Mapping[str, Any], name: str, against: str | None = None, mode: str = "fwd"
) -> dict[str, Any]:
    """Where ``name`` overtakes ``against`` (default: the run's softmax baseline)."""
    against = against or results.get("config", {}).get("baseline", "softmax_attention")
    T, note = crossover_length(times(results, name, mode), times(results, against, mode))
    return {"series": name, "against": against, "mode": mode, "T": T, "note": note}


def _baselines(results: Mapping[str, Any]) -> list[str]:
    base = results.get("config", {}).get("baseline", "softmax_attention")
    out = [base] if base in _mechanisms(results) else []
    out += [
        p
        for p, info in results["series"].items()
        if info["kind"] == "peer" and info["mechanism"] == base
    ]
    return out


def summarize(results: Mapping[str, Any]) -> dict[str, Any]:
    """Fitted slopes, first-to-last slopes and crossovers for every mode and series."""
    modes = results.get("config", {}).get("modes", ["fwd"])
    base = results.get("config", {}).get("baseline", "softmax_attention")
    out: dict[str, Any] = {"slopes": {}, "crossovers": {}}
    for mode in modes:
        slopes: dict[str, Any] = {}
        for name in results["series"]:
            t = times(results, name, mode)
            Ts = sorted(t)
            slopes[name] = {
                "fit": fit_loglog(t),
                "first_last": slope_between(t, Ts[0], Ts[-1]) if len(Ts) >= 2 else None,
                "lengths": Ts,
            }
        out["slopes"][mode] = slopes
        cross = []
        for against in _baselines(results):
            for name in _mechanisms(results):
                if name != base:
                    cross.append(crossover(results, name, against, mode))
        out["crossovers"][mode] = cross
    return out


def memory_floor_ms(io_bytes: float, bandwidth_GBps: float) -> float:
    """Milliseconds to move ``io_bytes`` once at ``bandwidth_GBps`` (1 GB/s = 1e9 B/s)."""
    if bandwidth_GBps <= 0:
        raise ValueError(f"bandwidth_GBps must be positive, got {bandwidth_GBps}")
    return io_bytes / (bandwidth_GBps * 1e9) * 1e3


# --------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _span(lengths: list[int]) -> str:
    return f"{lengths[0]}-{lengths[-1]}" if len(lengths) > 1 else "".join(map(str, lengths))


def _cell(e: Mapping[str, Any] | None) -> str:
    if e is None:
        return ""
    return _fmt(e["ms"]) if e["status"] == "ok" else e["status"]


def to_markdown(results: Mapping[str, Any], bandwidth_GBps: float | None = None) -> str:
    """The tables that go into BENCHMARKS.md, for every mode in the results.

    Times per length per series (ms, median), the ratio of each implementation to each peer,
    log-log slopes, crossovers against softmax attention, the memory floor per shape (bytes
    that must be moved once, and with ``bandwidth_GBps`` the time that takes and how far the
    measurement is above it), decode latency, and why anything was not timed.
    """
    m = results.get("machine", {})
    cfg = results.get("config", {})
    out = [
        f"Measured {m.get('date', '?')} on {m.get('gpu') or m.get('cpu', '?')} "
        f"({m.get('device', '?')}); torch {m.get('torch', '?')}, triton {m.get('triton')}, "
        f"python {m.get('python', '?')}; dtype {cfg.get('dtype', '?')}, sizes "
        + ", ".join(f"{k}={v}" for k, v in cfg.get("sizes", {}).items() if k != "T")
        + ".",
        "",
    ]
    entries = {(e["series"], e["mode"], int(e["T"])): e for e in results["timings"]}
    lengths = cfg.get("lengths") or sorted({int(e["T"]) for e in results["timings"]})
    analysis = results.get("analysis") or summarize(results)
    for mode in cfg.get("modes", ["fwd"]):
        names = [
            s
            for s in results["series"]
            if any(entries.get((s, mode, T), {}).get("status") == "ok" for T in lengths)
        ]
        if not names:  # nothing timed in this mode (a decode-only run): the notes say why
            continue
        out += [f"### Time per call, {mode} (ms, median)", ""]
        rows = [[s] + [_cell(entries.get((s, mode, T))) for T in lengths] for s in names]
        out += [_table(["series"] + [f"T={T}" for T in lengths], rows), ""]

        ratios = [r for r in results.get("ratios", []) if r["mode"] == mode]
        if ratios:
            out += [f"### Ratio to each peer, {mode} (implementation / peer)", ""]
            pairs = sorted({(r["series"], r["peer"]) for r in ratios})
            by = {(r["series"], r["peer"], int(r["T"])): r["ratio"] for r in ratios}
            rows = [[s, p] + [_fmt(by.get((s, p, T))) for T in lengths] for s, p in pairs]
            out += [_table(["series", "peer"] + [f"T={T}" for T in lengths], rows), ""]

        slopes = analysis["slopes"].get(mode, {})
        out += [f"### Log-log slopes, {mode}", ""]
        rows = [
            [s, _fmt(slopes[s]["fit"]), _fmt(slopes[s]["first_last"]), _span(slopes[s]["lengths"])]
            for s in names
            if s in slopes
        ]
        out += [_table(["series", "fitted slope", "first-to-last slope", "lengths"], rows), ""]

        cross = analysis["crossovers"].get(mode, [])
        if cross:
            out += [f"### Crossover with softmax attention, {mode}", ""]
            rows = [
                [c["series"], c["against"], _fmt(c["T"], 4) if c["T"] else c["note"]] for c in cross
            ]
            out += [_table(["mechanism (fastest impl)", "against", "crossover T"], rows), ""]

        out += [f"### Memory floor per shape, {mode}", ""]
        header = ["series", "T", "bytes moved at least once"]
        if bandwidth_GBps:
            header += [f"floor ms at {bandwidth_GBps:g} GB/s", "measured / floor"]
        rows = []
        for s in names:
            for T in lengths:
                e = entries.get((s, mode, T))
                if e is None or e["status"] != "ok" or not e.get("io_bytes"):
                    continue
                row = [s, str(T), f"{e['io_bytes']:,}"]
                if bandwidth_GBps:
                    floor = memory_floor_ms(e["io_bytes"], bandwidth_GBps)
                    row += [_fmt(floor), _fmt(e["ms"] / floor)]
                rows.append(row)
        out += [_table(header, rows), ""]

    dec = results.get("decode")
    if dec:
        pos = dec["positions"]
        out += ["### Decode: per-token latency (ms) and cache/state bytes against position", ""]
        pts = {(p["series"], p["position"]): p for p in dec["points"]}
        rows = []
        for s, info in dec["series"].items():
            if info["status"] != "timed":
                continue
            cells = []
            for P in pos:
                p = pts.get((s, P))
                cells.append(
                    "-" if not p or p["ms"] is None else f"{_fmt(p['ms'])} / {p['state_bytes']:,} B"
                )
            rows.append([s, *cells])
        out += [_table(["step"] + [f"p={P}" for P in pos], rows), ""]

    notes = []
    for s, info in results["series"].items():
        if info["status"] != "timed":
            notes.append(f"- `{s}`: {info['status']}: {info['reason']}")
    reasons: dict[tuple[str, str], str] = {}
    for e in results["timings"]:
        if (
            e["status"] in ("skipped", "oom", "error")
            and results["series"][e["series"]]["status"] == "timed"
        ):
            reasons.setdefault(
                (e["series"], e["mode"]), f"{e['status']} at T={e['T']}: {e.get('reason', '')}"
            )
    notes += [f"- `{s}` ({mode}): {r}" for (s, mode), r in reasons.items()]
    for p, info in results.get("peers", {}).items():
        state = "timed" if info["timed"] else ("found, not timed" if info["found"] else "not found")
        notes.append(f"- peer `{p}`: {state}" + (f" ({info['reason']})" if info["reason"] else ""))
    if dec:
        notes += [
            f"- decode `{s}`: {info['reason']}"
            for s, info in dec["series"].items()
            if info["status"] != "timed"
        ]
    if notes:
        out += ["### Not timed, and peers", "", *notes, ""]
    return "\n".join(out)

"""Slopes, crossovers, floors, tables and plots on synthetic results with known answers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from course_lib.bench import (
    crossover,
    crossover_length,
    fit_slope,
    load_results,
    memory_floor_ms,
    plots,
    save_results,
    slope,
    summarize,
    times,
    to_markdown,
)

LENGTHS = [64, 128, 256, 512, 1024, 2048, 4096]


def synthetic(c_soft: float, c_lin: float, lengths: list[int] = LENGTHS) -> dict:
    """softmax t = c_soft T^2 (two impls, one slower), linear t = c_lin T."""
    series = {
        "softmax_attention/torch/parallel": ("softmax_attention", lambda T: c_soft * T**2),
        "softmax_attention/numpy/parallel": ("softmax_attention", lambda T: 3 * c_soft * T**2),
        "linear_attention/torch/chunkwise": ("linear_attention", lambda T: c_lin * T),
    }
    results: dict = {
        "config": {
            "lengths": lengths,
            "modes": ["fwd"],
            "baseline": "softmax_attention",
            "dtype": "float32",
            "sizes": {"B": 1, "H": 1, "K": 8},
        },
        "machine": {"cpu": "synthetic", "device": "cpu"},
        "series": {},
        "timings": [],
        "ratios": [],
        "peers": {},
    }
    for name, (mech, t) in series.items():
        backend = name.split("/")[1]
        results["series"][name] = {
            "kind": "impl",
            "mechanism": mech,
            "backend": backend,
            "form": "x",
            "case": "default",
            "status": "timed",
            "reason": "",
        }
        for T in lengths:
            results["timings"].append(
                {
                    "series": name,
                    "mode": "fwd",
                    "T": T,
                    "status": "ok",
                    "ms": t(T),
                    "io_bytes": 1000 * T,
                }
            )
    results["analysis"] = summarize(results)
    return results


def test_slopes_of_power_laws() -> None:
    r = synthetic(1e-6, 1e-3)
    assert slope(r, "softmax_attention/torch/parallel", 64, 4096) == pytest.approx(2.0)
    assert slope(r, "linear_attention/torch/chunkwise", 256, 512) == pytest.approx(1.0)
    assert fit_slope(r, "softmax_attention/torch/parallel") == pytest.approx(2.0)
    assert fit_slope(r, "linear_attention") == pytest.approx(1.0)
    fitted = r["analysis"]["slopes"]["fwd"]
    assert fitted["softmax_attention/numpy/parallel"]["first_last"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no timing at T=100"):
        slope(r, "linear_attention/torch/chunkwise", 100, 4096)
    with pytest.raises(ValueError, match="no series or mechanism"):
        times(r, "nothing_here")


def test_mechanism_is_its_fastest_implementation() -> None:
    r = synthetic(1e-6, 1e-3)
    assert times(r, "softmax_attention") == times(r, "softmax_attention/torch/parallel")


@given(
    log_cross=st.floats(math.log(70), math.log(4000)),
    c_soft=st.floats(1e-9, 1e-3),
)
def test_crossover_of_T2_and_T(log_cross: float, c_soft: float) -> None:
    """c T^2 = c' T at T = c'/c: the log-log interpolation is exact for power laws."""
    cross = math.exp(log_cross)
    r = synthetic(c_soft, c_soft * cross)
    got = crossover(r, "linear_attention")
    assert got["T"] == pytest.approx(cross, rel=1e-9)
    assert got["against"] == "softmax_attention"
    summary = r["analysis"]["crossovers"]["fwd"]
    assert [c["series"] for c in summary] == ["linear_attention"]
    assert summary[0]["T"] == pytest.approx(cross, rel=1e-9)


def test_no_crossover_in_range() -> None:
    late = synthetic(1e-6, 1e-6 * 10_000)  # would cross at T = 10000 > 4096
    assert crossover(late, "linear_attention")["T"] is None
    assert crossover(late, "linear_attention")["note"] == "none in range"
    early = synthetic(1e-6, 1e-6 * 10)  # crosses at T = 10 < 64
    got = crossover(early, "linear_attention")
    assert got["T"] is None and "faster already at T=64" in got["note"]
    assert crossover_length({1: 1.0}, {2: 1.0}) == (None, "no common lengths")


def test_memory_floor() -> None:
    assert memory_floor_ms(4.25e9, 4250) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="bandwidth_GBps"):
        memory_floor_ms(1e9, 0)


def test_markdown_tables(tmp_path: Path) -> None:
    r = synthetic(1e-6, 1e-6 * 1000)
    md = to_markdown(save_and_load(r, tmp_path), bandwidth_GBps=100)
    assert "### Time per call, fwd" in md and "| T=4096 |" in md
    assert "linear_attention/torch/chunkwise" in md
    assert "### Crossover with softmax attention, fwd" in md
    assert f"{1000:.4g}" in md.split("### Crossover")[1]
    floor = memory_floor_ms(1000 * 64, 100)
    assert f"{floor:.3g}" in md  # the 1000 T bytes at 100 GB/s
    assert "floor ms" not in to_markdown(r)


def save_and_load(r: dict, tmp_path: Path) -> dict:
    save_results(r, tmp_path / "results.json")
    loaded = load_results(tmp_path)
    assert loaded["timings"] == r["timings"]
    return loaded


def test_plots_written(tmp_path: Path) -> None:
    r = synthetic(1e-6, 1e-6 * 1000)
    r["decode"] = {
        "positions": [16, 32],
        "series": {
            "softmax_attention/torch/kv_cache": {"status": "timed"},
            "linear_attention/torch/step": {"status": "skipped", "reason": "absent"},
        },
        "points": [
            {
                "series": "softmax_attention/torch/kv_cache",
                "position": p,
                "ms": 0.01 * p,
                "state_bytes": 100 * p,
            }
            for p in (16, 32)
        ],
    }
    fig = plots.plot_scaling(r, "fwd")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "softmax_attention/torch/parallel (slope 2.00)" in labels
    assert "linear_attention/torch/chunkwise (slope 1.00)" in labels
    assert "overtakes softmax_attention at T = 1000" in fig.axes[0].get_xlabel()
    written = plots.save_plots(r, tmp_path)
    assert set(written) == {"plot_fwd", "plot_decode"}
    for path in written.values():
        assert Path(path).read_bytes()[:4] == b"\x89PNG"

"""RuntimeScalingExplorer without a browser: selections, recorded files, the run button.

Glossary: ``T`` sequence length, ``ms`` milliseconds per call. Recorded results are built
here from exact power laws (``ms = c T^p``), so fitted slopes and crossovers are known.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from course_lib import registry
from course_lib.bench import analysis
from course_lib.viz.scaling import (
    RuntimeScalingExplorer,
    find_recordings,
    load_recording,
    merge_results,
    scaling_data,
)

LENGTHS = (64, 128, 256, 512, 1024, 2048)
# series -> (mechanism, backend, {mode: (c, p)}): ms = c * T**p
LAWS = {
    "softmax_attention/torch/parallel[causal]": (
        "softmax_attention",
        "torch",
        {"fwd": (1e-4, 2.0), "fwdbwd": (3e-4, 2.0)},
    ),
    "linear_attention/torch/chunkwise": (
        "linear_attention",
        "torch",
        {"fwd": (0.05, 1.0), "fwdbwd": (0.12, 1.0)},
    ),
    "linear_attention/numpy/recurrent": ("linear_attention", "numpy", {"fwd": (0.5, 1.0)}),
    "selective_scan/torch/sequential[full]": (
        "selective_scan",
        "torch",
        {"fwd": (2.0, 1.0), "fwdbwd": (5.0, 1.0)},
    ),
}
TINY_RUN = {
    "batch": 1,
    "heads": 1,
    "head_dim": 4,
    "d_state": 2,
    "device": "cpu",
    "threads": 1,
    "min_run_time": 0.002,
    "check_length": 8,
    "budget_ms": None,
}


def power_law_results(laws: dict = LAWS, device: str = "recorded-test") -> dict:
    """A results dict in run_benchmark's format with exact power-law timings."""
    series, timings = {}, []
    for name, (mech, backend, modes) in laws.items():
        series[name] = {
            "kind": "impl",
            "mechanism": mech,
            "backend": backend,
            "form": "x",
            "case": None,
            "differentiable": "fwdbwd" in modes,
            "status": "timed",
            "reason": "",
            "check": None,
        }
        for mode, (c, p) in modes.items():
            for T in LENGTHS:
                timings.append(
                    {
                        "series": name,
                        "mode": mode,
                        "T": T,
                        "status": "ok",
                        "ms": c * T**p,
                        "io_bytes": 1,
                    }
                )
    return {
        "machine": {"device": device, "cpu": "test CPU"},
        "config": {
            "lengths": list(LENGTHS),
            "modes": ["fwd", "fwdbwd"],
            "dtype": "float32",
            "sizes": {"B": 1},
            "baseline": "softmax_attention",
        },
        "series": series,
        "timings": timings,
    }


def _explorer(tmp_path: Path, **kwargs) -> RuntimeScalingExplorer:
    kwargs.setdefault("recorded", {"cpu": power_law_results()})
    return RuntimeScalingExplorer(results_dir=tmp_path, quick_run=False, **kwargs)


def _select(w: RuntimeScalingExplorer, mechanisms=None, backends=None) -> None:
    if mechanisms is not None:
        w.controls["mechanisms"].value = tuple(mechanisms)
    if backends is not None:
        w.controls["backends"].value = tuple(backends)


def _slopes(w: RuntimeScalingExplorer) -> dict[str, float]:
    d = w.data()
    return {s.split("|", 1)[1]: v for s, v in zip(d["slope_series"], d["slope"], strict=True)}


def test_default_view_shows_the_recording_with_slopes_and_crossovers(tmp_path: Path) -> None:
    w = _explorer(tmp_path)
    assert w.controls["view"].value == "recorded"
    d = w.data()
    assert set(d["panel"]) == {"recorded: cpu"}
    slopes = _slopes(w)
    assert slopes["softmax_attention/torch/parallel[causal]"] == pytest.approx(2.0, abs=1e-9)
    assert slopes["linear_attention/torch/chunkwise"] == pytest.approx(1.0, abs=1e-9)
    cross = dict(zip(d["crossover_mechanism"], d["crossover_T"], strict=True))
    # 1e-4 T^2 = 0.05 T at T = 500; 1e-4 T^2 = 2 T at T = 20000, beyond the measured lengths
    assert cross["recorded: cpu|linear_attention"] == pytest.approx(500.0, rel=1e-9)
    assert np.isnan(cross["recorded: cpu|selective_scan"])
    ax = w.fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = ax.get_legend_handles_labels()[1]
    assert "linear_attention/torch/chunkwise (slope 1.00)" in labels
    assert "overtakes softmax at T ~ 500" in ax.get_xlabel()
    assert "selective_scan: slower than softmax at every measured T (up to 2048)" in ax.get_xlabel()


def test_selections_change_what_is_shown(tmp_path: Path) -> None:
    w = _explorer(tmp_path)
    png = w._image().data
    _select(w, mechanisms=["softmax_attention", "selective_scan"])
    assert "linear_attention/torch/chunkwise" not in set(w.data()["series"])
    assert w._image().data != png
    _select(w, mechanisms=["softmax_attention", "linear_attention"], backends=["numpy"])
    assert set(w.data()["series"]) == {"linear_attention/numpy/recurrent"}
    assert w.data()["crossover_T"].size == 0  # no softmax series shown: nothing to cross
    _select(w, backends=["numpy", "torch"])
    fwd = w.data()
    w.controls["mode"].value = "fwdbwd"
    bwd = w.data()
    assert "linear_attention/numpy/recurrent" not in set(bwd["series"])  # no fwdbwd timings
    lin = bwd["series"] == "linear_attention/torch/chunkwise"
    assert np.allclose(bwd["ms"][lin], 0.12 * np.array(LENGTHS))
    assert not np.array_equal(fwd["ms"], bwd["ms"])
    cross = dict(zip(bwd["crossover_mechanism"], bwd["crossover_T"], strict=True))
    assert cross["recorded: cpu|linear_attention"] == pytest.approx(400.0, rel=1e-9)


def test_missing_recording_says_so(tmp_path: Path) -> None:
    w = RuntimeScalingExplorer(results_dir=tmp_path, quick_run=False)
    assert w.controls["view"].value == "this machine"  # nothing recorded, nothing run
    assert w.data()["T"].size == 0
    assert "press 'run on this machine'" in w.fig.axes[0].texts[0].get_text()
    w.controls["view"].value = "recorded"
    w.controls["recorded"].value = "h200"
    text = w.fig.axes[0].texts[0].get_text()
    assert "No recorded 'h200' results yet" in text
    assert str(tmp_path / "h200" / "results.json") in text
    assert load_recording("h200", tmp_path)[0] is None


def test_recordings_are_read_from_the_results_folder(tmp_path: Path) -> None:
    (tmp_path / "laptop").mkdir()
    (tmp_path / "laptop" / "results.json").write_text(json.dumps(power_law_results()))
    (tmp_path / "h200").mkdir()
    (tmp_path / "h200" / "results.json").write_text("{not json")
    assert find_recordings(tmp_path) == ["cpu", "h200", "laptop"]
    w = RuntimeScalingExplorer(results_dir=tmp_path, quick_run=False)
    assert w.controls["recorded"].value == "laptop"  # the first one that reads
    assert set(w.data()["panel"]) == {"recorded: laptop"}
    w.controls["recorded"].value = "h200"
    assert "Could not read" in w.fig.axes[0].texts[0].get_text()


def test_run_button_times_the_selection_here(tmp_path: Path) -> None:
    w = _explorer(tmp_path, run_kwargs=TINY_RUN)
    _select(w, mechanisms=["linear_attention"], backends=["torch"])
    w.controls["lengths"].value = (8, 16)
    w.run_button.click()
    impls = registry.implementations("linear_attention", "torch")
    assert w.progress.max == len(impls) == w.progress.value
    assert w.controls["view"].value == "side by side"
    d = w.data()
    here = d["panel"] == "this machine"
    assert set(d["series"][here]) == {i.name + "[plain]" for i in impls}
    assert set(d["T"][here].tolist()) == {8, 16}
    assert np.all(d["ms"][here] > 0)
    assert set(w.local["series"]) == {i.name + "[plain]" for i in impls}
    assert "done" in w.message.value and not w.run_button.disabled
    assert len(w.fig.axes) == 2


def test_run_with_nothing_selected_says_so(tmp_path: Path) -> None:
    w = _explorer(tmp_path, run_kwargs=TINY_RUN)
    _select(w, mechanisms=["linear_attention"], backends=["peer"])
    w.run()
    assert "Nothing to run" in w.message.value
    assert w.local is None


def test_quick_run_fills_an_empty_default(tmp_path: Path, monkeypatch) -> None:
    import course_lib.viz.scaling as scaling

    tiny = {**scaling.QUICK_RUN, **TINY_RUN, "lengths": (8, 16)}
    monkeypatch.setattr(scaling, "QUICK_RUN", {**tiny, "mechanisms": ("linear_attention",)})
    w = RuntimeScalingExplorer(results_dir=tmp_path)
    assert w.controls["view"].value == "this machine"
    d = w.data()
    assert d["T"].size > 0 and set(d["panel"]) == {"this machine"}


def test_merge_results_pools_runs_and_recomputes_the_analysis() -> None:
    full = power_law_results()
    parts = []
    for name in full["series"]:
        part = power_law_results({name: LAWS[name]})
        parts.append(part)
    merged = merge_results(parts)
    assert set(merged["series"]) == set(full["series"])
    assert len(merged["timings"]) == len(full["timings"])
    assert merged["config"]["lengths"] == list(LENGTHS)
    want = analysis.summarize(full)["crossovers"]["fwd"]
    assert merged["analysis"]["crossovers"]["fwd"] == want
    with pytest.raises(ValueError, match="parts"):
        merge_results([])


def test_scaling_data_uses_the_fastest_shown_series_per_mechanism() -> None:
    res = power_law_results()
    d = scaling_data(res, ["softmax_attention", "linear_attention"], ["numpy", "torch"], "fwd")
    T, ms, _ = d["crossovers"]["linear_attention"]
    assert T == pytest.approx(500.0, rel=1e-9)  # the torch series (faster than numpy) counts
    assert ms == pytest.approx(1e-4 * 500.0**2, rel=1e-9)  # the star sits on both curves


def test_show_lays_out_controls_button_and_progress(tmp_path: Path) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.instance()
    w = _explorer(tmp_path)
    w.show()
    assert w._handle is not None
    box = w.layout()
    flat = [c for row in box.children for c in row.children]
    assert w.run_button in flat and w.progress in flat
    w.controls["mode"].value = "fwdbwd"  # updates the displayed image in place

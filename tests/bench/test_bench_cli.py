"""``python -m course_lib.bench`` end to end at tiny sizes on the CPU (fake mechanisms)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import bench_fakes

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GOOD = [
    "fake_quadratic/numpy/parallel",
    "fake_quadratic/torch/parallel",
    "fake_linear/numpy/scan",
    "fake_linear/torch/scan",
]
DIFFERENTIABLE = ["fake_quadratic/torch/parallel", "fake_linear/torch/scan"]


def test_command_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(ROOT)]))
    cmd = [
        sys.executable,
        "-m",
        "course_lib.bench",
        "--plugin",
        "bench_fakes:register_fakes",
        "--mechanisms",
        "fake_quadratic",
        "fake_linear",
        "--baseline",
        "fake_quadratic",
        "--lengths",
        "16",
        "32",
        "--mode",
        "both",
        "--out",
        str(out),
        "--batch",
        "1",
        "--heads",
        "2",
        "--head-dim",
        "4",
        "--threads",
        "1",
        "--min-run-time",
        "0.005",
        "--budget-ms",
        "0",
        "--device",
        "cpu",
        "--bandwidth-gbps",
        "10",
        "--no-progress",
        "--check-length",
        "8",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    assert results["machine"]["torch"] and results["machine"]["python"]
    assert results["machine"]["date"] and results["machine"]["cpu"]
    requested = {i.name for i in _fake_impls()}
    assert requested <= set(results["series"])
    points = {(e["series"], e["mode"], e["T"]): e for e in results["timings"]}
    for name in requested:  # every requested impl has an entry per mode and length
        for mode in ("fwd", "fwdbwd"):
            for T in (16, 32):
                assert (name, mode, T) in points, (name, mode, T)
    for name in GOOD:
        for T in (16, 32):
            e = points[(name, "fwd", T)]
            assert e["status"] == "ok" and e["ms"] > 0 and e["sizes"]["T"] == T
            assert e["io_bytes"] > 0 and e["method"]
    for name in DIFFERENTIABLE:
        assert all(points[(name, "fwdbwd", T)]["status"] == "ok" for T in (16, 32))
    assert points[("fake_linear/numpy/scan", "fwdbwd", 16)]["status"] == "skipped"

    # the numpy peak memory comes from tracemalloc and says so
    np_entry = points[("fake_quadratic/numpy/parallel", "fwd", 32)]
    assert np_entry["peak_bytes"] > 0 and "tracemalloc" in np_entry["memory_method"]

    for mode in ("fwd", "fwdbwd"):
        slopes = results["analysis"]["slopes"][mode]
        for name in GOOD if mode == "fwd" else DIFFERENTIABLE:
            for key in ("fit", "first_last"):
                assert isinstance(slopes[name][key], float) and math.isfinite(slopes[name][key])

    # a wrong implementation is reported and not timed
    wrong = results["series"]["fake_linear/torch/wrong"]
    assert wrong["status"] == "failed_check" and not wrong["check"]["ok"]
    assert all(
        points[("fake_linear/torch/wrong", m, T)]["status"] == "skipped"
        for m in ("fwd", "fwdbwd")
        for T in (16, 32)
    )
    # out of memory at one size: recorded, printed, and the run went on
    assert points[("fake_linear/torch/oom", "fwd", 16)]["status"] == "ok"
    assert points[("fake_linear/torch/oom", "fwd", bench_fakes.OOM_T)]["status"] == "oom"
    assert "out of memory: fake_linear/torch/oom" in proc.stdout + proc.stderr

    for mode in ("fwd", "fwdbwd"):
        png = out / f"time_{mode}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_MAGIC
    tables = (out / "tables.md").read_text()
    assert "fake_linear/torch/scan" in tables and "floor ms at 10 GB/s" in tables
    assert "failed the correctness check" in tables


def _fake_impls() -> list:
    from course_lib import registry

    registry.mechanisms()  # discover the real ones before taking the copy to restore
    before_m, before_i = dict(registry._MECHANISMS), dict(registry._IMPLS)
    try:
        bench_fakes.register_fakes()
        return [i for i in registry.implementations() if i.mechanism.startswith("fake_")]
    finally:
        registry._MECHANISMS.clear()
        registry._MECHANISMS.update(before_m)
        registry._IMPLS.clear()
        registry._IMPLS.update(before_i)

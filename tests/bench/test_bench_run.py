"""run_benchmark in-process: correctness pre-flight, OOM, time budget, peers, decode."""

from __future__ import annotations

import dataclasses
import json
import math

import bench_fakes
import numpy as np
import pytest
import torch

from course_lib import registry
from course_lib.bench import run as run_mod
from course_lib.bench import run_benchmark
from course_lib.bench.decode import STEPS, kv_cache_step, run_decode
from course_lib.bench.run import make_call
from course_lib.registry import Sizes
from course_lib.testing import TOLERANCE

TINY = {
    "batch": 1,
    "heads": 2,
    "head_dim": 4,
    "d_state": 2,
    "device": "cpu",
    "threads": 1,
    "progress": False,
    "min_run_time": 0.005,
    "check_length": 8,
}


def _points(results: dict) -> dict:
    return {(e["series"], e["mode"], e["T"]): e for e in results["timings"]}


@pytest.mark.usefixtures("fake_registry")
def test_failed_check_is_reported_and_not_timed() -> None:
    r = run_benchmark(
        mechanisms="fake_linear",
        forms=["wrong", "scan"],
        backends="torch",
        lengths=(8, 16),
        peers=False,
        budget_ms=None,
        **TINY,
    )
    wrong = r["series"]["fake_linear/torch/wrong"]
    assert wrong["status"] == "failed_check"
    assert wrong["check"]["errors"][0] == pytest.approx(0.5, rel=1e-5)  # 1.5 x cumsum
    assert wrong["check"]["tolerance"] == TOLERANCE["float32"]
    assert "correctness check" in wrong["reason"]
    pts = _points(r)
    assert all(pts[("fake_linear/torch/wrong", "fwd", T)]["status"] == "skipped" for T in (8, 16))
    assert pts[("fake_linear/torch/wrong", "fwd", 8)]["ms"] is None
    assert r["series"]["fake_linear/torch/scan"]["check"]["ok"]
    assert all(pts[("fake_linear/torch/scan", "fwd", T)]["status"] == "ok" for T in (8, 16))


@pytest.mark.usefixtures("fake_registry")
def test_out_of_memory_at_one_size_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    T_bad = bench_fakes.OOM_T
    r = run_benchmark(
        mechanisms="fake_linear",
        forms="oom",
        lengths=(16, T_bad, 48),
        peers=False,
        budget_ms=None,
        mode="both",
        **TINY,
    )
    pts = _points(r)
    for mode in ("fwd", "fwdbwd"):
        assert pts[("fake_linear/torch/oom", mode, 16)]["status"] == "ok"
        assert pts[("fake_linear/torch/oom", mode, T_bad)]["status"] == "oom"
        assert "MemoryError" in pts[("fake_linear/torch/oom", mode, T_bad)]["reason"]
        assert pts[("fake_linear/torch/oom", mode, 48)]["status"] == "ok"
    assert f"out of memory: fake_linear/torch/oom (fwd) at T={T_bad}" in capsys.readouterr().out


@pytest.mark.usefixtures("fake_registry")
def test_time_budget_skips_longer_lengths() -> None:
    budget = bench_fakes.SLOW_S * 1e3 / 2
    r = run_benchmark(
        mechanisms="fake_linear",
        forms="slow",
        lengths=(4, 8, 16),
        peers=False,
        budget_ms=budget,
        **TINY,
    )
    pts = _points(r)
    first = pts[("fake_linear/torch/slow", "fwd", 4)]
    assert first["status"] == "ok" and first["ms"] >= bench_fakes.SLOW_S * 1e3
    for T in (8, 16):
        assert pts[("fake_linear/torch/slow", "fwd", T)]["status"] == "skipped"
        assert "budget" in pts[("fake_linear/torch/slow", "fwd", T)]["reason"]


@pytest.mark.usefixtures("fake_registry")
def test_interrupted_run_keeps_finished_series(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run stopped from outside after its first series leaves that series on disk."""
    import json

    real_check = run_mod.check_impl
    checked: list[str] = []

    def check_then_stop(impl, *args, **kwargs):
        checked.append(impl.form)
        if len(checked) == 2:  # as if a time limit stopped the run during series two
            raise KeyboardInterrupt
        return real_check(impl, *args, **kwargs)

    monkeypatch.setattr(run_mod, "check_impl", check_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(
            mechanisms="fake_linear",
            forms=["scan", "slow"],
            backends="torch",
            lengths=(8, 16),
            peers=False,
            budget_ms=None,
            out_dir=tmp_path,
            **TINY,
        )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["complete"] is False
    first = f"fake_linear/torch/{checked[0]}"
    assert set(saved["series"]) == {first}
    assert [(e["T"], e["status"]) for e in saved["timings"]] == [(8, "ok"), (16, "ok")]
    assert all(e["ms"] > 0 for e in saved["timings"])
    out = capsys.readouterr().out  # without a progress bar each point is logged
    assert f"{first} (fwd) T=8:" in out and f"{first} (fwd) T=16:" in out


@pytest.mark.usefixtures("fake_registry")
def test_finished_run_is_marked_complete(tmp_path) -> None:
    import json

    r = run_benchmark(
        mechanisms="fake_linear", forms="scan", backends="torch", lengths=(8,), peers=False,
        budget_ms=None, out_dir=tmp_path, plots=False, **TINY,
    )  # fmt: skip
    assert r["complete"] is True
    assert json.loads((tmp_path / "results.json").read_text())["complete"] is True


@pytest.mark.parametrize("peers_last", [False, True])
def test_sdpa_peer_is_timed_and_ratio_computed(peers_last: bool) -> None:
    if ("softmax_attention", "torch", "parallel") not in {
        i.key for i in registry.implementations()
    }:
        pytest.skip("softmax_attention/torch/parallel is not registered")
    r = run_benchmark(
        mechanisms="softmax_attention",
        backends="torch",
        forms="parallel",
        lengths=(8, 16),
        peers=True,
        budget_ms=None,
        peers_last=peers_last,
        **TINY,
    )
    assert r["peers"]["peer:torch_sdpa"]["timed"]
    order = [t["series"].startswith("peer:") for t in r["timings"]]
    assert order == sorted(order, reverse=not peers_last)  # the peer's points first or last
    for name in ("peer:mamba_selective_scan", "peer:fla_chunk_linear_attn"):
        assert name in r["peers"] and not r["peers"][name]["timed"] and r["peers"][name]["reason"]
    pts = _points(r)
    impl = "softmax_attention/torch/parallel[causal]"
    ratios = {(x["series"], x["T"]): x["ratio"] for x in r["ratios"]}
    for T in (8, 16):
        peer = pts[("peer:torch_sdpa", "fwd", T)]
        assert peer["status"] == "ok" and peer["sizes"] == pts[(impl, "fwd", T)]["sizes"]
        assert ratios[(impl, T)] == pytest.approx(pts[(impl, "fwd", T)]["ms"] / peer["ms"])


def test_fwdbwd_call_and_bytes() -> None:
    x = torch.randn(2, 5, requires_grad=True)
    w = torch.randn(2, 5, requires_grad=True)
    call, fwd_bytes = make_call(lambda: x * w, {"x": x, "w": w}, "fwd")
    assert fwd_bytes == 3 * 10 * 4  # two inputs read, one output written
    call, nbytes = make_call(lambda: x * w, {"x": x, "w": w}, "fwdbwd")
    gx, gw = call()
    assert nbytes == (3 + 1 + 2) * 10 * 4  # + cotangent read + two gradients written
    cot = gx / w.detach()
    assert torch.allclose(gw, cot * x.detach())
    with pytest.raises(ValueError, match="requires grad"):
        make_call(lambda: x.detach() * 2, {"x": x.detach()}, "fwdbwd")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        run_benchmark(mode="sideways", lengths=(4,), peers=False, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        run_benchmark(dtype="int7", lengths=(4,), peers=False, progress=False)
    with pytest.raises(ValueError, match="lengths"):
        run_benchmark(lengths=(0, 4), peers=False, progress=False)
    with pytest.raises(ValueError, match="unknown mechanism"):
        run_benchmark(mechanisms="no_such_thing", lengths=(4,), peers=False, progress=False)


def test_kv_cache_step_is_softmax_attention() -> None:
    g = torch.Generator().manual_seed(0)
    B, H, T, K = 1, 2, 6, 3
    kc, vc = torch.randn(B, H, T, K, generator=g), torch.randn(B, H, T, K, generator=g)
    q, k, v = (torch.randn(B, H, K, generator=g) for _ in range(3))
    o = kv_cache_step(q, k, v, kc, vc, 3, 0.5)
    keys, vals = kc[:, :, :4].numpy(), vc[:, :, :4].numpy()
    assert np.allclose(keys[:, :, 3], k.numpy()) and np.allclose(vals[:, :, 3], v.numpy())
    s = np.einsum("bhk,bhpk->bhp", q.numpy(), keys) * 0.5
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    assert np.allclose(o.numpy(), np.einsum("bhp,bhpv->bhv", w, vals), atol=1e-6)


def test_decode_cache_grows_state_does_not() -> None:
    sizes = Sizes(B=1, T=1, H=2, K=4, V=4, D=3, N=2)
    d = run_decode([4, 8], sizes, min_run_time=0.005, progress=False)
    assert set(d["series"]) == {"softmax_attention/torch/kv_cache", *STEPS}
    pts = {(p["series"], p["position"]): p for p in d["points"]}
    kv = "softmax_attention/torch/kv_cache"
    expected = [(p + 1) * sizes.B * sizes.H * (sizes.K + sizes.V) * 4 for p in (4, 8)]
    assert [pts[(kv, p)]["state_bytes"] for p in (4, 8)] == expected
    for name, info in d["series"].items():
        if info["status"] != "timed":
            assert info["reason"], name  # every skipped step says why
            continue
        assert all(math.isfinite(pts[(name, p)]["ms"]) for p in (4, 8))
        if name != kv:
            assert pts[(name, 4)]["state_bytes"] == pts[(name, 8)]["state_bytes"] > 0


def test_decode_only_times_the_steps_and_nothing_else(tmp_path) -> None:
    r = run_benchmark(lengths=(4, 8), decode_only=True, out_dir=tmp_path, budget_ms=None, **TINY)
    assert r["timings"] == [] and r["series"] == {} and r["config"]["modes"] == []
    timed = [n for n, i in r["decode"]["series"].items() if i["status"] == "timed"]
    assert "softmax_attention/torch/kv_cache" in timed
    assert {p["position"] for p in r["decode"]["points"]} == {4, 8}
    tables = (tmp_path / "tables.md").read_text()
    assert "### Decode" in tables and "### Time per call" not in tables
    assert (tmp_path / "decode.png").exists()


def test_the_reference_gets_numpy_also_inside_a_parameter_dict(monkeypatch) -> None:
    """The Mamba block takes its weights as a dict of tensors; on CUDA the check failed with
    "can't convert cuda:0 device type tensor to numpy" (seen on an H200), so the reference
    must receive numpy arrays at every level."""
    impl = next(i for i in registry.implementations("mamba_block") if i.backend == "torch")
    mech = registry.mechanism("mamba_block")
    real = mech.reference_fn()
    seen: list[type] = []

    def spy(**kwargs):
        for v in kwargs.values():
            leaves = v.values() if isinstance(v, dict) else [v]
            seen.extend(type(x) for x in leaves if not isinstance(x, (int, float, str)))
        return real(**kwargs)

    spied = dataclasses.replace(mech)
    object.__setattr__(spied, "reference_fn", lambda: spy)  # a frozen dataclass
    monkeypatch.setattr(run_mod.registry, "mechanism", lambda name: spied)
    sizes = Sizes(B=1, T=8, H=2, K=4, V=4, D=8, N=4)
    result = run_mod.check_impl(impl, "default", sizes, dtype="float32", device="cpu")
    assert result["error"] is None and result["ok"], result
    assert seen and all(t is np.ndarray for t in seen), seen


@pytest.mark.usefixtures("fake_registry")
def test_merged_parts_pool_series_and_recompute_ratios(tmp_path) -> None:
    from course_lib.bench.__main__ import main
    from course_lib.bench.run import merge_results, save_results

    kw = dict(backends="torch", budget_ms=None, peers=False, plots=False, **TINY)
    a = run_benchmark(mechanisms="fake_quadratic", lengths=(8, 16), mode="fwd", **kw)
    b = run_benchmark(mechanisms="fake_linear", lengths=(16, 32), mode="both", **kw)
    b2 = run_benchmark(mechanisms="fake_linear", lengths=(16,), mode="fwd", **kw)
    merged = merge_results([a, b, b2], sources=["a", "b", "b2"])
    assert set(merged["series"]) == set(a["series"]) | set(b["series"])
    assert merged["config"]["lengths"] == [8, 16, 32]
    assert merged["config"]["modes"] == ["fwd", "fwdbwd"]
    assert "a, b, b2" in merged["notes"][0]
    pts, later = _points(merged), _points(b2)
    for key, e in later.items():  # the later part's point replaces the earlier one
        assert pts[key]["ms"] == e["ms"]
    assert len(merged["timings"]) == len({*_points(a), *_points(b)})
    slopes = merged["analysis"]["slopes"]["fwd"]
    assert set(slopes) == set(merged["series"])
    other = json.loads(json.dumps(b))
    other["machine"]["device"] = "cuda"
    with pytest.raises(ValueError, match="device"):
        merge_results([a, other])
    with pytest.raises(ValueError, match="parts"):
        merge_results([])
    # the command: pooled results.json and tables.md in --out
    paths = [save_results(r, tmp_path / n / "results.json") for n, r in (("a", a), ("b", b))]
    assert main(["--merge", *map(str, paths), "--out", str(tmp_path / "m"), "--no-plots"]) == 0
    written = json.loads((tmp_path / "m" / "results.json").read_text())
    assert set(written["series"]) == set(merged["series"])
    assert "### Time per call, fwdbwd" in (tmp_path / "m" / "tables.md").read_text()

"""The shared core: input checks, the registry's rules, runtime, the package's import cost."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from course_lib import checks, registry, runtime
from course_lib.testing import NumpyRand, TorchRand, rel_error, to_backend


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_check_shapes_binds_letters(lib: str) -> None:
    make = np.zeros if lib == "numpy" else torch.zeros
    q, v = make((2, 5, 3, 4)), make((2, 5, 3, 6))
    dims = checks.check_shapes(q=(q, "B T H K"), v=(v, "B T H V"), h0=(None, "B H K V"))
    assert dims == {"B": 2, "T": 5, "H": 3, "K": 4, "V": 6}


@pytest.mark.parametrize(
    ("specs", "error", "name"),
    [
        ({"q": (np.zeros((2, 5, 3)), "B T H K")}, ValueError, "q"),
        (
            {"q": (np.zeros((2, 5, 3, 4)), "B T H K"), "k": (np.zeros((2, 5, 3, 5)), "B T H K")},
            ValueError,
            "k",
        ),
        ({"x": (np.zeros((2, 4), dtype=np.int64), "B D")}, TypeError, "x"),
        ({"x": ([1.0, 2.0], "D")}, TypeError, "x"),
        ({"A": (np.zeros((3, 5)), "3 4")}, ValueError, "A"),
    ],
)
def test_check_shapes_names_the_argument(specs, error, name) -> None:
    with pytest.raises(error, match=rf"^{name}\b"):
        checks.check_shapes(**specs)


def test_scalar_checks() -> None:
    assert checks.check_positive_int("chunk_size", 4) == 4
    for bad, err in [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)]:
        with pytest.raises(err, match="chunk_size"):
            checks.check_positive_int("chunk_size", bad)
    with pytest.raises(ValueError, match="dt"):
        checks.check_positive_float("dt", 0.0)
    with pytest.raises(ValueError, match="method"):
        checks.check_choice("method", "euler", ("zoh", "bilinear"))
    with pytest.raises(TypeError, match="k has dtype"):
        checks.check_same_dtype(q=np.zeros(2), k=np.zeros(2, np.float32))


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_log_gate_domain(lib: str) -> None:
    arr = np.array if lib == "numpy" else torch.tensor
    checks.check_log_gate("g", arr([-1.0, 0.0]))
    with pytest.raises(ValueError, match="g .*<= 0"):
        checks.check_log_gate("g", arr([-1.0, 0.5]))
    with pytest.raises(ValueError, match="g .*finite"):
        checks.check_log_gate("g", arr([-1.0, float("nan")]))


def test_registry_rejects_bad_registrations() -> None:
    with pytest.raises(ValueError, match="backend"):
        registry.register(registry.Impl("x", "jax", "f", "m:f"))
    with pytest.raises(ValueError, match="register mechanism"):
        registry.register(registry.Impl("no_such_mechanism", "numpy", "f", "m:f"))
    with pytest.raises(ValueError, match="unknown mechanism"):
        registry.mechanism("no_such_mechanism")


def test_registry_lists_every_chapter_mechanism() -> None:
    names = set(registry.mechanisms())
    want = {
        "softmax_attention",
        "linear_attention",
        "gated_linear_attention",
        "lti_ssm",
        "h3",
        "selective_scan",
        "ssd",
    }
    assert want <= names, f"missing {sorted(want - names)}"


def test_rand_and_conversion_agree() -> None:
    x = NumpyRand(3).normal((4, 5))
    t = to_backend({"x": x, "flag": True}, "torch", "float32")
    assert t["flag"] is True and t["x"].dtype == torch.float32
    assert rel_error(t["x"], x) < 1e-6
    g = TorchRand(0, torch.float32).uniform((1000,), -1.0, -0.5)
    assert float(g.min()) >= -1.0 and float(g.max()) <= -0.5


def test_rel_error_flags_nan_and_shape() -> None:
    assert rel_error(np.array([np.nan, 1.0]), np.ones(2)) == float("inf")
    with pytest.raises(AssertionError, match="shape"):
        rel_error(np.ones(3), np.ones(2))


def test_rel_error_of_two_tensors_is_computed_where_they_are() -> None:
    """The tensor path (used for gigabytes on a GPU) agrees with the numpy path."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    ta, tb = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.bfloat16)
    assert rel_error(ta, tb) == pytest.approx(rel_error(ta.numpy(), tb.double().numpy()))
    assert rel_error(torch.tensor([float("nan"), 1.0]), torch.ones(2)) == float("inf")
    c = torch.tensor(a + 1j * b)
    assert rel_error(c, c.conj()) == pytest.approx(rel_error(a + 1j * b, a - 1j * b))
    with pytest.raises(AssertionError, match="shape"):
        rel_error(torch.ones(3), torch.ones(2))


def test_poisoned_allocation() -> None:
    with runtime.poison_outputs():
        assert torch.isnan(runtime.new_empty((3,), dtype=torch.float32, device="cpu")).all()
    assert runtime.new_empty((3,), dtype=torch.float32, device="cpu").shape == (3,)


def test_triton_mode_is_interpreter_without_gpu() -> None:
    if torch.cuda.is_available():
        assert runtime.triton_mode() == "compiled"
    else:
        assert runtime.triton_mode() in ("interpreter", "unavailable")


def test_bf16_check_below_compute_capability_8(monkeypatch) -> None:
    """The Triton launchers' shared bf16 check: refused below 8.0, naming the argument;
    other dtypes, 8.0 and newer, and None (interpreter, CPU) pass."""
    if not torch.cuda.is_available():
        assert runtime.device_capability("cpu") is None
    x16, xb = torch.ones(2, dtype=torch.float16), torch.ones(2, dtype=torch.bfloat16)
    monkeypatch.setattr(runtime, "device_capability", lambda device: (7, 5))
    runtime.check_bf16_supported(q=x16, k=None)
    msg = r"^u is bfloat16, but this GPU \(compute capability 7\.5\) has no bf16 support in "
    with pytest.raises(TypeError, match=msg + r"Triton; use float16 or float32$"):
        runtime.check_bf16_supported(q=x16, u=xb)
    for cap in ((8, 0), (9, 0), None):
        monkeypatch.setattr(runtime, "device_capability", lambda device, cap=cap: cap)
        runtime.check_bf16_supported(q=xb)


def test_import_is_cheap_and_defines_no_kernels() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import course_lib; "
        "dt = time.perf_counter() - t; "
        "print(dt, 'torch' in sys.modules, 'triton' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, torch_loaded, triton_loaded = out.stdout.split()
    assert float(seconds) < 2.0
    assert torch_loaded == "False" and triton_loaded == "False"


def test_report_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "course_lib", "--list"], capture_output=True, text=True, check=True
    ).stdout
    assert "triton_mode" in out and "registry" in out
    assert "linear_attention/numpy/recurrent" in out

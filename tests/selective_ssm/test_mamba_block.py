"""The Mamba block (chapter 07): initialisation, torch == numpy, decoding == full forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.selective_ssm import numpy_ref as ref
from course_lib.selective_ssm import torch_impl as ti
from course_lib.testing import TOLERANCE, rel_error

TOL64 = TOLERANCE["float64"]


def test_init_follows_the_paper():
    p = ref.init_mamba_params(24, d_state=5, expand=2, d_conv=3, seed=1)
    A = -np.exp(p["A_log"])
    assert A.shape == (48, 5)
    np.testing.assert_allclose(A, -np.tile(np.arange(1, 6), (48, 1)), rtol=1e-12)
    dt = np.logaddexp(0.0, p["dt_proj_bias"])
    assert dt.min() >= 1e-3 * (1 - 1e-9) and dt.max() <= 0.1 * (1 + 1e-9)
    assert p["dt_proj_weight"].shape == (48, 2)  # dt_rank = ceil(24 / 16)
    assert p["x_proj_weight"].shape == (2 + 2 * 5, 48)
    np.testing.assert_array_equal(p["D"], np.ones(48))
    assert ref.mamba_dims(p) == {"M": 24, "D": 48, "N": 5, "R": 2, "W": 3}
    pt = ti.init_mamba_params(24, d_state=5, expand=2, d_conv=3, seed=1, dtype=torch.float64)
    for k, v in p.items():
        np.testing.assert_array_equal(pt[k].numpy(), v)


@pytest.mark.parametrize("T", [1, 7])
def test_torch_forward_matches_numpy(T):
    p = ref.init_mamba_params(8, d_state=3, seed=2)
    x = np.random.default_rng(0).standard_normal((2, T, 8))
    want = ref.mamba_block_forward(x, p)
    got = ti.mamba_block_forward(
        torch.tensor(x), ti.init_mamba_params(8, 3, seed=2, dtype=torch.float64)
    )
    assert got.shape == (2, T, 8) and rel_error(got, want) < TOL64
    got32 = ti.mamba_block_forward(torch.tensor(x, dtype=torch.float32), p)
    assert got32.dtype == torch.float32 and rel_error(got32, want) < TOLERANCE["float32"]


def test_causal_conv_matches_torch_conv1d_and_is_causal():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 6, 3)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    y = ref.causal_conv1d(x, w, b)
    yt = ti.causal_conv1d(torch.tensor(x), torch.tensor(w), torch.tensor(b))
    assert rel_error(yt, y) < TOL64
    x2 = x.copy()
    x2[:, 4:] += 1.0  # changing the future leaves the past unchanged
    np.testing.assert_array_equal(ref.causal_conv1d(x2, w, b)[:, :4], y[:, :4])


@pytest.mark.parametrize("module", [ref, ti], ids=["numpy", "torch"])
def test_decode_steps_equal_forward(module):
    p = ref.init_mamba_params(6, d_state=4, d_conv=3, seed=4)
    p["A_log"] = p["A_log"] - 2.0  # slow decays, so that early tokens still matter
    x = np.random.default_rng(5).standard_normal((2, 11, 6))
    want = ref.mamba_block_forward(x, p)
    xs = x if module is ref else torch.tensor(x)
    if module is ref:
        state = ref.mamba_block_initial_state(p, 2)
    else:
        state = ti.mamba_block_initial_state(p, 2, like=xs)
    outs = []
    for t in range(x.shape[1]):
        y, state = module.mamba_block_step(xs[:, t], p, state)
        outs.append(np.asarray(y))
    assert rel_error(np.stack(outs, 1), want) < TOL64


def test_gradcheck_block():
    p = ti.init_mamba_params(2, d_state=2, d_conv=2, seed=0, dtype=torch.float64)
    for v in p.values():
        v.requires_grad_(True)
    x = torch.randn(1, 4, 2, dtype=torch.float64, requires_grad=True)
    names = list(p)

    def f(x, *ws):
        return ti.mamba_block_forward(x, dict(zip(names, ws, strict=True)))

    assert torch.autograd.gradcheck(f, (x, *p.values()), fast_mode=True)


def test_bad_block_inputs_name_the_argument():
    p = ref.init_mamba_params(4, d_state=2)
    x = np.zeros((1, 3, 4))
    with pytest.raises(ValueError, match="x"):
        ref.mamba_block_forward(np.zeros((1, 3, 5)), p)
    bad = dict(p, D=p["D"][:-1])
    with pytest.raises(ValueError, match="params\\['D'\\]"):
        ti.mamba_block_forward(torch.zeros(1, 3, 4), bad)
    with pytest.raises(ValueError, match="missing"):
        ref.mamba_block_forward(x, {k: v for k, v in p.items() if k != "A_log"})
    with pytest.raises(TypeError, match="state"):
        ref.mamba_block_step(x[:, 0], p, np.zeros((1, 8, 2)))
    with pytest.raises(ValueError, match="d_model"):
        ref.init_mamba_params(0)

"""The nn.Module blocks: decode step by step equals the full forward, shapes, gradients,
caches and bad inputs.

Glossary: B batch, T sequence length, D model width (d_model), H heads.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.nn import (
    GatedLinearAttention,
    H3Block,
    KVCache,
    LinearAttention,
    MambaBlock,
    MultiHeadAttention,
    StateCache,
    rotary_embedding,
)
from course_lib.testing import TOLERANCE, rel_error

D_MODEL = 12
TOL = TOLERANCE["float64"]

BLOCKS = {
    "attention": lambda: MultiHeadAttention(D_MODEL, num_heads=2),
    "attention_norope": lambda: MultiHeadAttention(D_MODEL, num_heads=3, rotary=False, bias=True),
    "linear_attention": lambda: LinearAttention(D_MODEL, num_heads=2, chunk_size=4),
    "linear_attention_relu_unnormalised": lambda: LinearAttention(
        D_MODEL, num_heads=3, feature_map="relu", normalize=False, chunk_size=3
    ),
    "linear_attention_identity": lambda: LinearAttention(
        D_MODEL, num_heads=1, feature_map="identity", normalize=False, chunk_size=5
    ),
    "gla": lambda: GatedLinearAttention(D_MODEL, num_heads=2, chunk_size=4),
    "h3": lambda: H3Block(D_MODEL, num_heads=2, state_size=4, shift_size=3),
    "h3_recurrent_form": lambda: H3Block(D_MODEL, num_heads=3, state_size=3, form="recurrent"),
    "mamba": lambda: MambaBlock(D_MODEL, d_state=4),
}


def _block(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return BLOCKS[name]().double()


def _decode(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Run ``block.step`` over ``x [B, T, D]``; return ``y [B, T, D]`` and cache bytes per step."""
    cache = block.init_cache(x.shape[0], x.device, x.dtype)
    ys, sizes = [], []
    for t in range(x.shape[1]):
        y_t, cache = block.step(x[:, t], cache)
        ys.append(y_t)
        sizes.append(cache.nbytes)
    return torch.stack(ys, dim=1), sizes


@pytest.mark.parametrize("name", list(BLOCKS))
def test_step_matches_forward(name: str) -> None:
    block = _block(name)
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        y = block(x)
        y_steps, sizes = _decode(block, x)
    assert y.shape == x.shape
    err = rel_error(y_steps, y)
    assert err <= TOL, f"{name}: step-by-step decode differs from forward by {err:.2e}"
    if isinstance(block, MultiHeadAttention):
        per_token = sizes[0]
        assert sizes == [per_token * (t + 1) for t in range(len(sizes))]
    else:
        assert len(set(sizes)) == 1, f"{name}: a fixed-size state changed size {sizes}"


@settings(max_examples=8)
@given(
    name=st.sampled_from(list(BLOCKS)),
    batch=st.integers(1, 2),
    length=st.sampled_from([1, 2, 5, 9]),
    seed=st.integers(0, 3),
)
def test_shapes_and_causality(name: str, batch: int, length: int, seed: int) -> None:
    block = _block(name, seed)
    x = torch.randn(batch, length, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        y = block(x)
        assert y.shape == (batch, length, D_MODEL)
        assert torch.isfinite(y).all()
        # Changing the last token must not change any earlier output.
        x2 = x.clone()
        x2[:, -1] += 1.0
        y2 = block(x2)
    if length > 1:
        assert rel_error(y2[:, :-1], y[:, :-1]) <= TOL


@pytest.mark.parametrize("name", list(BLOCKS))
def test_every_parameter_gets_a_gradient(name: str) -> None:
    block = _block(name)
    x = torch.randn(2, 7, D_MODEL, dtype=torch.float64, requires_grad=True)
    y = block(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in block.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


@pytest.mark.parametrize("name", list(BLOCKS))
def test_float32_runs(name: str) -> None:
    torch.manual_seed(0)
    block = BLOCKS[name]()
    x = torch.randn(1, 6, D_MODEL)
    with torch.no_grad():
        y = block(x)
        y_steps, _ = _decode(block, x)
    assert y.dtype == torch.float32
    assert rel_error(y_steps, y) <= TOLERANCE["float32"]


@pytest.mark.parametrize("name", list(BLOCKS))
def test_bad_inputs_name_the_argument(name: str) -> None:
    block = _block(name)
    x = torch.randn(2, 5, D_MODEL, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\bx\b"):
        block(x[0])  # [T, D]: no batch
    with pytest.raises(ValueError, match=r"\bx\b"):
        block(x[..., :-1])  # wrong d_model
    with pytest.raises(TypeError, match=r"\bx\b"):
        block(x.numpy())
    cache = block.init_cache(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="x_t"):
        block.step(x, cache)  # a whole sequence, not one token
    with pytest.raises(ValueError, match="x_t"):
        block.step(x[:, 0, :-1], cache)
    wrong = StateCache() if isinstance(cache, KVCache) else KVCache(2, 1, 2, 2)
    with pytest.raises(TypeError, match="cache"):
        block.step(x[:, 0], wrong)
    with pytest.raises(ValueError, match="batch_size"):
        block.init_cache(0)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="backend"):
        MultiHeadAttention(8, 2, backend="cuda")
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttention(8, 3)
    with pytest.raises(ValueError, match="head_dim"):
        MultiHeadAttention(9, 3)  # odd head dim with rotary embeddings
    with pytest.raises(ValueError, match="feature_map"):
        LinearAttention(8, 2, feature_map="softmax")
    with pytest.raises(ValueError, match="normalize"):
        LinearAttention(8, 2, feature_map="identity", normalize=True)
    with pytest.raises(ValueError, match="expand_k"):
        GatedLinearAttention(8, 3)
    with pytest.raises(ValueError, match="gate_temperature"):
        GatedLinearAttention(8, 2, gate_temperature=0.0)
    with pytest.raises(ValueError, match="d_model"):
        MambaBlock(0)
    with pytest.raises(ValueError, match="dt_min"):
        MambaBlock(8, dt_min=0.5, dt_max=0.1)


def test_other_backends_come_from_the_registry() -> None:
    """backend="triton" looks the form up in the registry (only torch is run here)."""
    x = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="no implementation"):
        MultiHeadAttention(8, 2, backend="triton", form="no_such_form")(x)
    with pytest.raises(ValueError, match="no implementation"):
        H3Block(8, 2, state_size=2, backend="triton")(x)  # H3 has no Triton kernel


def test_attention_without_rotary_is_scaled_dot_product_attention() -> None:
    """An independent check: the block equals torch's own causal attention."""
    block = _block("attention_norope")
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    H = block.num_heads

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (H, -1)).transpose(1, 2)  # [B, H, T, E]

    with torch.no_grad():
        o = F.scaled_dot_product_attention(
            heads(block.q_proj(x)), heads(block.k_proj(x)), heads(block.v_proj(x)), is_causal=True
        )  # [B, H, T, E]
        want = block.o_proj(o.transpose(1, 2).flatten(-2))
        assert rel_error(block(x), want) <= TOL


def test_rotary_scores_depend_on_distance_only() -> None:
    q = torch.randn(1, 1, 1, 8, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        qm = rotary_embedding(q, torch.tensor([m]))
        kn = rotary_embedding(k, torch.tensor([n]))
        return float((qm * kn).sum())

    assert math.isclose(score(5, 2), score(13, 10), rel_tol=1e-12)
    assert not math.isclose(score(5, 2), score(5, 4), rel_tol=1e-3)
    # A rotation keeps the norm.
    r = rotary_embedding(q, torch.tensor([7]))
    assert math.isclose(float(r.norm()), float(q.norm()), rel_tol=1e-12)


def test_gla_gates_follow_the_paper() -> None:
    """log alpha = logsigmoid(x W1 W2 + b) / 16 is <= 0, and close to 0 at initialisation."""
    block = _block("gla")
    x = torch.randn(3, 5, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        _, _, _, gk = block._project(x)
    assert gk.shape == (3, 5, block.num_heads, block.key_dim)
    assert (gk <= 0).all()
    assert gk.min() > math.log(0.5) / 16 * 20  # decays stay near 1 (slow forgetting)
    assert block.gate_down.weight.shape == (16, D_MODEL)  # rank-16 W_alpha1


def test_mamba_block_matches_the_numpy_reference() -> None:
    """The module equals selective_ssm's float64 functional Mamba block on its parameters."""
    from course_lib.selective_ssm import numpy_ref

    block = _block("mamba")
    x = torch.randn(2, 13, D_MODEL, dtype=torch.float64)
    params = {k: v.detach().numpy() for k, v in block.to_params().items()}
    want = numpy_ref.mamba_block_forward(x.numpy(), params)
    with torch.no_grad():
        assert rel_error(block(x), want) <= TOL


def test_h3_block_matches_the_numpy_reference() -> None:
    """The module equals the H3 float64 reference (recurrent form) on its parameters."""
    from course_lib.h3 import numpy_ref

    block = _block("h3")
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    params = {k: v.detach().numpy() for k, v in block.h3_params().items()}
    want = numpy_ref.h3_recurrent(x.numpy(), **params, num_heads=block.num_heads)
    with torch.no_grad():
        assert rel_error(block(x), want) <= TOL
    A = params["A"]
    assert (A.real < 0).all()  # stored as -exp(A_log_real): stable for any parameter value


def test_mamba_initialisation_follows_the_paper() -> None:
    torch.manual_seed(0)
    block = MambaBlock(32, d_state=16, dt_min=1e-3, dt_max=0.1)
    assert block.d_inner == 64 and block.dt_rank == 2 and block.d_conv == 4
    A = -block.A_log.exp()
    np.testing.assert_allclose(A.detach().numpy()[0], -np.arange(1, 17), rtol=1e-6)
    dt = F.softplus(block.dt_proj.bias).detach()
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert torch.equal(block.D.detach(), torch.ones(64))


def test_kv_cache_grows_and_state_cache_is_fixed() -> None:
    cache = KVCache(2, 3, 4, 5, dtype=torch.float64, capacity=2)
    for t in range(5):
        k, v = cache.append(torch.randn(2, 3, 4, dtype=torch.float64), torch.ones(2, 3, 5) * t)
        assert k.shape == (2, t + 1, 3, 4) and v.shape == (2, t + 1, 3, 5)
        assert cache.nbytes == 2 * (t + 1) * 3 * (4 + 5) * 8
    assert torch.equal(cache.values[:, :, 0, 0], torch.arange(5.0).double().expand(2, 5))
    assert cache.allocated_bytes >= cache.nbytes
    with pytest.raises(ValueError, match="k_t"):
        cache.append(torch.randn(2, 3, 5), torch.randn(2, 3, 5))
    state = StateCache(S=torch.zeros(2, 3, 4, 5))
    state["S"] = torch.ones(2, 3, 4, 5)
    assert state.nbytes == 2 * 3 * 4 * 5 * 4
    with pytest.raises(ValueError, match="S"):
        state["S"] = torch.ones(2, 3, 4, 6)

"""TinyLM with every mixer and a hybrid: decode equals forward, shapes, gradients, caches,
greedy generation and bad inputs.

Glossary: B batch, T sequence length, L vocabulary size.
"""

from __future__ import annotations

import pytest
import torch

from course_lib.nn import MIXERS, KVCache, ModelCache, StateCache, TinyLM
from course_lib.testing import TOLERANCE, rel_error

VOCAB = 11
HYBRID = ["mamba", "attention", "gla"]
SMALL_KWARGS = {
    "linear_attention": {"chunk_size": 4},
    "gla": {"chunk_size": 4},
    "mamba": {"d_state": 4},
}
CONFIGS = {name: name for name in MIXERS} | {
    "hybrid": HYBRID,
    "hybrid2": ["h3", "linear_attention"],
}


def _model(mixer: str | list[str], seed: int = 0, **kwargs: object) -> TinyLM:
    torch.manual_seed(seed)
    n_layers = len(mixer) if isinstance(mixer, list) else 2
    options = {"d_model": 16, "num_heads": 2, "mixer_kwargs": SMALL_KWARGS} | kwargs
    return TinyLM(VOCAB, n_layers=n_layers, mixer=mixer, **options).double()


def _decode_logits(model: TinyLM, tokens: torch.Tensor) -> tuple[torch.Tensor, ModelCache]:
    cache = model.init_cache(tokens.shape[0])
    out = []
    for t in range(tokens.shape[1]):
        logits, cache = model.step(tokens[:, t], cache)
        out.append(logits)
    return torch.stack(out, dim=1), cache  # [B, T, L]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_step_matches_forward(config: str) -> None:
    model = _model(CONFIGS[config])
    tokens = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        logits = model(tokens)
        stepped, cache = _decode_logits(model, tokens)
    assert logits.shape == (2, 10, VOCAB)
    assert logits.dtype == torch.float64
    err = rel_error(stepped, logits)
    assert err <= TOLERANCE["float64"], f"{config}: decode differs from forward by {err:.2e}"
    assert cache.position == 10
    assert [type(c) for c in cache] == [
        KVCache if m == "attention" else StateCache for m in model.mixers
    ]


@pytest.mark.parametrize("config", ["attention", "mamba", "hybrid"])
def test_untied_layernorm_variant(config: str) -> None:
    model = _model(CONFIGS[config], tie_weights=False, norm="layer", mlp_ratio=0)
    assert model.head.weight is not model.embedding.weight
    tokens = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        stepped, _ = _decode_logits(model, tokens)
        assert rel_error(stepped, model(tokens)) <= TOLERANCE["float64"]


def test_position_embeddings() -> None:
    model = _model("linear_attention", max_seq_len=8)
    tokens = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        stepped, cache = _decode_logits(model, tokens)
        assert rel_error(stepped, model(tokens)) <= TOLERANCE["float64"]
        with pytest.raises(ValueError, match="max_seq_len"):
            model(torch.randint(0, VOCAB, (2, 9)))
        with pytest.raises(ValueError, match="max_seq_len"):
            model.step(tokens[:, 0], cache)  # position 8
    assert model.generate(tokens[:, :3], max_new_tokens=5).shape == (2, 8)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_parameter_gets_a_gradient(config: str) -> None:
    model = _model(CONFIGS[config])
    tokens = torch.randint(0, VOCAB, (2, 7))
    logits = model(tokens)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{config}: {name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{config}: {name}"
        assert p.grad.abs().sum() > 0, f"{config}: {name} has an all-zero gradient"


def test_cache_bytes_grow_only_for_attention() -> None:
    """What chapter 09 plots: the KV cache is linear in position, recurrent states are flat."""
    model = _model(HYBRID)
    cache = model.init_cache(1)
    per_layer = []
    for t in range(6):
        _, cache = model.step(torch.tensor([t % VOCAB]), cache)
        per_layer.append(cache.layer_bytes())
    mamba, attention, gla = zip(*per_layer, strict=True)
    assert len(set(mamba)) == 1 and len(set(gla)) == 1
    assert list(attention) == [attention[0] * (t + 1) for t in range(6)]
    assert cache.nbytes == sum(per_layer[-1])


def test_generate_is_greedy_decoding() -> None:
    model = _model(HYBRID)
    prompt = torch.randint(0, VOCAB, (2, 4))
    out = model.generate(prompt, max_new_tokens=5)
    assert out.shape == (2, 9)
    assert torch.equal(out[:, :4], prompt)
    with torch.no_grad():
        logits = model(out)  # [B, 9, L]
    # every generated token is the arg-max of the full forward at the position before it
    assert torch.equal(out[:, 4:], logits[:, 3:-1].argmax(-1))
    single = model.generate(prompt[0], max_new_tokens=2)
    assert torch.equal(single, out[0, :6])
    assert torch.equal(model.generate(prompt, max_new_tokens=0), prompt)


def test_parameter_count() -> None:
    tied = _model("attention")
    untied = _model("attention", tie_weights=False)
    assert untied.num_parameters() - tied.num_parameters() == VOCAB * 16
    assert tied.num_parameters() == sum(p.numel() for p in tied.parameters())
    assert tied.num_parameters(exclude_embedding=True) == tied.num_parameters() - VOCAB * 16


def test_bad_inputs() -> None:
    model = _model("gla")
    with pytest.raises(ValueError, match="mixer"):
        TinyLM(VOCAB, mixer="transformer")
    with pytest.raises(ValueError, match="mixer"):
        TinyLM(VOCAB, n_layers=2, mixer=["mamba", "rnn"])
    with pytest.raises(ValueError, match="n_layers"):
        TinyLM(VOCAB, n_layers=3, mixer=["mamba", "gla"])
    with pytest.raises(ValueError, match="mixer_kwargs"):
        TinyLM(VOCAB, mixer_kwargs={"lstm": {}})
    with pytest.raises(ValueError, match="norm"):
        TinyLM(VOCAB, norm="batch")
    with pytest.raises(ValueError, match="vocab_size"):
        TinyLM(0)
    with pytest.raises(ValueError, match="backend"):
        TinyLM(VOCAB, backend="jax")
    tokens = torch.randint(0, VOCAB, (2, 5))
    with pytest.raises(ValueError, match="tokens"):
        model(tokens[0])
    with pytest.raises(TypeError, match="tokens"):
        model(tokens.double())
    with pytest.raises(ValueError, match="tokens"):
        model(tokens + VOCAB)
    cache = model.init_cache(2)
    with pytest.raises(ValueError, match="token"):
        model.step(tokens, cache)
    with pytest.raises(TypeError, match="cache"):
        model.step(tokens[:, 0], None)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(tokens, max_new_tokens=-1)


def test_per_mixer_backend_overrides_the_shared_one() -> None:
    model = TinyLM(
        16, d_model=16, n_layers=2, mixer=["gla", "attention"], num_heads=2,
        mixer_kwargs={"gla": {"backend": "triton"}},
    )  # fmt: skip
    assert [layer.mixer.backend for layer in model.layers] == ["triton", "torch"]

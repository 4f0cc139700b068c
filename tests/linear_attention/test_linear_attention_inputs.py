"""Bad input gets the same clear error, naming the argument, from every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib import runtime
from course_lib.linear_attention import numpy_ref, torch_impl

B, T, H, K, V = 2, 6, 2, 4, 3


def _good() -> dict:
    rng = np.random.default_rng(0)
    return {
        "q": rng.standard_normal((B, T, H, K)),
        "k": rng.standard_normal((B, T, H, K)),
        "v": rng.standard_normal((B, T, H, V)),
    }


# name -> (changes to the good call, expected error, text the message must contain)
BAD = {
    "k_head_dim": ({"k": np.zeros((B, T, H, K + 1))}, ValueError, "k has shape"),
    "v_length": ({"v": np.zeros((B, T + 1, H, V))}, ValueError, "v has shape"),
    "q_rank": ({"q": np.zeros((B, T, H * K))}, ValueError, "q must have 4 dimensions"),
    "q_integer": ({"q": np.zeros((B, T, H, K), dtype=np.int64)}, TypeError, "q must have a"),
    "k_dtype": ({"k": np.zeros((B, T, H, K), dtype=np.float32)}, TypeError, "k has dtype"),
    "q_list": ({"q": [[1.0]]}, TypeError, "q must be a numpy array or torch tensor"),
    "state_shape": ({"initial_state": np.zeros((B, H, V, K))}, ValueError, "initial_state has"),
    "state_rank": ({"initial_state": np.zeros((B, H, K))}, ValueError, "initial_state must"),
    "pair_without_normalize": (
        {"initial_state": (np.zeros((B, H, K, V)), np.ones((B, H, K)))},
        TypeError,
        "initial_state must be one array",
    ),
    "normalize_without_pair": (
        {"normalize": True, "initial_state": np.zeros((B, H, K, V))},
        TypeError,
        "initial_state must be a pair",
    ),
    "z_shape": (
        {"normalize": True, "initial_state": (np.zeros((B, H, K, V)), np.ones((B, H, V)))},
        ValueError,
        r"initial_state\[1\] has shape",
    ),
    "chunk_size_zero": ({"chunk_size": 0}, ValueError, "chunk_size must be a positive int"),
    "chunk_size_float": ({"chunk_size": 2.5}, TypeError, "chunk_size must be a positive int"),
    "feature_map_unknown": ({"feature_map": "softmax"}, ValueError, "feature_map must be one"),
    "feature_map_type": ({"feature_map": 3}, TypeError, "feature_map must be None"),
    "scale_negative": ({"scale": -1.0}, ValueError, "scale must be a positive"),
    "normalize_not_bool": ({"normalize": "yes"}, TypeError, "normalize must be a bool"),
    "final_not_bool": ({"output_final_state": 1}, TypeError, "output_final_state must be"),
}


def _to_torch(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, tuple):
        return tuple(_to_torch(v) for v in value)
    return value


def _backends():
    backends = [("numpy", numpy_ref.linear_attention_chunkwise, lambda x: x)]
    backends.append(("torch", torch_impl.linear_attention_chunkwise, _to_torch))
    if runtime.triton_available():
        from course_lib.linear_attention import triton_kernels

        backends.append(("triton", triton_kernels.linear_attention_chunkwise, _to_torch))
    return backends


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_same_error_every_backend(case) -> None:
    change, error, text = BAD[case]
    messages = []
    for _name, fn, conv in _backends():
        kwargs = {n: conv(a) for n, a in {**_good(), **change}.items()}
        with pytest.raises(error, match=text) as info:
            fn(**kwargs)
        messages.append(str(info.value).replace("torch.", ""))  # dtype spellings differ
    assert len(set(messages)) == 1, messages


def test_bad_inputs_of_the_other_forms() -> None:
    x = _good()
    bad_k = np.zeros((B, T, H, K + 1))
    for module, conv in ((numpy_ref, lambda a: a), (torch_impl, torch.from_numpy)):
        for form in ("parallel", "recurrent", "noncausal"):
            fn = getattr(module, f"linear_attention_{form}")
            with pytest.raises(ValueError, match="k has shape"):
                fn(conv(x["q"]), conv(bad_k), conv(x["v"]))
        q_t, k_t, v_t = (conv(x[n][:, 0]) for n in ("q", "k", "v"))
        with pytest.raises(ValueError, match="q_t must have 3 dimensions"):
            module.linear_attention_step(conv(x["q"]), k_t, v_t, None)
        with pytest.raises(ValueError, match="state has shape"):
            module.linear_attention_step(q_t, k_t, v_t, conv(np.zeros((B, H, K, V + 2))))
        with pytest.raises(TypeError, match="state must be a pair"):
            module.linear_attention_step(
                q_t, k_t, v_t, conv(np.zeros((B, H, K, V))), normalize=True
            )


@pytest.mark.skipif(not runtime.triton_available(), reason="Triton is not installed")
def test_triton_specific_bad_inputs() -> None:
    from course_lib.linear_attention import triton_kernels as tk

    q, k, v = (_to_torch(a).float() for a in _good().values())
    with pytest.raises(ValueError, match=r"chunk_size must be one of \(16, 32, 64, 128\)"):
        tk.chunk_linear_attention(q, k, v, chunk_size=24)
    with pytest.raises(TypeError, match="q must be a torch tensor"):
        tk.chunk_linear_attention(q.numpy(), k.numpy(), v.numpy())
    with pytest.raises(ValueError, match="state has shape"):
        tk.linear_attention_decode_step(q[:, 0], k[:, 0], v[:, 0], torch.zeros(B, H, V, K))

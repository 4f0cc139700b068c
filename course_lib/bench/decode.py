"""Decoding: the latency of one generated token and the memory it keeps, against position.

Glossary: ``B`` batch, ``H`` heads, ``K`` query/key head dim, ``V`` value head dim, ``D``
channels, ``N`` state size per channel, ``p`` the position (tokens already seen).

Softmax attention keeps a KV cache that grows by ``K + V`` numbers per head and token: the
step at position ``p`` reads ``2 B H p K`` numbers, so its latency and memory grow linearly
with ``p``. Linear attention, gated linear attention and the selective scan keep a fixed
state (``[B, H, K, V]`` or ``[B, D, N]``): constant time and memory per token (Katharopoulos
et al. 2020; Gu and Dao 2023).

The KV-cache step is written here (a cache preallocated to the longest position, appended
in place); the others use the step functions their mechanism packages provide, imported
lazily: a missing or incompatible one is recorded with the reason and skipped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from course_lib import runtime
from course_lib.bench.timing import is_oom, measure
from course_lib.registry import Sizes
from course_lib.testing import TorchRand

# name -> (module, function, kind, renames): the step functions the mechanism packages
# provide; ``renames`` maps this module's argument names to the function's own.
STEPS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "linear_attention/torch/step": (
        "course_lib.linear_attention.torch_impl",
        "linear_attention_step",
        "kv_state",
        {},
    ),
    "gated_linear_attention/torch/step": (
        "course_lib.gated_linear_attention.torch_impl",
        "gated_linear_attention_step",
        "gated_kv_state",
        {},
    ),
    "selective_scan/torch/step": (
        "course_lib.selective_ssm.torch_impl",
        "selective_scan_step",
        "ssm_state",
        {},
    ),
    "linear_attention/triton/step": (
        "course_lib.linear_attention.triton_kernels",
        "linear_attention_decode_step",
        "kv_state",
        {},
    ),
    "gated_linear_attention/triton/step": (
        "course_lib.gated_linear_attention.triton_kernels",
        "gla_decode_step",
        "gated_kv_state",
        {"gk_t": "g_t"},
    ),
    "selective_scan/triton/step": (
        "course_lib.selective_ssm.triton_kernels",
        "selective_scan_decode_step",
        "ssm_state",
        {},
    ),
}


def _nbytes(t: Any) -> int:
    return int(t.numel() * t.element_size())


def kv_cache_step(
    q_t: Any, k_t: Any, v_t: Any, k_cache: Any, v_cache: Any, pos: int, scale: float
) -> Any:
    """Append ``k_t, v_t`` at ``pos`` and attend over the ``pos + 1`` cached tokens.

    ``q_t, k_t [B, H, K]``, ``v_t [B, H, V]``, caches ``[B, H, T_max, K|V]``:
    ``o_t = softmax(scale q_t K_{:p}^T) V_{:p}`` -> ``[B, H, V]``.
    """
    import torch

    k_cache[:, :, pos] = k_t
    v_cache[:, :, pos] = v_t
    keys = k_cache[:, :, : pos + 1]  # [B, H, p+1, K]
    vals = v_cache[:, :, : pos + 1]  # [B, H, p+1, V]
    scores = torch.einsum("bhk,bhpk->bhp", q_t.float(), keys.float()) * scale  # [B, H, p+1]
    w = torch.softmax(scores, dim=-1)
    return torch.einsum("bhp,bhpv->bhv", w, vals.float()).to(q_t.dtype)  # [B, H, V]


def _softmax_series(
    sizes: Sizes, rand: TorchRand, positions: Sequence[int]
) -> Callable[[int], tuple[Callable[[], Any], int]]:
    B, H, K, V = sizes.B, sizes.H, sizes.K, sizes.V
    t_max = max(positions) + 1
    k_cache = rand.normal((B, H, t_max, K))  # [B, H, T_max, K]; filled: the past is random
    v_cache = rand.normal((B, H, t_max, V))
    q_t, k_t, v_t = rand.normal((B, H, K)), rand.normal((B, H, K)), rand.normal((B, H, V))

    def at(pos: int) -> tuple[Callable[[], Any], int]:
        used = (pos + 1) * B * H * (K + V) * k_cache.element_size()
        return (lambda: kv_cache_step(q_t, k_t, v_t, k_cache, v_cache, pos, K**-0.5)), used

    return at


def _step_args(kind: str, sizes: Sizes, rand: TorchRand) -> dict[str, Any]:
    """One token's inputs and the fixed state, as the step functions name them."""
    import torch

    B, H, K, V, D, N = sizes.B, sizes.H, sizes.K, sizes.V, sizes.D, sizes.N
    if kind in ("kv_state", "gated_kv_state"):
        args = {
            "q_t": rand.normal((B, H, K), K**-0.5),  # [B, H, K]
            "k_t": rand.normal((B, H, K), K**-0.5),
            "v_t": rand.normal((B, H, V)),  # [B, H, V]
            "state": rand.normal((B, H, K, V)),  # [B, H, K, V]
        }
        if kind == "gated_kv_state":
            args["gk_t"] = torch.nn.functional.logsigmoid(rand.normal((B, H, K)).add_(3.0))
        return args
    return {
        "u_t": rand.normal((B, D)),  # [B, D]
        "delta_t": rand.normal((B, D), 0.5),
        "A": rand.uniform((D, N), -1.5, -0.2).float(),  # [D, N]
        "B_t": rand.normal((B, N)),  # [B, N]
        "C_t": rand.normal((B, N)),
        "state": rand.normal((B, D, N)).float(),  # [B, D, N]
        "D": rand.normal((D,)),
        "z_t": rand.normal((B, D)),
        "delta_bias": rand.normal((D,), 0.5),
        "delta_softplus": True,
    }


def _load_step(name: str, include_interpreter: bool) -> tuple[Callable | None, str]:
    module, attr, _, _ = STEPS[name]
    if ".triton_kernels" in module:
        mode = runtime.triton_mode()
        if mode == "unavailable":
            return None, "Triton is not installed"
        if mode == "interpreter" and not include_interpreter:
            return None, "Triton runs in the CPU interpreter here: its times mean nothing"
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as err:
        return None, f"{module} does not import: {err}"
    except AttributeError:
        return None, f"{module} has no {attr}"
    return fn, ""


def run_decode(
    positions: Sequence[int],
    sizes: Sizes,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    min_run_time: float = 0.05,
    progress: bool = True,
    include_interpreter: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-token step latency and cache/state bytes at each position, for every step.

    Returns ``{"series": {name: {"status", "reason", "memory"}}, "points": [{"series",
    "position", "ms", "method", "state_bytes"}]}``.
    """
    import torch
    from tqdm.auto import tqdm

    want = getattr(torch, dtype)
    positions = sorted({int(p) for p in positions})
    out: dict[str, Any] = {"positions": positions, "series": {}, "points": []}
    builders: dict[str, Callable[[int], tuple[Callable[[], Any], int]]] = {}
    rand = TorchRand(seed, dtype=want, device=device)
    try:
        builders["softmax_attention/torch/kv_cache"] = _softmax_series(sizes, rand, positions)
        out["series"]["softmax_attention/torch/kv_cache"] = {
            "status": "timed",
            "reason": "",
            "memory": "KV cache bytes for p + 1 tokens",
        }
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        out["series"]["softmax_attention/torch/kv_cache"] = {"status": "skipped", "reason": reason}
    for name, (_, _, kind, renames) in STEPS.items():
        fn, reason = _load_step(name, include_interpreter)
        if fn is None:
            out["series"][name] = {"status": "skipped", "reason": reason}
            continue
        args = {renames.get(k, k): v for k, v in _step_args(kind, sizes, rand).items()}
        try:
            with torch.no_grad():
                fn(**args)  # a signature or shape mismatch shows here, once
        except Exception as err:
            out["series"][name] = {
                "status": "skipped",
                "reason": f"the step call failed: {type(err).__name__}: {err}",
            }
            continue
        state_bytes = _nbytes(args["state"])
        out["series"][name] = {"status": "timed", "reason": "", "memory": "fixed state bytes"}
        builders[name] = lambda pos, fn=fn, args=args, b=state_bytes: ((lambda: fn(**args)), b)
    bar = tqdm(total=len(builders) * len(positions), desc="decode", disable=not progress)
    for name, at in builders.items():
        for pos in positions:
            try:
                call, state_bytes = at(pos)
                with torch.no_grad():
                    m = measure(call, device, "torch", min_run_time=min_run_time, memory=False)
                out["points"].append(
                    {
                        "series": name,
                        "position": pos,
                        "ms": m.ms,
                        "method": m.method,
                        "state_bytes": state_bytes,
                    }
                )
            except Exception as err:
                status = "oom" if is_oom(err) else "error"
                (bar.write if progress else print)(f"decode {name} at position {pos}: {status}")
                out["points"].append(
                    {
                        "series": name,
                        "position": pos,
                        "ms": None,
                        "status": status,
                        "reason": f"{type(err).__name__}: {err}",
                    }
                )
            bar.update(1)
    bar.close()
    return out

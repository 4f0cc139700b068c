"""Peers: the public kernels each course mechanism is measured against, when installed.

Glossary: ``B`` batch, ``T`` (``L`` in mamba_ssm) sequence length, ``H`` heads, ``K`` key
and query head dim, ``V`` value head dim, ``D`` channels, ``N`` state size per channel.

Every peer draws its own inputs in its own layout, so that no transpose is timed:

* ``peer:torch_sdpa`` -- ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``
  on ``[B, H, T, K]``; compared with ``softmax_attention``.
* ``peer:fla_chunk_linear_attn`` -- fla-core ``chunk_linear_attn(normalize=False)`` on
  ``[B, T, H, K]``; compared with ``linear_attention``. CUDA only (Triton kernels).
* ``peer:fla_chunk_simple_gla`` -- fla-core ``chunk_simple_gla`` with one log-gate per head
  ``g [B, T, H]``; compared with ``gated_linear_attention`` (scalar-gate cases).
* ``peer:fla_chunk_gla`` -- fla-core ``chunk_gla`` with a log-gate per key channel
  ``g [B, T, H, K]``; compared with ``gated_linear_attention`` (vector-gate cases).
* ``peer:mamba_selective_scan`` -- mamba_ssm's ``selective_scan_fn`` on channels-first
  ``u [B, D, L]``, ``B, C [B, N, L]``; compared with ``selective_scan``. When mamba_ssm is
  absent but a locally built extension ``selective_scan_cuda`` imports, its ``fwd`` is timed
  instead (forward only) as ``peer:selective_scan_cuda``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from course_lib.registry import Sizes

# build(sizes, rand, requires_grad) -> (call, leaves): call() runs the peer once; leaves
# are the input tensors (for byte counts and gradients).
Builder = Callable[[Sizes, Any, bool], tuple[Callable[[], Any], dict[str, Any]]]


@dataclass(frozen=True)
class Peer:
    name: str
    mechanism: str  # the course mechanism it is compared with
    module: str  # must import for the peer to be found
    build: Builder
    case_hint: tuple[str, ...] = ()  # substrings of the mechanism's case names it matches
    cuda_only: bool = False
    differentiable: bool = True
    description: str = ""

    def matches_case(self, case: str) -> bool:
        if not self.case_hint or case == "default":
            return True
        return any(h in case for h in self.case_hint) and not case.startswith("non")


def _grad(tensors: dict[str, Any], requires_grad: bool, skip: tuple[str, ...] = ()) -> None:
    if requires_grad:
        for name, t in tensors.items():
            if name not in skip:
                t.requires_grad_(True)


def _build_sdpa(sizes: Sizes, rand: Any, requires_grad: bool) -> tuple[Callable, dict]:
    import torch.nn.functional as F

    B, T, H, K, V = sizes.B, sizes.T, sizes.H, sizes.K, sizes.V
    x = {
        "q": rand.normal((B, H, T, K)),  # [B, H, T, K]: SDPA's own layout, no transpose
        "k": rand.normal((B, H, T, K)),
        "v": rand.normal((B, H, T, V)),
    }
    _grad(x, requires_grad)
    return lambda: F.scaled_dot_product_attention(x["q"], x["k"], x["v"], is_causal=True), x


def _qkv(sizes: Sizes, rand: Any) -> dict[str, Any]:
    B, T, H, K, V = sizes.B, sizes.T, sizes.H, sizes.K, sizes.V
    scale = K**-0.5
    return {
        "q": rand.normal((B, T, H, K), scale),  # [B, T, H, K]
        "k": rand.normal((B, T, H, K), scale),
        "v": rand.normal((B, T, H, V)),
    }


def _log_gate(rand: Any, shape: tuple[int, ...]) -> Any:
    """log-space forget gates log sigmoid(x) in fp32 (near 1: x ~ N(3, 1))."""
    import torch
    import torch.nn.functional as F

    x = rand.normal(shape).float().add_(3.0)
    return F.logsigmoid(x).to(torch.float32).contiguous()


def _build_fla_linear(sizes: Sizes, rand: Any, requires_grad: bool) -> tuple[Callable, dict]:
    from fla.ops.linear_attn import chunk_linear_attn

    x = _qkv(sizes, rand)
    _grad(x, requires_grad)
    return lambda: chunk_linear_attn(x["q"], x["k"], x["v"], normalize=False), x


def _build_fla_simple_gla(sizes: Sizes, rand: Any, requires_grad: bool) -> tuple[Callable, dict]:
    from fla.ops.simple_gla import chunk_simple_gla

    x = _qkv(sizes, rand)
    x["g"] = _log_gate(rand, (sizes.B, sizes.T, sizes.H))  # [B, T, H]
    _grad(x, requires_grad)
    return lambda: chunk_simple_gla(x["q"], x["k"], x["v"], g=x["g"]), x


def _build_fla_gla(sizes: Sizes, rand: Any, requires_grad: bool) -> tuple[Callable, dict]:
    from fla.ops.gla import chunk_gla

    x = _qkv(sizes, rand)
    x["g"] = _log_gate(rand, (sizes.B, sizes.T, sizes.H, sizes.K))  # [B, T, H, K]
    _grad(x, requires_grad)
    return lambda: chunk_gla(x["q"], x["k"], x["v"], g=x["g"]), x


def _mamba_inputs(sizes: Sizes, rand: Any) -> dict[str, Any]:
    """Channels-first inputs, as mamba_ssm takes them: ``u, delta, z [B, D, L]``."""
    import torch

    B, L, D, N = sizes.B, sizes.T, sizes.D, sizes.N
    return {
        "u": rand.normal((B, D, L)),  # [B, D, L]
        "delta": rand.normal((B, D, L), 0.5).sub_(1.0),  # softplus(delta) ~ 0.3
        "A": -torch.exp(rand.normal((D, N), 0.5).float()),  # [D, N] fp32, negative real
        "B": rand.normal((B, N, L)),  # [B, N, L]
        "C": rand.normal((B, N, L)),
        "D": rand.normal((D,)).float(),  # [D] fp32 skip connection
        "z": rand.normal((B, D, L)),
        "delta_bias": rand.normal((D,), 0.1).float(),
    }


def _build_mamba(sizes: Sizes, rand: Any, requires_grad: bool) -> tuple[Callable, dict]:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    x = _mamba_inputs(sizes, rand)
    _grad(x, requires_grad)
    return lambda: selective_scan_fn(**x, delta_softplus=True), x


def _build_selective_scan_cuda(
    sizes: Sizes, rand: Any, requires_grad: bool
) -> tuple[Callable, dict]:
    ext = importlib.import_module("selective_scan_cuda")
    x = _mamba_inputs(sizes, rand)
    # the raw extension takes variable B and C with a group axis: [batch, groups, N, L]
    x["B"], x["C"] = x["B"].unsqueeze(1).contiguous(), x["C"].unsqueeze(1).contiguous()
    args = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    return lambda: ext.fwd(*(x[a] for a in args), True)[0], x


PEERS: tuple[Peer, ...] = (
    Peer(
        "peer:torch_sdpa",
        "softmax_attention",
        "torch",
        _build_sdpa,
        case_hint=("causal",),
        description="torch scaled_dot_product_attention(is_causal=True), [B, H, T, D]",
    ),
    Peer(
        "peer:fla_chunk_linear_attn",
        "linear_attention",
        "fla",
        _build_fla_linear,
        cuda_only=True,
        description="fla.ops.linear_attn.chunk_linear_attn(normalize=False)",
    ),
    Peer(
        "peer:fla_chunk_simple_gla",
        "gated_linear_attention",
        "fla",
        _build_fla_simple_gla,
        case_hint=("scalar", "head", "simple"),
        cuda_only=True,
        description="fla.ops.simple_gla.chunk_simple_gla, g [B, T, H]",
    ),
    Peer(
        "peer:fla_chunk_gla",
        "gated_linear_attention",
        "fla",
        _build_fla_gla,
        case_hint=("vector", "key", "channel", "diag"),
        cuda_only=True,
        description="fla.ops.gla.chunk_gla, g [B, T, H, K]",
    ),
    Peer(
        "peer:mamba_selective_scan",
        "selective_scan",
        "mamba_ssm",
        _build_mamba,
        case_hint=("full",),
        cuda_only=True,
        description="mamba_ssm selective_scan_fn, channels-first u [B, D, L]",
    ),
    Peer(
        "peer:selective_scan_cuda",
        "selective_scan",
        "selective_scan_cuda",
        _build_selective_scan_cuda,
        case_hint=("full",),
        cuda_only=True,
        differentiable=False,
        description="locally built selective_scan_cuda.fwd (used when mamba_ssm is absent)",
    ),
)


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        dist = {"fla": "fla-core", "mamba_ssm": "mamba-ssm"}.get(module, module)
        return version(dist)
    except Exception:
        return None


def find_peers(device: str, mechanisms: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Which peers are installed and whether they can run on ``device``.

    Returns ``{peer name: {"found", "timed", "reason", "mechanism", "version", ...}}``.
    """
    found: dict[str, dict[str, Any]] = {}
    have_mamba = False
    for peer in PEERS:
        info: dict[str, Any] = {
            "mechanism": peer.mechanism,
            "description": peer.description,
            "found": False,
            "timed": False,
            "version": None,
        }
        found[peer.name] = info
        if importlib.util.find_spec(peer.module) is None:
            info["reason"] = f"{peer.module} is not installed"
            continue
        if peer.name == "peer:selective_scan_cuda" and have_mamba:
            info["found"] = True
            info["reason"] = "mamba_ssm is installed; its selective_scan_fn is timed instead"
            continue
        try:
            importlib.import_module(peer.module)
        except Exception as err:  # a broken install is "not found", with the reason
            info["reason"] = f"{peer.module} does not import: {type(err).__name__}: {err}"
            continue
        info["found"] = True
        info["version"] = _version(peer.module)
        have_mamba = have_mamba or peer.module == "mamba_ssm"
        if peer.cuda_only and not device.startswith("cuda"):
            info["reason"] = "installed, but it runs on CUDA only"
        elif mechanisms is not None and peer.mechanism not in mechanisms:
            info["reason"] = f"{peer.mechanism} is not in this run"
        else:
            info["timed"] = True
            info["reason"] = ""
    return found


def peer(name: str) -> Peer:
    for p in PEERS:
        if p.name == name:
            return p
    raise ValueError(f"unknown peer {name!r}; known: {[p.name for p in PEERS]}")

"""State space duality (Mamba-2 / SSD, Dao & Gu 2024) in PyTorch: three equal forms.

Glossary of dimension letters (as in :mod:`course_lib.duality.numpy_ref`):

* ``B`` batch, ``T`` time steps, ``H`` heads, ``P`` channels per head, ``N`` state size,
* ``s`` the source time step in the attention form.

``x`` [B, T, H, P], ``dt`` [B, T, H] (>= 0), ``A`` [H] (<= 0), ``B, C`` [B, T, H, N] or
shared [B, T, N], states [B, H, N, P]. Computed in float32 (float64 stays float64),
returned in the dtype of ``x``; final states in the compute dtype. Differentiable.
"""

from __future__ import annotations

from typing import Any

import torch

from course_lib.duality.numpy_ref import _gla_chunkwise, check_ssd_inputs

Tensor = torch.Tensor


def _prepare(x, dt, A, B, C, initial_state):
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, dt, A, B, C = (a.to(cd) for a in (x, dt, A, B, C))
    Bsz, _, H, P = x.shape
    B = B[:, :, None].expand(-1, -1, H, -1) if B.dim() == 3 else B  # [B, T, H, N]
    C = C[:, :, None].expand(-1, -1, H, -1) if C.dim() == 3 else C  # [B, T, H, N]
    if initial_state is None:
        h0 = x.new_zeros(Bsz, H, B.shape[-1], P)  # [B, H, N, P]
    else:
        h0 = initial_state.to(cd)
    return x, dt, A, B, C, h0


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Recurrent SSM view (a loop over ``T``): ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T``,
    ``y_t = h_t^T C_t``. Returns ``(y [B, T, H, P], final_state [B, H, N, P] or None)``."""
    check_ssd_inputs(**locals())
    dtype = x.dtype
    x, dt, A, B, C, h = _prepare(x, dt, A, B, C, initial_state)
    decay = torch.exp(dt * A)  # [B, T, H]
    ys = []
    # unbind(1), not [:, t]: an index's backward writes a gradient of the whole tensor
    steps = zip(*(y.unbind(1) for y in (dt, B, x, decay, C)), strict=True)
    for dt_t, B_t, x_t, decay_t, C_t in steps:
        write = torch.einsum("bh,bhn,bhp->bhnp", dt_t, B_t, x_t)
        h = decay_t[:, :, None, None] * h + write  # [B, H, N, P]
        ys.append(torch.einsum("bhnp,bhn->bhp", h, C_t))
    y = torch.stack(ys, 1) if ys else x.new_zeros(x.shape)  # [B, T, H, P]
    return y.to(dtype), (h if output_final_state else None)


def ssd_quadratic(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Attention view: ``Y = (C B^T ⊙ L) (dt x)``, ``L[t, s] = exp(G_t - G_s)`` for ``s <= t``."""
    check_ssd_inputs(**locals())
    dtype = x.dtype
    x, dt, A, B, C, h0 = _prepare(x, dt, A, B, C, initial_state)
    T = x.shape[1]
    G = torch.cumsum(dt * A, dim=1)  # [B, T, H]
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, :, :, None]
    diff = G[:, :, None, :] - G[:, None, :, :]  # [B, t, s, H]
    # mask before exp: above the diagonal the exponent is positive and could overflow
    L = torch.exp(diff.masked_fill(~causal, float("-inf")))  # [B, t, s, H]
    scores = torch.einsum("bthn,bshn->btsh", C, B) * L  # [B, t, s, H]
    y = torch.einsum("btsh,bsh,bshp->bthp", scores, dt, x)  # [B, T, H, P]
    y = y + torch.exp(G)[..., None] * torch.einsum("bthn,bhnp->bthp", C, h0)
    if not output_final_state:
        return y.to(dtype), None
    to_end = torch.exp(G[:, -1:] - G) * dt  # [B, T, H]
    final = torch.einsum("bsh,bshn,bshp->bhnp", to_end, B, x)  # [B, H, N, P]
    return y.to(dtype), final + torch.exp(G[:, -1])[..., None, None] * h0


def gla_scalar_gate_masked(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Stand-in for chapter 04 (scale 1, scalar log gate ``g`` [B, T, H]), masked form."""
    G = torch.cumsum(g, dim=1)  # [B, T, H]
    T = q.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()[None, :, :, None]
    L = torch.exp((G[:, :, None] - G[:, None]).masked_fill(~causal, float("-inf")))
    o = torch.einsum("bthk,bshk,btsh,bshv->bthv", q, k, L, v)  # [B, T, H, V]
    if initial_state is None:
        initial_state = q.new_zeros(k.shape[0], k.shape[2], k.shape[3], v.shape[3])
    o = o + torch.exp(G)[..., None] * torch.einsum("bthk,bhkv->bthv", q, initial_state)
    S = torch.einsum("bsh,bshk,bshv->bhkv", torch.exp(G[:, -1:] - G), k, v)  # [B, H, K, V]
    return o, S + torch.exp(G[:, -1])[..., None, None] * initial_state


def ssd_as_gla(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """Gated linear attention with ``q = C``, ``k = B``, ``v = dt x``, ``gk = dt A``,
    ``scale = 1`` (chapter 04's ``gated_linear_attention_chunkwise``, torch version)."""
    check_ssd_inputs(**{k: v for k, v in locals().items() if k != "chunk_size"})
    dtype = x.dtype
    x, dt, A, B, C, h0 = _prepare(x, dt, A, B, C, initial_state)
    q, k, v, g = C, B.contiguous(), dt[..., None] * x, dt * A  # per-head q, k; [B, T, H]
    gla: Any = _gla_chunkwise("torch_impl")
    if gla is None:
        y, S = gla_scalar_gate_masked(q.contiguous(), k, v, g, h0)
    else:
        y, S = gla(q.contiguous(), k, v, gk=g, scale=1.0, initial_state=h0,
                   output_final_state=True, chunk_size=chunk_size)  # fmt: skip
    return y.to(dtype), (S if output_final_state else None)

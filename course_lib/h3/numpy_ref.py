"""H3, "Hungry Hungry Hippos" (Fu et al. 2023): the float64 reference (chapter 06).

Glossary of letters:

    B  batch size
    T  sequence length
    D  model width (d_model), channels of x, q, k, v
    H  number of heads
    K  head size, K = D / H (q, k and v are split into H heads of K channels)
    N  state size of the diagonal SSM (one SSM per head)
    W  length of the shift SSM's filter (its state size)

The layer (Fu et al. 2023, section 3):

    q = x Wq,  k = x Wk,  v = x Wv                                    # [B, T, D]
    kbar = SSM_shift(k)                # per channel: a short learned causal filter
    per head h:  S_t = Abar_h S_{t-1} + Bbar_h kbar_t v_t^T            # [N, K, K]
                 Z_t = C_h S_t + D_h kbar_t v_t^T                      # [K, K]
                 o_t = Z_t^T q_t                                       # [K]
    y = concat_h(o) Wo                                                # [B, T, D]

(``2 Re(C_h S_t)`` when the diagonal SSM is complex, as in :mod:`course_lib.ssm`.) The
diagonal SSM is shared by the K x K entries of a head, as in the authors' code: one SSM per
head, applied to every entry of the outer product ``kbar_t v_t^T``.

Read it as linear attention, ``o_t = sum_{s<=t} (q_t . kbar_s) w_h(t - s) v_s``: the diagonal
SSM supplies a learned decay ``w_h(j) = C_h Abar_h^j Bbar_h`` (plus ``D_h`` at j = 0) where
linear attention has 1 and RetNet gamma^j; the shift SSM mixes each key with its W - 1
predecessors, so that a token can be matched by what preceded it (the "induction head"
ability the paper tests).

The shift SSM is an SSM whose A is the W x W shift matrix (ones below the diagonal), B = e_1
and C = the filter: its state is the buffer of the last W inputs,
``h_t = (x_t, x_{t-1}, ..., x_{t-W+1})``, and ``C A^j B = C_j``, so its convolution kernel
is the filter itself, zero after W taps. Its first tap plays the part of a skip term.

Forms: ``recurrent`` (decode-style, O(T N K^2) per head and a fixed-size state) and ``fft``
(the diagonal SSM as one long convolution, O(T log T)). No Triton kernel: as for the LTI
SSM, both SSMs are time-invariant filters and the FFT convolution already runs in
O(T log T) (Fu et al. 2023 write FlashConv for the GPU; PyTorch's FFT is what we use).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib import checks
from course_lib.ssm import numpy_ref as ssm

FORMS = ("fft", "recurrent")
PARAM_NAMES = ("Wq", "Wk", "Wv", "Wo", "shift_kernel", "A", "B", "C", "dt", "D")

# --------------------------------------------------------------------------------------
# checks, shared with torch_impl
# --------------------------------------------------------------------------------------


def check_params(params: Any) -> None:
    """``params`` must be a mapping with exactly the keys of :data:`PARAM_NAMES`."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    missing = [k for k in PARAM_NAMES if k not in params]
    extra = sorted(set(params) - set(PARAM_NAMES))
    if missing or extra:
        raise ValueError(
            f"params must have the keys {PARAM_NAMES}; missing {missing}, unexpected {extra}"
        )


def check_h3_inputs(
    x: Any,
    Wq: Any,
    Wk: Any,
    Wv: Any,
    Wo: Any,
    shift_kernel: Any,
    A: Any,
    B: Any,
    C: Any,
    dt: Any,
    D: Any,
    num_heads: int,
    x_spec: str = "B T D",
) -> dict[str, int]:
    """Shapes of every input of the layer; ``x_spec`` is ``"B D"`` for one decoding step."""
    H = checks.check_positive_int("num_heads", num_heads)
    dims = checks.check_shapes(x=(x, x_spec))
    dims = checks.check_shapes(
        dims, Wq=(Wq, "D D"), Wk=(Wk, "D D"), Wv=(Wv, "D D"), Wo=(Wo, "D D"),
        shift_kernel=(shift_kernel, "D W"),
    )  # fmt: skip
    if dims["D"] % H:
        raise ValueError(f"num_heads={H} must divide the model width D={dims['D']}")
    checks.check_array("A", A, allow_complex=True)
    if len(A.shape) != 2:
        raise ValueError(
            f"A (H3's diagonal SSM) must have 2 dimensions [H, N], got shape {tuple(A.shape)}"
        )
    if A.shape[0] != H:
        raise ValueError(
            f"A must have one row per head, shape [H, N] with H = num_heads = {H}, "
            f"got shape {tuple(A.shape)}"
        )
    # the SSM's channel letter D is the head count here
    ssm.check_system(A, B, dt, C, dims={"D": H})
    checks.check_shapes({"D": H}, D=(D, "D"))
    return {**dims, "H": H, "K": dims["D"] // H, "N": int(A.shape[1])}


# --------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------


def init_h3_params(
    d_model: int, num_heads: int, state_size: int, seed: int = 0, shift_size: int | None = None
) -> dict[str, np.ndarray]:
    """Random H3 parameters, float64 (complex128 for the diagonal SSM).

    Projections ``W* ~ N(0, 1/d_model)``; shift filter ``[D, W]`` with ``W = shift_size``
    (default ``state_size``, as the paper gives both SSMs the same state size) and
    ``N(0, 1/W)`` taps; diagonal SSM per head with S4D-Lin ``A`` [H, N], ``B = 1``, complex
    normal ``C``, ``dt`` log-uniform in [1e-3, 1e-1] and ``D ~ N(0, 1)`` (Gu et al. 2022).
    """
    d_model = checks.check_positive_int("d_model", d_model)
    H = checks.check_positive_int("num_heads", num_heads)
    N = checks.check_positive_int("state_size", state_size)
    W = N if shift_size is None else checks.check_positive_int("shift_size", shift_size)
    if d_model % H:
        raise ValueError(f"num_heads={H} must divide d_model={d_model}")
    rng = np.random.default_rng(seed)
    proj = {
        n: rng.standard_normal((d_model, d_model)) / np.sqrt(d_model)
        for n in ("Wq", "Wk", "Wv", "Wo")
    }
    C = (rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))) * np.sqrt(0.5)
    return {
        **proj,
        "shift_kernel": rng.standard_normal((d_model, W)) / np.sqrt(W),
        "A": ssm.s4d_lin_init(H, N),
        "B": np.ones((H, N), dtype=np.complex128),
        "C": C,
        "dt": np.exp(ssm.log_dt_init(H, 1e-3, 1e-1, seed=seed + 1)),
        "D": rng.standard_normal(H),
    }


# --------------------------------------------------------------------------------------
# the shift SSM
# --------------------------------------------------------------------------------------


def shift_ssm_matrices(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shift SSM as discrete matrices: ``Abar`` [D, W, W] shift, ``Bbar = e_1`` [D, W], C.

    ``C Abar^j Bbar = kernel[:, j]`` for j < W and 0 after: its kernel is the filter.
    """
    checks.check_shapes(kernel=(kernel, "D W"))
    Dn, W = kernel.shape
    Abar = np.tile(np.eye(W, k=-1), (Dn, 1, 1))  # [D, W, W], (A h)_i = h_{i-1}
    Bbar = np.zeros((Dn, W))
    Bbar[:, 0] = 1.0
    return Abar, Bbar, np.asarray(kernel, dtype=np.float64)


def shift_ssm(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolution form: ``y_t = sum_{j<W} kernel[:, j] x_{t-j}``. x [B, T, D] -> [B, T, D]."""
    dims = checks.check_shapes(x=(x, "B T D"))
    checks.check_shapes(dims, kernel=(kernel, "D W"))
    return ssm.causal_conv(x, kernel)


def shift_ssm_recurrent(
    x: np.ndarray,
    kernel: np.ndarray,
    initial_state: np.ndarray | None = None,
    output_final_state: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Recurrent form: ``h_t = S h_{t-1} + e_1 x_t`` (S shifts down), ``y_t = kernel . h_t``.

    The state ``h [B, D, W]`` holds ``(x_t, x_{t-1}, ..., x_{t-W+1})``. Returns (y, state).
    """
    dims = checks.check_shapes(x=(x, "B T D"))
    dims = checks.check_shapes(dims, kernel=(kernel, "D W"), initial_state=(initial_state, "B D W"))
    Bsz, T, Dn = x.shape
    h = np.zeros((Bsz, Dn, kernel.shape[1])) if initial_state is None else initial_state
    y = np.empty((Bsz, T, Dn))
    for t in range(T):
        h = np.concatenate([x[:, t, :, None], h[..., :-1]], axis=-1)  # [B, D, W]
        y[:, t] = np.einsum("dw,bdw->bd", kernel, h)
    return y, (h if output_final_state else None)


# --------------------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------------------


def _heads(a: np.ndarray, H: int) -> np.ndarray:
    """[..., D] -> [..., H, K]."""
    return a.reshape(*a.shape[:-1], H, a.shape[-1] // H)


def _diag_step(Abar, Bbar, C, Dskip, S, kv, complex_):
    """One step of the per-head diagonal SSM on the outer products; S [B, H, N, K, K]."""
    S = Abar[None, :, :, None, None] * S + Bbar[None, :, :, None, None] * kv[:, :, None]
    Z = np.einsum("hn,bhnde->bhde", C, S)  # [B, H, K, K]
    Z = (2 * Z.real if complex_ else Z) + Dskip[None, :, None, None] * kv
    return S, Z


def _prepare(x, Wq, Wk, Wv, Wo, shift_kernel, A, B, C, dt, D, num_heads):
    check_h3_inputs(x, Wq, Wk, Wv, Wo, shift_kernel, A, B, C, dt, D, num_heads)
    Abar, Bbar = ssm.discretize_zoh(A, B, dt)
    C = np.asarray(C, dtype=Abar.dtype)
    return Abar, Bbar, C, np.asarray(D, dtype=np.float64)


def h3_recurrent(
    x: np.ndarray,
    Wq: np.ndarray,
    Wk: np.ndarray,
    Wv: np.ndarray,
    Wo: np.ndarray,
    shift_kernel: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    dt: np.ndarray,
    D: np.ndarray,
    num_heads: int,
) -> np.ndarray:
    """The H3 layer, one token at a time (see the module docstring). x [B, T, D] -> [B, T, D].

    Wq, Wk, Wv, Wo [D, D]; shift_kernel [D, W]; A, B, C [H, N] (A diagonal, ZOH); dt, D [H].
    """
    Abar, Bbar, C, Dskip = _prepare(x, Wq, Wk, Wv, Wo, shift_kernel, A, B, C, dt, D, num_heads)
    H = num_heads
    q, k, v = x @ Wq, x @ Wk, x @ Wv  # [B, T, D]
    kbar, _ = shift_ssm_recurrent(k, shift_kernel)
    q, kbar, v = _heads(q, H), _heads(kbar, H), _heads(v, H)  # [B, T, H, K]
    Bsz, T, _, Kh = q.shape
    S = np.zeros((Bsz, H, Abar.shape[1], Kh, Kh), dtype=Abar.dtype)
    o = np.empty_like(q)
    for t in range(T):
        kv = np.einsum("bhd,bhe->bhde", kbar[:, t], v[:, t])  # [B, H, K, K]
        S, Z = _diag_step(Abar, Bbar, C, Dskip, S, kv, np.iscomplexobj(Abar))
        o[:, t] = np.einsum("bhd,bhde->bhe", q[:, t], Z)  # [B, H, K]
    return o.reshape(Bsz, T, -1) @ Wo


def h3_fft(
    x: np.ndarray,
    Wq: np.ndarray,
    Wk: np.ndarray,
    Wv: np.ndarray,
    Wo: np.ndarray,
    shift_kernel: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    dt: np.ndarray,
    D: np.ndarray,
    num_heads: int,
) -> np.ndarray:
    """The H3 layer with both SSMs as convolutions (the diagonal one through the FFT)."""
    Abar, Bbar, C, Dskip = _prepare(x, Wq, Wk, Wv, Wo, shift_kernel, A, B, C, dt, D, num_heads)
    H = num_heads
    q, k, v = x @ Wq, x @ Wk, x @ Wv  # [B, T, D]
    kbar = shift_ssm(k, shift_kernel)
    q, kbar, v = _heads(q, H), _heads(kbar, H), _heads(v, H)  # [B, T, H, K]
    Bsz, T, _, Kh = q.shape
    kv = np.einsum("bthd,bthe->bthde", kbar, v).reshape(Bsz, T, H * Kh * Kh)  # channels (h d e)
    kern = np.repeat(ssm.ssm_kernel(Abar, Bbar, C, T), Kh * Kh, axis=0)  # [H*K*K, T]
    Z = ssm.fft_conv(kv, kern) + np.repeat(Dskip, Kh * Kh) * kv
    Z = Z.reshape(Bsz, T, H, Kh, Kh)
    o = np.einsum("bthd,bthde->bthe", q, Z)  # [B, T, H, K]
    return o.reshape(Bsz, T, -1) @ Wo


def h3_forward(
    x: np.ndarray, params: dict[str, np.ndarray], num_heads: int, form: str = "fft"
) -> np.ndarray:
    """The H3 layer with its parameters in a dict (:func:`init_h3_params`); form fft|recurrent."""
    checks.check_choice("form", form, FORMS)
    check_params(params)
    fn = h3_fft if form == "fft" else h3_recurrent
    return fn(x, **params, num_heads=num_heads)


def h3_init_state(batch_size: int, params: dict[str, np.ndarray], num_heads: int) -> dict:
    """Zero decoding state: ``shift`` [B, D, W] (the last W keys) and ``ssm`` [B, H, N, K, K]."""
    check_params(params)
    Bsz = checks.check_positive_int("batch_size", batch_size)
    H = checks.check_positive_int("num_heads", num_heads)
    Dm, W = params["shift_kernel"].shape
    dtype = np.complex128 if np.iscomplexobj(params["A"]) else np.float64
    Kh = Dm // H
    return {
        "shift": np.zeros((Bsz, Dm, W)),
        "ssm": np.zeros((Bsz, H, params["A"].shape[1], Kh, Kh), dtype=dtype),
    }


def h3_step(
    x_t: np.ndarray, params: dict[str, np.ndarray], state: dict | None, num_heads: int
) -> tuple[np.ndarray, dict]:
    """Decode one token: x_t [B, D] -> (y_t [B, D], new state); state None means zeros.

    The same arithmetic as one iteration of :func:`h3_recurrent`, with the shift buffer
    carried in the state instead of recomputed.
    """
    check_params(params)
    p = params
    check_h3_inputs(x_t, *(p[n] for n in PARAM_NAMES), num_heads, x_spec="B D")
    if state is None:
        state = h3_init_state(x_t.shape[0], params, num_heads)
    _check_state(state, x_t.shape[0], params, num_heads)
    H = num_heads
    Abar, Bbar = ssm.discretize_zoh(p["A"], p["B"], p["dt"])
    C = np.asarray(p["C"], dtype=Abar.dtype)
    q, k, v = x_t @ p["Wq"], x_t @ p["Wk"], x_t @ p["Wv"]  # [B, D]
    buf = np.concatenate([k[..., None], state["shift"][..., :-1]], axis=-1)  # [B, D, W]
    kbar = np.einsum("dw,bdw->bd", p["shift_kernel"], buf)
    kv = np.einsum("bhd,bhe->bhde", _heads(kbar, H), _heads(v, H))  # [B, H, K, K]
    S, Z = _diag_step(Abar, Bbar, C, p["D"], state["ssm"], kv, np.iscomplexobj(Abar))
    o = np.einsum("bhd,bhde->bhe", _heads(q, H), Z)  # [B, H, K]
    return o.reshape(x_t.shape[0], -1) @ p["Wo"], {"shift": buf, "ssm": S}


def _check_state(state: Any, batch: int, params: dict, num_heads: int) -> None:
    if not isinstance(state, dict) or set(state) != {"shift", "ssm"}:
        raise ValueError("state must be a dict with keys 'shift' and 'ssm' (see h3_init_state)")
    Dm, W = params["shift_kernel"].shape
    Kh = Dm // num_heads
    dims = {"B": batch, "D": Dm, "W": W, "H": num_heads, "N": int(params["A"].shape[1]), "K": Kh}
    checks.check_shapes(dims, **{"state['shift']": (state["shift"], "B D W")})
    checks.check_shapes(dims, allow_complex=True, **{"state['ssm']": (state["ssm"], "B H N K K")})

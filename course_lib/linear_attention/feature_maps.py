"""Feature maps phi for linear attention, for numpy arrays and torch tensors alike.

Glossary of dimension letters
-----------------------------
d  input dimension of a query or key (the head dimension ``K`` of the attention modules)
m  number of random features (the feature dimension after :func:`positive_random_features`)
n  number of query/key vectors in :func:`random_feature_error`

Linear attention (Katharopoulos et al. 2020) replaces the softmax similarity
``exp(q . k)`` with a kernel ``phi(q) . phi(k)``; by associativity the sum over keys can
then be done once, ``phi(Q) (phi(K)^T V)``, in O(N d^2) instead of O(N^2 d).

Deterministic maps, :func:`feature_map` (same size out as in)::

    identity   phi(x) = x
    elu1       phi(x) = elu(x) + 1 = x + 1 (x > 0), exp(x) (x <= 0)     always > 0
    relu       phi(x) = max(x, 0)                                         >= 0

Positive random features (FAVOR+, Choromanski et al. 2021) approximate the softmax kernel
itself. For ``w ~ N(0, I_d)``, ``E[exp(w . x - |x|^2 / 2) exp(w . y - |y|^2 / 2)] = exp(x . y)``,
so with ``m`` draws stacked in ``W [m, d]``::

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)          phi(x) . phi(y) ~= exp(x . y)

Every term is positive (unlike sin/cos random Fourier features), so the normaliser
``phi(q) . sum_s phi(k_s)`` never crosses zero. Orthogonal rows (blocks of ``d`` orthogonal
directions with Gaussian lengths) lower the variance further. The Monte-Carlo error falls
like ``1 / sqrt(m)``; :func:`random_feature_error` measures it for the chapter 02 plot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from course_lib import checks

FEATURE_MAPS = ("identity", "elu1", "relu")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def check_feature_map(feature_map: Any) -> None:
    """``None`` (identity), one of :data:`FEATURE_MAPS`, or a callable ``phi(x)``."""
    if feature_map is None or callable(feature_map):
        return
    if not isinstance(feature_map, str):
        raise TypeError(
            f"feature_map must be None, one of {FEATURE_MAPS} or a callable, "
            f"got {type(feature_map).__name__}"
        )
    checks.check_choice("feature_map", feature_map, FEATURE_MAPS)


def feature_map(x: Any, kind: str) -> Any:
    """Apply the named feature map elementwise; numpy in, numpy out; torch in, torch out."""
    checks.check_choice("feature_map", kind, FEATURE_MAPS)
    if kind == "identity":
        return x
    if _is_torch(x):
        import torch.nn.functional as F

        return F.elu(x) + 1 if kind == "elu1" else F.relu(x)
    if kind == "elu1":
        return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))
    return np.maximum(x, 0.0)


def apply_feature_map(x: Any, fm: str | Callable[[Any], Any] | None) -> Any:
    """``phi(x)`` for ``fm`` = None (identity), a name in :data:`FEATURE_MAPS` or a callable."""
    check_feature_map(fm)
    if fm is None:
        return x
    if isinstance(fm, str):
        return feature_map(x, fm)
    return fm(x)


def random_feature_matrix(d: int, m: int, seed: int = 0, orthogonal: bool = False) -> np.ndarray:
    """Projection ``W [m, d]`` whose rows are standard normal draws (seeded).

    With ``orthogonal=True`` the rows come in blocks of ``d`` mutually orthogonal directions
    (the Q factor of a Gaussian matrix), each row rescaled to the length of an independent
    ``N(0, I_d)`` vector, so every row still has the Gaussian marginal (Choromanski et al.
    2021, orthogonal random features).
    """
    d = checks.check_positive_int("d", d)
    m = checks.check_positive_int("m", m)
    rng = np.random.default_rng(seed)
    if not orthogonal:
        return rng.standard_normal((m, d))  # [m, d]
    blocks = []
    for _ in range(-(-m // d)):
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        blocks.append((q * np.sign(np.diag(r))).T)  # rows orthonormal, [d, d]
    directions = np.concatenate(blocks)[:m]  # [m, d]
    lengths = np.linalg.norm(rng.standard_normal((m, d)), axis=1)  # chi_d, [m]
    return directions * lengths[:, None]


def positive_random_features(x: Any, W: Any) -> Any:
    """``phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)``: ``x [..., d]``, ``W [m, d]`` -> ``[..., m]``.

    Torch tensors are computed in at least float32 and returned in ``x``'s dtype.
    """
    checks.check_array("x", x)
    checks.check_array("W", W)
    if W.ndim != 2 or W.shape[1] != x.shape[-1]:
        raise ValueError(
            f"W must have shape [m, d] with d = x.shape[-1] = {x.shape[-1]}, got {tuple(W.shape)}"
        )
    m = W.shape[0]
    if _is_torch(x):
        import torch

        acc = torch.promote_types(x.dtype, torch.float32)
        Wt = torch.as_tensor(W, device=x.device).to(acc)
        xa = x.to(acc)
        proj = torch.einsum("...d,md->...m", xa, Wt)  # [..., m]
        sq = 0.5 * (xa * xa).sum(-1, keepdim=True)  # [..., 1]
        return (torch.exp(proj - sq) * m**-0.5).to(x.dtype)
    x = np.asarray(x, dtype=np.float64)
    proj = np.einsum("...d,md->...m", x, np.asarray(W, dtype=np.float64))  # [..., m]
    return np.exp(proj - 0.5 * np.sum(x * x, axis=-1, keepdims=True)) / np.sqrt(m)


def random_feature_error(
    m_values: Sequence[int],
    d: int = 16,
    n: int = 32,
    trials: int = 4,
    seed: int = 0,
    orthogonal: bool = False,
    norm: float = 1.0,
) -> np.ndarray:
    """Mean relative error of ``phi(Q) phi(K)^T`` against ``exp(Q K^T)``, one per ``m``.

    Draws ``Q, K [n, d]`` with entries ``N(0, norm^2 / d)`` (vectors of length about
    ``norm``) and, for each ``m``, ``trials`` independent ``W [m, d]``. The error of one
    trial is ``||phi(Q) phi(K)^T - exp(Q K^T)||_F / ||exp(Q K^T)||_F``. Returns
    ``[len(m_values)]``.

    The relative variance of one feature's estimate is ``exp(|q + k|^2) - 1`` (Choromanski
    et al. 2021), so the error also grows quickly with ``norm``: at ``norm = 1`` a few
    thousand features give a few percent, at ``norm = 2`` (``|q|^2 = 4``) far more are needed.
    """
    checks.check_positive_float("norm", norm)
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((n, d)) * norm * d**-0.5  # [n, d]
    Kx = rng.standard_normal((n, d)) * norm * d**-0.5  # [n, d]
    exact = np.exp(Q @ Kx.T)  # [n, n]
    errors = []
    for i, m in enumerate(m_values):
        errs = []
        for t in range(trials):
            W = random_feature_matrix(d, m, seed=seed + 1 + 1000 * i + t, orthogonal=orthogonal)
            approx = positive_random_features(Q, W) @ positive_random_features(Kx, W).T
            errs.append(np.linalg.norm(approx - exact) / np.linalg.norm(exact))
        errors.append(float(np.mean(errs)))
    return np.asarray(errors)

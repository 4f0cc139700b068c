"""Feature maps: elu+1 / relu / identity, and positive random features approximating exp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.linear_attention import numpy_ref, torch_impl
from course_lib.linear_attention.feature_maps import (
    FEATURE_MAPS,
    feature_map,
    positive_random_features,
    random_feature_error,
    random_feature_matrix,
)
from course_lib.testing import TOLERANCE, rel_error


@pytest.mark.parametrize("kind", FEATURE_MAPS)
def test_feature_maps_numpy_equals_torch(kind) -> None:
    x = np.random.default_rng(0).standard_normal((4, 7)) * 3
    got = feature_map(torch.from_numpy(x), kind)
    assert rel_error(got, feature_map(x, kind)) <= TOLERANCE["float64"]


def test_feature_map_values() -> None:
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(feature_map(x, "elu1"), [np.exp(-2), np.exp(-0.5), 1, 1.5, 3])
    np.testing.assert_allclose(feature_map(x, "relu"), [0, 0, 0, 0.5, 2])
    assert feature_map(x, "identity") is x
    assert (feature_map(np.linspace(-30, 30, 101), "elu1") > 0).all()


def test_random_feature_matrix_is_seeded_and_orthogonal() -> None:
    W1 = random_feature_matrix(8, 20, seed=3)
    assert W1.shape == (20, 8)
    np.testing.assert_array_equal(W1, random_feature_matrix(8, 20, seed=3))
    assert not np.array_equal(W1, random_feature_matrix(8, 20, seed=4))
    W = random_feature_matrix(8, 20, seed=3, orthogonal=True)
    assert W.shape == (20, 8)
    for block in (W[0:8], W[8:16]):  # each block of d rows is mutually orthogonal
        gram = block @ block.T
        off = gram - np.diag(np.diag(gram))
        assert np.abs(off).max() < 1e-10 * np.abs(np.diag(gram)).max()


def test_positive_random_features_positive_and_backends_agree() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 6))
    W = random_feature_matrix(6, 32, seed=0)
    phi = positive_random_features(x, W)
    assert phi.shape == (3, 5, 32)
    assert (phi > 0).all()
    got = positive_random_features(torch.from_numpy(x), W)
    assert rel_error(got, phi) <= TOLERANCE["float64"]
    with pytest.raises(ValueError, match="W must have shape"):
        positive_random_features(x, W[:, :4])


@pytest.mark.parametrize("orthogonal", [False, True])
def test_random_feature_error_shrinks_with_m(orthogonal) -> None:
    """Monte-Carlo error of phi(q).phi(k) against exp(q.k) falls like 1/sqrt(m).

    Vectors of length about 1 (``norm=1``). From m = 16 to m = 4096 the rate predicts a 16x
    smaller error; we ask for 4x, and for a relative error under 10% at m = 4096 (the
    rate from about 0.5 at m = 16 predicts about 0.03). Fixed seeds make the numbers
    deterministic; the bounds leave room for the Monte-Carlo spread of other seeds.
    """
    m_values = [16, 256, 4096]
    errors = random_feature_error(m_values, d=16, n=32, trials=4, seed=0, orthogonal=orthogonal)
    assert errors[0] > 0.2  # few features really are inaccurate
    assert errors.shape == (3,)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 4
    assert errors[2] < 0.1


def test_random_features_give_softmax_like_attention() -> None:
    """Non-causal linear attention with random features ~ non-causal softmax attention.

    With |q|, |k| ~ 1 the kernel estimate at m = 4096 has a few percent error (see the test
    above); the attention output, a ratio of two such estimates, is allowed 15%, and must
    be at least twice as accurate as with m = 64.
    """
    rng = np.random.default_rng(2)
    B, T, H, K, V = 1, 16, 1, 8, 4
    q, k = (rng.standard_normal((B, T, H, K)) * K**-0.5 for _ in range(2))  # |q| ~ 1
    v = rng.standard_normal((B, T, H, V))
    scores = np.exp(np.einsum("bthk,bshk->bhts", q, k))  # [B, H, T, T]
    exact = np.einsum("bhts,bshv->bthv", scores / scores.sum(-1, keepdims=True), v)
    errors = {}
    for m in (64, 4096):
        W = random_feature_matrix(K, m, seed=5, orthogonal=True)

        def phi(x, W=W):
            return positive_random_features(x, W)

        approx = numpy_ref.linear_attention_noncausal(q, k, v, feature_map=phi, normalize=True)
        errors[m] = rel_error(approx, exact)
    assert errors[4096] < 0.15
    assert errors[4096] < errors[64] / 2
    # the torch version takes the same callable feature map
    got = torch_impl.linear_attention_noncausal(
        *(torch.from_numpy(a) for a in (q, k, v)), feature_map=phi, normalize=True
    )
    assert rel_error(got, approx) <= TOLERANCE["float64"]

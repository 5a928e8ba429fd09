"""Properties of CKA (clear_lab.cka): identity, symmetry, invariances, feature form == Gram form, the debiased
estimator's behaviour on independent data, RBF and the guards."""

import numpy as np
import pytest
import torch

from clear_lab.cka import (
    center_gram,
    cka_from_grams,
    gram_linear,
    gram_rbf,
    linear_cka,
    linear_moments,
    rbf_cka,
)


def related(n=80, d1=10, d2=7, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 3))
    X = Z @ rng.standard_normal((3, d1)) + 0.5 * rng.standard_normal((n, d1)) + 2.0
    Y = Z @ rng.standard_normal((3, d2)) + 0.5 * rng.standard_normal((n, d2))
    return X, Y


@pytest.mark.parametrize("debiased", [False, True])
def test_self_similarity_is_one(debiased):
    X, _ = related()
    assert linear_cka(X, X, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, X.copy(), debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    assert rbf_cka(X, X, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_symmetric_and_invariant(debiased):
    X, Y = related()
    base = linear_cka(X, Y, debiased=debiased)
    assert 0.3 < base < 1.0
    assert linear_cka(Y, X, debiased=debiased) == pytest.approx(base, abs=1e-12)
    Q = np.linalg.qr(np.random.default_rng(1).standard_normal((10, 10)))[0]
    assert linear_cka(X @ Q, Y, debiased=debiased) == pytest.approx(base, abs=1e-12)
    assert linear_cka(3.7 * X, 0.2 * Y, debiased=debiased) == pytest.approx(base, abs=1e-12)
    assert linear_cka(X + 100.0, Y, debiased=debiased) == pytest.approx(base, abs=1e-9)
    r = rbf_cka(X, Y, debiased=debiased)
    assert rbf_cka(Y, X, debiased=debiased) == pytest.approx(r, abs=1e-12)
    assert rbf_cka(X @ Q, 2.0 * Y, debiased=debiased) == pytest.approx(r, abs=1e-10)  # bandwidth scales


@pytest.mark.parametrize("debiased", [False, True])
def test_feature_form_equals_gram_form(debiased):
    X, Y = related(n=60)
    feature = linear_cka(X, Y, debiased=debiased)
    gram = cka_from_grams(gram_linear(X), gram_linear(Y), debiased=debiased)
    assert feature == pytest.approx(gram, abs=1e-10)


def test_center_gram_biased_is_HKH_and_unbiased_is_U_centring():
    X, _ = related(n=12)
    K = gram_linear(X)
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    np.testing.assert_allclose(center_gram(K), H @ K @ H, atol=1e-9)
    U = center_gram(K, unbiased=True)
    np.testing.assert_allclose(np.diag(U), 0.0)
    np.testing.assert_allclose(U.sum(0), 0.0, atol=1e-9)  # U-centred matrices have zero row sums
    K_before = K.copy()
    center_gram(K, unbiased=True)
    assert np.array_equal(K, K_before)  # input untouched
    with pytest.raises(ValueError, match="symmetric"):
        center_gram(K + np.triu(np.ones_like(K)))


def test_debiased_removes_small_sample_bias():
    rng = np.random.default_rng(0)
    biased, debiased = [], []
    for _ in range(20):
        X, Y = rng.standard_normal((20, 50)), rng.standard_normal((20, 40))
        biased.append(linear_cka(X, Y))
        debiased.append(linear_cka(X, Y, debiased=True))
    assert np.mean(biased) > 0.5
    assert abs(np.mean(debiased)) < 0.05
    assert min(debiased) < 0  # the unbiased estimator can be negative: computed anyway


def test_torch_input_matches_numpy():
    X, Y = related()
    assert linear_cka(torch.from_numpy(X).float(), torch.from_numpy(Y)) == pytest.approx(
        linear_cka(X.astype(np.float32), Y), abs=1e-12)


def test_moments_chunking():
    X, Y = related(n=5000, d1=3, d2=2)
    m = linear_moments(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    np.testing.assert_allclose(m.xty, Xc.T @ Yc, rtol=1e-10)
    np.testing.assert_allclose(m.row_sq_x, (Xc**2).sum(1), rtol=1e-10)


def test_gram_rbf_bandwidth():
    X, _ = related(n=30)
    K = gram_rbf(X, threshold=0.5)
    np.testing.assert_allclose(np.diag(K), 1.0)
    D = ((X[:, None] - X[None]) ** 2).sum(-1)
    sigma_sq = 0.25 * np.median(D[D > 0])
    np.testing.assert_allclose(K, np.exp(-D / (2 * sigma_sq)), atol=1e-10)


def test_guards():
    X, Y = related()
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert np.isnan(linear_cka(np.ones((10, 3)), Y[:10]))
    with pytest.raises(ValueError, match="n >= 4"):
        linear_cka(X[:3], Y[:3], debiased=True)
    with pytest.raises(ValueError, match="n >= 4"):
        cka_from_grams(gram_linear(X[:3]), gram_linear(Y[:3]), debiased=True)
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(X, Y[:10])
    big = np.zeros((10_001, 1))
    with pytest.raises(ValueError, match="Subsample"):
        rbf_cka(big, big)
    with pytest.raises(ValueError, match="Subsample"):
        gram_linear(big)

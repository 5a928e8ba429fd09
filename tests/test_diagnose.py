"""clear_lab.diagnose: principal angles, the redundancy report on a planted set, its shortcuts (projected
moments and spectrum) against direct computation, and JSON-serialisability."""

import json

import numpy as np
import pytest

from clear_lab.cka import linear_cka
from clear_lab.diagnose import diagnose, load_planted_bases, principal_angles
from clear_lab.projection import CLEARProjector


def planted(n=3000, d_a=40, d_b=30, r=3, seed=0):
    """Shared rank-r factor (strengths 3, 2.6, 2.2), independent specific parts, noise -> X_a, X_b, A, B."""
    rng = np.random.default_rng(seed)
    Qa = np.linalg.qr(rng.standard_normal((d_a, r + 4)))[0]
    Qb = np.linalg.qr(rng.standard_normal((d_b, r + 4)))[0]
    Z = rng.standard_normal((n, r)) * (3.0 - 0.4 * np.arange(r))
    X_a = Z @ Qa[:, :r].T + 2.0 * rng.standard_normal((n, 4)) @ Qa[:, r:].T + rng.standard_normal((n, d_a))
    X_b = Z @ Qb[:, :r].T + 2.0 * rng.standard_normal((n, 4)) @ Qb[:, r:].T + rng.standard_normal((n, d_b))
    X_a = X_a + 1.0  # raw, uncentred features
    return X_a.astype(np.float32), X_b.astype(np.float32), Qa[:, :r], Qb[:, :r]


def test_principal_angles_known():
    t = np.radians(30.0)
    A = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    B = np.array([[1.0, 0.0], [0.0, np.cos(t)], [0.0, np.sin(t)]])
    np.testing.assert_allclose(principal_angles(A, B), [0.0, 30.0], atol=1e-6)
    same_span = 5.0 * A @ np.array([[1.0, 2.0], [0.0, 1.0]])
    np.testing.assert_allclose(principal_angles(A, same_span), [0, 0], atol=1e-6)
    np.testing.assert_allclose(principal_angles(A[:, 0], np.array([0.0, 0.0, 1.0])), [90.0], atol=1e-6)
    angles = principal_angles(np.random.default_rng(0).standard_normal((10, 3)),
                              np.random.default_rng(1).standard_normal((10, 4)))
    assert angles.shape == (3,) and np.all(np.diff(angles) >= 0)
    with pytest.raises(ValueError, match="same number of rows"):
        principal_angles(A, B[:2])


def test_diagnose_planted_set():
    X_a, X_b, A, B = planted()
    report = diagnose(X_a, X_b, planted_a=A, planted_b=B, n_permutations=20, seed=0)
    json.dumps(report, allow_nan=False)
    assert report["k_used"] == 3 and report["suggested_k"] == 3 and report["k_source"] == "permutation_null"
    assert max(report["principal_angles_deg"]["image"]) < 5.0
    assert max(report["principal_angles_deg"]["text"]) < 5.0
    assert report["singular_values"][2] > report["null_floor"] > report["singular_values"][3]
    assert report["energy_cumulative"][-1] == pytest.approx(1.0)
    before, after = report["cka"]["before"], report["cka"]["after"]
    assert after["linear"] < before["linear"] and after["linear_debiased"] < before["linear_debiased"]
    assert report["dims"] == {"image": 40, "text": 30} and report["n"] == 3000
    assert report["linear_cka_after"] == after["linear"] and report["linear_cka_debiased_before"] == before[
        "linear_debiased"]
    assert report["principal_angles_deg_b"] == report["principal_angles_deg"]["text"]


def test_diagnose_shortcuts_match_direct_computation():
    X_a, X_b, _, _ = planted(n=500, r=2)
    for lam in (1.0, 0.6):
        report = diagnose(X_a, X_b, k=2, lam=lam, n_permutations=0, names=("v", "t"))
        p = CLEARProjector(k=2, lam=lam).fit(X_a.astype(np.float64), X_b.astype(np.float64))
        Y_a, Y_b = p.transform(X_a.astype(np.float64), X_b.astype(np.float64))
        for debiased, key in ((False, "linear"), (True, "linear_debiased")):
            after, before = report["cka"]["after"][key], report["cka"]["before"][key]
            assert after == pytest.approx(linear_cka(Y_a, Y_b, debiased=debiased), abs=1e-9)
            assert before == pytest.approx(linear_cka(X_a, X_b, debiased=debiased), abs=1e-9)
        s = np.asarray(report["singular_values"])
        want = np.sort(np.concatenate([(1 - lam) ** 2 * s[:2], s[2:]]))[::-1]
        np.testing.assert_allclose(report["projected_singular_values"], want, atol=1e-8)
        assert report["null_floor"] is None and report["principal_angles_deg"] is None
        json.dumps(report, allow_nan=False)


def test_diagnose_rank_choices_and_errors():
    X_a, X_b, _, _ = planted(n=400)
    assert diagnose(X_a, X_b, ratio=0.999, n_permutations=0)["k_source"] == "ratio"
    assert diagnose(X_a, X_b, k=1, n_permutations=2)["k_used"] == 1
    with pytest.raises(ValueError, match="at most one of k and ratio"):
        diagnose(X_a, X_b, k=1, ratio=0.5)
    with pytest.raises(ValueError, match="give k or ratio"):
        diagnose(X_a, X_b, n_permutations=0)
    with pytest.raises(ValueError, match="lam"):
        diagnose(X_a, X_b, k=1, lam=2.0)


def test_load_planted_bases(tmp_path):
    _, _, A, _ = planted(n=10)
    np.save(tmp_path / "image_planted_basis.npy", A)
    got_a, got_b = load_planted_bases(tmp_path, ("image", "text"))
    np.testing.assert_array_equal(got_a, A)
    assert got_b is None
    assert load_planted_bases(tmp_path / "nowhere") == (None, None)

"""Tests for clear_lab.stats."""

import math

import numpy as np
import pytest
import scipy.stats

from clear_lab.stats import align_users, mean_ci, paired_bootstrap, paired_seeds_test, paired_wilcoxon


def test_mean_ci_by_hand():
    x = [1.0, 2.0, 3.0, 4.0, 6.0]
    # mean 3.2; squared deviations 4.84 + 1.44 + 0.04 + 0.64 + 7.84 = 14.8; s^2 = 14.8 / 4 = 3.7
    half = scipy.stats.t.ppf(0.975, df=4) * math.sqrt(3.7) / math.sqrt(5)
    m, lo, hi = mean_ci(x)
    assert m == pytest.approx(3.2, abs=1e-12)
    assert lo == pytest.approx(3.2 - half, abs=1e-12) and hi == pytest.approx(3.2 + half, abs=1e-12)
    ref = scipy.stats.t.interval(0.95, df=4, loc=3.2, scale=math.sqrt(3.7 / 5))
    assert (lo, hi) == pytest.approx(ref, abs=1e-12)
    m90, lo90, hi90 = mean_ci(x, level=0.9)
    assert lo < lo90 < m90 < hi90 < hi


def test_mean_ci_single_value_and_errors():
    m, lo, hi = mean_ci([0.25])
    assert m == 0.25 and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        mean_ci([1.0, 2.0], level=1.5)


def test_paired_bootstrap_detects_a_clear_difference():
    rng = np.random.default_rng(1)
    b = rng.random(2000)
    a = b + 0.1 + rng.normal(0.0, 0.05, size=2000)  # true mean difference 0.1
    out = paired_bootstrap(a, b, n_boot=2000, seed=0)
    assert out["low"] < 0.1 < out["high"]
    assert out["low"] < out["mean_diff"] < out["high"]
    assert out["mean_diff"] == pytest.approx(np.mean(a - b), abs=1e-15)
    assert out["p_value"] == 1 / 2000  # floor: no resample reaches 0
    # the percentile interval is close to the normal one, mean -/+ 1.96 * sd / sqrt(n)
    se = np.std(a - b, ddof=1) / np.sqrt(2000)
    assert out["high"] - out["low"] == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert paired_bootstrap(a, b, n_boot=2000, seed=0) == out  # reproducible
    flipped = paired_bootstrap(b, a, n_boot=2000, seed=0)
    assert flipped["mean_diff"] == pytest.approx(-out["mean_diff"]) and flipped["p_value"] == 1 / 2000


def test_paired_bootstrap_under_the_null():
    rng = np.random.default_rng(2)
    p = []
    for _ in range(200):
        a, b = rng.random(100), rng.random(100)
        p.append(paired_bootstrap(a, b, n_boot=400, seed=int(rng.integers(1 << 30)))["p_value"])
    p = np.array(p)
    assert 0.35 < p.mean() < 0.65  # ~uniform on [0, 1]
    assert (p < 0.05).mean() < 0.12
    same = paired_bootstrap(b, b, n_boot=100)
    assert same == {"mean_diff": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}


def test_paired_bootstrap_chunking_matches_manual_resampling():
    rng = np.random.default_rng(3)
    a, b = rng.random(50), rng.random(50)
    out = paired_bootstrap(a, b, n_boot=300, seed=7, level=0.9)
    # the same draws (one chunk, since 300 * 50 < 2**22) computed the slow way
    idx = np.random.default_rng(7).integers(0, 50, size=(300, 50), dtype=np.int32)
    boot = np.array([np.mean(a[i] - b[i]) for i in idx])
    lo, hi = np.quantile(boot, [0.05, 0.95])
    tail = min((boot <= 0).sum(), (boot >= 0).sum())
    assert out["low"] == pytest.approx(lo, abs=1e-12) and out["high"] == pytest.approx(hi, abs=1e-12)
    assert out["p_value"] == pytest.approx(min(1.0, max(1 / 300, 2 * tail / 300)), abs=1e-15)


def test_paired_wilcoxon_equals_scipy():
    rng = np.random.default_rng(4)
    for n in (30, 500):  # exact and normal-approximation regimes
        b = rng.random(n)
        a = b + rng.normal(0.05, 0.2, size=n)
        a[:5] = b[:5]  # some zero differences, dropped by zero_method="wilcox"
        ref = scipy.stats.wilcoxon(a, b, zero_method="wilcox")
        out = paired_wilcoxon(a, b)
        assert out["statistic"] == ref.statistic and out["p_value"] == ref.pvalue
        assert out["n_nonzero"] == n - 5


def test_paired_wilcoxon_all_zero():
    x = np.array([0.0, 0.5, 1.0])
    assert paired_wilcoxon(x, x) == {"statistic": 0.0, "p_value": 1.0, "n_nonzero": 0}


def test_paired_seeds_test():
    a = [0.101, 0.104, 0.099, 0.103, 0.102]
    b = [0.095, 0.097, 0.096, 0.094, 0.098]
    out = paired_seeds_test(a, b)
    ref = scipy.stats.ttest_rel(a, b)
    assert out["t_statistic"] == pytest.approx(ref.statistic) and out["p_value"] == pytest.approx(ref.pvalue)
    m, lo, hi = mean_ci(np.subtract(a, b))
    assert (out["mean_diff"], out["low"], out["high"]) == (m, lo, hi)
    assert out["n"] == 5 and lo > 0
    # degenerate cases
    assert paired_seeds_test(a, a)["p_value"] == 1.0
    shifted = paired_seeds_test(np.add(b, 0.01), b)
    assert shifted["p_value"] == 0.0 and shifted["t_statistic"] == math.inf
    one = paired_seeds_test([0.2], [0.1])
    assert one["mean_diff"] == pytest.approx(0.1) and math.isnan(one["p_value"]) and math.isnan(one["low"])


def test_mismatched_lengths_raise():
    for fn in (paired_bootstrap, paired_wilcoxon, paired_seeds_test):
        with pytest.raises(ValueError, match="equal lengths"):
            fn([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([1.0, float("nan")], [1.0, 2.0])


def test_align_users():
    users_a = np.array([5, 1, 3, 9])
    users_b = np.array([3, 4, 5, 7, 1])
    va = np.array([0.5, 0.1, 0.3, 0.9])
    vb = {"recall@20": np.array([3.0, 4.0, 5.0, 7.0, 1.0]), "ndcg@20": -np.array([3.0, 4.0, 5.0, 7.0, 1.0])}
    users, a, b = align_users(users_a, va, users_b, vb)
    np.testing.assert_array_equal(users, [1, 3, 5])
    np.testing.assert_array_equal(a, [0.1, 0.3, 0.5])
    np.testing.assert_array_equal(b["recall@20"], [1.0, 3.0, 5.0])
    np.testing.assert_array_equal(b["ndcg@20"], [-1.0, -3.0, -5.0])
    with pytest.raises(ValueError, match="share no user"):
        align_users([1, 2], [0.0, 0.0], [3], [0.0])
    with pytest.raises(ValueError, match="repeated"):
        align_users([1, 1], [0.0, 0.0], [1], [0.0])
    with pytest.raises(ValueError, match="one per user"):
        align_users([1, 2], [0.0], [1], [0.0])

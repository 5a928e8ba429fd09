"""Intervals and paired tests for comparing runs.

Two kinds of pairing come up when comparing a model A with a baseline B:

* over users, within one seed: ``EvalResult.per_user["recall@20"]`` of A and B on the same users
  (``paired_bootstrap``, ``paired_wilcoxon``; ``align_users`` pairs two results safely);
* over seeds: one mean metric per seed for A and for B, seed ``s`` of A paired with seed ``s`` of B
  (``mean_ci``, ``paired_seeds_test``).

The per-user tests say whether a difference is larger than the user sampling noise of one split;
the seed tests whether it survives training randomness. They answer different questions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats

ArrayLike = Sequence[float] | np.ndarray


def _as_1d(x: ArrayLike, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError(f"{name} contains NaN")
    return x


def _paired(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if len(a) != len(b):
        raise ValueError(
            f"paired values need equal lengths, got {len(a)} and {len(b)} "
            "(same users in the same order; see align_users)"
        )
    if len(a) == 0:
        raise ValueError("no paired values")
    return a, b


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


# -----------------------------------------------------------------------------
# over seeds


def mean_ci(values: ArrayLike, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval: ``mean -/+ t_{(1+level)/2, n-1} * s / sqrt(n)``.

    ``s`` is the sample standard deviation (ddof=1). With a single value there is no spread to
    estimate, so the interval is ``(nan, nan)``.
    """
    _check_level(level)
    x = _as_1d(values, "values")
    n = len(x)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    m = float(x.mean())
    if n == 1:
        return m, float("nan"), float("nan")
    half = scipy.stats.t.ppf((1.0 + level) / 2.0, n - 1) * x.std(ddof=1) / np.sqrt(n)
    return m, float(m - half), float(m + half)


def paired_seeds_test(a_per_seed: ArrayLike, b_per_seed: ArrayLike, level: float = 0.95) -> dict[str, float]:
    """Paired t-test over seeds (``scipy.stats.ttest_rel``) and the t-interval of the mean difference.

    Returns ``dict(mean_diff, low, high, t_statistic, p_value, n)`` for ``d_s = a_s - b_s``.
    Degenerate cases that scipy answers with NaN: ``n == 1`` gives NaN statistic/p; differences that
    are all equal give p = 1 if they are all 0, else p = 0 (t = +-inf: no spread, nonzero mean).
    """
    a, b = _paired(a_per_seed, b_per_seed)
    d = a - b
    mean_diff, low, high = mean_ci(d, level)
    n = len(d)
    if n == 1:
        t, p = float("nan"), float("nan")
    elif np.all(d == d[0]):  # zero variance; scipy would warn and return NaN
        t, p = (0.0, 1.0) if d[0] == 0 else (float(np.copysign(np.inf, d[0])), 0.0)
    else:
        res = scipy.stats.ttest_rel(a, b)
        t, p = float(res.statistic), float(res.pvalue)
    return {"mean_diff": mean_diff, "low": low, "high": high, "t_statistic": t, "p_value": p, "n": n}


# -----------------------------------------------------------------------------
# over users


def paired_bootstrap(
    a: ArrayLike,
    b: ArrayLike,
    n_boot: int = 10000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Paired bootstrap of the mean difference ``mean(a - b)`` over users.

    Users are resampled with replacement (the same resampled users for a and b, which keeps the
    pairing); ``m*_1..m*_B`` are the resampled mean differences.

    * interval: percentile interval, the ``(1-level)/2`` and ``(1+level)/2`` quantiles of ``m*``;
    * p-value (two-sided, H0: mean difference = 0), by inverting that interval:
      ``p = 2 * min(#{m* <= 0}, #{m* >= 0}) / B``, clipped to ``[1/B, 1]``: the smallest level at which
      the percentile interval would exclude 0. It is never 0: with ``B`` resamples nothing below
      ``1/B`` can be resolved.

    Resampling is vectorised in chunks of ~2**22 indices (bounded memory). The draws depend only on
    ``(len(a), n_boot, seed)``, so the result is reproducible.
    """
    _check_level(level)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    a, b = _paired(a, b)
    d = a - b
    n = len(d)
    if n >= 2**31:
        raise ValueError(f"too many paired values for int32 resampling indices: {n}")
    rng = np.random.default_rng(seed)
    chunk = max(1, (1 << 22) // n)  # resamples per chunk
    boot = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(c, n), dtype=np.int32)  # int32: half the cost of int64 draws
        boot[start : start + c] = d[idx].mean(axis=1)

    alpha = 1.0 - level
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    tail = min(np.count_nonzero(boot <= 0.0), np.count_nonzero(boot >= 0.0))
    p = min(1.0, max(1.0 / n_boot, 2.0 * tail / n_boot))
    return {"mean_diff": float(d.mean()), "low": float(low), "high": float(high), "p_value": float(p)}


def paired_wilcoxon(a: ArrayLike, b: ArrayLike) -> dict[str, float]:
    """Wilcoxon signed-rank test on ``a - b`` (``scipy.stats.wilcoxon``, ``zero_method='wilcox'``:
    zero differences are dropped; scipy picks the exact or normal-approximation p-value).

    Returns ``dict(statistic, p_value, n_nonzero)``. If every difference is zero (identical runs,
    common for sparse per-user metrics) scipy raises; we return statistic 0 and p-value 1.
    """
    a, b = _paired(a, b)
    n_nonzero = int(np.count_nonzero(a - b))
    if n_nonzero == 0:
        return {"statistic": 0.0, "p_value": 1.0, "n_nonzero": 0}
    res = scipy.stats.wilcoxon(a, b, zero_method="wilcox")
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "n_nonzero": n_nonzero}


def align_users(
    users_a: ArrayLike,
    values_a: np.ndarray | Mapping[str, np.ndarray],
    users_b: ArrayLike,
    values_b: np.ndarray | Mapping[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray | dict[str, np.ndarray], np.ndarray | dict[str, np.ndarray]]:
    """Restrict two runs' per-user values to their common users, in ascending user order.

    ``values_*`` is a (U,) array aligned with ``users_*``, or a dict of such arrays (e.g.
    ``EvalResult.per_user``), in which case every entry is aligned. Returns
    ``(users, values_a, values_b)``. Raises if a run repeats a user, lengths disagree, or the
    runs share no user.

        users, va, vb = align_users(ra.users, ra.per_user, rb.users, rb.per_user)
        paired_bootstrap(va["recall@20"], vb["recall@20"])
    """
    ua, ub = np.asarray(users_a), np.asarray(users_b)
    for name, u in (("users_a", ua), ("users_b", ub)):
        if u.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {u.shape}")
        if len(np.unique(u)) != len(u):
            raise ValueError(f"{name} contains repeated user ids")
    common, ia, ib = np.intersect1d(ua, ub, assume_unique=True, return_indices=True)
    if len(common) == 0:
        raise ValueError("the two runs share no user")

    def take(values: np.ndarray | Mapping[str, np.ndarray], idx: np.ndarray, n: int, name: str):
        if isinstance(values, Mapping):
            return {k: take(v, idx, n, f"{name}[{k!r}]") for k, v in values.items()}
        v = np.asarray(values)
        if v.shape[:1] != (n,):
            raise ValueError(f"{name} has {v.shape[:1]} rows, expected {n} (one per user)")
        return v[idx]

    return common, take(values_a, ia, len(ua), "values_a"), take(values_b, ib, len(ub), "values_b")

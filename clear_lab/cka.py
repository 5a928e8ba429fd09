"""Centered kernel alignment (CKA) between two representations of the same n items.

Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited"; debiased form from
Nguyen et al. 2021, "Do Wide and Deep Networks Learn the Same Things?", with the unbiased HSIC estimator of
Song et al. 2012.

    HSIC(K, L) = tr(K H L H) / (n - 1)^2,            H = I - 11^T / n
    CKA(K, L)  = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

With linear kernels K = X X^T, L = Y Y^T of column-centred features this is the feature-space form

    CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),

which costs O(n (d1 + d2)^2) time and O((d1 + d2)^2) memory and never builds an n x n matrix, so it is fine
for n = 20k items. X and Y may have different widths d1, d2 (only the rows, the items, are paired).

The unbiased HSIC (Song et al. 2012), with K~ = K with its diagonal zeroed,

    HSIC_u = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3)),

has, for linear kernels of centred features (row norms kx_i = ||x_i||^2), the feature-space form

    n (n-3) HSIC_u = ||Y^T X||_F^2 - n/(n-2) kx . ky + (sum kx)(sum ky) / ((n-1)(n-2)).

It equals the inner product of U-centred Gram matrices (Szekely & Rizzo), the Gram form of
:func:`center_gram` (unbiased=True). The cross term can be negative, so debiased CKA can be a (small) negative
number; the self terms are squared norms of U-centred matrices (>= 0), and are never square-rooted when <= 0.

Everything is computed in float64 on CPU numpy; torch tensors are detached and copied to the CPU first.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

# Gram-form functions build n x n float64 matrices (several at once): 10,000 items = 800 MB each.
MAX_GRAM_N = 10_000
# Rows per chunk in the feature-space accumulation (keeps the float64 working copy small).
_CHUNK_ROWS = 4096


def _to_numpy(X: Any, name: str) -> np.ndarray:
    """X as a 2-D numpy array, not copied when already numpy (1-D -> one feature column)."""
    if hasattr(X, "detach") and hasattr(X, "cpu"):  # torch.Tensor, without importing torch here
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_items, dim); got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers; got dtype {X.dtype}")
    return X


def _check_pair(X: Any, Y: Any, debiased: bool) -> tuple[np.ndarray, np.ndarray]:
    X, Y = _to_numpy(X, "X"), _to_numpy(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must describe the same items (same number of rows); got X {X.shape} and "
                         f"Y {Y.shape}")
    _check_n(X.shape[0], debiased)
    return X, Y


def _check_n(n: int, debiased: bool) -> None:
    need = 4 if debiased else 2
    if n < need:
        raise ValueError(f"{'debiased ' if debiased else ''}CKA needs n >= {need} items; got n = {n}")


def _check_gram_n(n: int, what: str) -> None:
    if n > MAX_GRAM_N:
        gib = n * n * 8 / 2**30
        hint = "" if what == "gram_linear" else "; linear_cka needs no Gram matrix and handles any n"
        raise ValueError(f"{what} builds n x n Gram matrices; n = {n} > {MAX_GRAM_N} (~{gib:.1f} GiB each). "
                         f"Subsample items first, e.g. idx = np.random.default_rng(0).choice(n, "
                         f"{MAX_GRAM_N // 2}, replace=False) and pass X[idx], Y[idx]{hint}.")


def _ratio(hsic_xy: float, hsic_xx: float, hsic_yy: float) -> float:
    """hsic_xy / sqrt(hsic_xx hsic_yy), or nan with a warning when a denominator term is <= 0."""
    if not (hsic_xx > 0 and hsic_yy > 0):
        warnings.warn(f"CKA undefined: a self-similarity term is <= 0 (HSIC(X,X) = {hsic_xx:.3g}, "
                      f"HSIC(Y,Y) = {hsic_yy:.3g}; constant features or too few items?); returning nan",
                      RuntimeWarning, stacklevel=3)
        return float("nan")
    return float(hsic_xy / np.sqrt(hsic_xx * hsic_yy))


# ------------------------------------------------------------------------------------------------------------
# feature-space linear CKA


@dataclass
class LinearMoments:
    """Second moments of column-centred features Xc (n, d1), Yc (n, d2), float64: all that linear CKA needs.

    Attributes:
        n: number of items.
        xtx: Xc^T Xc (d1, d1);  yty: Yc^T Yc (d2, d2);  xty: Xc^T Yc (d1, d2).
        row_sq_x: ||xc_i||^2 per item (n,);  row_sq_y: ||yc_i||^2 (n,).
    """

    n: int
    xtx: np.ndarray
    yty: np.ndarray
    xty: np.ndarray
    row_sq_x: np.ndarray
    row_sq_y: np.ndarray


def linear_moments(X: Any, Y: Any) -> LinearMoments:
    """:class:`LinearMoments` of X (n, d1) and Y (n, d2), accumulated in float64 over row chunks (two passes:
    the column means, then the centred products): a large float32 input is never copied whole to float64."""
    X, Y = _check_pair(X, Y, debiased=False)
    same = X is Y
    n = X.shape[0]
    chunks = [slice(s, min(s + _CHUNK_ROWS, n)) for s in range(0, n, _CHUNK_ROWS)]
    mean_x = sum(X[c].sum(0, dtype=np.float64) for c in chunks) / n
    mean_y = mean_x if same else sum(Y[c].sum(0, dtype=np.float64) for c in chunks) / n
    xtx = np.zeros((X.shape[1], X.shape[1]))
    yty = xtx if same else np.zeros((Y.shape[1], Y.shape[1]))
    xty = xtx if same else np.zeros((X.shape[1], Y.shape[1]))
    row_sq_x = np.empty(n)
    row_sq_y = row_sq_x if same else np.empty(n)
    for c in chunks:
        xc = X[c].astype(np.float64) - mean_x
        if not np.isfinite(xc).all():
            raise ValueError(f"X contains NaN or inf (in rows {c.start}..{c.stop - 1})")
        xtx += xc.T @ xc
        row_sq_x[c] = np.einsum("ij,ij->i", xc, xc)
        if not same:
            yc = Y[c].astype(np.float64) - mean_y
            if not np.isfinite(yc).all():
                raise ValueError(f"Y contains NaN or inf (in rows {c.start}..{c.stop - 1})")
            yty += yc.T @ yc
            xty += xc.T @ yc
            row_sq_y[c] = np.einsum("ij,ij->i", yc, yc)
    return LinearMoments(n=n, xtx=xtx, yty=yty, xty=xty, row_sq_x=row_sq_x, row_sq_y=row_sq_y)


def _debiased_dot(dot: float, row_sq_x: np.ndarray, row_sq_y: np.ndarray, n: int) -> float:
    """n (n-3) HSIC_u from ||Y^T X||_F^2 and the row norms of centred X, Y (see the module docstring)."""
    return float(dot - n / (n - 2.0) * row_sq_x @ row_sq_y
                 + row_sq_x.sum() * row_sq_y.sum() / ((n - 1.0) * (n - 2.0)))


def cka_from_moments(m: LinearMoments, debiased: bool = False) -> float:
    """Linear CKA (biased or debiased) from :class:`LinearMoments`."""
    _check_n(m.n, debiased)
    xy, xx, yy = (float(np.sum(a * a)) for a in (m.xty, m.xtx, m.yty))  # squared Frobenius norms
    if debiased:
        xy = _debiased_dot(xy, m.row_sq_x, m.row_sq_y, m.n)
        xx = _debiased_dot(xx, m.row_sq_x, m.row_sq_x, m.n)
        yy = _debiased_dot(yy, m.row_sq_y, m.row_sq_y, m.n)
    return _ratio(xy, xx, yy)


def linear_cka(X: Any, Y: Any, debiased: bool = False) -> float:
    """Linear CKA between X (n, d1) and Y (n, d2) in feature space (no n x n matrix; any n).

    biased:   ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), Xc, Yc column-centred float64 features.
    debiased: the same ratio of unbiased HSIC estimates (needs n >= 4; may be slightly negative).
    Cost O(n (d1 + d2)^2) time, O((d1 + d2)^2) memory.
    """
    return cka_from_moments(linear_moments(X, Y), debiased=debiased)


# ------------------------------------------------------------------------------------------------------------
# Gram form


def gram_linear(X: Any) -> np.ndarray:
    """K = X X^T (n, n) float64 (centring is left to :func:`center_gram`)."""
    X = _to_numpy(X, "X").astype(np.float64)
    _check_gram_n(X.shape[0], "gram_linear")
    return X @ X.T


def gram_rbf(X: Any, threshold: float = 1.0) -> np.ndarray:
    """RBF kernel K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2)), sigma^2 = threshold^2 * median of the nonzero
    squared distances, as the representation_similarity demo of Kornblith et al. (whose median also counts
    the n zero diagonal entries; leaving them out keeps sigma from shrinking with that artefact)."""
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0; got threshold={threshold!r}")
    X = _to_numpy(X, "X").astype(np.float64)
    _check_gram_n(X.shape[0], "gram_rbf")
    X = X - X.mean(0)  # distances are translation invariant; centring only improves the rounding
    dots = X @ X.T
    sq_norms = np.diag(dots).copy()
    sq_dist = np.clip(sq_norms[:, None] + sq_norms[None, :] - 2 * dots, 0.0, None)
    np.fill_diagonal(sq_dist, 0.0)
    nonzero = sq_dist[sq_dist > 0]
    if nonzero.size == 0:  # all items identical: every kernel value is 1
        return np.ones_like(sq_dist)
    sigma_sq = threshold**2 * np.median(nonzero)
    return np.exp(-sq_dist / (2.0 * sigma_sq))


def center_gram(gram: Any, unbiased: bool = False) -> np.ndarray:
    """Centred copy of a symmetric Gram matrix.

    biased:   H K H, H = I - 11^T / n.
    unbiased: the U-centring of Szekely & Rizzo (zero diagonal; needs n >= 4), for which <U(K), U(L)> equals
              n (n-3) times the unbiased HSIC of Song et al. 2012.
    """
    K = _to_numpy(gram, "gram").astype(np.float64)  # astype copies: the input is never modified
    n = K.shape[0]
    if K.shape != (n, n):
        raise ValueError(f"gram must be square; got shape {K.shape}")
    if not np.allclose(K, K.T, rtol=1e-8, atol=1e-10 * max(1.0, float(np.abs(K).max(initial=0.0)))):
        raise ValueError("gram must be symmetric")
    if unbiased:
        _check_n(n, debiased=True)
        np.fill_diagonal(K, 0.0)
        means = K.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        K -= means[:, None]
        K -= means[None, :]
        np.fill_diagonal(K, 0.0)
    else:
        means = K.mean(0)
        means -= means.mean() / 2
        K -= means[:, None]
        K -= means[None, :]
    return K


def cka_from_grams(K: Any, L: Any, debiased: bool = False) -> float:
    """CKA from two (n, n) Gram matrices of the same items (biased, or debiased via U-centring)."""
    K, L = _to_numpy(K, "K"), _to_numpy(L, "L")
    if K.shape != L.shape:
        raise ValueError(f"K and L must have the same shape; got {K.shape} and {L.shape}")
    _check_n(K.shape[0], debiased)
    Kc, Lc = center_gram(K, unbiased=debiased), center_gram(L, unbiased=debiased)
    return _ratio(float(np.sum(Kc * Lc)), float(np.sum(Kc * Kc)), float(np.sum(Lc * Lc)))


def rbf_cka(X: Any, Y: Any, threshold: float = 1.0, debiased: bool = False) -> float:
    """CKA with RBF kernels (bandwidth rule of :func:`gram_rbf`); Gram form, so n <= 10,000: subsample."""
    X, Y = _check_pair(X, Y, debiased)
    _check_gram_n(X.shape[0], "rbf_cka")
    return cka_from_grams(gram_rbf(X, threshold), gram_rbf(Y, threshold), debiased=debiased)

"""CLEAR: null-space projection of the cross-modal shared subspace.

Items carry two feature matrices, X_a (n, d_a) and X_b (n, d_b), one row per item (row-vector convention).

    cross-covariance   C = (X_a - 1 mu_a^T)^T (X_b - 1 mu_b^T) / (n - 1)          (d_a, d_b)
    thin SVD           C = U S W^T,  s_1 >= s_2 >= ... >= s_r,  r = min(d_a, d_b)
    shared subspace    U_k = U[:, :k] (d_a, k),  W_k = W[:, :k] (d_b, k)
    projectors         P_a = I - lam U_k U_k^T,  P_b = I - lam W_k W_k^T,  lam in [0, 1]
    CLEAR              X_a -> X_a P_a,  X_b -> X_b P_b      (on the RAW features, the paper's reading)

lam = 1 is the exact projection onto the null space of the shared directions (P idempotent); lam < 1 only
shrinks them. The hot path never forms P: x P = x - lam (x U_k) U_k^T costs O(n d k) instead of O(n d^2).

Why the projected cross-covariance is P_a C P_b with the top k singular values scaled by (1 - lam)^2 and
every other singular value unchanged:

* Centring commutes with right-multiplication: (X - 1 mu^T) P = X P - 1 (mu^T P), i.e. the projected
  features' mean is mu^T P and their centred rows are the projected centred rows. Hence the cross-covariance
  of (X_a P_a, X_b P_b) is P_a^T C P_b = P_a C P_b (P is symmetric). No re-centring is needed after
  projection.
* U_k^T C = S_k W_k^T and C W_k = U_k S_k, so with C_k = U_k S_k W_k^T (the rank-k part):
  U_k U_k^T C = C_k,  C W_k W_k^T = C_k,  U_k U_k^T C W_k W_k^T = C_k, and
  P_a C P_b = C - 2 lam C_k + lam^2 C_k = (C - C_k) + (1 - lam)^2 C_k.
  (C - C_k) and C_k live on orthogonal left/right subspaces, so the spectrum of P_a C P_b is
  {(1 - lam)^2 s_1, ..., (1 - lam)^2 s_k, s_{k+1}, ..., s_r}: lam = 1 removes exactly the k shared
  directions from the cross-covariance and leaves everything else as it was.

Two placements:

* input placement: :class:`CLEARProjector` fits once on raw features (e.g. train items) and projects any rows.
* latent placement: :class:`LatentCLEAR` (a ``torch.nn.Module``) projects a backbone's encoded per-modality
  item embeddings in every forward pass, with a detached basis refreshed during training.

Dtype policy (both numpy and torch, any torch device; the computation stays on the input's device):

* Statistics (means, cross-covariance, SVD) are accumulated in float64, chunked over rows.
* ``transform`` computes in float64 for float64 input and in float32 otherwise (float16 / bfloat16 are upcast
  to float32 for the arithmetic and cast back); the result has the input's dtype (non-float input -> float64
  numpy / torch default dtype). numpy and torch therefore run the same arithmetic and agree to ~1e-12 in
  float64 and ~1e-6 in float32.
* The fitted bases of :class:`CLEARProjector` are float64 numpy, whatever the input kind; they are cast to the
  input's dtype / device at transform time.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

Array = np.ndarray | torch.Tensor

FORMAT_VERSION = 1
# One float64 chunk of the wider modality is at most this many elements (32 MiB), whatever chunk_size says.
_CHUNK_ELEMENTS = 1 << 22


# ------------------------------------------------------------------------------------------------------------
# small backend helpers (numpy or torch)


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _as_array(x: Any) -> Array:
    """Tensors stay tensors; anything else becomes a numpy array."""
    return x if _is_torch(x) else np.asarray(x)


def _to_numpy(x: Array) -> np.ndarray:
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _is_float64(x: Array) -> bool:
    return x.dtype == (torch.float64 if _is_torch(x) else np.float64)


def _is_floating(x: Array) -> bool:
    return x.dtype.is_floating_point if _is_torch(x) else np.issubdtype(x.dtype, np.floating)


def _cast(x: Array, double: bool) -> Array:
    """x in float64 (double) or float32, same backend and device."""
    if _is_torch(x):
        return x.to(torch.float64 if double else torch.float32)
    return x.astype(np.float64 if double else np.float32, copy=False)


def _zeros(ref: Array, shape: tuple[int, ...], double: bool = True) -> Array:
    if _is_torch(ref):
        return torch.zeros(shape, dtype=torch.float64 if double else torch.float32, device=ref.device)
    return np.zeros(shape, dtype=np.float64 if double else np.float32)


def _all_finite(x: Array) -> bool:
    return bool(torch.isfinite(x).all()) if _is_torch(x) else bool(np.isfinite(x).all())


def _like(ref: Array, x: np.ndarray, double: bool) -> Array:
    """numpy x converted to ref's backend / device, in float64 or float32."""
    if _is_torch(ref):
        return torch.as_tensor(x, dtype=torch.float64 if double else torch.float32, device=ref.device)
    return x.astype(np.float64 if double else np.float32, copy=False)


def _svd(m: Array) -> tuple[Array, Array, Array]:
    """Thin SVD m = U diag(s) Vt in m's backend, s descending."""
    if _is_torch(m):
        return torch.linalg.svd(m, full_matrices=False)
    try:
        return np.linalg.svd(m, full_matrices=False)
    except np.linalg.LinAlgError:  # gesdd occasionally fails to converge; gesvd is slower but robust
        import scipy.linalg

        return scipy.linalg.svd(m, full_matrices=False, lapack_driver="gesvd")


def _svdvals(m: Array) -> np.ndarray:
    if _is_torch(m):
        return torch.linalg.svdvals(m).cpu().numpy().astype(np.float64)
    try:
        return np.linalg.svd(m, compute_uv=False).astype(np.float64)
    except np.linalg.LinAlgError:
        import scipy.linalg

        return scipy.linalg.svd(m, compute_uv=False, lapack_driver="gesvd").astype(np.float64)


def _svdvals_gram(m: Array) -> np.ndarray:
    """Singular values via the eigenvalues of the smaller Gram matrix (m^T m or m m^T), descending, float64.

    About 3x cheaper than an SVD; the squaring costs relative accuracy only for values far below s_1 (relative
    error ~ eps (s_1 / s_i)^2), harmless for a noise spectrum, whose values are all of one order.
    """
    m = _cast(m, True)
    g = m.T @ m if m.shape[1] <= m.shape[0] else m @ m.T
    e = torch.linalg.eigvalsh(g).cpu().numpy() if _is_torch(g) else np.linalg.eigvalsh(g)
    return np.sqrt(np.clip(e, 0.0, None))[::-1].astype(np.float64)


def _chunk_rows(n: int, width: int, chunk_size: int) -> Iterator[slice]:
    if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    rows = max(1, min(int(chunk_size), _CHUNK_ELEMENTS // max(width, 1)))
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def _check_pair(X_a: Any, X_b: Any, min_rows: int = 2) -> tuple[Array, Array]:
    X_a, X_b = _as_array(X_a), _as_array(X_b)
    if _is_torch(X_a) != _is_torch(X_b):
        raise ValueError(f"X_a and X_b must both be numpy arrays or both torch tensors; got "
                         f"{type(X_a).__name__} and {type(X_b).__name__}")
    if _is_torch(X_a) and X_a.device != X_b.device:
        raise ValueError(f"X_a and X_b are on different devices: {X_a.device} and {X_b.device}")
    for name, X in (("X_a", X_a), ("X_b", X_b)):
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_items, dim); got shape {tuple(X.shape)}")
        if X.shape[1] < 1:
            raise ValueError(f"{name} has no feature columns; got shape {tuple(X.shape)}")
    if X_a.shape[0] != X_b.shape[0]:
        raise ValueError(f"X_a and X_b must have the same number of rows (one per item); got X_a "
                         f"{tuple(X_a.shape)} and X_b {tuple(X_b.shape)}")
    if X_a.shape[0] < min_rows:
        raise ValueError(f"need n >= {min_rows} items (rows); got n = {X_a.shape[0]}")
    return X_a, X_b


# ------------------------------------------------------------------------------------------------------------
# validation of the user-facing knobs


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an integer >= 0; got k={k!r}")
    return int(k)


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating, np.integer)):
        raise ValueError(f"ratio must be a number in (0, 1]; got ratio={ratio!r}")
    if not (0.0 < float(ratio) <= 1.0):
        raise ValueError(f"ratio must be in (0, 1]; got ratio={ratio!r}")
    return float(ratio)


def _check_lam(lam: Any) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating, np.integer)) or math.isnan(lam):
        raise ValueError(f"lam must be a number in [0, 1]; got lam={lam!r}")
    if not (0.0 <= float(lam) <= 1.0):
        raise ValueError(f"lam must be in [0, 1] (1 = exact null-space projection); got lam={lam!r}")
    return float(lam)


def _check_rank_args(k: Any, ratio: Any) -> tuple[int | None, float | None]:
    """Exactly one of k / ratio, each valid on its own (k's upper bound is checked at fit time)."""
    if (k is None) == (ratio is None):
        raise ValueError(f"give exactly one of k (fixed rank) or ratio (energy-ratio rule); got k={k!r}, "
                         f"ratio={ratio!r}")
    return (None if k is None else _check_k(k)), (None if ratio is None else _check_ratio(ratio))


# ------------------------------------------------------------------------------------------------------------
# cross-covariance, spectrum and rank


@dataclass
class CrossCovariance:
    """C = (X_a - 1 mu_a^T)^T (X_b - 1 mu_b^T) / (n - 1), float64, same kind (numpy / torch, device) as X_a.

    Attributes:
        matrix: (d_a, d_b) float64.
        mean_a: (d_a,) float64 column means of X_a.
        mean_b: (d_b,) float64 column means of X_b.
        n: number of items (rows).
    """

    matrix: Array
    mean_a: Array
    mean_b: Array
    n: int


def _cross_covariance(X_a: Array, X_b: Array, chunk_size: int = 8192, double: bool = True) -> CrossCovariance:
    """Two passes over row chunks (means, then the sum of centred chunk products), accumulated in float64 (or
    float32 when double=False), so a large float32 input is never copied whole to float64."""
    X_a, X_b = _check_pair(X_a, X_b)
    n, d_a, d_b = X_a.shape[0], X_a.shape[1], X_b.shape[1]
    chunks = list(_chunk_rows(n, max(d_a, d_b), chunk_size))
    with torch.no_grad():  # a statistic, never part of an autograd graph
        if _is_torch(X_a):
            X_a, X_b = X_a.detach(), X_b.detach()
        sum_a, sum_b = _zeros(X_a, (d_a,), double), _zeros(X_a, (d_b,), double)
        for rows in chunks:
            a, b = _cast(X_a[rows], double), _cast(X_b[rows], double)
            for name, chunk in (("X_a", a), ("X_b", b)):
                if not _all_finite(chunk):
                    raise ValueError(f"{name} contains NaN or inf (in rows {rows.start}..{rows.stop - 1})")
            sum_a += a.sum(0)
            sum_b += b.sum(0)
        mean_a, mean_b = sum_a / n, sum_b / n
        matrix = _zeros(X_a, (d_a, d_b), double)
        for rows in chunks:
            matrix += (_cast(X_a[rows], double) - mean_a).T @ (_cast(X_b[rows], double) - mean_b)
        matrix /= n - 1
    return CrossCovariance(matrix=matrix, mean_a=mean_a, mean_b=mean_b, n=n)


def cross_covariance(X_a: Array, X_b: Array, chunk_size: int = 8192) -> CrossCovariance:
    """Cross-covariance of two modalities' item features.

    Args:
        X_a: (n, d_a) numpy array or torch tensor (any device; computed there, no autograd).
        X_b: (n, d_b), same kind as X_a, rows aligned with X_a (row i = item i in both).
        chunk_size: most rows per chunk; rows are further capped so one float64 chunk of the wider modality
            stays under 32 MiB (a 7,050 x 4,096 float32 matrix is processed 1,024 rows at a time).

    Returns:
        :class:`CrossCovariance` with float64 ``matrix`` (d_a, d_b), ``mean_a``, ``mean_b`` and ``n``.
    """
    return _cross_covariance(X_a, X_b, chunk_size=chunk_size, double=True)


def energy_fractions(singular_values: Array) -> tuple[np.ndarray, np.ndarray]:
    """Energy of each singular direction, e_i = s_i^2 / sum_j s_j^2, and its cumulative sum.

    Returns (fraction, cumulative), float64 numpy, both (r,). An all-zero spectrum gives all zeros.
    """
    s = _check_spectrum(singular_values)
    energy = s**2
    total = energy.sum()
    if total <= 0:
        return np.zeros_like(s), np.zeros_like(s)
    fraction = energy / total
    return fraction, np.cumsum(fraction)


def _check_spectrum(singular_values: Array) -> np.ndarray:
    s = np.asarray(_to_numpy(_as_array(singular_values)), dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"singular_values must be 1-D; got shape {s.shape}")
    if not np.isfinite(s).all() or (s < 0).any():
        raise ValueError("singular_values must be finite and >= 0")
    return s


def choose_rank(singular_values: Array, k: int | None = None, ratio: float | None = None) -> int:
    """The rank of the shared subspace: a fixed k, or the paper's dynamic energy-ratio rule.

    Args:
        singular_values: (r,) descending, r = min(d_a, d_b) (the full thin spectrum of C).
        k: fixed rank, 0 <= k <= r.
        ratio: energy ratio in (0, 1]; the rank is the smallest k with
            sum_{i<=k} s_i^2 / sum_i s_i^2 >= ratio. An all-zero spectrum gives 0 (nothing is shared).

    Exactly one of k / ratio must be given.
    """
    k, ratio = _check_rank_args(k, ratio)
    s = _check_spectrum(singular_values)
    if k is not None:
        if k > len(s):
            raise ValueError(f"k={k} exceeds min(d_a, d_b)={len(s)}, the number of singular directions")
        return k
    _, cumulative = energy_fractions(s)
    if len(s) == 0 or cumulative[-1] <= 0:
        return 0
    # A small tolerance so that ratio=1.0 is reached despite rounding in the cumulative sum.
    return int(min(len(s), np.searchsorted(cumulative, ratio - 1e-12, side="left") + 1))


# ------------------------------------------------------------------------------------------------------------
# permutation null for the rank


@dataclass
class PermutationNull:
    """Noise floor of the cross-covariance spectrum under shuffled item pairing (all float64 numpy).

    Attributes:
        observed: (r,) singular values of the real cross-covariance, descending.
        null: (B, r) singular values of the B permuted cross-covariances, each row descending.
        floor: the ``quantile`` over permutations of the LARGEST null singular value (max statistic: comparing
            every observed value with the same floor controls the family-wise error over ranks).
        per_rank_floor: (r,) the ``quantile`` of the i-th null singular value, per rank (for plotting).
        suggested_k: number of observed singular values above ``floor``.
        p_values: (r,) max-statistic adjusted p-values, (1 + #{b : max null_b >= observed_i}) / (B + 1).
        quantile, n_permutations, seed: the settings used.
    """

    observed: np.ndarray
    null: np.ndarray
    floor: float
    per_rank_floor: np.ndarray
    suggested_k: int
    p_values: np.ndarray
    quantile: float
    n_permutations: int
    seed: int


def permutation_null(X_a: Array, X_b: Array, n_permutations: int = 20, quantile: float = 0.95, seed: int = 0,
                     cross_cov: CrossCovariance | None = None) -> PermutationNull:
    """Which singular values of C stand above what unpaired items would give.

    Shuffling the item pairing (rows of X_b) B times keeps each modality's own covariance but destroys the
    cross-modal link, so the permuted spectra are the noise floor of the estimator at this n.

    Args:
        X_a: (n, d_a), X_b: (n, d_b), numpy or torch (computed on the tensors' device).
        n_permutations: B >= 1.
        quantile: in (0, 1), e.g. 0.95.
        seed: seeds a numpy Generator that draws the permutations (the same for numpy and torch input).
        cross_cov: the already computed :func:`cross_covariance` of (X_a, X_b), to skip recomputing it.

    Cost: B products of 2 n d_a d_b flops (about 0.45 s each on one CPU core for 7,050 x 4,096 vs 384 in
    float32, so ~10 s for B = 20 single-threaded, a few seconds multi-threaded, under a second on a GPU).
    The null products run in float32 when both inputs are float32 (or narrower) and in float64 otherwise: a
    noise-floor quantile does not need more than float32, and float32 halves the cost. The null spectra come
    from the eigenvalues of the small Gram matrix (see ``_svdvals_gram``), the observed from a float64 SVD.
    """
    if (isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer))
            or n_permutations < 1):
        raise ValueError(f"n_permutations must be an integer >= 1; got n_permutations={n_permutations!r}")
    if not (0.0 < float(quantile) < 1.0):
        raise ValueError(f"quantile must be in (0, 1); got quantile={quantile!r}")
    X_a, X_b = _check_pair(X_a, X_b)
    cc = cross_covariance(X_a, X_b) if cross_cov is None else cross_cov
    observed = _svdvals(cc.matrix)
    n = X_a.shape[0]
    double = _is_float64(X_a) or _is_float64(X_b) or not (_is_floating(X_a) and _is_floating(X_b))
    with torch.no_grad():
        if _is_torch(X_a):
            X_a, X_b = X_a.detach(), X_b.detach()
        # Centre once (in the compute dtype); a row permutation of a centred matrix stays centred.
        a_c = _cast(X_a, double) - _like(X_a, _to_numpy(cc.mean_a), double)
        b_c = _cast(X_b, double) - _like(X_b, _to_numpy(cc.mean_b), double)
        rng = np.random.default_rng(seed)
        null = np.empty((int(n_permutations), len(observed)), dtype=np.float64)
        for i in range(int(n_permutations)):
            perm = rng.permutation(n)
            if _is_torch(b_c):
                perm = torch.as_tensor(perm, device=b_c.device)
            null[i] = _svdvals_gram(a_c.T @ b_c[perm]) / (n - 1)
    floor = float(np.quantile(null[:, 0], quantile))
    per_rank_floor = np.quantile(null, quantile, axis=0)
    p_values = (1 + (null[:, 0][None, :] >= observed[:, None]).sum(1)) / (n_permutations + 1)
    return PermutationNull(observed=observed, null=null, floor=floor, per_rank_floor=per_rank_floor,
                           suggested_k=int((observed > floor).sum()), p_values=p_values.astype(np.float64),
                           quantile=float(quantile), n_permutations=int(n_permutations), seed=int(seed))


# ------------------------------------------------------------------------------------------------------------
# input placement


def _project(X: Any, U: np.ndarray | torch.Tensor, lam: float, name: str) -> Array:
    """x -> x - lam (x U) U^T over the last axis of X, in X's backend and device (dtypes: see module doc)."""
    X = _as_array(X)
    d = U.shape[0]
    if X.ndim < 1 or X.shape[-1] != d:
        raise ValueError(f"{name} must have {d} feature columns (the fitted dimension); got shape "
                         f"{tuple(X.shape)}")
    if _is_torch(X):
        out_dtype = X.dtype if X.dtype.is_floating_point else torch.get_default_dtype()
        work = torch.float64 if out_dtype == torch.float64 else torch.float32
        Xw = X.to(work)
        Uw = torch.as_tensor(U, dtype=work, device=X.device)
    else:
        out_dtype = X.dtype if np.issubdtype(X.dtype, np.floating) else np.dtype(np.float64)
        work = np.float64 if out_dtype == np.float64 else np.float32
        Xw = X.astype(work, copy=False)
        Uw = np.asarray(U, dtype=work)
    if lam == 0.0 or U.shape[1] == 0:
        out = Xw.clone() if _is_torch(Xw) else Xw.copy()
    else:
        out = Xw - lam * ((Xw @ Uw) @ Uw.T)
    return out.to(out_dtype) if _is_torch(out) else out.astype(out_dtype, copy=False)


class CLEARProjector:
    """Input-placement CLEAR: fit the shared subspace on one set of items, project any rows.

    Args:
        k: fixed rank of the shared subspace (0 <= k <= min(d_a, d_b), checked at fit), or
        ratio: energy ratio in (0, 1] for the dynamic rank rule (see :func:`choose_rank`); give exactly one.
        lam: projection strength in [0, 1]; 1 = exact null-space projection.

    Fitted attributes (float64 numpy whatever the input kind):
        basis_a_ (d_a, k_), basis_b_ (d_b, k_): top-k left / right singular vectors of C.
        singular_values_ (min(d_a, d_b),): the whole spectrum of C, descending.
        k_: the rank used; mean_a_ (d_a,), mean_b_ (d_b,), n_fit_: the fitting set's means and size.
        modalities_: (name_a, name_b) when fitted through :func:`fit_modalities`, else None.
    """

    def __init__(self, k: int | None = None, ratio: float | None = None, lam: float = 1.0):
        self.k, self.ratio = _check_rank_args(k, ratio)
        self.lam = _check_lam(lam)
        self.modalities_: tuple[str, str] | None = None

    # -- fitting ---------------------------------------------------------------------------------------------

    def fit(self, X_a: Array, X_b: Array) -> CLEARProjector:
        """Fit on (n, d_a) and (n, d_b) features (numpy or torch); returns self."""
        return self.fit_cross_covariance(cross_covariance(X_a, X_b))

    def fit_cross_covariance(self, cc: CrossCovariance) -> CLEARProjector:
        """Fit from an already computed :class:`CrossCovariance` (its SVD runs on the matrix's device)."""
        U, s, Vt = _svd(cc.matrix)
        s = _to_numpy(s).astype(np.float64)
        k = choose_rank(s, k=self.k, ratio=self.ratio)
        self.basis_a_ = np.ascontiguousarray(_to_numpy(U[:, :k]), dtype=np.float64)
        self.basis_b_ = np.ascontiguousarray(_to_numpy(Vt[:k].T), dtype=np.float64)
        self.singular_values_ = s
        self.k_ = int(k)
        self.mean_a_ = np.asarray(_to_numpy(cc.mean_a), dtype=np.float64)
        self.mean_b_ = np.asarray(_to_numpy(cc.mean_b), dtype=np.float64)
        self.n_fit_ = int(cc.n)
        return self

    def fit_transform(self, X_a: Array, X_b: Array) -> tuple[Array, Array]:
        return self.fit(X_a, X_b).transform(X_a, X_b)

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "basis_a_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("this CLEARProjector is not fitted yet: call fit(X_a, X_b) (or load a saved "
                               "one) before transform")

    @property
    def dims(self) -> tuple[int, int]:
        """(d_a, d_b) of the fitted features."""
        self._check_fitted()
        return self.basis_a_.shape[0], self.basis_b_.shape[0]

    # -- projecting ------------------------------------------------------------------------------------------

    def transform(self, X_a: Array, X_b: Array) -> tuple[Array, Array]:
        """(X_a P_a, X_b P_b) for any rows (..., d_a), (..., d_b); same kind, device, dtype as the input."""
        return self.transform_a(X_a), self.transform_b(X_b)

    def transform_a(self, X_a: Array) -> Array:
        self._check_fitted()
        return _project(X_a, self.basis_a_, self.lam, "X_a")

    def transform_b(self, X_b: Array) -> Array:
        self._check_fitted()
        return _project(X_b, self.basis_b_, self.lam, "X_b")

    def transform_features(self, features: Mapping[str, Array]) -> dict[str, Array]:
        """A copy of a modality -> features dict with the two fitted modalities projected (needs
        modalities_)."""
        self._check_fitted()
        if self.modalities_ is None:
            raise RuntimeError("transform_features needs a projector fitted through fit_modalities "
                               "(modalities_ is None); use transform(X_a, X_b) instead")
        a, b = self.modalities_
        missing = [m for m in (a, b) if m not in features]
        if missing:
            raise ValueError(f"features lacks the fitted modalities {missing}; has {sorted(features)}")
        out = dict(features)
        out[a], out[b] = self.transform(features[a], features[b])
        return out

    def projector_a(self) -> np.ndarray:
        """Dense P_a = I - lam U_k U_k^T, (d_a, d_a) float64 (for inspection, not for the hot path)."""
        self._check_fitted()
        return np.eye(self.basis_a_.shape[0]) - self.lam * self.basis_a_ @ self.basis_a_.T

    def projector_b(self) -> np.ndarray:
        """Dense P_b = I - lam W_k W_k^T, (d_b, d_b) float64."""
        self._check_fitted()
        return np.eye(self.basis_b_.shape[0]) - self.lam * self.basis_b_ @ self.basis_b_.T

    # -- persistence -----------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the fitted projector to ``path`` (.npz, written exactly there); returns the path."""
        self._check_fitted()
        path = Path(path)
        arrays = dict(
            format_version=np.int64(FORMAT_VERSION), kind=np.str_("CLEARProjector"),
            k=np.int64(-1 if self.k is None else self.k),  # -1 / nan stand for None
            ratio=np.float64(np.nan if self.ratio is None else self.ratio),
            lam=np.float64(self.lam), k_fitted=np.int64(self.k_), basis_a=self.basis_a_,
            basis_b=self.basis_b_, singular_values=self.singular_values_, mean_a=self.mean_a_,
            mean_b=self.mean_b_,
            n_fit=np.int64(self.n_fit_), modalities=np.array(self.modalities_ or (), dtype=np.str_),
        )
        with open(path, "wb") as f:  # a file handle, so numpy does not append ".npz" to the name
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CLEARProjector:
        """Read a projector written by :meth:`save`; a missing, corrupt or foreign file is a ValueError
        that names the file."""
        path = Path(path)
        required = ("format_version", "k", "ratio", "lam", "k_fitted", "basis_a", "basis_b",
                    "singular_values", "mean_a", "mean_b", "n_fit")
        if not path.is_file():
            raise ValueError(f"CLEARProjector file {path} does not exist")
        try:
            f = np.load(path, allow_pickle=False)
            if not isinstance(f, np.lib.npyio.NpzFile):  # a plain .npy array
                raise ValueError("not an .npz archive")
            with f:
                data = {key: f[key] for key in f.files}
        except (ValueError, OSError, EOFError, KeyError, TypeError, zipfile.BadZipFile) as e:
            raise ValueError(f"cannot read CLEARProjector file {path}: {type(e).__name__}: {e}") from e
        missing = [key for key in required if key not in data]
        if missing:
            raise ValueError(f"{path} is not a CLEARProjector file (missing {', '.join(missing)})")
        version = int(data["format_version"])
        if version != FORMAT_VERSION:
            raise ValueError(f"{path} has CLEARProjector format version {version}; this code reads "
                             f"{FORMAT_VERSION}")
        k, ratio = int(data["k"]), float(data["ratio"])
        try:
            obj = cls(k=None if k < 0 else k, ratio=None if math.isnan(ratio) else ratio,
                      lam=float(data["lam"]))
        except ValueError as e:
            raise ValueError(f"{path} holds invalid settings: {e}") from e
        obj.basis_a_ = np.asarray(data["basis_a"], dtype=np.float64)
        obj.basis_b_ = np.asarray(data["basis_b"], dtype=np.float64)
        obj.singular_values_ = np.asarray(data["singular_values"], dtype=np.float64)
        obj.k_ = int(data["k_fitted"])
        obj.mean_a_ = np.asarray(data["mean_a"], dtype=np.float64)
        obj.mean_b_ = np.asarray(data["mean_b"], dtype=np.float64)
        obj.n_fit_ = int(data["n_fit"])
        mods = [str(m) for m in data.get("modalities", np.array([], dtype=np.str_)).tolist()]
        obj.modalities_ = (mods[0], mods[1]) if len(mods) == 2 else None
        d_a, d_b = obj.mean_a_.shape[0], obj.mean_b_.shape[0]
        if (obj.basis_a_.shape != (d_a, obj.k_) or obj.basis_b_.shape != (d_b, obj.k_)
                or obj.singular_values_.shape != (min(d_a, d_b),)):
            raise ValueError(f"{path} is inconsistent: basis_a {obj.basis_a_.shape}, basis_b "
                             f"{obj.basis_b_.shape}, k={obj.k_}, means ({d_a},) and ({d_b},)")
        return obj

    def __repr__(self) -> str:
        rank = f"k={self.k}" if self.k is not None else f"ratio={self.ratio}"
        fitted = f", k_={self.k_}, dims={self.dims}" if self.is_fitted else ""
        return f"CLEARProjector({rank}, lam={self.lam}{fitted})"


def select_modalities(features: Mapping[str, Any],
                      modalities: Sequence[str] | None = None) -> tuple[str, str]:
    """The two modality names CLEAR will use: ``modalities`` if given, else the dict's keys; anything but
    exactly two distinct, present names is a ValueError."""
    names = list(features) if modalities is None else [str(m) for m in modalities]
    if len(names) != 2:
        listed = ", ".join(names) or "(none)"
        raise ValueError(f"CLEAR projects exactly two modalities; got {len(names)}: {listed}. "
                         f"Pick two with --modalities.")
    if names[0] == names[1]:
        raise ValueError(f"modalities must be two different names; got {names[0]!r} twice")
    missing = [m for m in names if m not in features]
    if missing:
        raise ValueError(f"modalities {missing} not among the features: {', '.join(features) or '(none)'}")
    return names[0], names[1]


def fit_modalities(features: Mapping[str, Array], modalities: Sequence[str] | None = None,
                   k: int | None = None, ratio: float | None = None, lam: float = 1.0) -> CLEARProjector:
    """Fit a :class:`CLEARProjector` on a modality -> (n, d_m) features dict holding (or restricted by
    ``modalities`` to) exactly two modalities; the names are kept in ``modalities_``."""
    a, b = select_modalities(features, modalities)
    projector = CLEARProjector(k=k, ratio=ratio, lam=lam).fit(features[a], features[b])
    projector.modalities_ = (a, b)
    return projector


# ------------------------------------------------------------------------------------------------------------
# latent placement


class LatentCLEAR(nn.Module):
    """Latent-placement CLEAR: project a backbone's encoded per-modality item embeddings each forward.

    forward(z_a (n, d_a), z_b (n, d_b)) -> (z_a P_a, z_b P_b), computed as z - lam (z U) U^T.

    In training mode the basis (U_k, W_k of the cross-covariance of z_a, z_b) is recomputed from the
    *detached* embeddings whenever it is stale: never fitted, :meth:`request_refresh` was called (the trainer
    does so at each epoch start), or ``refresh_every`` training forward passes have run since the last
    refresh. The basis is a buffer, so gradients flow through z only: the encoder is trained against a fixed
    projection, not through the SVD (whose gradient is unstable near repeated singular values). In eval mode
    the stored basis is used as is (fitted once from the given embeddings if the module was never fitted).

    Args:
        k / ratio: rank rule (exactly one), as in :func:`choose_rank`; with ratio the rank may change at
            each refresh.
        lam: projection strength in [0, 1].
        refresh_every: refresh every N training forward passes (calls 0, N, 2N, ...); None = only on
            request (and at the first call).
        svd_dtype: dtype of the cross-covariance and SVD; None = float64 (d_a x d_b is small, so float64 is
            cheap on CPU and on CUDA alike), float32 on devices without float64 (e.g. MPS).

    Attributes:
        basis_a (d_a, k_), basis_b (d_b, k_), singular_values (r,): buffers from the last refresh (they
            follow ``.to(device)`` and ``state_dict``).
        history: one dict per refresh: step (training forward passes before it), k, singular_values (numpy,
            the first min(r, 32) of the embeddings' cross-covariance, measured BEFORE the projection),
            total_energy (sum of all s_i^2).
    """

    def __init__(self, k: int | None = None, ratio: float | None = None, lam: float = 1.0,
                 refresh_every: int | None = None, svd_dtype: torch.dtype | None = None):
        super().__init__()
        self.k, self.ratio = _check_rank_args(k, ratio)
        self.lam = _check_lam(lam)
        bad = isinstance(refresh_every, bool) or not isinstance(refresh_every, (int, np.integer))
        if refresh_every is not None and (bad or refresh_every < 1):
            raise ValueError(f"refresh_every must be a positive integer or None; got "
                             f"refresh_every={refresh_every!r}")
        self.refresh_every = None if refresh_every is None else int(refresh_every)
        self.svd_dtype = svd_dtype
        self.register_buffer("basis_a", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("basis_b", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("singular_values", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("n_refreshes", torch.zeros((), dtype=torch.long))
        self.num_steps = 0  # training forward passes so far
        self._since_refresh = 0
        self._refresh_requested = False
        self.history: list[dict[str, Any]] = []

    @property
    def fitted(self) -> bool:
        return bool(self.n_refreshes > 0)

    @property
    def k_(self) -> int | None:
        """The rank used at the last refresh (None before the first)."""
        return int(self.basis_a.shape[1]) if self.fitted else None

    def request_refresh(self) -> None:
        """Recompute the basis at the next training forward pass."""
        self._refresh_requested = True

    def _is_stale(self) -> bool:
        if not self.fitted or self._refresh_requested:
            return True
        return self.refresh_every is not None and self._since_refresh >= self.refresh_every

    @torch.no_grad()
    def refresh(self, z_a: torch.Tensor, z_b: torch.Tensor) -> None:
        """Recompute the basis now from (detached) z_a (n, d_a), z_b (n, d_b) and record the spectrum."""
        if not (_is_torch(z_a) and _is_torch(z_b)):
            raise TypeError("LatentCLEAR works on torch tensors")
        z_a, z_b = z_a.detach(), z_b.detach()
        dtype = self.svd_dtype
        if dtype is None:
            dtype = torch.float32 if z_a.device.type == "mps" else torch.float64
        cc = _cross_covariance(z_a, z_b, double=True) if dtype == torch.float64 else \
            _cross_covariance(z_a, z_b, double=False)
        U, s, Vt = torch.linalg.svd(cc.matrix.to(dtype), full_matrices=False)
        s_np = s.cpu().numpy().astype(np.float64)
        k = choose_rank(s_np, k=self.k, ratio=self.ratio)
        self.basis_a = U[:, :k].contiguous()
        self.basis_b = Vt[:k].T.contiguous()
        self.singular_values = s
        self.n_refreshes += 1
        self._since_refresh = 0
        self._refresh_requested = False
        self.history.append({"step": self.num_steps, "k": int(k), "singular_values": s_np[:32].copy(),
                             "total_energy": float((s_np**2).sum())})

    def _project_z(self, z: torch.Tensor, U: torch.Tensor, name: str) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != U.shape[0]:
            raise ValueError(f"{name} must be (n_items, {U.shape[0]}) to match the stored basis; got shape "
                             f"{tuple(z.shape)} (in training mode, request_refresh() if the width changed)")
        if self.lam == 0.0 or U.shape[1] == 0:
            return z
        U = U.to(device=z.device, dtype=z.dtype)  # a buffer, no grad: d(out)/dz = P, nothing flows into U
        return z - self.lam * ((z @ U) @ U.T)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            if self._is_stale():
                self.refresh(z_a, z_b)
            self._since_refresh += 1
            self.num_steps += 1
        elif not self.fitted:
            self.refresh(z_a, z_b)
        return self._project_z(z_a, self.basis_a, "z_a"), self._project_z(z_b, self.basis_b, "z_b")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 (torch's signature)
        # The bases' shapes are only known after a refresh: resize the empty buffers to the saved ones first.
        for name in ("basis_a", "basis_b", "singular_values"):
            key = prefix + name
            if key in state_dict:
                current = getattr(self, name)
                setattr(self, name, torch.empty_like(state_dict[key], device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        rank = f"k={self.k}" if self.k is not None else f"ratio={self.ratio}"
        return f"{rank}, lam={self.lam}, refresh_every={self.refresh_every}, k_={self.k_}"

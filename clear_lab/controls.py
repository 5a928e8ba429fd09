"""Control subspaces for ablations: is it the *shared* directions that matter, or removing any k directions?

CLEAR removes ``U_k`` (visual) and ``W_k`` (text), the top-k singular directions of the cross-covariance. Two
controls remove other k-dimensional subspaces with the same projector ``P = I - lam Q Q^T``:

* ``random``: ``Q`` = k orthonormal directions drawn uniformly (QR of a Gaussian matrix), per modality;
* ``pca``: ``Q`` = the modality's own top-k principal directions (right singular vectors of the centred
  ``X_m``), which carry the most variance of that modality alone, shared or not.

If CLEAR's gain came from removing high-variance directions in general, ``pca`` would match it; if it came from
any dimensionality reduction, ``random`` would.
"""

from __future__ import annotations

import numpy as np

BASES = ("shared", "random", "pca")


def random_basis(d: int, k: int, seed: int = 0) -> np.ndarray:
    """``(d, k)`` orthonormal columns spanning a uniformly random k-dimensional subspace of R^d."""
    if not 0 <= k <= d:
        raise ValueError(f"k must be in [0, {d}], got {k}")
    g = np.random.default_rng(seed).standard_normal((d, k))
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))  # sign fix makes Q Haar-distributed


def pca_basis(x: np.ndarray, k: int) -> np.ndarray:
    """``(d, k)`` top-k principal directions of ``x`` (n, d), computed in float64 on the centred matrix."""
    x = np.asarray(x, dtype=np.float64)
    if not 0 <= k <= min(x.shape):
        raise ValueError(f"k must be in [0, {min(x.shape)}], got {k}")
    xc = x - x.mean(axis=0)
    # eigenvectors of the d x d covariance: cheaper than an SVD of n x d when n >> d
    evals, evecs = np.linalg.eigh(xc.T @ xc)
    return evecs[:, np.argsort(evals)[::-1][:k]]


def project_out(x: np.ndarray, basis: np.ndarray, lam: float = 1.0) -> np.ndarray:
    """``x (I - lam Q Q^T)``, keeping ``x``'s dtype."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    q = basis.astype(np.float64)
    out = x.astype(np.float64) - lam * (x.astype(np.float64) @ q) @ q.T
    return out.astype(x.dtype, copy=False)


def control_bases(x_a: np.ndarray, x_b: np.ndarray, k: int, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The two modalities' ``(d, k)`` bases of a control subspace (``random`` or ``pca``)."""
    if kind == "random":
        return random_basis(x_a.shape[1], k, seed), random_basis(x_b.shape[1], k, seed + 1)
    if kind == "pca":
        return pca_basis(x_a, k), pca_basis(x_b, k)
    raise ValueError(f"control basis must be random or pca, got {kind!r}")

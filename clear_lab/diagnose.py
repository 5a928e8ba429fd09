"""Diagnose cross-modal redundancy on bare feature matrices (no interactions needed).

:func:`diagnose` answers, for two modalities' item features X_a (n, d_a), X_b (n, d_b):

* how much of the cross-covariance spectrum is concentrated in a few directions (singular values, energy
  fractions and their cumulative sum);
* how many of them stand above the permutation noise floor (shuffled item pairing; see
  :func:`clear_lab.projection.permutation_null`), i.e. which rank k CLEAR should remove;
* how similar the two modalities are before and after the projection (linear CKA, biased and debiased);
* on synthetic data with a planted shared subspace, how close the fitted bases are to it (principal angles).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from clear_lab.cka import LinearMoments, cka_from_moments, linear_moments
from clear_lab.projection import (
    Array,
    CLEARProjector,
    CrossCovariance,
    _check_lam,
    _to_numpy,
    choose_rank,
    cross_covariance,
    energy_fractions,
    permutation_null,
)


def principal_angles(A: Any, B: Any) -> np.ndarray:
    """Principal angles in degrees, ascending, between the column spaces of A (d, p) and B (d, q).

    Orthonormalise with QR, then cos(theta_i) = i-th singular value of Q_A^T Q_B (clipped to [0, 1]); there
    are min(p, q) of them. A 1-D input is one column. Resolution near 0 degrees is ~1e-6 degrees (arccos of
    values near 1).
    """
    A, B = (np.asarray(_to_numpy(M), dtype=np.float64) for M in (A, B))
    A, B = (M[:, None] if M.ndim == 1 else M for M in (A, B))
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError(f"A and B must be 2-D (d, p) bases; got shapes {A.shape} and {B.shape}")
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"A and B must live in the same space (same number of rows); got A {A.shape} and "
                         f"B {B.shape}")
    if min(A.shape[1], B.shape[1]) == 0:
        return np.zeros(0)
    Q_a, _ = np.linalg.qr(A)
    Q_b, _ = np.linalg.qr(B)
    cos = np.linalg.svd(Q_a.T @ Q_b, compute_uv=False)
    return np.sort(np.degrees(np.arccos(np.clip(cos, 0.0, 1.0))))


def load_planted_bases(data_dir: str | Path, names: tuple[str, str] = ("image", "text")
                       ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The planted shared bases ``<name>_planted_basis.npy`` of a synthetic data set, one per name: a tuple
    (planted_a, planted_b), each None when its file is absent (real data has none), ready for diagnose()."""
    out = []
    for name in names:
        path = Path(data_dir) / f"{name}_planted_basis.npy"
        out.append(np.load(path, allow_pickle=False).astype(np.float64) if path.is_file() else None)
    return out[0], out[1]


def _project_moments(m: LinearMoments, projector: CLEARProjector, X_a: Array, X_b: Array) -> LinearMoments:
    """LinearMoments of (X_a P_a, X_b P_b) from those of (X_a, X_b) without a second pass of d^2 n products.

    Centring commutes with x -> x P, so the centred projected rows are xc P: their products are P^T G P and
    their row norms ||xc P||^2 = ||xc||^2 - (2 lam - lam^2) ||xc U||^2, since P^2 = I - (2 lam - lam^2) UU^T.
    """
    lam, shrink = projector.lam, 2 * projector.lam - projector.lam**2

    def sandwich(G: np.ndarray, U: np.ndarray, V: np.ndarray) -> np.ndarray:  # (I-lam UU^T) G (I-lam VV^T)
        GV = G @ V
        UtG = U.T @ G
        return G - lam * U @ UtG - lam * GV @ V.T + lam**2 * U @ (UtG @ V) @ V.T

    def centred_scores(X: Array, mean: np.ndarray, U: np.ndarray) -> np.ndarray:  # ||(x - mu) U||^2 per row
        X = _to_numpy(X)
        out = np.empty(X.shape[0])
        for s in range(0, X.shape[0], 4096):
            c = (X[s:s + 4096].astype(np.float64) - mean) @ U
            out[s:s + 4096] = np.einsum("ij,ij->i", c, c)
        return out

    U, W = projector.basis_a_, projector.basis_b_
    return LinearMoments(
        n=m.n, xtx=sandwich(m.xtx, U, U), yty=sandwich(m.yty, W, W), xty=sandwich(m.xty, U, W),
        row_sq_x=m.row_sq_x - shrink * centred_scores(X_a, projector.mean_a_, U),
        row_sq_y=m.row_sq_y - shrink * centred_scores(X_b, projector.mean_b_, W))


def _projected_spectrum(cc: CrossCovariance, projector: CLEARProjector) -> np.ndarray:
    """Singular values of P_a C P_b (descending): the top k scaled by (1 - lam)^2, the rest unchanged."""
    C = np.asarray(_to_numpy(cc.matrix), dtype=np.float64)
    U, W, lam = projector.basis_a_, projector.basis_b_, projector.lam
    CW = C @ W
    PC = C - lam * U @ (U.T @ C)
    M = PC - lam * CW @ W.T + lam**2 * U @ (U.T @ CW) @ W.T
    return np.linalg.svd(M, compute_uv=False)


def _float(x: Any) -> float | None:
    """A JSON-safe float (NaN / inf -> None)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _floats(a: Any) -> list[float | None]:
    return [_float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def diagnose(X_a: Array, X_b: Array, k: int | None = None, ratio: float | None = None, lam: float = 1.0,
             n_permutations: int = 20, seed: int = 0, planted_a: Any = None, planted_b: Any = None,
             names: tuple[str, str] = ("image", "text"), quantile: float = 0.95) -> dict[str, Any]:
    """Redundancy report of X_a (n, d_a) vs X_b (n, d_b); plain JSON-serialisable values (NaN -> None).

    Args:
        k / ratio: the rank to project (at most one); neither = the permutation null's ``suggested_k``.
        lam: projection strength for the "after" CKA and spectrum.
        n_permutations, seed, quantile: permutation null settings (n_permutations = 0 skips it; then give k or
            ratio).
        planted_a (d_a, r), planted_b (d_b, r): planted shared bases, if known (see
            :func:`load_planted_bases`).
        names: the two modalities' names, used as keys.

    Returns a dict with: names, n, dims, singular_values, energy_fraction, energy_cumulative, null_floor,
    per_rank_floor, p_values (max-statistic), null_quantile, n_permutations, seed, suggested_k (the null
    entries are None when n_permutations = 0), k_used, k_source ("k", "ratio" or "permutation_null"), lam,
    projected_singular_values, cka {before, after} x {linear, linear_debiased}, principal_angles_deg
    {name: [...]} (only the modalities whose planted basis was given) or None; and the flat aliases
    linear_cka_{before,after}, linear_cka_debiased_{before,after}, principal_angles_deg_{a,b}.
    """
    if k is not None and ratio is not None:
        raise ValueError(f"give at most one of k and ratio; got k={k!r}, ratio={ratio!r}")
    lam = _check_lam(lam)
    if len(names) != 2:
        raise ValueError(f"names must be two modality names; got {names!r}")
    cc = cross_covariance(X_a, X_b)
    s = np.asarray(_to_numpy(cc.matrix), dtype=np.float64)
    s = np.linalg.svd(s, compute_uv=False)
    fraction, cumulative = energy_fractions(s)

    null = None
    if n_permutations:
        null = permutation_null(X_a, X_b, n_permutations=n_permutations, quantile=quantile, seed=seed,
                                cross_cov=cc)
    if k is not None:
        k_used, k_source = choose_rank(s, k=k), "k"
    elif ratio is not None:
        k_used, k_source = choose_rank(s, ratio=ratio), "ratio"
    elif null is not None:
        k_used, k_source = null.suggested_k, "permutation_null"
    else:
        raise ValueError("with n_permutations=0 there is no permutation null to choose the rank from: give "
                         "k or ratio")

    projector = CLEARProjector(k=k_used, lam=lam).fit_cross_covariance(cc)
    before = linear_moments(X_a, X_b)
    after = _project_moments(before, projector, X_a, X_b)
    debias = cc.n >= 4

    def cka(m: LinearMoments) -> dict[str, float | None]:
        return {"linear": _float(cka_from_moments(m)),
                "linear_debiased": _float(cka_from_moments(m, debiased=True)) if debias else None}

    cka_before, cka_after = cka(before), cka(after)
    angles = None
    if planted_a is not None or planted_b is not None:
        angles = {}
        for name, fitted, planted in ((names[0], projector.basis_a_, planted_a),
                                      (names[1], projector.basis_b_, planted_b)):
            if planted is not None:
                angles[str(name)] = _floats(principal_angles(fitted, planted))

    return {
        "names": [str(names[0]), str(names[1])],
        "n": int(cc.n),
        "dims": {str(names[0]): int(projector.basis_a_.shape[0]),
                 str(names[1]): int(projector.basis_b_.shape[0])},
        "singular_values": _floats(s),
        "energy_fraction": _floats(fraction),
        "energy_cumulative": _floats(cumulative),
        "null_floor": None if null is None else _float(null.floor),
        "per_rank_floor": None if null is None else _floats(null.per_rank_floor),
        "p_values": None if null is None else _floats(null.p_values),
        "null_quantile": float(quantile),
        "n_permutations": int(n_permutations),
        "seed": int(seed),
        "suggested_k": None if null is None else int(null.suggested_k),
        "k_used": int(k_used),
        "k_source": k_source,
        "lam": float(lam),
        "projected_singular_values": _floats(_projected_spectrum(cc, projector)),
        "cka": {"before": cka_before, "after": cka_after},
        "principal_angles_deg": angles,
        # flat aliases, for command-line summaries and tables
        "linear_cka_before": cka_before["linear"],
        "linear_cka_after": cka_after["linear"],
        "linear_cka_debiased_before": cka_before["linear_debiased"],
        "linear_cka_debiased_after": cka_after["linear_debiased"],
        "principal_angles_deg_a": None if angles is None else angles.get(str(names[0])),
        "principal_angles_deg_b": None if angles is None else angles.get(str(names[1])),
    }

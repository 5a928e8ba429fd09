"""Properties of the CLEAR projection (clear_lab.projection): the spectral identity, idempotence, numpy /
torch agreement, persistence, validation, the permutation null and the latent-placement module."""

import numpy as np
import pytest
import torch

from clear_lab.projection import (
    CLEARProjector,
    LatentCLEAR,
    choose_rank,
    cross_covariance,
    energy_fractions,
    fit_modalities,
    permutation_null,
    select_modalities,
)


def planted(n=2000, d_a=40, d_b=30, r=3, n_specific=4, noise=1.0, seed=0):
    """X_a = Z A^T + S_a A'^T + noise, X_b = Z B^T + S_b B'^T + noise: a shared rank-r factor Z (distinct
    strengths 3, 2.6, 2.2, ...) plus independent modality-specific parts; returns X_a, X_b, A, B."""
    rng = np.random.default_rng(seed)
    Qa = np.linalg.qr(rng.standard_normal((d_a, r + n_specific)))[0]
    Qb = np.linalg.qr(rng.standard_normal((d_b, r + n_specific)))[0]
    Z = rng.standard_normal((n, r)) * (3.0 - 0.4 * np.arange(r))
    X_a = Z @ Qa[:, :r].T + 2.0 * rng.standard_normal((n, n_specific)) @ Qa[:, r:].T
    X_b = Z @ Qb[:, :r].T + 2.0 * rng.standard_normal((n, n_specific)) @ Qb[:, r:].T
    X_a = X_a + noise * rng.standard_normal((n, d_a)) + 5.0  # CLEAR acts on raw, uncentred features
    X_b = X_b + noise * rng.standard_normal((n, d_b)) - 1.0
    return X_a, X_b, Qa[:, :r], Qb[:, :r]


def random_pair(n=200, d_a=12, d_b=9, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 4))
    X_a = Z @ rng.standard_normal((4, d_a)) + rng.standard_normal((n, d_a)) + 3.0
    X_b = Z @ rng.standard_normal((4, d_b)) + rng.standard_normal((n, d_b))
    return X_a, X_b


def svals(M):
    return np.linalg.svd(np.asarray(M), compute_uv=False)


# ---------------------------------------------------------------------------------------------------------
# the spectral identity and the projector's algebra


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_projected_cross_covariance_scales_top_k(lam, k):
    X_a, X_b = random_pair()
    p = CLEARProjector(k=k, lam=lam).fit(X_a, X_b)
    s = p.singular_values_
    np.testing.assert_allclose(s, svals(cross_covariance(X_a, X_b).matrix), atol=1e-12)
    Y_a, Y_b = p.transform(X_a, X_b)
    got = svals(cross_covariance(Y_a, Y_b).matrix)
    want = np.sort(np.concatenate([(1 - lam) ** 2 * s[:k], s[k:]]))[::-1]
    np.testing.assert_allclose(got, want, atol=1e-8)
    # ... and it is P_a C P_b of the raw cross-covariance (centring commutes with x -> x P)
    C = cross_covariance(X_a, X_b).matrix
    np.testing.assert_allclose(cross_covariance(Y_a, Y_b).matrix, p.projector_a() @ C @ p.projector_b(),
                               atol=1e-10)


def test_idempotent_and_symmetric_at_lam_1():
    X_a, X_b = random_pair()
    p = CLEARProjector(k=3, lam=1.0).fit(X_a, X_b)
    for P in (p.projector_a(), p.projector_b()):
        np.testing.assert_allclose(P @ P, P, atol=1e-12)
        np.testing.assert_allclose(P, P.T, atol=0)
    Y_a, Y_b = p.transform(X_a, X_b)
    Z_a, Z_b = p.transform(Y_a, Y_b)
    np.testing.assert_allclose(Z_a, Y_a, atol=1e-10)
    np.testing.assert_allclose(Z_b, Y_b, atol=1e-10)
    np.testing.assert_allclose(Y_a @ p.basis_a_, 0, atol=1e-10)
    # lam < 1 is symmetric too, but not idempotent
    P = CLEARProjector(k=3, lam=0.5).fit(X_a, X_b).projector_a()
    np.testing.assert_allclose(P, P.T, atol=0)
    assert not np.allclose(P @ P, P)


def test_transform_equals_dense_projector_on_other_rows():
    X_a, X_b = random_pair(n=300)
    p = CLEARProjector(k=2, lam=0.7).fit(X_a[:200], X_b[:200])
    Y_a, Y_b = p.transform(X_a[200:], X_b[200:])
    np.testing.assert_allclose(Y_a, X_a[200:] @ p.projector_a(), atol=1e-10)
    np.testing.assert_allclose(Y_b, X_b[200:] @ p.projector_b(), atol=1e-10)
    assert p.n_fit_ == 200 and Y_a.shape == (100, 12)
    np.testing.assert_allclose(p.transform_a(X_a[0]), X_a[0] @ p.projector_a(), atol=1e-10)  # one row


def test_fit_transform_and_dtypes_kept():
    X_a, X_b = random_pair()
    p = CLEARProjector(k=2)
    Y_a, Y_b = p.fit_transform(X_a.astype(np.float32), X_b.astype(np.float32))
    assert Y_a.dtype == np.float32 and Y_b.dtype == np.float32
    assert p.basis_a_.dtype == np.float64 and p.basis_a_.shape == (12, 2) and p.basis_b_.shape == (9, 2)
    t = p.transform_a(torch.tensor(X_a, dtype=torch.float32))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32


def test_cross_covariance_chunking_and_means():
    X_a, X_b = random_pair(n=101)
    full = cross_covariance(X_a, X_b)
    chunked = cross_covariance(X_a, X_b, chunk_size=7)
    ref = (X_a - X_a.mean(0)).T @ (X_b - X_b.mean(0)) / 100
    np.testing.assert_allclose(full.matrix, ref, atol=1e-12)
    np.testing.assert_allclose(chunked.matrix, ref, atol=1e-12)
    np.testing.assert_allclose(chunked.mean_a, X_a.mean(0), atol=1e-12)
    assert full.n == 101 and full.matrix.dtype == np.float64
    f32 = cross_covariance(X_a.astype(np.float32), X_b.astype(np.float32), chunk_size=10)
    assert f32.matrix.dtype == np.float64


def test_cross_covariance_validation():
    X_a, X_b = random_pair(n=10)
    with pytest.raises(ValueError, match=r"\(10, 12\).*\(9, 9\)"):
        cross_covariance(X_a, X_b[:9])
    with pytest.raises(ValueError, match="n >= 2"):
        cross_covariance(X_a[:1], X_b[:1])
    with pytest.raises(ValueError, match="2-D"):
        cross_covariance(X_a[:, 0], X_b)
    bad = X_a.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cross_covariance(bad, X_b)


# ---------------------------------------------------------------------------------------------------------
# numpy / torch agreement


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_numpy_torch_agree(dtype, tol):
    X_a, X_b = random_pair()
    X_a, X_b = X_a.astype(dtype), X_b.astype(dtype)
    T_a, T_b = torch.from_numpy(X_a), torch.from_numpy(X_b)
    p_np = CLEARProjector(k=3, lam=0.8).fit(X_a, X_b)
    p_t = CLEARProjector(k=3, lam=0.8).fit(T_a, T_b)
    # compare projectors U U^T, never raw singular vectors (their signs are arbitrary)
    for a, b in ((p_np.basis_a_, p_t.basis_a_), (p_np.basis_b_, p_t.basis_b_)):
        np.testing.assert_allclose(a @ a.T, b @ b.T, atol=tol)
    np.testing.assert_allclose(p_np.singular_values_, p_t.singular_values_, rtol=tol, atol=tol)
    Y_np = p_np.transform(X_a, X_b)
    Y_t = p_np.transform(T_a, T_b)
    for y_np, y_t in zip(Y_np, Y_t):
        assert isinstance(y_t, torch.Tensor) and y_t.dtype == T_a.dtype and y_np.dtype == dtype
        np.testing.assert_allclose(y_t.numpy(), y_np, atol=tol * np.abs(y_np).max())
    cc_t = cross_covariance(T_a, T_b)
    assert isinstance(cc_t.matrix, torch.Tensor) and cc_t.matrix.dtype == torch.float64


def test_mixed_kinds_refused():
    X_a, X_b = random_pair()
    with pytest.raises(ValueError, match="both be numpy arrays or both torch"):
        cross_covariance(X_a, torch.from_numpy(X_b))


# ---------------------------------------------------------------------------------------------------------
# persistence


def test_save_load_round_trip(tmp_path):
    X_a, X_b = random_pair()
    p = CLEARProjector(ratio=0.6, lam=0.9).fit(X_a, X_b)
    path = p.save(tmp_path / "proj.npz")
    q = CLEARProjector.load(path)
    assert (q.k, q.ratio, q.lam, q.k_, q.n_fit_) == (None, 0.6, 0.9, p.k_, 200)
    for y, z in zip(p.transform(X_a, X_b), q.transform(X_a, X_b)):
        assert np.array_equal(y, z)
    # a name without .npz is written exactly there
    other = p.save(tmp_path / "proj.bin")
    assert other.exists() and CLEARProjector.load(other).k_ == p.k_


def test_load_bad_files(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not an npz archive at all" * 10)
    with pytest.raises(ValueError, match="garbage.npz"):
        CLEARProjector.load(garbage)
    X_a, X_b = random_pair()
    good = CLEARProjector(k=2).fit(X_a, X_b).save(tmp_path / "good.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated.npz"):
        CLEARProjector.load(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(ValueError, match="foreign.npz.*missing"):
        CLEARProjector.load(foreign)
    plain = tmp_path / "plain.npz"
    with open(plain, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ValueError, match="plain.npz.*not an .npz"):
        CLEARProjector.load(plain)
    with pytest.raises(ValueError, match="missing.npz"):
        CLEARProjector.load(tmp_path / "missing.npz")


def test_unfitted_and_dimension_errors():
    X_a, X_b = random_pair()
    p = CLEARProjector(k=2)
    with pytest.raises(RuntimeError, match="not fitted"):
        p.transform(X_a, X_b)
    p.fit(X_a, X_b)
    with pytest.raises(ValueError, match=r"12 feature columns.*\(200, 9\)"):
        p.transform_a(X_b)


# ---------------------------------------------------------------------------------------------------------
# rank rules and validation


def test_energy_and_choose_rank_ratio():
    s = np.sqrt([50.0, 30.0, 15.0, 5.0])  # energy fractions 0.5, 0.3, 0.15, 0.05
    fraction, cumulative = energy_fractions(s)
    np.testing.assert_allclose(fraction, [0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(cumulative, [0.5, 0.8, 0.95, 1.0])
    for ratio, want in [(0.1, 1), (0.5, 1), (0.51, 2), (0.8, 2), (0.81, 3), (0.95, 3), (0.96, 4), (1.0, 4)]:
        assert choose_rank(s, ratio=ratio) == want, ratio
    assert choose_rank(s, k=0) == 0 and choose_rank(s, k=4) == 4
    assert choose_rank(np.zeros(3), ratio=0.9) == 0


@pytest.mark.parametrize("kwargs,word", [
    (dict(k=-1), "k"), (dict(k=5), "k"), (dict(k=1.5), "k"),
    (dict(ratio=0.0), "ratio"), (dict(ratio=1.2), "ratio"), (dict(ratio=-0.1), "ratio"),
    (dict(k=1, ratio=0.5), "exactly one of k"), (dict(), "exactly one of k"),
])
def test_choose_rank_validation(kwargs, word):
    with pytest.raises(ValueError, match=word):
        choose_rank(np.ones(4), **kwargs)


@pytest.mark.parametrize("kwargs,word", [
    (dict(k=-1), r"\bk\b"), (dict(k=2, lam=-0.1), "lam"), (dict(k=2, lam=1.5), "lam"),
    (dict(k=2, lam=float("nan")), "lam"), (dict(ratio=0), "ratio"), (dict(ratio=1.01), "ratio"),
    (dict(k=2, ratio=0.5), "exactly one of k"),
])
def test_projector_validation(kwargs, word):
    with pytest.raises(ValueError, match=word):
        CLEARProjector(**kwargs)
    with pytest.raises(ValueError, match=word):
        LatentCLEAR(**kwargs)


def test_k_beyond_dims_at_fit():
    X_a, X_b = random_pair()
    with pytest.raises(ValueError, match=r"k=10 exceeds min\(d_a, d_b\)=9"):
        CLEARProjector(k=10).fit(X_a, X_b)


def test_exactly_two_modalities():
    X_a, X_b = random_pair()
    three = {"image": X_a, "text": X_b, "audio": X_b}
    with pytest.raises(ValueError, match="exactly two modalities; got 3: image, text, audio.*--modalities"):
        fit_modalities(three, k=2)
    with pytest.raises(ValueError, match="modalities"):
        select_modalities({"image": X_a})
    with pytest.raises(ValueError, match="modalities"):
        select_modalities(three, ["image", "video"])
    p = fit_modalities(three, modalities=["image", "audio"], k=2)
    assert p.modalities_ == ("image", "audio")
    out = p.transform_features(three)
    np.testing.assert_allclose(out["image"], p.transform_a(X_a))
    assert out["text"] is X_b


# ---------------------------------------------------------------------------------------------------------
# permutation null


def test_permutation_null_finds_planted_rank():
    X_a, X_b, _, _ = planted(r=3)
    null = permutation_null(X_a, X_b, n_permutations=20, seed=0)
    assert null.suggested_k == 3
    assert null.null.shape == (20, 30) and null.per_rank_floor.shape == (30,)
    assert null.floor == pytest.approx(np.quantile(null.null[:, 0], 0.95))
    assert np.all(np.diff(null.null, axis=1) <= 1e-12)  # each null spectrum descending
    assert null.p_values[:3].max() == pytest.approx(1 / 21) and null.p_values[3] > 0.05
    # the same permutations (numpy Generator) for torch input
    t = permutation_null(torch.from_numpy(X_a), torch.from_numpy(X_b), n_permutations=20, seed=0)
    np.testing.assert_allclose(t.null, null.null, rtol=1e-8)
    assert sum(permutation_null(*planted(r=2, seed=s)[:2], n_permutations=20, seed=s).suggested_k == 2
               for s in range(1, 4)) >= 2


def test_permutation_null_independent_data():
    rng = np.random.default_rng(0)
    hits = []
    for seed in range(5):
        X_a = rng.standard_normal((500, 20)) @ np.diag(np.linspace(0.5, 3, 20))
        X_b = rng.standard_normal((500, 15)) + 2.0
        hits.append(permutation_null(X_a, X_b, n_permutations=20, seed=seed).suggested_k)
    assert sum(h == 0 for h in hits) >= 4, hits


def test_permutation_null_validation():
    X_a, X_b = random_pair()
    with pytest.raises(ValueError, match="n_permutations"):
        permutation_null(X_a, X_b, n_permutations=0)
    with pytest.raises(ValueError, match="quantile"):
        permutation_null(X_a, X_b, quantile=1.0)


# ---------------------------------------------------------------------------------------------------------
# latent placement


def latent_pair(n=60, d_a=8, d_b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    z_a = z @ torch.randn(3, d_a, generator=g, dtype=torch.float64) + torch.randn(n, d_a, generator=g,
                                                                                   dtype=torch.float64)
    z_b = z @ torch.randn(3, d_b, generator=g, dtype=torch.float64) + torch.randn(n, d_b, generator=g,
                                                                                   dtype=torch.float64)
    return z_a, z_b


def test_latent_output_orthogonal_to_basis_and_matches_projector():
    z_a, z_b = latent_pair()
    m = LatentCLEAR(k=2)
    out_a, out_b = m(z_a, z_b)
    assert m.k_ == 2 and m.basis_a.shape == (8, 2) and m.basis_b.shape == (6, 2)
    assert torch.allclose(out_a @ m.basis_a, torch.zeros(60, 2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(out_b @ m.basis_b, torch.zeros(60, 2, dtype=torch.float64), atol=1e-10)
    ref = CLEARProjector(k=2).fit(z_a.numpy(), z_b.numpy()).transform(z_a.numpy(), z_b.numpy())
    np.testing.assert_allclose(out_a.numpy(), ref[0], atol=1e-10)
    np.testing.assert_allclose(out_b.numpy(), ref[1], atol=1e-10)


def test_latent_gradient_flows_through_z_only():
    z_a, z_b = latent_pair()
    z_a.requires_grad_(True)
    z_b.requires_grad_(True)
    m = LatentCLEAR(k=2, lam=0.7)
    out_a, out_b = m(z_a, z_b)
    g_a, g_b = torch.randn_like(out_a), torch.randn_like(out_b)
    ((out_a * g_a).sum() + (out_b * g_b).sum()).backward()
    assert not m.basis_a.requires_grad and not m.basis_b.requires_grad
    # with a fixed basis d<out, g>/dz = g P (P symmetric); a gradient through the SVD would add terms
    P_a = torch.eye(8, dtype=torch.float64) - 0.7 * m.basis_a @ m.basis_a.T
    P_b = torch.eye(6, dtype=torch.float64) - 0.7 * m.basis_b @ m.basis_b.T
    assert torch.allclose(z_a.grad, g_a @ P_a, atol=1e-12)
    assert torch.allclose(z_b.grad, g_b @ P_b, atol=1e-12)


def test_latent_refresh_every_counts_training_calls():
    m = LatentCLEAR(k=1, refresh_every=3)
    for step in range(7):
        m(*latent_pair(seed=step))
    assert [h["step"] for h in m.history] == [0, 3, 6]
    assert m.num_steps == 7 and int(m.n_refreshes) == 3


def test_latent_refresh_on_request_only():
    m = LatentCLEAR(k=1)
    for step in range(4):
        m(*latent_pair(seed=step))
    assert len(m.history) == 1
    m.request_refresh()
    basis = m.basis_a.clone()
    m(*latent_pair(seed=10))
    assert [h["step"] for h in m.history] == [0, 4]
    assert not torch.allclose(basis @ basis.T, m.basis_a @ m.basis_a.T)


def test_latent_eval_uses_stored_basis():
    m = LatentCLEAR(k=2)
    m(*latent_pair(seed=0))
    basis = m.basis_a.clone()
    m.eval()
    m.request_refresh()  # ignored in eval mode
    z_a, z_b = latent_pair(seed=1)
    out_a, _ = m(z_a, z_b)
    assert torch.equal(m.basis_a, basis) and len(m.history) == 1
    assert torch.allclose(out_a, z_a - z_a @ basis @ basis.T, atol=1e-12)
    fresh = LatentCLEAR(k=2).eval()  # never fitted: fits once
    fresh(z_a, z_b)
    fresh(*latent_pair(seed=2))
    assert len(fresh.history) == 1 and fresh.k_ == 2


def test_latent_history_is_pre_projection_spectrum():
    z_a, z_b = latent_pair()
    m = LatentCLEAR(ratio=0.9)
    m(z_a, z_b)
    s = svals(cross_covariance(z_a.numpy(), z_b.numpy()).matrix)
    h = m.history[0]
    np.testing.assert_allclose(h["singular_values"], s[:32], atol=1e-12)
    assert isinstance(h["singular_values"], np.ndarray) and h["k"] == m.k_ == choose_rank(s, ratio=0.9)
    assert h["total_energy"] == pytest.approx(float((s**2).sum()))


def test_latent_state_dict_round_trip_and_float32():
    z_a, z_b = latent_pair()
    m = LatentCLEAR(k=2)
    m(z_a.float(), z_b.float())
    fresh = LatentCLEAR(k=2)
    fresh.load_state_dict(m.state_dict())
    fresh.eval()
    out_a, _ = fresh(z_a.float(), z_b.float())
    assert out_a.dtype == torch.float32 and fresh.k_ == 2 and len(fresh.history) == 0
    assert torch.equal(fresh.basis_a, m.basis_a)
    with pytest.raises(ValueError, match=r"z_a must be \(n_items, 8\)"):
        fresh(z_a[:, :5], z_b)
    with pytest.raises(ValueError, match="refresh_every"):
        LatentCLEAR(k=1, refresh_every=0)

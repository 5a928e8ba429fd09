"""Tests for clear_lab.synthetic: determinism, MMRec format and split, and the planted subspace."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from clear_lab.synthetic import (
    GENERATOR_VERSION,
    PRESETS,
    SyntheticData,
    check_mmrec,
    generate,
    generate_preset,
    split_labels,
    validate,
    write_mmrec,
)


@pytest.fixture(scope="module")
def tiny() -> SyntheticData:
    return generate(PRESETS["tiny"], seed=0)


@pytest.fixture(scope="module")
def default() -> SyntheticData:
    return generate(PRESETS["default"], seed=0)


def principal_angles_deg(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Principal angles between col(q1) and col(q2), both orthonormal: arccos of the SVs of q1^T q2."""
    s = np.linalg.svd(q1.T @ q2, compute_uv=False)
    return np.degrees(np.arccos(np.clip(s, -1.0, 1.0)))


def top_cross_cov_dirs(x1: np.ndarray, x2: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k left / right singular vectors of the centred cross-covariance x1^T x2 / (n - 1)."""
    x1 = x1.astype(np.float64) - x1.mean(0)
    x2 = x2.astype(np.float64) - x2.mean(0)
    u, _, wt = np.linalg.svd(x1.T @ x2 / (len(x1) - 1), full_matrices=False)
    return u[:, :k], wt[:k].T


def expected_split(n: int) -> tuple[int, int, int]:
    if n < 10:
        return n - 2, 1, 1
    vt = int(np.floor(0.2 * n))
    return n - vt, vt // 2, vt - vt // 2


# --- determinism ---------------------------------------------------------------------------------


def test_same_seed_same_arrays_and_bytes(tiny: SyntheticData, tmp_path) -> None:
    again = generate(PRESETS["tiny"], seed=0)
    for name in ("user_ids", "item_ids", "x_label", "shared_factor", "popularity"):
        np.testing.assert_array_equal(getattr(tiny, name), getattr(again, name))
    for m in tiny.features:
        np.testing.assert_array_equal(tiny.features[m], again.features[m])
        np.testing.assert_array_equal(tiny.planted_bases[m], again.planted_bases[m])
    a = write_mmrec(tiny, tmp_path / "a")
    b = write_mmrec(again, tmp_path / "b")
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_different_seed_differs(tiny: SyntheticData) -> None:
    other = generate(PRESETS["tiny"], seed=1)
    assert not np.array_equal(tiny.features["image"], other.features["image"])
    assert not np.array_equal(tiny.shared_factor, other.shared_factor)
    n = min(tiny.n_interactions, other.n_interactions)
    assert not np.array_equal(tiny.item_ids[:n], other.item_ids[:n])


# --- split ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, want", [(5, (3, 1, 1)), (9, (7, 1, 1)), (10, (8, 1, 1)), (14, (12, 1, 1)),
                                     (15, (12, 1, 2)), (20, (16, 2, 2)), (29, (24, 2, 3))])
def test_split_formula_examples(n: int, want: tuple[int, int, int]) -> None:
    assert expected_split(n) == want
    order, labels = split_labels(np.random.default_rng(0), np.zeros(n, dtype=np.int64))
    assert tuple(np.bincount(labels, minlength=3)) == want
    assert sorted(order.tolist()) == list(range(n))  # a permutation: nothing lost or duplicated


def test_split_sizes_per_user_match_mmrec(default: SyntheticData) -> None:
    counts = np.zeros((default.n_users, 3), dtype=np.int64)
    np.add.at(counts, (default.user_ids, default.x_label), 1)
    n = counts.sum(1)
    assert n.min() >= 5 and len(np.unique(n)) > 10  # a spread of sizes, so the formula is exercised
    want = np.array([expected_split(int(k)) for k in n])
    np.testing.assert_array_equal(counts, want)


def test_split_is_shuffled_not_score_ordered(default: SyntheticData) -> None:
    # Gumbel top-k returns a user's items best-first; the split must not inherit that order (it would
    # put each user's lowest-scored items in test: a mean gap of ~0.5 score units here, vs ~0.01 shuffled).
    score = default.true_scores(default.user_ids, default.item_ids)
    assert abs(score[default.x_label == 2].mean() - score[default.x_label == 0].mean()) < 0.15


# --- files ---------------------------------------------------------------------------------------


def test_written_files_are_valid_mmrec(tiny: SyntheticData, tmp_path) -> None:
    out = write_mmrec(tiny, tmp_path / "tiny", name="tiny")
    df = pd.read_csv(out / "tiny.inter", sep="\t")
    assert list(df.columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    assert set(df.x_label.unique()) <= {0, 1, 2}
    assert (df.rating == 1).all() and (np.diff(df.timestamp.to_numpy()) > 0).all()
    n_users, n_items = df.userID.max() + 1, df.itemID.max() + 1
    assert (n_users, n_items) == (tiny.n_users, tiny.n_items)
    assert set(df.userID) == set(range(n_users)) and set(df.itemID) == set(range(n_items))
    assert not df.duplicated(["userID", "itemID"]).any()  # also rules out a pair in two splits
    per_user = df.groupby("userID").x_label.agg(lambda s: set(s))
    assert (per_user.map(len) == 3).all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["generator_version"] == GENERATOR_VERSION == "1"
    assert meta["preset"] == "tiny" and meta["seed"] == 0 and meta["overrides"] == {}
    assert meta["config"] == {**dataclasses.asdict(PRESETS["tiny"]), "modalities": ["image", "text"]}
    for m in ("image", "text"):
        x = np.load(out / f"{m}_feat.npy")
        assert x.dtype == np.float32 and x.shape == (n_items, PRESETS["tiny"].dim(m)) and np.isfinite(x).all()
        a = np.load(out / f"{m}_planted_basis.npy")
        assert a.dtype == np.float64 and a.shape == (x.shape[1], PRESETS["tiny"].r_shared)
        np.testing.assert_allclose(a.T @ a, np.eye(a.shape[1]), atol=1e-12)
    assert check_mmrec(out, "tiny")["n_interactions"] == len(df)


def test_validation_rejects_broken_data(tiny: SyntheticData, tmp_path) -> None:
    again = np.r_[np.arange(tiny.n_interactions), 0]  # repeat row 0: a duplicate (user, item) pair
    dup = dataclasses.replace(tiny, user_ids=tiny.user_ids[again], item_ids=tiny.item_ids[again],
                              x_label=tiny.x_label[again])
    with pytest.raises(ValueError, match="duplicate"):
        validate(dup)
    no_test = dataclasses.replace(tiny, x_label=np.where(tiny.user_ids == 3, 0, tiny.x_label))
    with pytest.raises(ValueError, match="train, valid or test"):
        write_mmrec(no_test, tmp_path / "never")
    assert not (tmp_path / "never").exists()  # validated before anything was written
    # A file edited after writing: drop every row of item 0 -> n_items inferred differently / gap.
    out = write_mmrec(tiny, tmp_path / "t")
    df = pd.read_csv(out / "synthetic.inter", sep="\t")
    df[df.itemID != 0].to_csv(out / "synthetic.inter", sep="\t", index=False)
    with pytest.raises(ValueError, match="item ids"):
        check_mmrec(out)


def test_every_item_occurs_even_when_sampling_misses_many(tmp_path) -> None:
    # Extreme popularity: Gumbel top-k alone would leave many items unpicked; the fix-up gives each one.
    data = generate(dataclasses.replace(PRESETS["tiny"], popularity_std=4.0), seed=0)
    assert data.n_fixup > 10
    assert np.bincount(data.item_ids, minlength=data.n_items).min() >= 1
    check_mmrec(write_mmrec(data, tmp_path / "pop"))


# --- planted structure ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_cross_covariance_recovers_planted_subspace(preset: str, tiny, default, tmp_path) -> None:
    data = {"tiny": tiny, "default": default}[preset]
    out = write_mmrec(data, tmp_path / preset)
    r = data.config.r_shared
    u, w = top_cross_cov_dirs(np.load(out / "image_feat.npy"), np.load(out / "text_feat.npy"), r)
    assert principal_angles_deg(u, np.load(out / "image_planted_basis.npy")).max() < 5.0
    assert principal_angles_deg(w, np.load(out / "text_planted_basis.npy")).max() < 5.0
    # and the plant is a real "elbow": direction r+1 is far weaker than direction r
    x1, x2 = (data.features[m].astype(np.float64) for m in ("image", "text"))
    s = np.linalg.svd((x1 - x1.mean(0)).T @ (x2 - x2.mean(0)) / (len(x1) - 1), compute_uv=False)
    assert s[r] < 0.1 * s[r - 1]


def test_popularity_is_skewed(default: SyntheticData) -> None:
    counts = np.sort(np.bincount(default.item_ids, minlength=default.n_items))[::-1]
    assert counts[: default.n_items // 10].sum() / counts.sum() > 0.25


def test_default_interaction_volume(default: SyntheticData) -> None:
    per_user = np.bincount(default.user_ids)
    assert per_user.min() >= 5 and 15 <= per_user.mean() <= 25
    assert per_user.max() > 3 * np.median(per_user)  # skewed, not constant


def test_three_modalities(tmp_path) -> None:
    out = generate_preset("tiny", tmp_path / "tri", modalities=["image", "text", "audio"])
    for m in ("image", "text", "audio"):
        assert (out / f"{m}_feat.npy").exists() and (out / f"{m}_planted_basis.npy").exists()
    assert (out / "tri.inter").exists()  # name defaults to the folder name
    meta = json.loads((out / "meta.json").read_text())
    assert meta["overrides"] == {"modalities": ["image", "text", "audio"]}
    assert np.load(out / "audio_feat.npy").shape == (PRESETS["tiny"].n_items, PRESETS["tiny"].d_audio)
    # the shared factor is expressed by every modality: image-audio also recovers the plant
    r = PRESETS["tiny"].r_shared
    u, w = top_cross_cov_dirs(np.load(out / "image_feat.npy"), np.load(out / "audio_feat.npy"), r)
    assert principal_angles_deg(u, np.load(out / "image_planted_basis.npy")).max() < 5.0
    assert principal_angles_deg(w, np.load(out / "audio_planted_basis.npy")).max() < 5.0


def test_generate_preset_rejects_unknown_names(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"'nope'.*baby-like.*control.*default.*tiny"):
        generate_preset("nope", tmp_path / "x")
    with pytest.raises(ValueError, match="n_userz"):
        generate_preset("tiny", tmp_path / "x", n_userz=3)


def test_presets_have_the_advertised_roles() -> None:
    d, c, b = PRESETS["default"], PRESETS["control"], PRESETS["baby-like"]
    assert d.w_shared < d.w_specific and c.w_shared > c.w_specific  # redundant vs. useful shared factor
    assert (b.n_users, b.n_items, b.d_image, b.d_text) == (19445, 7050, 4096, 384)


def test_control_shares_default_features_but_not_interactions(default: SyntheticData) -> None:
    # Same seed -> identical features, so a default-vs-control comparison isolates the preference story.
    control = generate(PRESETS["control"], seed=0)
    for m in default.features:
        np.testing.assert_array_equal(control.features[m], default.features[m])
    n = min(control.n_interactions, default.n_interactions)
    assert (control.item_ids[:n] != default.item_ids[:n]).mean() > 0.5

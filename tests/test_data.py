"""Loading MMRec-format folders: conventions, every bad input's error, and the BPR sampler."""

from __future__ import annotations

import numpy as np
import pytest

from clear_lab.data import BPRSampler, DataError, load_dataset, load_feature_folder, load_features


def write_inter(path, rows, header="userID\titemID\trating\ttimestamp\tx_label"):
    lines = [header] + ["\t".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def base_rows():
    # (user, item, rating, timestamp, label): 3 users, 5 items
    return [(0, 0, 1, 1, 0), (0, 1, 1, 2, 0), (0, 2, 1, 3, 1), (0, 3, 1, 4, 2),
            (1, 1, 1, 5, 0), (1, 4, 1, 6, 0), (1, 0, 1, 7, 1), (1, 2, 1, 8, 2),
            (2, 3, 1, 9, 0), (2, 4, 1, 10, 1), (2, 1, 1, 11, 2)]


@pytest.fixture
def folder(tmp_path):
    write_inter(tmp_path / "toy.inter", base_rows())
    rng = np.random.default_rng(0)
    np.save(tmp_path / "image_feat.npy", rng.normal(size=(5, 4)).astype(np.float64))
    np.save(tmp_path / "text_feat.npy", rng.normal(size=(5, 3)).astype(np.float16))
    return tmp_path


def test_load_conventions(folder):
    d = load_dataset(folder)
    assert (d.n_users, d.n_items) == (3, 5)
    assert d.name == "toy"
    assert len(d.train) == 5 and len(d.valid) == 3 and len(d.test) == 3
    assert d.modalities == ["image", "text"]
    assert all(x.dtype == np.float32 for x in d.features.values())  # float64 and float16 cast
    s = d.stats()
    assert s["n_interactions"] == 11 and s["n_users_train"] == 3
    assert s["features"] == {"image": [5, 4], "text": [5, 3]}
    csr = d.csr("train")
    assert csr.shape == (3, 5) and csr.nnz == 5 and csr[0, 1] == 1


def test_n_items_is_max_id_plus_one(tmp_path):
    rows = base_rows() + [(2, 9, 1, 12, 0)]  # item 9 exists although 5..8 never occur
    write_inter(tmp_path / "x.inter", rows)
    d = load_dataset(tmp_path, load_all_features=False)
    assert d.n_items == 10


def test_feature_override_and_explicit_modalities(folder, tmp_path_factory):
    other = tmp_path_factory.mktemp("feats") / "my_audio.npy"
    np.save(other, np.ones((5, 2), dtype=np.float32))
    d = load_dataset(folder, modalities=["image", "audio"], features={"audio": str(other)})
    assert d.modalities == ["image", "audio"] and d.features["audio"].shape == (5, 2)


def test_content_hash_follows_features(folder):
    d = load_dataset(folder)
    h = d.content_hash()
    assert h == load_dataset(folder).content_hash()
    d2 = d.with_features({"image": d.features["image"] * 2, "text": d.features["text"]})
    assert d2.content_hash() != h


@pytest.mark.parametrize("mutate, message", [
    (lambda rows: [r[:2] + r[3:] for r in rows], None),  # no rating column: still fine
])
def test_extra_columns_are_optional(tmp_path, mutate, message):
    write_inter(tmp_path / "a.inter", mutate(base_rows()), header="userID\titemID\ttimestamp\tx_label")
    assert load_dataset(tmp_path, load_all_features=False).n_items == 5


def test_missing_file_and_column(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="exactly one"):
        load_dataset(tmp_path)
    write_inter(tmp_path / "a.inter", [(0, 0, 0)], header="userID\titemID\tlabel")
    with pytest.raises(DataError, match=r"a\.inter: missing column\(s\) x_label"):
        load_dataset(tmp_path)


def test_bad_label_names_row(tmp_path):
    rows = base_rows()
    rows[3] = (0, 3, 1, 4, 3)
    write_inter(tmp_path / "a.inter", rows)
    with pytest.raises(DataError, match=r"row 5: x_label must be 0 \(train\), 1 \(valid\) or 2 \(test\), got 3"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("bad, pattern", [("-1", "must be a non-negative id"), ("1.5", "must be an integer"),
                                          ("abc", "must be an integer")])
def test_bad_ids(tmp_path, bad, pattern):
    rows = [list(r) for r in base_rows()]
    rows[2][1] = bad
    write_inter(tmp_path / "a.inter", rows)
    with pytest.raises(DataError, match=rf"row 4: column itemID {pattern}"):
        load_dataset(tmp_path)


def test_leak_between_train_and_test(tmp_path):
    rows = base_rows() + [(0, 0, 1, 99, 2)]  # (0, 0) is also a training pair
    write_inter(tmp_path / "a.inter", rows)
    with pytest.raises(DataError, match=r"1 \(user, item\) pairs are in train and also in test .*userID 0, itemID 0"):
        load_dataset(tmp_path)


def test_duplicates_removed_with_warning(tmp_path):
    rows = base_rows() + [(0, 0, 1, 99, 0)]
    write_inter(tmp_path / "a.inter", rows)
    with pytest.warns(UserWarning, match="removed 1 duplicated"):
        d = load_dataset(tmp_path, load_all_features=False)
    assert len(d.train) == 5 and d.dropped["duplicates_train"] == 1


def test_cold_users_dropped_with_count(tmp_path):
    rows = base_rows() + [(3, 0, 1, 99, 1), (3, 1, 1, 100, 2)]  # user 3 has no training item
    write_inter(tmp_path / "a.inter", rows)
    with pytest.warns(UserWarning, match="dropped 1 valid rows of 1 users"):
        d = load_dataset(tmp_path, load_all_features=False)
    assert 3 not in d.valid[:, 0] and 3 not in d.test[:, 0] and d.n_users == 4


def test_feature_errors(folder):
    np.save(folder / "image_feat.npy", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(DataError, match=r"image_feat\.npy: has 4 rows but .* n_items = 5"):
        load_dataset(folder)
    x = np.zeros((5, 4), dtype=np.float32)
    x[2, 1] = np.nan
    x[4, 0] = np.inf
    np.save(folder / "image_feat.npy", x)
    with pytest.raises(DataError, match=r"2 NaN/Inf values in 2 rows, first at row 2"):
        load_features(folder / "image_feat.npy", 5)
    with pytest.raises(DataError, match="audio_feat.npy: feature file not found"):
        load_dataset(folder, modalities=["text", "audio"])
    (folder / "bad_feat.npy").write_text("not numpy")
    with pytest.raises(DataError, match="cannot read"):
        load_features(folder / "bad_feat.npy")


def test_bare_feature_folder(tmp_path):
    np.save(tmp_path / "image_feat.npy", np.ones((6, 3), dtype=np.float32))
    np.save(tmp_path / "audio_feat.npy", np.ones((6, 2), dtype=np.float16))
    feats = load_feature_folder(tmp_path)
    assert list(feats) == ["image", "audio"]
    np.save(tmp_path / "audio_feat.npy", np.ones((5, 2)))
    with pytest.raises(DataError, match="different row counts"):
        load_feature_folder(tmp_path)


def test_sampler_never_returns_a_training_positive_and_covers_the_epoch():
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 30
    keys = rng.choice(n_users * n_items, size=600, replace=False)
    train = np.stack([keys // n_items, keys % n_items], axis=1)
    s = BPRSampler(train, n_users, n_items, batch_size=64, seed=1)
    pos_set = set(map(tuple, train.tolist()))
    seen = []
    for users, pos, neg in s.epoch():
        assert len(users) <= 64
        assert not any((u, n) in pos_set for u, n in zip(users.tolist(), neg.tolist()))
        assert np.isin(neg, s.pool).all()
        seen.extend(zip(users.tolist(), pos.tolist()))
    assert sorted(seen) == sorted(map(tuple, train.tolist()))  # each training pair exactly once per epoch
    assert len(s) == -(-600 // 64)


def test_sampler_pool_is_items_with_training_interactions_and_is_uniform():
    # items 0..9; item 9 has no training interaction, so it is never a negative (MMRec)
    train = np.array([[0, 0], [1, 1], [2, 2], [3, 3], [4, 4], [5, 5], [6, 6], [7, 7], [8, 8]] * 1)
    s = BPRSampler(train, 9, 10, batch_size=9, seed=0)
    counts = np.zeros(10)
    for _ in range(400):
        for _users, _, neg in s.epoch():
            counts += np.bincount(neg, minlength=10)
    assert counts[9] == 0
    freq = counts[:9] / counts[:9].sum()
    assert np.all(np.abs(freq - 1 / 9) < 0.02)  # uniform over the pool (less the user's own item)


def test_sampler_is_seeded():
    train = np.array([[u, (u + i) % 15] for u in range(20) for i in range(0, 15, 3)])
    a = [b for b in BPRSampler(train, 20, 15, 16, seed=3).epoch()]
    b = [b for b in BPRSampler(train, 20, 15, 16, seed=3).epoch()]
    assert all(np.array_equal(x, y) for ba, bb in zip(a, b) for x, y in zip(ba, bb))

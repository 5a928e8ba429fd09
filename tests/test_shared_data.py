"""Real data beside the project (../shared/data): research-use files read from there, never committed.

Each test skips with a reason when the folder is absent; .ci/run sets CLEAR_LAB_REQUIRE_SHARED_DATA=1 so that CI,
which has the data, fails instead of skipping.
"""

from __future__ import annotations

import numpy as np
from conftest import shared_dataset

from clear_lab.data import load_dataset


def test_tiktok_loads_with_its_published_counts():
    d = load_dataset(shared_dataset("tiktok"), modalities=["image", "audio"])
    assert (d.n_users, d.n_items) == (9308, 6710)
    assert (len(d.train), d.dropped["cold_valid_rows"], d.dropped["cold_test_rows"]) == (59541, 5, 5)
    assert len(d.valid) == 3046 and len(d.test) == 6125  # MMRec keeps the same rows (10 cold users dropped)
    assert d.features["image"].dtype == np.float32 and d.features["audio"].shape == (6710, 128)  # float16 cast


def test_tiktok_redundancy_diagnosis_runs_on_bare_features():
    from clear_lab.data import load_feature_folder
    from clear_lab.diagnose import diagnose

    f = load_feature_folder(shared_dataset("tiktok"), ["image", "audio"])
    r = diagnose(f["image"], f["audio"], n_permutations=5, seed=0, names=("image", "audio"))
    s = np.array(r["singular_values"])
    assert np.all(np.diff(s) <= 1e-12) and r["null_floor"] > 0
    assert r["linear_cka_after"] <= r["linear_cka_before"]


def test_baby_interactions_match_mmrec_statistics_and_train():
    from clear_lab.train import TrainConfig, train

    d = load_dataset(shared_dataset("baby-interactions"))
    assert (d.n_users, d.n_items) == (19445, 7050)
    assert (len(d.train), len(d.valid), len(d.test)) == (118551, 21682, 20559)
    assert d.features == {}
    rec = train(d, TrainConfig(model="lightgcn", params={"n_layers": 4, "reg_weight": 1e-4}, epochs=1, seed=999,
                               device="cpu", progress=False)).record
    assert 0 < rec["test"]["recall@20"] < 0.2

"""kNN neighbourhood numbers, planted truth regeneration and cached item embeddings of trained backbones."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from clear_lab import embedding_view as ev
from clear_lab.runs import cached_train
from clear_lab.train import TrainConfig


def test_fixed_subsample_is_deterministic_and_sorted():
    a, b = ev.fixed_subsample(100, 10, seed=3), ev.fixed_subsample(100, 10, seed=3)
    assert np.array_equal(a, b) and len(np.unique(a)) == 10 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, ev.fixed_subsample(100, 10, seed=4))
    assert np.array_equal(ev.fixed_subsample(5, 10), np.arange(5))
    assert np.array_equal(ev.fixed_subsample(5, None), np.arange(5))


def test_knn_excludes_self_and_overlap_is_rotation_invariant():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 8))
    nbr = ev.knn(x, 5)
    assert nbr.shape == (60, 5) and not np.any(nbr == np.arange(60)[:, None])
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    assert ev.knn_overlap(x, x @ q, 5) == pytest.approx(1.0)  # cosine neighbourhoods ignore rotations
    chance = 5 / 59
    assert ev.knn_overlap(x, rng.standard_normal((60, 8)), 5) < 4 * chance
    with pytest.raises(ValueError):
        ev.knn(x, 60)


def test_co_interaction_rate_and_baseline_on_a_known_case():
    # users: u0 took items 0 and 1, u1 took 2 and 3; features put 0 next to 1 and 2 next to 3
    r = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=np.float32))
    x = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    assert ev.co_interaction_rate(x, r, k=1) == 1.0
    assert ev.co_interaction_baseline(r) == pytest.approx(4 / 12)  # 2 of the 6 unordered pairs
    x_bad = np.array([[1.0, 0.0], [0.0, 1.0], [0.99, 0.1], [0.1, 0.99]])  # 0 next to 2, 1 next to 3
    assert ev.co_interaction_rate(x_bad, r, k=1) == 0.0
    assert ev.co_interaction_rate(x, r, k=1, items=np.array([0])) == 1.0


def test_neighbour_smoothness_sees_what_organises_the_neighbourhoods():
    rng = np.random.default_rng(1)
    v = rng.standard_normal(200)
    x = np.column_stack([v * 5, rng.standard_normal((200, 3))]) + 10  # v dominates the directions
    assert ev.neighbour_smoothness(x, v, 10) > 0.8
    assert abs(ev.neighbour_smoothness(x, rng.permutation(v), 10)) < 0.3


def test_trustworthiness_of_a_faithful_layout_is_one():
    x = np.random.default_rng(2).standard_normal((40, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # on the sphere cosine and euclidean neighbours coincide
    assert ev.trustworthiness(x, x[:, :3], 5) == pytest.approx(1.0)
    assert ev.trustworthiness(x, np.random.default_rng(3).standard_normal((40, 2)), 5) < 0.8


def test_item_popularity_counts_training_pairs():
    assert ev.item_popularity(np.array([[0, 1], [1, 1], [2, 3]]), 5).tolist() == [0, 2, 0, 1, 0]


def test_planted_truth_regenerates_the_folder(tiny_dir, tmp_path):
    truth = ev.planted_truth(tiny_dir)
    assert truth.shared_factor.shape == (truth.n_items, truth.config.r_shared)
    assert np.array_equal(truth.features["image"], np.load(tiny_dir / "image_feat.npy"))
    assert ev.planted_truth(tmp_path) is None  # no meta.json: real data
    edited = tmp_path / "edited"
    shutil.copytree(tiny_dir, edited)
    np.save(edited / "text_feat.npy", np.load(edited / "text_feat.npy") + np.float32(1))
    with pytest.raises(ValueError, match="differs"):
        ev.planted_truth(edited)


def test_trained_item_embeddings_are_cached_beside_the_run(tiny_data, tmp_path, monkeypatch):
    config = TrainConfig(model="lightgcn", epochs=2, batch_size=256, seed=3, device="cpu", progress=False, threads=1)
    run, emb = ev.trained_item_embeddings(tiny_data, config, cache_dir=tmp_path)
    assert emb.shape == (tiny_data.n_items, 64) and emb.dtype == np.float32 and run.model is None

    def no_training(*args, **kwargs):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr("clear_lab.train.train", no_training)
    monkeypatch.setattr("clear_lab.runs.train", no_training)
    run2, emb2 = ev.trained_item_embeddings(tiny_data, config, cache_dir=tmp_path)
    assert np.array_equal(emb, emb2) and run2.record["test"] == run.record["test"]
    assert cached_train(tiny_data, config, cache_dir=tmp_path).record["test"] == run.record["test"]  # same key


@pytest.mark.parametrize("model, params", [("bpr", {}), ("vbpr", {}), ("freedom", {})])
def test_item_embeddings_are_what_the_model_scores_with(tiny_data, model, params):
    import torch

    from clear_lab.models import get_model

    m = get_model(model)(tiny_data, params)
    emb = ev.item_embeddings(m)
    assert emb.shape[0] == tiny_data.n_items
    users = torch.arange(5)
    m.eval()
    with torch.no_grad():
        m.begin_eval()
        scores = m.scores(users).numpy()
        m.end_eval()
    # s(u, i) = u . e_i: the scores lie in the span of the item embeddings (rank <= d)
    coef, *_ = np.linalg.lstsq(emb.astype(np.float64), scores.T.astype(np.float64), rcond=None)
    np.testing.assert_allclose(emb @ coef, scores.T, atol=1e-4)

"""Backbones and graphs: shapes, MMRec equivalences, CLEAR hooks, and what each refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clear_lab.graph import degree_sensitive_keep, knn_graph, normalized_adjacency
from clear_lab.models import MODELS, get_model
from clear_lab.projection import CLEARProjector, LatentCLEAR
from tests.modelutil import build, eval_scores, train_epochs


def test_normalized_adjacency_matches_dense_formula():
    users, items = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])
    a = normalized_adjacency(users, items, 3, 3).to_dense().numpy()
    dense = np.zeros((6, 6))
    for u, i in zip(users, items):
        dense[u, 3 + i] = dense[3 + i, u] = 1
    d = dense.sum(1) + 1e-7
    expected = dense / np.sqrt(np.outer(d, d))
    np.testing.assert_allclose(a, expected, rtol=1e-6, atol=1e-7)


def test_knn_graph_by_hand():
    # items 0 and 1 point the same way, 2 and 3 the same way; with k = 2 each keeps itself and its twin
    x = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
    g = knn_graph(x, 2).to_dense().numpy()
    expected = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]) / 2.0  # (2*2)^-1/2 = 1/2
    np.testing.assert_allclose(g, expected, rtol=1e-6)


def test_knn_graph_cache_is_keyed_by_features(tmp_path):
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    g1 = knn_graph(x, 3, cache_dir=tmp_path)
    g2 = knn_graph(x * -1 + 0.5, 3, cache_dir=tmp_path)  # other features: must not reuse g1
    assert len(list(tmp_path.glob("knn_*.pt"))) == 2
    assert not torch.equal(g1.to_dense(), g2.to_dense())
    assert torch.equal(knn_graph(x, 3, cache_dir=tmp_path).to_dense(), g1.to_dense())


def test_degree_sensitive_keep_is_weighted_without_replacement():
    rng = np.random.default_rng(0)
    w = np.array([1.0, 2.0, 3.0, 4.0])
    counts = np.zeros(4)
    for _ in range(20000):
        counts[degree_sensitive_keep(w, 1, rng)] += 1
    np.testing.assert_allclose(counts / counts.sum(), w / w.sum(), atol=0.01)
    keep = degree_sensitive_keep(np.ones(100), 30, rng)
    assert len(np.unique(keep)) == 30


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_scores_all_items_and_learns(name, tiny_data):
    model = build(name, tiny_data)
    losses = train_epochs(model, tiny_data, epochs=5)
    assert losses[-1] < losses[0]
    s = eval_scores(model, torch.arange(7))
    assert s.shape == (7, tiny_data.n_items) and torch.isfinite(s).all()


def test_vbpr_blocks_equal_mmrec_joint_linear(tiny_data):
    model = get_model("vbpr")(tiny_data, {})
    z = model.encoded_modalities()
    joint = torch.cat([torch.as_tensor(tiny_data.features["text"]), torch.as_tensor(tiny_data.features["image"])], 1)
    expected = model.item_linear(joint)  # MMRec: Linear(cat(t, v))
    got = z["image"] + z["text"] + model.item_linear.bias
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_freedom_graph_uses_the_features_it_is_given(tiny_data):
    xa, xb = tiny_data.features["image"], tiny_data.features["text"]
    pa, pb = CLEARProjector(k=2).fit(xa, xb).transform(xa, xb)
    raw = get_model("freedom")(tiny_data, {}).mm_adj.to_dense()
    projected = get_model("freedom")(tiny_data.with_features({"image": pa, "text": pb}), {}).mm_adj.to_dense()
    expected = 0.1 * knn_graph(torch.as_tensor(pa), 10).to_dense() + 0.9 * knn_graph(torch.as_tensor(pb), 10).to_dense()
    torch.testing.assert_close(projected, expected)
    assert not torch.equal(raw, projected)


def test_latent_hook_sees_the_encoded_modalities(tiny_data):
    model = get_model("vbpr")(tiny_data, {})
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, a, b):
            seen["shapes"] = (a.shape, b.shape)
            return a, b

    model.modality_hook = Spy()
    model.loss(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert seen["shapes"] == ((tiny_data.n_items, 64), (tiny_data.n_items, 64))
    model.modality_hook = LatentCLEAR(k=2)
    model.train()
    items = model.item_embeddings()[:, 64:] - model.item_linear.bias  # content part after the projection
    z = model.encoded_modalities()
    assert items.shape == z["image"].shape


def test_refusals():
    with pytest.raises(ValueError, match="no per-modality encoded embedding"):
        get_model("lightgcn").check_latent({})
    with pytest.raises(ValueError, match="reg_weight = 0"):
        get_model("freedom").check_latent({})
    get_model("freedom").check_latent({"reg_weight": 1e-4})  # meaningful: accepted
    with pytest.raises(ValueError, match="has no parameter knn"):
        get_model("freedom").resolve_params({"knn": 5})
    with pytest.raises(ValueError, match="expects int"):
        get_model("lightgcn").resolve_params({"n_layers": "two"})
    with pytest.raises(ValueError, match="unknown model"):
        get_model("nope")

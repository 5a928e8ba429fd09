"""MGCN and SMORE: the weighted kNN / R_hat / max-fusion graphs against their formulas, each model's math checked by
hand on small cases, training, seeding, fresh evaluation, CLEAR's two placements and the modality counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clear_lab.graph import (
    knn_graph,
    max_fusion_graph,
    normalized_adjacency,
    normalized_interactions,
    sparse_tensor,
    weighted_knn_graph,
)
from clear_lab.models import get_model
from clear_lab.models.mgcn import info_nce, squared_reg
from clear_lab.projection import CLEARProjector, LatentCLEAR
from tests.modelutil import build, eval_scores, train_epochs

NAMES = ["mgcn", "smore"]


# -- graphs ----------------------------------------------------------------------------------------------------------
def test_weighted_knn_graph_equals_formula():
    x = torch.randn(15, 6, generator=torch.Generator().manual_seed(0))
    k = 4
    g = weighted_knn_graph(x, k).to_dense().numpy()
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    sim = xn @ xn.T
    s = np.zeros_like(sim)
    for i in range(15):
        top = np.argsort(-sim[i])[:k]
        assert i in top  # self is its own nearest neighbour
        s[i, top] = sim[i, top]
    d = s.sum(1)  # row degrees of the weighted graph
    expected = s / np.sqrt(np.outer(d, d))
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)
    assert (np.count_nonzero(g, axis=1) == k).all()


def test_weighted_knn_graph_by_hand():
    # items 0, 1 point almost the same way (cos c), item 2 is orthogonal to both; k = 2
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    c = 1 / np.sqrt(2)
    g = weighted_knn_graph(x, 2).to_dense().numpy()
    # rows 0 and 1 keep {self: 1, twin: c}, degree 1 + c; row 2 keeps itself (1) and one of the zero-similarity items
    d01 = 1 + c
    assert g[0, 0] == pytest.approx(1 / d01) and g[0, 1] == pytest.approx(c / d01)
    assert g[1, 1] == pytest.approx(1 / d01) and g[1, 0] == pytest.approx(c / d01)
    assert g[2, 2] == pytest.approx(1.0) and g[2, :2].sum() == pytest.approx(0.0)


def test_weighted_knn_graph_zero_row_gives_no_nan():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    x[4] = 0
    g = weighted_knn_graph(x, 3).to_dense()
    assert torch.isfinite(g).all() and g[4].abs().sum() == 0


def test_weighted_knn_cache_is_keyed_by_features_and_k(tmp_path):
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    g1 = weighted_knn_graph(x, 3, cache_dir=tmp_path)
    g2 = weighted_knn_graph(x * -1 + 0.5, 3, cache_dir=tmp_path)  # other features: must not reuse g1
    weighted_knn_graph(x, 4, cache_dir=tmp_path)
    knn_graph(x, 3, cache_dir=tmp_path)  # FREEDOM's binary graph of the same features must not collide
    assert len(list(tmp_path.glob("wknn_*.pt"))) == 3
    assert not torch.equal(g1.to_dense(), g2.to_dense())
    assert torch.equal(weighted_knn_graph(x, 3, cache_dir=tmp_path).to_dense(), g1.to_dense())
    assert not torch.equal(knn_graph(x, 3, cache_dir=tmp_path).to_dense(), g1.to_dense())


def test_normalized_interactions_is_the_user_item_block():
    users, items = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0])
    r = normalized_interactions(users, items, 4, 3).to_dense()
    a = normalized_adjacency(users, items, 4, 3).to_dense()
    torch.testing.assert_close(r, a[:4, 4:])
    assert r[0, 1].item() == pytest.approx(1 / np.sqrt(2 * 2))  # user 0: degree 2; item 1: degree 2


def test_max_fusion_graph_by_hand():
    a = sparse_tensor([0, 0, 1, 2], [0, 1, 1, 0], [0.5, 0.2, -0.3, 0.4], (3, 3))
    b = sparse_tensor([0, 1, 2], [1, 1, 2], [0.7, -0.6, 0.1], (3, 3))
    f = max_fusion_graph(a, b)
    expected = torch.zeros(3, 3)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 0], expected[2, 2] = 0.5, 0.7, -0.3, 0.4, 0.1
    torch.testing.assert_close(f.to_dense(), expected)
    assert f._nnz() == 5  # the union of the edges, an edge absent from one graph does not count as 0 there
    with pytest.raises(ValueError, match="one shape"):
        max_fusion_graph(a, sparse_tensor([0], [0], [1.0], (2, 2)))


# -- training, seeding, evaluation -----------------------------------------------------------------------------------
def test_parity_defaults():
    mgcn, smore = get_model("mgcn"), get_model("smore")
    assert mgcn.default_params == {"embedding_size": 64, "n_ui_layers": 2, "n_layers": 1, "knn_k": 10,
                                   "reg_weight": 1e-4, "cl_loss": 0.01, "learning_rate": 1e-3}
    assert smore.default_params == {"embedding_size": 64, "n_ui_layers": 3, "n_layers": 1, "image_knn_k": 10,
                                    "text_knn_k": 10, "reg_weight": 1e-4, "dropout_rate": 0.0, "cl_loss": 0.01,
                                    "learning_rate": 1e-3}
    assert mgcn.lr_schedule == smore.lr_schedule == (0.96, 50)


@pytest.mark.parametrize("name", NAMES)
def test_training_lowers_loss_and_seeds_reproduce(name, tiny_data):
    model = build(name, tiny_data)
    losses = train_epochs(model, tiny_data, epochs=4)
    assert losses[-1] < losses[0]
    s = eval_scores(model, torch.arange(9))
    assert s.shape == (9, tiny_data.n_items) and torch.isfinite(s).all()
    twin = build(name, tiny_data)
    train_epochs(twin, tiny_data, epochs=4)
    torch.testing.assert_close(eval_scores(twin, torch.arange(9)), s, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_is_a_fresh_forward_pass(name, tiny_data):
    model = build(name, tiny_data)
    before = eval_scores(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    users, pos, neg = torch.arange(50), torch.arange(50) % tiny_data.n_items, (torch.arange(50) + 7) % 120
    loss = model.loss(users, pos, neg)
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = eval_scores(model)
    assert not torch.allclose(before, after)  # the step changed the parameters, and evaluation sees it
    model.eval()
    with torch.no_grad():
        on_the_fly = model.scores(torch.arange(model.n_users))  # no begin_eval: computed from the parameters
    torch.testing.assert_close(after, on_the_fly)
    assert model._cache is None  # end_eval dropped the cache


def test_smore_dropout_only_in_training(tiny_data):
    model = build("smore", tiny_data, {"dropout_rate": 0.5})
    torch.manual_seed(1)
    model.train()
    a = model.forward_views()[0]
    b = model.forward_views()[0]
    assert not torch.allclose(a, b)  # training forwards are stochastic
    torch.testing.assert_close(eval_scores(model), eval_scores(model), rtol=0, atol=0)  # evaluation is not


# -- the math, by hand -----------------------------------------------------------------------------------------------
def test_info_nce_and_regulariser_match_mmrec_formulas():
    g = torch.Generator().manual_seed(0)
    v1, v2 = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    a = v1 / v1.norm(dim=1, keepdim=True)
    b = v2 / v2.norm(dim=1, keepdim=True)
    pos = torch.exp((a * b).sum(1) / 0.2)
    ttl = torch.exp(a @ b.T / 0.2).sum(1)
    torch.testing.assert_close(info_nce(v1, v2, 0.2), torch.mean(-torch.log(pos / ttl)))
    u, p, n = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    expected = (0.5 * (u ** 2).sum() + 0.5 * (p ** 2).sum() + 0.5 * (n ** 2).sum()) / 4
    torch.testing.assert_close(squared_reg(u, p, n), expected)


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_bpr_plus_reg_plus_infonce(name, tiny_data):
    model = build(name, tiny_data, {"reg_weight": 0.1, "cl_loss": 0.5})
    model.eval()  # no dropout, so the two forwards agree
    users, pos, neg = torch.tensor([0, 3, 3, 9]), torch.tensor([1, 2, 5, 7]), torch.tensor([4, 4, 0, 8])
    out, side, content = model.forward_views()
    nu = tiny_data.n_users
    u, p, n = out[users], out[nu + pos], out[nu + neg]
    bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    reg = 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / 4
    cl = info_nce(side[nu + pos], content[nu + pos], 0.2) + info_nce(side[users], content[users], 0.2)
    torch.testing.assert_close(model.loss(users, pos, neg), bpr + 0.1 * reg + 0.5 * cl)


def test_mgcn_fuser_by_hand(tiny_data):
    model = build("mgcn", tiny_data)
    model.eval()
    with torch.no_grad():
        model.query_common[2].weight.zero_()  # equal attention: w = (1/2, 1/2)
        out, side, content = model.forward_views()
        z = list(model.encoded_modalities().values())
        item = model.item_id_embedding.weight
        v = []
        for graph, gate, zm in zip(model.item_graphs, model.gates, z):
            h = graph.to_dense() @ (item * torch.sigmoid(gate[0](zm)))  # one item-graph hop
            v.append(torch.cat([model.r_hat.to_dense() @ h, h]))
        x = torch.cat([model.user_embedding.weight, item])
        a = model.norm_adj.to_dense()
        c_hand = (x + a @ x + a @ a @ x) / 3
        common = (v[0] + v[1]) / 2
        spec = [torch.sigmoid(g[0](c_hand)) * (vm - common) for g, vm in zip(model.prefer_gates, v)]
        side_hand = (spec[0] + spec[1] + common) / 3
    torch.testing.assert_close(content, c_hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(side, side_hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, c_hand + side_hand, rtol=1e-5, atol=1e-6)


def test_mgcn_one_modality_side_is_half_the_view(tiny_data):
    data = tiny_data.with_features({"image": tiny_data.features["image"]})
    model = build("mgcn", data)
    model.eval()
    with torch.no_grad():
        _, side, _ = model.forward_views()
        z = model.encoded_modalities()["image"]
        p = model.item_id_embedding.weight * model.gates[0](z)
        view = model.item_view(model.item_graphs[0], p)
    torch.testing.assert_close(side, view / 2)  # softmax over one view is 1: common = view, specific = 0


def test_smore_spectrum_is_filtering_and_circular_convolution(tiny_data):
    model = build("smore", tiny_data)
    d = 64
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(5, d, generator=g, dtype=torch.float64), torch.randn(5, d, generator=g, dtype=torch.float64)
    model = model.double()
    with torch.no_grad():
        for w in (model.complex_a, model.complex_b, model.complex_f):
            w.zero_()
            w[..., 0] = 1.0  # the all-pass filter 1 + 0i
        c_a, c_b, c_f = model.spectrum_convolution(z_a, z_b)
    torch.testing.assert_close(c_a, z_a)
    torch.testing.assert_close(c_b, z_b)
    # product of ortho spectra = circular convolution / sqrt(d)
    idx = (torch.arange(d)[:, None] - torch.arange(d)[None, :]) % d  # idx[n, k] = (n - k) mod d
    conv = torch.einsum("rk,rnk->rn", z_a, z_b[:, idx])
    torch.testing.assert_close(c_f, conv / np.sqrt(d))
    with torch.no_grad():  # a filter scales each frequency: W = 2 doubles the signal
        model.complex_a[..., 0] = 2.0
        torch.testing.assert_close(model.spectrum_convolution(z_a, z_b)[0], 2 * z_a)


def test_smore_graphs(tiny_data):
    model = build("smore", tiny_data, {"image_knn_k": 5, "text_knn_k": 8})
    ga = weighted_knn_graph(torch.as_tensor(tiny_data.features["image"]), 5)
    gb = weighted_knn_graph(torch.as_tensor(tiny_data.features["text"]), 8)
    torch.testing.assert_close(model.graph_a.to_dense(), ga.to_dense())
    torch.testing.assert_close(model.graph_b.to_dense(), gb.to_dense())
    da, db, df = ga.to_dense(), gb.to_dense(), model.graph_f.to_dense()
    both = (da != 0) & (db != 0)
    only_a, only_b = (da != 0) & (db == 0), (da == 0) & (db != 0)
    assert both.any() and only_a.any() and only_b.any()
    torch.testing.assert_close(df[both], torch.maximum(da, db)[both])
    torch.testing.assert_close(df[only_a], da[only_a])
    torch.testing.assert_close(df[only_b], db[only_b])
    assert (df[(da == 0) & (db == 0)] == 0).all()


# -- CLEAR's placements ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_input_placement_graphs_follow_the_features(name, tiny_data, tmp_path):
    xa, xb = tiny_data.features["image"], tiny_data.features["text"]
    pa, pb = CLEARProjector(k=2).fit(xa, xb).transform(xa, xb)
    projected = tiny_data.with_features({"image": pa, "text": pb})
    raw_model = build(name, tiny_data, cache_dir=tmp_path)
    proj_model = build(name, projected, cache_dir=tmp_path)  # same cache folder: must not reuse the raw graphs
    raw_g = raw_model.item_graphs[0] if name == "mgcn" else raw_model.graph_a
    proj_g = proj_model.item_graphs[0] if name == "mgcn" else proj_model.graph_a
    torch.testing.assert_close(proj_g.to_dense(), weighted_knn_graph(torch.as_tensor(pa), 10).to_dense())
    assert not torch.equal(raw_g.to_dense(), proj_g.to_dense())
    # the fine-tuned feature copies start from the projected features
    torch.testing.assert_close(proj_model.feat_embeddings[0].weight.detach(), torch.as_tensor(pa))
    assert proj_model.feat_embeddings[0].weight.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_latent_hook_sees_encoded_modalities(name, tiny_data):
    get_model(name).check_latent({})  # the hook reaches the ranking: accepted with the defaults
    model = build(name, tiny_data)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, a, b):
            seen.append((tuple(a.shape), tuple(b.shape)))
            return a, b

    model.modality_hook = Spy()
    model.train()
    model.loss(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert seen == [((tiny_data.n_items, 64), (tiny_data.n_items, 64))]
    eval_scores(model, torch.arange(4))
    model.scores(torch.arange(4))  # without begin_eval too
    assert len(seen) == 3 and set(seen) == {((tiny_data.n_items, 64), (tiny_data.n_items, 64))}
    z = model.encoded_modalities()
    assert list(z) == ["image", "text"] and all(t.shape == (tiny_data.n_items, 64) for t in z.values())

    # a real projection changes the ranking
    plain = eval_scores(model)
    model.modality_hook = LatentCLEAR(k=2)
    model.train()
    model.loss(torch.arange(64), torch.arange(64) % 120, (torch.arange(64) + 5) % 120)  # let it fit its basis
    assert not torch.allclose(eval_scores(model), plain)


# -- modality counts and refusals ------------------------------------------------------------------------------------
def _three(tiny_data):
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((tiny_data.n_items, 16)).astype(np.float32)
    return tiny_data.with_features({**tiny_data.features, "audio": audio})


def test_mgcn_runs_with_one_and_three_modalities(tiny_data):
    for data in (tiny_data.with_features({"text": tiny_data.features["text"]}), _three(tiny_data)):
        model = build("mgcn", data)
        assert len(model.item_graphs) == len(data.modalities)
        losses = train_epochs(model, data, epochs=3)
        assert losses[-1] < losses[0]
        s = eval_scores(model, torch.arange(5))
        assert s.shape == (5, data.n_items) and torch.isfinite(s).all()


def test_smore_refuses_other_modality_counts(tiny_data):
    with pytest.raises(ValueError, match="SMORE fuses exactly two modalities.*got 1"):
        build("smore", tiny_data.with_features({"image": tiny_data.features["image"]}))
    with pytest.raises(ValueError, match="SMORE fuses exactly two modalities.*got 3"):
        build("smore", _three(tiny_data))


def test_refusals(tiny_data):
    with pytest.raises(ValueError, match="dropout_rate must be in"):
        build("smore", tiny_data, {"dropout_rate": 1.0})
    with pytest.raises(ValueError, match="knn_k must be in"):
        build("mgcn", tiny_data, {"knn_k": tiny_data.n_items + 1})
    with pytest.raises(ValueError, match="n_layers must be >= 0"):
        build("mgcn", tiny_data, {"n_layers": -1})
    with pytest.raises(ValueError, match="has no parameter knn_k"):
        get_model("smore").resolve_params({"knn_k": 10})
    with pytest.raises(ValueError, match="needs modality features"):
        build("mgcn", tiny_data.with_features({}))

"""MMGCN and GRCN, and the message-passing helpers they share: the helpers against brute force, each model's
forward pass and loss against MMRec's formulas written out densely, training, CLEAR's hooks, fresh evaluation,
and modality counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clear_lab.message_passing import (
    bipartite_edges,
    both_directions,
    dot_attention_aggregate,
    mean_aggregate,
    mean_operator,
    remove_self_loops,
    scatter_mean,
    scatter_softmax,
    weighted_sum_aggregate,
)
from clear_lab.models import get_model
from clear_lab.models.grcn import GRCN
from clear_lab.models.mmgcn import MMGCN
from clear_lab.projection import LatentCLEAR
from tests.modelutil import Spy, build, eval_scores, train_epochs

LATENT_MMGCN = {"dim_latent_others": 256}


# -- helpers ---------------------------------------------------------------------------------------------------
def dense_adjacency(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """``A[i, j] = 1`` for each edge j -> i (target row, source column)."""
    a = torch.zeros(n, n, dtype=torch.float64)
    a[edge_index[1], edge_index[0]] = 1.0
    return a


def train_graph(data) -> torch.Tensor:
    return both_directions(bipartite_edges(data.train[:, 0], data.train[:, 1], data.n_users))


def batch(data, n=64, seed=0):
    rng = np.random.default_rng(seed)
    rows = data.train[rng.choice(len(data.train), n, replace=False)]
    return (torch.as_tensor(rows[:, 0]), torch.as_tensor(rows[:, 1]),
            torch.as_tensor(rng.integers(0, data.n_items, n)))


# -- message passing by hand -------------------------------------------------------------------------------------
def test_edge_index_both_directions():
    e = bipartite_edges(np.array([0, 0, 1]), np.array([1, 2, 0]), n_users=2)
    assert e.tolist() == [[0, 0, 1], [3, 4, 2]]  # users are sources, items n_users + i the targets
    assert both_directions(e).tolist() == [[0, 0, 1, 3, 4, 2], [3, 4, 2, 0, 0, 1]]
    loops = torch.tensor([[0, 1, 2], [1, 1, 0]])
    assert remove_self_loops(loops).tolist() == [[0, 2], [1, 0]]


def test_mean_and_weighted_sum_aggregation_by_hand():
    # 4 nodes; node 3 is no edge's target and must get 0 (PyG's mean over an empty set)
    e = torch.tensor([[1, 2, 0, 3], [0, 0, 1, 1]])
    x = torch.tensor([[1.0, 0.0], [2.0, 4.0], [6.0, 2.0], [10.0, -10.0]])
    out = mean_aggregate(x, e)
    torch.testing.assert_close(out, torch.tensor([[4.0, 3.0], [5.5, -5.0], [0.0, 0.0], [0.0, 0.0]]))
    w = torch.tensor([0.5, 2.0, 1.0, 0.1])
    out = weighted_sum_aggregate(x, e, w)
    torch.testing.assert_close(out, torch.tensor([[13.0, 6.0], [2.0, -1.0], [0.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(scatter_mean(torch.ones(3), torch.tensor([2, 2, 0]), 3), torch.tensor([1.0, 0, 1.0]))


def test_mean_operator_equals_gather_scatter_mean():
    g = torch.Generator().manual_seed(1)
    e = torch.randint(0, 9, (2, 40), generator=g)  # repeated edges and nodes with no incoming edge included
    x = torch.randn(10, 4, generator=g, requires_grad=True)
    op = mean_operator(e, 10)
    torch.testing.assert_close(op @ x, mean_aggregate(x, e, 10))
    (grad_op,) = torch.autograd.grad((op @ x).pow(2).sum(), x)
    (grad_ref,) = torch.autograd.grad(mean_aggregate(x, e, 10).pow(2).sum(), x)
    torch.testing.assert_close(grad_op, grad_ref)


def test_scatter_softmax_and_attention_equal_brute_force():
    g = torch.Generator().manual_seed(0)
    n, n_edges = 7, 25
    e = torch.randint(0, n, (2, n_edges), generator=g)
    e = e[:, e[0] != e[1]]
    s = torch.randn(e.shape[1], dtype=torch.float64, generator=g) * 30  # large scores: the max shift matters
    alpha = scatter_softmax(s, e[1], n)
    for i in range(n):
        m = e[1] == i
        if m.any():
            torch.testing.assert_close(alpha[m], torch.softmax(s[m], 0))
    x = torch.randn(n, 3, dtype=torch.float64, generator=g, requires_grad=True)
    out, a = dot_attention_aggregate(x, e)
    expected = torch.zeros(n, 3, dtype=torch.float64)
    for i in range(n):
        srcs = e[0][e[1] == i]
        if len(srcs):
            w = torch.softmax(x[srcs] @ x[i], 0)
            expected[i] = (w[:, None] * x[srcs]).sum(0)
    torch.testing.assert_close(out, expected)
    assert torch.autograd.gradcheck(lambda v: dot_attention_aggregate(v, e)[0], (x,))


# -- MMGCN -------------------------------------------------------------------------------------------------------
def mmgcn_branch_by_hand(branch, z_items, id_emb, adj_mean):
    x = F.normalize(torch.cat([branch.preference, z_items]))
    for w, lin, gate in zip(branch.conv, branch.linear, branch.gate):
        h = F.leaky_relu(adj_mean @ (x @ w))
        x_hat = F.leaky_relu(x @ lin.weight.T + lin.bias) + id_emb
        x = F.leaky_relu(torch.cat([h, x_hat], 1) @ gate.weight.T + gate.bias)
    return x


def test_mmgcn_forward_equals_dense_formula(tiny_data):
    model = build(MMGCN, tiny_data)
    n = tiny_data.n_users + tiny_data.n_items
    a = dense_adjacency(train_graph(tiny_data), n)
    adj_mean = (a / a.sum(1, keepdim=True).clamp_min(1)).float()  # row i: mean over i's neighbours
    feats = [torch.as_tensor(tiny_data.features[m]) for m in tiny_data.modalities]
    branches = [mmgcn_branch_by_hand(model.branches[0], model.branches[0].mlp(feats[0]), model.id_embedding, adj_mean),
                mmgcn_branch_by_hand(model.branches[1], feats[1], model.id_embedding, adj_mean)]  # text enters raw
    torch.testing.assert_close(model.forward(), (branches[0] + branches[1]) / 2, rtol=1e-4, atol=1e-5)
    # MMRec's shapes: first branch encodes to 256, the second keeps its 24 raw dims (also for its preference)
    assert model.branches[0].preference.shape == (tiny_data.n_users, 256)
    assert model.branches[1].mlp is None and model.branches[1].preference.shape == (tiny_data.n_users, 24)
    assert model.branches[1].conv[0].shape == (24, 24) and model.branches[1].gate[0].in_features == 24 + 64
    assert len(model.branches[0].conv) == 3


def test_mmgcn_loss_equals_mmrec_formula(tiny_data):
    model = build(MMGCN, tiny_data, {"reg_weight": 0.3})
    users, pos, neg = batch(tiny_data)
    out = model.forward()
    # MMRec's calculate_loss, written its way: interleaved (u, i+), (u, i-) rows, score @ [1, -1]
    user_t = users.repeat_interleave(2)
    item_t = torch.stack([pos, neg]).t().reshape(-1) + tiny_data.n_users
    score = (out[user_t] * out[item_t]).sum(1).view(-1, 2)
    bpr = -torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]]))).mean()
    reg = (model.id_embedding[user_t] ** 2 + model.id_embedding[item_t] ** 2).mean()
    reg = reg + (model.branches[0].preference ** 2).mean()
    torch.testing.assert_close(model.loss(users, pos, neg), bpr + 0.3 * reg, rtol=1e-5, atol=1e-6)


def test_mmgcn_trains_and_is_reproducible(tiny_data):
    model = build(MMGCN, tiny_data)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    losses = train_epochs(model, tiny_data)
    assert losses[-1] < losses[0]
    # MMRec's bug fixed: the ID embedding and the preferences are trained
    for key in ("id_embedding", "branches.0.preference", "branches.1.preference"):
        assert not torch.equal(before[key], dict(model.named_parameters())[key]), key
    s = eval_scores(model, torch.arange(9))
    assert s.shape == (9, tiny_data.n_items) and torch.isfinite(s).all()
    twin = build(MMGCN, tiny_data)
    train_epochs(twin, tiny_data)
    assert torch.equal(s, eval_scores(twin, torch.arange(9)))


def test_mmgcn_latent_hook_and_refusals(tiny_data):
    with pytest.raises(ValueError, match="mmgcn.*dim_latent_others=256"):
        MMGCN.check_latent({})
    with pytest.raises(ValueError, match="mmgcn"):
        MMGCN.check_latent({"dim_latent": 0, "dim_latent_others": 64})
    assert MMGCN.refusal("latent", {}) and MMGCN.refusal("latent", LATENT_MMGCN) is None
    MMGCN.check_latent({"dim_latent_others": 32})

    model = build(MMGCN, tiny_data, {"dim_latent_others": 32})
    spy = Spy()
    model.modality_hook = spy
    model.train()
    model.loss(*batch(tiny_data))
    assert spy.calls == [((tiny_data.n_items, 256), (tiny_data.n_items, 32))]
    eval_scores(model, torch.arange(4))
    assert spy.calls[1:] == [((tiny_data.n_items, 256), (tiny_data.n_items, 32))]
    assert {k: tuple(v.shape) for k, v in model.encoded_modalities().items()} == {"image": (120, 256),
                                                                                   "text": (120, 32)}
    # the hook's output is what the graph sees
    raw = eval_scores(model, torch.arange(4))
    model.modality_hook = LatentCLEAR(k=2)
    assert not torch.allclose(raw, eval_scores(model, torch.arange(4)))

    # a hook on a model whose text enters raw is an error, not a silent no-op
    plain = build(MMGCN, tiny_data)
    assert set(plain.encoded_modalities()) == {"image"}
    plain.modality_hook = Spy()
    with pytest.raises(ValueError, match="enters raw"):
        plain.loss(*batch(tiny_data))


def test_mmgcn_input_features_reach_the_scores(tiny_data):
    a = eval_scores(build(MMGCN, tiny_data), torch.arange(5))
    other = {m: x[::-1].copy() for m, x in tiny_data.features.items()}
    b = eval_scores(build(MMGCN, tiny_data.with_features(other)), torch.arange(5))
    assert not torch.allclose(a, b)


# -- GRCN --------------------------------------------------------------------------------------------------------
def grcn_by_hand(model, data):
    """GRCN's forward with dense matrices, straight from the formulas (MMRec's settings: no dropout, confid)."""
    n = data.n_users + data.n_items
    mask = dense_adjacency(train_graph(data), n).bool()  # mask[i, j]: edge j -> i
    reps, alphas = [], []
    for j, cg in enumerate(model.cgcn):
        f = F.normalize(F.leaky_relu(cg.mlp(torch.as_tensor(data.features[data.modalities[j]]))))
        x = torch.cat([F.normalize(cg.preference), f])  # MMRec's routing leaves the preference as it is
        s = (x @ x.T).masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(s, dim=1).nan_to_num(0.0)  # row i: attention of target i over its sources
        reps.append(x + alpha @ x)
        alphas.append(alpha)
    conf = model.confidence
    w = torch.stack([a * conf[:, m][None, :] for m, a in enumerate(alphas)]).max(0).values  # conf of source j
    w = torch.relu(w) * mask
    x = F.normalize(model.id_embedding)
    h1 = w @ x
    return torch.cat([x + h1 + w @ h1, *reps], 1)


def test_grcn_forward_equals_dense_formula(tiny_data):
    model = build(GRCN, tiny_data)
    model.eval()
    torch.testing.assert_close(model.forward(), grcn_by_hand(model, tiny_data), rtol=1e-4, atol=1e-5)
    assert model.forward().shape == (tiny_data.n_users + tiny_data.n_items, 64 + 2 * 64)


def test_grcn_mmrec_routing_is_a_no_op(tiny_data):
    # MMRec routes over user -> item edges: users are nobody's target, so their rows receive exactly 0
    e = bipartite_edges(tiny_data.train[:, 0], tiny_data.train[:, 1], tiny_data.n_users)
    x = torch.randn(tiny_data.n_users + tiny_data.n_items, 8)
    out, _ = dot_attention_aggregate(x, e)
    assert torch.equal(out[: tiny_data.n_users], torch.zeros(tiny_data.n_users, 8))
    # so n_layers changes nothing there; routing item -> user (the paper's direction) does change the preferences
    base = build(GRCN, tiny_data).eval()
    assert torch.equal(base.forward(), build(GRCN, tiny_data, {"n_layers": 0}).eval().forward())
    routed = build(GRCN, tiny_data, {"route_to_users": True}).eval()
    assert not torch.allclose(base.forward(), routed.forward())
    assert torch.equal(base.forward(), build(GRCN, tiny_data, {"route_to_users": True, "n_layers": 0}).eval().forward())


def test_grcn_loss_equals_mmrec_formula(tiny_data):
    model = build(GRCN, tiny_data, {"reg_weight": 0.3})
    users, pos, neg = batch(tiny_data)
    out = model.forward()
    user_t = users.repeat_interleave(2)
    item_t = torch.stack([pos, neg]).t().reshape(-1) + tiny_data.n_users
    score = (out[user_t] * out[item_t]).sum(1).view(-1, 2)
    bpr = -torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]]))).mean()
    p_v, p_t = model.cgcn[0].preference, model.cgcn[1].preference
    reg = (model.id_embedding[user_t] ** 2 + model.id_embedding[item_t] ** 2).mean() + (p_v ** 2).mean()
    reg = reg + (p_v[user_t] ** 2).mean() + (p_t[user_t] ** 2).mean()
    torch.testing.assert_close(model.loss(users, pos, neg), bpr + 0.3 * reg, rtol=1e-5, atol=1e-6)


def test_grcn_trains_and_is_reproducible(tiny_data):
    model = build(GRCN, tiny_data)
    losses = train_epochs(model, tiny_data)
    assert losses[-1] < losses[0]
    s = eval_scores(model, torch.arange(9))
    assert s.shape == (9, tiny_data.n_items) and torch.isfinite(s).all()
    twin = build(GRCN, tiny_data)
    train_epochs(twin, tiny_data)
    assert torch.equal(s, eval_scores(twin, torch.arange(9)))


def test_grcn_edge_dropout_is_training_only(tiny_data):
    model = build(GRCN, tiny_data, {"dropout": 0.5})
    model.train()
    torch.manual_seed(1)
    a = model.forward()
    torch.manual_seed(1)
    assert torch.equal(a, model.forward())  # the trainer's torch seed fixes the dropped edges
    assert not torch.equal(a, model.forward())
    full = build(GRCN, tiny_data)
    full.load_state_dict(model.state_dict())
    torch.testing.assert_close(eval_scores(model, torch.arange(6)), eval_scores(full, torch.arange(6)))
    with pytest.raises(ValueError, match="dropout"):
        build(GRCN, tiny_data, {"dropout": 1.0})
    with pytest.raises(ValueError, match="weight_mode"):
        build(GRCN, tiny_data, {"weight_mode": "sum"})


def test_grcn_edge_weights_follow_the_features(tiny_data):
    # no item graph is built from features; the features set the attention weights of the ID graph instead
    def id_part(data):
        return build(GRCN, data).eval().forward()[:, :64]

    other = {m: x[::-1].copy() for m, x in tiny_data.features.items()}
    assert not torch.allclose(id_part(tiny_data), id_part(tiny_data.with_features(other)))


def test_grcn_latent_hook_sees_encoders(tiny_data):
    GRCN.check_latent({})
    model = build(GRCN, tiny_data)
    spy = Spy()
    model.modality_hook = spy
    model.train()
    model.loss(*batch(tiny_data))
    eval_scores(model, torch.arange(4))
    assert spy.calls == [((tiny_data.n_items, 64), (tiny_data.n_items, 64))] * 2
    raw = eval_scores(model, torch.arange(4))
    model.modality_hook = LatentCLEAR(k=2)
    assert not torch.allclose(raw, eval_scores(model, torch.arange(4)))


# -- both models -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,params", [(MMGCN, {}), (GRCN, {"dropout": 0.3})])
def test_evaluation_is_a_fresh_forward_pass(cls, params, tiny_data):
    model = build(cls, tiny_data, params)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    train_rep = model.forward()  # what MMRec would rank with (self.result of the last batch)
    loss = model.loss(*batch(tiny_data))
    opt.zero_grad()
    loss.backward()
    opt.step()
    users = torch.arange(10)
    s = eval_scores(model, users)
    fresh = build(cls, tiny_data, params)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        rep = fresh.forward()
        torch.testing.assert_close(s, rep[users] @ rep[tiny_data.n_users:].T)
        assert not torch.allclose(s, train_rep[users] @ train_rep[tiny_data.n_users:].T)
        torch.testing.assert_close(fresh.scores(users), s)  # without begin_eval too
    assert model._cache is None  # end_eval dropped it


@pytest.mark.parametrize("cls", [MMGCN, GRCN])
def test_one_and_three_modalities(cls, tiny_data):
    rng = np.random.default_rng(0)
    feats = dict(tiny_data.features, audio=rng.standard_normal((tiny_data.n_items, 16)).astype(np.float32))
    for names in (["text"], ["image", "text", "audio"]):
        data = tiny_data.with_features({m: feats[m] for m in names})
        model = build(cls, data)
        loss = model.loss(*batch(data))
        loss.backward()
        assert torch.isfinite(loss)
        s = eval_scores(model, torch.arange(3))
        assert s.shape == (3, data.n_items) and torch.isfinite(s).all()
        if cls is GRCN:
            assert model.forward().shape[1] == 64 + 64 * len(names) and model.confidence.shape[1] == len(names)
        else:
            assert len(model.branches) == len(names) and model.branches[0].mlp is not None
    with pytest.raises(ValueError, match="feature"):
        cls(tiny_data.with_features({}), {})


def test_registered_with_parity_defaults():
    assert get_model("mmgcn") is MMGCN and get_model("grcn") is GRCN
    assert MMGCN.default_params == {"embedding_size": 64, "n_layers": 3, "dim_latent": 256, "dim_latent_others": 0,
                                    "reg_weight": 1e-4, "learning_rate": 1e-3}
    p = GRCN.default_params
    assert (p["embedding_size"], p["latent_embedding"], p["n_layers"], p["reg_weight"], p["learning_rate"],
            p["weight_mode"], p["dropout"]) == (64, 64, 3, 1e-3, 1e-3, "confid", 0.0)
    for cls in (MMGCN, GRCN):
        assert set(cls.param_help) == set(cls.default_params) and cls.deviations and cls.lr_schedule == (1.0, 50)

"""DualGNN, DRAGON and their user-user graph: MMRec's math re-derived by hand, CLEAR's hooks, seeding, refusals."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from clear_lab.data import BPRSampler
from clear_lab.models import get_model
from clear_lab.models.dragon import DRAGON
from clear_lab.models.dualgnn import DualGNN
from clear_lab.user_graph import (
    UserGraph,
    co_interaction_graph,
    from_mmrec_dict,
    load_mmrec_user_graph,
    neighbour_operator,
    sample_neighbours,
    save_mmrec_user_graph,
)
from tests.modelutil import build, eval_scores, train_epochs

MODELS = [DualGNN, DRAGON]


# -- the user-user graph --------------------------------------------------------------------------------------
def brute_force_counts(users, items, n_users, n_items):
    r = np.zeros((n_users, n_items), dtype=np.int64)
    r[users, items] = 1
    c = r @ r.T
    np.fill_diagonal(c, 0)
    return c


def test_co_interaction_graph_equals_dense_counts(tiny_data):
    u, i = tiny_data.train[:, 0], tiny_data.train[:, 1]
    dense = brute_force_counts(u, i, tiny_data.n_users, tiny_data.n_items)
    for max_nb, chunk in ((200, 4096), (5, 17)):  # no truncation in one block; truncated and chunked
        g = co_interaction_graph(u, i, tiny_data.n_users, tiny_data.n_items, max_neighbours=max_nb, chunk_size=chunk)
        for user in range(tiny_data.n_users):
            nb, cnt = g.row(user)
            row = dense[user]
            # MMRec's order: count descending; ours breaks ties by the lower id
            expected = sorted(np.flatnonzero(row), key=lambda j: (-row[j], j))[:max_nb]
            np.testing.assert_array_equal(nb, expected)
            np.testing.assert_array_equal(cnt, row[expected])
            assert user not in nb
    assert g.degree().max() == 5


def test_co_interaction_graph_counts_duplicates_once():
    g = co_interaction_graph(np.array([0, 0, 1, 1, 2]), np.array([0, 0, 0, 1, 1]), 3, 2)
    assert g.row(0)[0].tolist() == [1] and g.row(0)[1].tolist() == [1]
    assert g.row(1)[0].tolist() == [0, 2] and g.row(1)[1].tolist() == [1, 1]


def test_co_interaction_graph_never_allocates_users_squared():
    rng = np.random.default_rng(0)
    n_users, n_items, per_user = 30_000, 3_000, 3
    users = np.repeat(np.arange(n_users), per_user)
    items = rng.integers(0, n_items, size=users.size)
    # reference: the whole sparse product at once (no chunks, no per-row ordering), diagonal dropped
    r = sp.csr_matrix((np.ones(users.size), (users, items)), shape=(n_users, n_items))
    r.data[:] = 1.0
    c = (r @ r.T).tocoo()
    off = c.row != c.col
    per_row = np.bincount(c.row[off], minlength=n_users)

    tracemalloc.start()
    g = co_interaction_graph(users, items, n_users, n_items)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 200e6  # a dense U x U matrix would be >= 900 MB even as bool
    assert g.neighbours.size == np.minimum(per_row, 200).sum() == off.sum()  # nobody reaches the 200 cap here
    np.testing.assert_array_equal(g.degree(), per_row)


def hand_graph() -> UserGraph:
    # user 0: 5 neighbours (>= k = 3), user 1: 2 neighbours, user 2: none, user 3: 1 neighbour
    return from_mmrec_dict({0: [[1, 2, 3, 4, 5], [4, 3, 3, 2, 1]], 1: [[0, 3], [4, 1]], 2: [[], []], 3: [[0], [2]],
                            4: [[0], [2]], 5: [[0], [1]]})


def test_sample_neighbours_follows_mmrec_topk_sample():
    g, k = hand_graph(), 3
    index, weights = sample_neighbours(g, k, np.random.default_rng(0))
    assert index.shape == weights.shape == (6, k)

    def softmax(c):
        e = np.exp(np.asarray(c, float) - max(c))
        return e / e.sum()

    # >= k neighbours: the first k, softmax of their counts, no randomness
    np.testing.assert_array_equal(index[0], [1, 2, 3])
    np.testing.assert_allclose(weights[0], softmax([4, 3, 3]), rtol=1e-6)
    # < k: the neighbours first, the padding repeats them, softmax over the padded counts
    assert index[1, :2].tolist() == [0, 3] and index[1, 2] in (0, 3)
    np.testing.assert_allclose(weights[1], softmax([{0: 4, 3: 1}[j] for j in index[1]]), rtol=1e-6)
    assert index[3].tolist() == [0, 0, 0]
    np.testing.assert_allclose(weights[3], [1 / 3] * 3, rtol=1e-6)
    # no neighbour: weight 0 (MMRec's rows of zeros pointing at user 0)
    assert index[2].tolist() == [0, 0, 0] and weights[2].tolist() == [0, 0, 0]
    np.testing.assert_allclose(weights.sum(1), [1, 1, 0, 1, 1, 1], rtol=1e-6)


def test_padding_is_mmrecs_polya_urn():
    # two neighbours, k = 4: MMRec appends a uniform pick of the *current* list twice, so neighbour A ends up in
    # 1, 2 or 3 slots with probability 1/3 each (independent picks of the originals would give 1/4, 1/2, 1/4)
    n = 30_000
    d = {u: [[0, 1], [1, 1]] for u in range(n)}
    index, _ = sample_neighbours(from_mmrec_dict(d), 4, np.random.default_rng(1))
    freq = np.bincount((index == 0).sum(1), minlength=4)[1:] / n
    np.testing.assert_allclose(freq, [1 / 3] * 3, atol=0.015)


def test_sampling_is_seeded_and_redrawn():
    g = hand_graph()
    a = sample_neighbours(g, 6, np.random.default_rng(5))
    b = sample_neighbours(g, 6, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    draws = {tuple(sample_neighbours(g, 6, np.random.default_rng(s))[0][1]) for s in range(10)}
    assert len(draws) > 1  # the padding of short users changes with the generator


def test_neighbour_operator_equals_mmrec_gather():
    g = hand_graph()
    index, weights = sample_neighbours(g, 4, np.random.default_rng(0))
    e = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    gathered = (torch.as_tensor(weights).unsqueeze(1) @ e[torch.as_tensor(index)]).squeeze(1)  # MMRec's form
    torch.testing.assert_close(neighbour_operator(index, weights) @ e, gathered)


def test_mmrec_user_graph_dict_round_trips(tiny_data, tmp_path):
    g = co_interaction_graph(tiny_data.train[:, 0], tiny_data.train[:, 1], tiny_data.n_users, tiny_data.n_items)
    path = save_mmrec_user_graph(g, tmp_path / "user_graph_dict.npy")
    raw = np.load(path, allow_pickle=True).item()  # what MMRec's DualGNN/DRAGON read
    assert sorted(raw) == list(range(tiny_data.n_users))
    ids, counts = raw[0]
    assert isinstance(ids, list) and isinstance(counts, list) and all(isinstance(c, float) for c in counts)
    assert load_mmrec_user_graph(path).equals(g)
    assert save_mmrec_user_graph(g, tmp_path / "noext").name == "noext.npy"
    with pytest.raises(ValueError, match="counts"):
        from_mmrec_dict({0: [[1], [1.5]], 1: [[0], [1.5]]})


# -- MMRec's forward and loss, written out as MMRec does them --------------------------------------------------
def pyg_add_conv(x, edge_index):
    """Base_gcn with aggr='add': messages x[row] * deg^-1/2[row] deg^-1/2[col], summed at col."""
    row, col = edge_index
    deg = torch.zeros(x.shape[0]).index_add_(0, row, torch.ones(row.numel()))
    norm = deg[row].pow(-0.5) * deg[col].pow(-0.5)
    return torch.zeros_like(x).index_add_(0, col, norm[:, None] * x[row])


def dense_knn(x, k):
    xn = x / x.norm(dim=1, keepdim=True)
    idx = torch.topk(xn @ xn.T, k, dim=1).indices
    a = torch.zeros(x.shape[0], x.shape[0]).scatter_(1, idx, 1.0)
    d = a.sum(1).pow(-0.5)
    return d[:, None] * a * d[None, :]


def mmrec_forward(model, data, index, weights):
    """(users, items) as MMRec's DualGNN / DRAGON forward computes them, from the model's parameters."""
    nu = data.n_users
    e = torch.as_tensor(data.train.T)
    edge_index = torch.cat([torch.stack([e[0], e[1] + nu]), torch.stack([e[1] + nu, e[0]])], dim=1)
    reps = []
    for j, enc in enumerate(model.encoders):
        feat = torch.as_tensor(data.features[data.modalities[j]])
        temp = enc[2](torch.nn.functional.leaky_relu(enc[0](feat)))
        x = torch.nn.functional.normalize(torch.cat([model.preferences[j], temp]))
        h = pyg_add_conv(x, edge_index)
        reps.append(h + x + pyg_add_conv(h, edge_index))
    v_rep, t_rep = reps
    if isinstance(model, DualGNN):
        representation = v_rep
        representation += t_rep  # MMRec's in-place add: v_rep now holds v + t as well
        user_rep = torch.cat([v_rep[:nu].unsqueeze(2), t_rep[:nu].unsqueeze(2)], dim=2) @ model.weight_u
        user_rep = user_rep.squeeze()
        item_rep = representation[nu:]
    else:
        representation = torch.cat([v_rep, t_rep], dim=1)
        user_rep = torch.cat([v_rep[:nu].unsqueeze(2), t_rep[:nu].unsqueeze(2)], dim=2)
        user_rep = model.weight_u.transpose(1, 2) * user_rep
        user_rep = torch.cat([user_rep[:, :, 0], user_rep[:, :, 1]], dim=1)
        item_rep = representation[nu:]
        x_v, x_t = (torch.as_tensor(data.features[m]) for m in data.modalities)
        mm_adj = 0.1 * dense_knn(x_v, 10) + 0.9 * dense_knn(x_t, 10)
        item_rep = item_rep + mm_adj @ item_rep
    u_pre = (torch.as_tensor(weights).unsqueeze(1) @ user_rep[torch.as_tensor(index)]).squeeze()
    return user_rep + u_pre, item_rep


@pytest.mark.parametrize("cls", MODELS)
def test_forward_and_loss_match_mmrec(cls, tiny_data):
    model = build(cls, tiny_data)
    model.pre_epoch(np.random.default_rng(3))
    index, weights = sample_neighbours(model.user_graph, 40, np.random.default_rng(3))
    with torch.no_grad():
        users, items = mmrec_forward(model, tiny_data, index, weights)
        mine_u, mine_i = model.propagate()
        width = 64 if cls is DualGNN else 128
        assert mine_u.shape == (tiny_data.n_users, width) and mine_i.shape == (tiny_data.n_items, width)
        torch.testing.assert_close(mine_u, users, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mine_i, items, rtol=1e-4, atol=1e-5)

        u, p, n = (torch.as_tensor(a) for a in next(iter(BPRSampler(tiny_data.train, tiny_data.n_users,
                                                                     tiny_data.n_items, 64, seed=0).epoch())))
        diff = (users[u] * items[p]).sum(1) - (users[u] * items[n]).sum(1)
        reg = sum((pref[u] ** 2).mean() for pref in model.preferences) + (model.weight_u ** 2).mean()
        if cls is DualGNN:
            reg = reg + (model.weight_i ** 2).mean()
        expected = -torch.log2(torch.sigmoid(diff)).mean() + 1e-3 * reg
        torch.testing.assert_close(model.loss(u, p, n), expected, rtol=1e-4, atol=1e-6)


def test_dualgnn_paper_fusion_is_the_weighted_sum(tiny_data):
    model = build(DualGNN, tiny_data, {"user_fusion": "paper"})
    with torch.no_grad():
        reps = model.modality_reps()
        users, items = model.fuse(reps)
        nu = tiny_data.n_users
        torch.testing.assert_close(users, model.weight_u[:, 0] * reps[0][:nu] + model.weight_u[:, 1] * reps[1][:nu])
        torch.testing.assert_close(items, reps[0][nu:] + reps[1][nu:])
    with pytest.raises(ValueError, match="user_fusion"):
        DualGNN(tiny_data, {"user_fusion": "mean"})


def test_initial_user_weights_are_a_softmax(tiny_data):
    model = build(DualGNN, tiny_data)
    for w in (model.weight_u, model.weight_i):
        assert w.shape[1:] == (2, 1)
        torch.testing.assert_close(w.sum(1), torch.ones(w.shape[0], 1))
        # softmax of xavier-normal draws on (n, 2, 1): std sqrt(2 / (n + 2)) each, so log(w_0 / w_1) = a_0 - a_1
        logit_gap = torch.log(w[:, 0, 0] / w[:, 1, 0]).detach()
        assert math.isclose(float(logit_gap.std()), math.sqrt(2 * 2 / (w.shape[0] + 2)), rel_tol=0.2)


# -- training, seeding, evaluation ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", MODELS)
def test_training_learns_and_is_seeded(cls, tiny_data):
    runs = []
    for _ in range(2):
        model = build(cls, tiny_data)
        losses = train_epochs(model, tiny_data)
        assert losses[-1] < losses[0]
        s = eval_scores(model, torch.arange(13))
        assert s.shape == (13, tiny_data.n_items) and torch.isfinite(s).all()
        runs.append(s)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


@pytest.mark.parametrize("cls", MODELS)
def test_evaluation_is_a_fresh_forward_pass(cls, tiny_data):
    model = build(cls, tiny_data)
    model.pre_epoch(np.random.default_rng(7))
    users = torch.arange(20)
    before = eval_scores(model, users)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    u, p, n = (torch.as_tensor(a) for a in next(iter(BPRSampler(tiny_data.train, tiny_data.n_users,
                                                                 tiny_data.n_items, 256, seed=0).epoch())))
    loss = model.loss(u, p, n)  # MMRec caches result_embed here, before the step
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = eval_scores(model, users)
    assert not torch.allclose(after, before)
    # a copy that never trained, carrying the stepped parameters and the same user graph, scores the same
    torch.manual_seed(1)
    fresh = cls(tiny_data, {})
    fresh.load_state_dict(model.state_dict())
    fresh.pre_epoch(np.random.default_rng(7))
    torch.testing.assert_close(eval_scores(fresh, users), after)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.scores(users), after)  # without begin_eval: computed on the fly


# -- CLEAR's placements --------------------------------------------------------------------------------------
def test_dragon_item_graph_follows_features(tiny_data):
    base = build(DRAGON, tiny_data)
    img, txt = (tiny_data.features[m] for m in tiny_data.modalities)
    expected = 0.1 * dense_knn(torch.as_tensor(img), 10) + 0.9 * dense_knn(torch.as_tensor(txt), 10)
    torch.testing.assert_close(base.mm_adj.to_dense(), expected, rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(0)
    other = tiny_data.with_features({"image": img, "text": rng.standard_normal(txt.shape).astype(np.float32)})
    torch.manual_seed(0)
    assert not torch.equal(DRAGON(other, {}).mm_adj.to_dense(), base.mm_adj.to_dense())


def test_user_graph_ignores_features(tiny_data):
    img, txt = (tiny_data.features[m] for m in tiny_data.modalities)
    other = tiny_data.with_features({"image": -img, "text": txt[::-1].copy()})
    assert DualGNN(tiny_data, {}).user_graph.equals(DualGNN(other, {}).user_graph)


class Spy(nn.Module):
    def __init__(self):
        super().__init__()
        self.shapes = []
        self.zero = False

    def forward(self, z_a, z_b):
        self.shapes.append((tuple(z_a.shape), tuple(z_b.shape)))
        return (z_a * 0, z_b * 0) if self.zero else (z_a, z_b)


@pytest.mark.parametrize("cls", MODELS)
def test_latent_hook_sees_encoder_outputs(cls, tiny_data):
    cls.check_latent({})  # the encoders always reach the ranking: nothing to refuse
    model = build(cls, tiny_data)
    spy = Spy()
    model.modality_hook = spy
    enc = model.encoded_modalities()
    assert list(enc) == tiny_data.modalities and all(z.shape == (tiny_data.n_items, 64) for z in enc.values())
    u = torch.tensor([0, 1, 2])
    model.loss(u, torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8])).backward()
    s = eval_scores(model, u)
    shape = (tiny_data.n_items, 64)
    assert spy.shapes == [(shape, shape)] * 2  # once in loss(), once in begin_eval()
    spy.zero = True
    assert not torch.allclose(eval_scores(model, u), s)  # the hook's output is what the model uses


# -- modality counts and refusals ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("n_mod", [1, 3])
def test_one_and_three_modalities(cls, n_mod, tiny_data):
    feats = dict(tiny_data.features)
    feats["audio"] = np.random.default_rng(0).standard_normal((tiny_data.n_items, 16)).astype(np.float32)
    names = ["image"] if n_mod == 1 else ["image", "text", "audio"]
    data = tiny_data.with_features({m: feats[m] for m in names})
    model = build(cls, data)
    losses = train_epochs(model, data, epochs=3)
    assert losses[-1] < losses[0]
    users, items = model.propagate()
    width = 64 if cls is DualGNN else 64 * n_mod
    assert users.shape == (data.n_users, width) and items.shape == (data.n_items, width)
    s = eval_scores(model, torch.arange(4))
    assert s.shape == (4, data.n_items) and torch.isfinite(s).all()


def test_dragon_three_modality_graph_weights(tiny_data):
    feats = dict(tiny_data.features)
    feats["audio"] = np.random.default_rng(0).standard_normal((tiny_data.n_items, 16)).astype(np.float32)
    model = DRAGON(tiny_data.with_features(feats), {"mm_image_weight": 0.4})
    g = [dense_knn(torch.as_tensor(feats[m]), 10) for m in ("image", "text", "audio")]
    torch.testing.assert_close(model.mm_adj.to_dense(), 0.4 * g[0] + 0.3 * g[1] + 0.3 * g[2], rtol=1e-5, atol=1e-6)


def test_refusals(tiny_data):
    with pytest.raises(ValueError, match="feat_embed_dim"):
        DRAGON(tiny_data, {"feat_embed_dim": 32})
    for name in ("dualgnn", "dragon"):
        cls = get_model(name)
        with pytest.raises(ValueError, match="aggr_mode"):
            cls(tiny_data, {"aggr_mode": "mean"})
        with pytest.raises(ValueError, match="k >= 1"):
            cls(tiny_data, {"k": 0})
        with pytest.raises(ValueError, match="needs modality features"):
            cls(tiny_data.with_features({}), {})
        assert math.isclose(cls.default_params["learning_rate"], 1e-3)

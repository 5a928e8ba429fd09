"""LATTICE and LGMRec: short training, MMRec's math rebuilt densely by hand, what CLEAR's two placements reach,
fresh evaluation passes, modality counts, and LATTICE's dense-memory refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clear_lab.models.lattice import (
    LATTICE,
    DenseGraphMemoryError,
    estimate_peak_bytes,
    random_walk_adjacency,
    weighted_knn_graph,
)
from clear_lab.models.lgmrec import TAU, LGMRec, info_nce_sum
from tests.modelutil import build, eval_scores, train_epochs

MODELS = (LATTICE, LGMRec)


class Spy(nn.Module):
    """A modality hook that records the shapes it sees and returns its inputs unchanged."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def forward(self, z_a, z_b):
        self.seen.append((tuple(z_a.shape), tuple(z_b.shape)))
        return z_a, z_b


class ZeroSecond(nn.Module):
    """A hook that wipes the second modality's encoded embedding."""

    def forward(self, z_a, z_b):
        return z_a, torch.zeros_like(z_b)


def one_step(model, data, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    u, p = torch.as_tensor(data.train[:128, 0]), torch.as_tensor(data.train[:128, 1])
    n = torch.as_tensor((data.train[:128, 1] + 7) % data.n_items)
    model.train()
    loss = model.loss(u, p, n)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return u, p, n


def extra_modality(data, name="audio", dim=16, seed=3):
    return np.random.default_rng(seed).standard_normal((data.n_items, dim)).astype(np.float32)


# -- both models --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", MODELS)
def test_short_training_learns_and_is_reproducible(cls, tiny_data):
    a = build(cls, tiny_data)
    losses = train_epochs(a, tiny_data, epochs=3, set_to_none=True)
    assert losses[-1] < losses[0]
    s = eval_scores(a, torch.arange(17))
    assert s.shape == (17, tiny_data.n_items) and torch.isfinite(s).all()
    b = build(cls, tiny_data)
    train_epochs(b, tiny_data, epochs=3, set_to_none=True)
    assert torch.equal(s, eval_scores(b, torch.arange(17)))


@pytest.mark.parametrize("cls", MODELS)
def test_latent_hook_sees_encoded_embeddings_in_loss_and_scores(cls, tiny_data):
    model = build(cls, tiny_data)
    spy = Spy()
    model.modality_hook = spy
    u, p, n = one_step(model, tiny_data)
    expected = ((tiny_data.n_items, 64), (tiny_data.n_items, 64))
    assert spy.seen == [expected]
    model.loss(u, p, n)  # a batch after the epoch's first one still passes through the hook
    assert spy.seen == [expected] * 2
    eval_scores(model, torch.arange(5))
    assert spy.seen == [expected] * 3
    model.eval()
    with torch.no_grad():
        model.scores(torch.arange(5))  # without begin_eval: computed on the fly, hook included
    assert spy.seen == [expected] * 4
    enc = model.encoded_modalities()
    assert list(enc) == tiny_data.modalities and all(v.shape == expected[0] for v in enc.values())
    cls.check_latent({})  # the defaults are fine


@pytest.mark.parametrize("cls", MODELS)
def test_latent_hook_output_reaches_the_ranking(cls, tiny_data):
    model = build(cls, tiny_data)
    before = eval_scores(model)
    model.modality_hook = ZeroSecond()
    assert not torch.allclose(before, eval_scores(model))


@pytest.mark.parametrize("cls", MODELS)
def test_evaluation_is_a_fresh_forward_pass(cls, tiny_data):
    model = build(cls, tiny_data)
    model.pre_epoch(np.random.default_rng(0))
    u, p, n = one_step(model, tiny_data)  # the first batch of an epoch builds (LATTICE) the graph...
    model.loss(u, p, n).backward()  # ...and later ones reuse it: evaluation must not
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt.step()
    s = eval_scores(model)
    assert torch.equal(s, eval_scores(model))  # deterministic (MMRec's LGMRec samples gumbel noise here)
    fresh = cls(tiny_data, {})
    fresh.load_state_dict(model.state_dict())
    model.eval()
    with torch.no_grad():
        on_the_fly = model.scores(torch.arange(model.n_users))
    torch.testing.assert_close(s, eval_scores(fresh), rtol=0, atol=0)
    torch.testing.assert_close(s, on_the_fly, rtol=0, atol=0)


@pytest.mark.parametrize("cls", MODELS)
def test_one_and_three_modalities(cls, tiny_data):
    one = tiny_data.with_features({"text": tiny_data.features["text"]})
    three = tiny_data.with_features({**tiny_data.features, "audio": extra_modality(tiny_data)})
    for data in (one, three):
        model = build(cls, data)
        losses = train_epochs(model, data, epochs=2, set_to_none=True)
        assert all(np.isfinite(losses))
        s = eval_scores(model, torch.arange(4))
        assert s.shape == (4, data.n_items) and torch.isfinite(s).all()


# -- LATTICE ------------------------------------------------------------------------------------------------
def mmrec_knn(x, k):
    """MMRec's build_sim + build_knn_neighbourhood, dense."""
    xn = x / x.norm(dim=1, keepdim=True)
    val, ind = torch.topk(xn @ xn.T, k, dim=1)
    return torch.zeros(x.shape[0], x.shape[0], dtype=x.dtype).scatter_(1, ind, val)


def mmrec_laplacian(a):
    d = a.sum(1).pow(-0.5)
    d[torch.isinf(d)] = 0
    return torch.diagflat(d) @ a @ torch.diagflat(d)


def test_weighted_knn_graph_matches_mmrec_dense_formula():
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(1)).abs()
    expected = mmrec_laplacian(mmrec_knn(x.double(), 4))
    got = weighted_knn_graph(x, 4, chunk_size=7).to_dense().double()  # chunks smaller than n on purpose
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (got != 0).sum(1).eq(4).all()  # k weighted entries per row, self included
    assert torch.all(got.diagonal() > 0)


def test_random_walk_adjacency_is_row_normalised_with_self_loops():
    users, items = np.array([0, 0, 1]), np.array([1, 2, 2])
    p = random_walk_adjacency(users, items, 2, 3).to_dense().numpy()
    a = np.eye(5)
    for u, i in zip(users, items):
        a[u, 2 + i] = a[2 + i, u] = 1
    np.testing.assert_allclose(p, a / a.sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-6)


def test_lattice_forward_and_loss_match_mmrec_dense_math(tiny_data):
    model = build(LATTICE, tiny_data)
    with torch.no_grad():
        model.modal_weight.copy_(torch.tensor([0.3, -0.2]))  # unequal weights, so the mix is really tested
        z = [trs(x).double() for x, trs in zip(model.feat_embeddings, model.feat_trs)]
        w = torch.softmax(model.modal_weight.double(), 0)
        raw = [torch.as_tensor(tiny_data.features[m]).double() for m in tiny_data.modalities]
        k, lam = 10, 0.9
        learned = mmrec_laplacian(w[0] * mmrec_knn(z[0], k) + w[1] * mmrec_knn(z[1], k))
        original = w[0] * mmrec_laplacian(mmrec_knn(raw[0], k)) + w[1] * mmrec_laplacian(mmrec_knn(raw[1], k))
        h = ((1 - lam) * learned + lam * original) @ model.item_id_embedding.double()
        n = model.n_users + model.n_items
        a = torch.eye(n, dtype=torch.float64)
        u, i = torch.as_tensor(tiny_data.train[:, 0]), torch.as_tensor(tiny_data.train[:, 1]) + model.n_users
        a[u, i] = a[i, u] = 1
        adj = a / a.sum(1, keepdim=True)
        e = torch.cat([model.user_embedding, model.item_id_embedding]).double()
        out = (e + adj @ e + adj @ adj @ e) / 3
        users_ref, items_ref = out[: model.n_users], out[model.n_users:] + F.normalize(h, dim=1)

        got_u, got_i = model.propagate(model.build_item_graph(list(model.encoded_modalities().values())))
    torch.testing.assert_close(got_u.double(), users_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_i.double(), items_ref, rtol=1e-4, atol=1e-5)

    bu, bp, bn = torch.tensor([0, 3, 5]), torch.tensor([1, 2, 9]), torch.tensor([7, 8, 4])
    ue, pe, ne = users_ref[bu], items_ref[bp], items_ref[bn]
    mf = -F.logsigmoid((ue * pe).sum(1) - (ue * ne).sum(1)).mean()
    reg = 0.5 * (ue.pow(2).sum() + pe.pow(2).sum() + ne.pow(2).sum()) / 3
    model.pre_epoch(np.random.default_rng(0))
    torch.testing.assert_close(model.loss(bu, bp, bn).double(), mf + 1e-4 * reg, rtol=1e-5, atol=1e-6)


def test_lattice_learned_graph_gets_gradients_only_in_the_first_batch_of_an_epoch(tiny_data):
    model = build(LATTICE, tiny_data)
    u, p, n = torch.arange(8), torch.arange(8), torch.arange(8, 16)
    encoder_params = [model.feat_trs[0].weight, model.feat_embeddings[1], model.modal_weight]
    for epoch in range(2):
        model.pre_epoch(np.random.default_rng(epoch))
        model.zero_grad(set_to_none=True)
        model.loss(u, p, n).backward()
        assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in encoder_params)
        model.zero_grad(set_to_none=True)
        model.loss(u, p, n).backward()  # the epoch's graph, detached, as MMRec
        assert all(t.grad is None for t in encoder_params)
        assert model.item_id_embedding.grad is not None


def test_lattice_original_graph_follows_the_features(tiny_data, tmp_path):
    a = LATTICE(tiny_data, {}, cache_dir=str(tmp_path))
    shifted = {m: x[::-1].copy() for m, x in tiny_data.features.items()}  # other features, same shapes
    b = LATTICE(tiny_data.with_features(shifted), {}, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("lattice_knn_*.pt"))) == 4  # two modalities x two feature sets
    for ga, gb in zip(a.original_adj, b.original_adj):
        assert not torch.equal(ga.to_dense(), gb.to_dense())
    c = LATTICE(tiny_data, {}, cache_dir=str(tmp_path))  # read back from the cache
    for ga, gc in zip(a.original_adj, c.original_adj):
        assert torch.equal(ga.to_dense(), gc.to_dense())
    # the trainable features start from the given (e.g. projected) ones
    assert torch.equal(b.feat_embeddings[0].detach(), torch.as_tensor(shifted["image"]))


def test_lattice_latent_refusals():
    with pytest.raises(ValueError, match="lambda_coeff"):
        LATTICE.check_latent({"lambda_coeff": 1.0})
    with pytest.raises(ValueError, match="n_layers"):
        LATTICE.check_latent({"n_layers": 0})


def test_lattice_refuses_dense_graphs_over_the_memory_limit(tiny_data, monkeypatch):
    monkeypatch.setenv("CLEAR_LAB_MAX_DENSE_GB", "0.0001")
    with pytest.raises(ValueError, match=r"LATTICE.*n_items = 120.*GB.*limit of 0\.00 GB") as err:
        LATTICE(tiny_data, {})
    assert isinstance(err.value, DenseGraphMemoryError) and isinstance(err.value, MemoryError)
    assert "freedom" in str(err.value) and "CLEAR_LAB_MAX_DENSE_GB" in str(err.value)
    monkeypatch.setenv("CLEAR_LAB_MAX_DENSE_GB", "1")
    LATTICE(tiny_data, {})
    monkeypatch.delenv("CLEAR_LAB_MAX_DENSE_GB")
    assert LATTICE(tiny_data, {}).memory_estimate == estimate_peak_bytes(120, [32, 24])
    # Clothing (23,033 items, 4096 + 384 features): five dense matrices, ~10.6 GB, plus the features' Adam state
    assert 10 < estimate_peak_bytes(23033, [4096, 384]) / 1e9 < 13


def test_lattice_single_modality_weight_is_one(tiny_data):
    data = tiny_data.with_features({"image": tiny_data.features["image"]})
    model = build(LATTICE, data)
    adj, d, w = model.build_item_graph(list(model.encoded_modalities().values()))
    assert w.tolist() == [1.0]  # so the graph is MMRec's unweighted single-modality one
    z = model.feat_trs[0](model.feat_embeddings[0]).detach()
    torch.testing.assert_close(adj.detach(), mmrec_knn(z, 10), rtol=1e-5, atol=1e-6)


# -- LGMRec -------------------------------------------------------------------------------------------------
def test_info_nce_sum_matches_mmrec_formula():
    g = torch.Generator().manual_seed(0)
    a, p, c = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(9, 4, generator=g)
    na, np_, nc = F.normalize(a), F.normalize(p), F.normalize(c)
    pos = torch.exp((na * np_).sum(1) / TAU)
    ttl = torch.exp(na @ nc.T / TAU).sum(1)
    torch.testing.assert_close(info_nce_sum(a, p, c, TAU), -torch.log(pos / ttl).sum())


def lgmrec_dense_reference(model, data):
    """MMRec's LGMRec forward, evaluation version (expected memberships, no dropout), with dense matrices."""
    U, n_items = model.n_users, model.n_items
    r = torch.zeros(U, n_items, dtype=torch.float64)
    r[torch.as_tensor(data.train[:, 0]), torch.as_tensor(data.train[:, 1])] = 1
    a = torch.zeros(U + n_items, U + n_items, dtype=torch.float64)
    a[:U, U:], a[U:, :U] = r, r.T
    deg = a.sum(1) + 1e-7
    a_hat = a / torch.sqrt(torch.outer(deg, deg))
    e = torch.cat([model.user_embedding, model.item_id_embedding]).double()
    layers = [e]
    for _ in range(2):
        layers.append(a_hat @ layers[-1])
    cge = torch.stack(layers).mean(0)
    local, glob = cge.clone(), 0
    hyper = []
    for j, _name in enumerate(data.modalities):
        x = torch.as_tensor(data.features[data.modalities[j]]).double()
        f = x @ model.item_trs[j].double()
        g = torch.cat([(r @ f) / (r.sum(1, keepdim=True) + 1e-7), f])
        g = a_hat @ (a_hat @ g)
        local = local + F.normalize(g)
        il = x @ model.hyper[j].double()
        hi, hu = torch.softmax(il, 1), torch.softmax(r @ il, 1)  # eval_membership = "mean"
        lat = hi.T @ cge[U:]
        gi, gu = hi @ lat, hu @ lat
        hyper.append((gu, gi))
        glob = glob + torch.cat([gu, gi])
    out = local + 0.3 * F.normalize(glob)
    return out[:U], out[U:], hyper


def test_lgmrec_forward_matches_mmrec_dense_math(tiny_data):
    model = build(LGMRec, tiny_data)
    with torch.no_grad():
        ref_u, ref_i, ref_h = lgmrec_dense_reference(model, tiny_data)
        got_u, got_i, got_h = model.propagate(stochastic=False)
    torch.testing.assert_close(got_u.double(), ref_u, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_i.double(), ref_i, rtol=1e-4, atol=1e-5)
    for (gu, gi), (ru, ri) in zip(got_h, ref_h):
        torch.testing.assert_close(gu.double(), ru, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gi.double(), ri, rtol=1e-4, atol=1e-5)

    # the loss: BPR + cl_weight * (user + item InfoNCE between the two modalities' hyperedge embeddings) + EmbLoss
    users, pos, neg = torch.tensor([0, 4, 9]), torch.tensor([3, 1, 2]), torch.tensor([5, 6, 7])
    (ua, ga), (ub, gb) = ref_h
    ue, pe, ne = ref_u[users], ref_i[pos], ref_i[neg]
    bpr = -F.logsigmoid((ue * pe).sum(1) - (ue * ne).sum(1)).mean()
    hcl = info_nce_sum(ua[users], ub[users], ub, TAU) + info_nce_sum(ga[pos], gb[pos], gb, TAU)
    reg = (ue.norm() + pe.norm() + ne.norm()) / 3
    model.eval()  # deterministic forward, so the loss can be compared
    with torch.no_grad():
        got = model.loss(users, pos, neg)
    torch.testing.assert_close(got.double(), bpr + 1e-4 * hcl + 1e-6 * reg, rtol=1e-5, atol=1e-6)


def test_lgmrec_training_noise_is_seeded_and_eval_is_its_noise_free_version(tiny_data):
    model = build(LGMRec, tiny_data, {"keep_rate": 1.0})
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    model.pre_epoch(np.random.default_rng(7))
    y1 = model._memberships(logits, stochastic=True)
    model.pre_epoch(np.random.default_rng(7))
    assert torch.equal(y1, model._memberships(logits, stochastic=True))  # reproducible from the trainer's rng
    torch.testing.assert_close(y1.sum(1), torch.ones(50))  # a distribution over hyperedges per row
    det = model._memberships(logits, stochastic=False)
    torch.testing.assert_close(det, torch.softmax(logits, 1))
    assert not torch.allclose(y1, det)
    sharp = build(LGMRec, tiny_data, {"eval_membership": "noise_free"})._memberships(logits, stochastic=False)
    torch.testing.assert_close(sharp, torch.softmax(logits / TAU, 1))
    with pytest.raises(ValueError, match="eval_membership"):
        LGMRec(tiny_data, {"eval_membership": "argmax"})


def test_lgmrec_eval_memberships_are_the_mean_of_training_ones(tiny_data):
    # the default evaluation membership softmax(logits) is (close to) the expectation of the gumbel sample at
    # tau = 0.2; the noise-free softmax(logits / tau) is much sharper than that expectation
    model = build(LGMRec, tiny_data, {"keep_rate": 1.0})
    model.pre_epoch(np.random.default_rng(0))
    logits = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    mean = torch.stack([model._memberships(logits, stochastic=True) for _ in range(1000)]).mean(0)
    gap_mean = (mean - torch.softmax(logits, 1)).abs().sum(1).mean()
    gap_sharp = (mean - torch.softmax(logits / TAU, 1)).abs().sum(1).mean()
    assert gap_mean < 0.1 < 0.2 < gap_sharp
    # dropout: entries are zeroed with probability 1 - keep_rate and the rest scaled by 1 / keep_rate
    drop = build(LGMRec, tiny_data, {"keep_rate": 0.5})
    drop.pre_epoch(np.random.default_rng(1))
    y = drop._memberships(torch.zeros(4000, 4), stochastic=True)
    assert abs(float((y == 0).float().mean()) - 0.5) < 0.03
    # the features are frozen buffers, the encoders trainable
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("feat_") for n in names) and {"item_trs.0", "hyper.1"} <= names


def test_lgmrec_features_reach_both_branches(tiny_data):
    base = build(LGMRec, tiny_data)
    shifted = {m: x[::-1].copy() for m, x in tiny_data.features.items()}
    other = build(LGMRec, tiny_data.with_features(shifted))
    with torch.no_grad():
        _, _, h_base = base.propagate(stochastic=False)
        _, _, h_other = other.propagate(stochastic=False)
    assert not torch.allclose(h_base[0][1], h_other[0][1])  # hyperedge branch follows the (projected) features
    assert not torch.allclose(base.encoded_modalities()["image"], other.encoded_modalities()["image"])
    assert not torch.allclose(eval_scores(base), eval_scores(other))


def test_lgmrec_three_modalities_pair_every_two(tiny_data, monkeypatch):
    data = tiny_data.with_features({**tiny_data.features, "audio": extra_modality(tiny_data)})
    model = build(LGMRec, data)
    pairs = []
    import clear_lab.models.lgmrec as mod

    real = mod.info_nce_sum

    def counting(a, p, c, tau):
        pairs.append(c.data_ptr())
        return real(a, p, c, tau)

    monkeypatch.setattr(mod, "info_nce_sum", counting)
    model.pre_epoch(np.random.default_rng(0))
    model.loss(torch.arange(4), torch.arange(4), torch.arange(4, 8))
    assert len(pairs) == 2 * 3  # users + items for each of the pairs (0,1), (0,2), (1,2)
    one = build(LGMRec, tiny_data.with_features({"image": tiny_data.features["image"]}))
    pairs.clear()
    one.loss(torch.arange(4), torch.arange(4), torch.arange(4, 8))
    assert pairs == []  # no pair, no contrastive term


def test_lgmrec_refuses_bad_params(tiny_data):
    with pytest.raises(ValueError, match="n_hyper_layer"):
        LGMRec(tiny_data, {"n_hyper_layer": 0})
    with pytest.raises(ValueError, match="keep_rate"):
        LGMRec(tiny_data, {"keep_rate": 0.0})

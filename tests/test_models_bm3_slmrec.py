"""BM3 and SLMRec: learning, MMRec's math checked by hand, CLEAR's input and latent placements, fresh evaluation,
modality counts and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clear_lab.models import get_model
from clear_lab.models.base import IdentityHook
from clear_lab.projection import LatentCLEAR
from tests.modelutil import Spy, build, eval_scores, train_epochs


# -- helpers ---------------------------------------------------------------------------------------------------
def dense_adjacency(data):
    """D^-1/2 A D^-1/2 of the bipartite training graph, written out densely."""
    n = data.n_users + data.n_items
    a = torch.zeros(n, n, dtype=torch.float64)
    u, i = torch.as_tensor(data.train[:, 0]), torch.as_tensor(data.train[:, 1]) + data.n_users
    a[u, i] = 1.0
    a[i, u] = 1.0
    d = a.sum(1)
    inv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    return inv[:, None] * a * inv[None, :]


def lightgcn_dense(adj, x, layers):
    acc, h = x, x
    for _ in range(layers):
        h = adj @ h
        acc = acc + h
    return acc / (layers + 1)


def with_modalities(data, names):
    rng = np.random.default_rng(7)
    feats = dict(data.features)
    feats["audio"] = rng.normal(size=(data.n_items, 16)).astype(np.float32)
    return data.with_features({m: feats[m] for m in names})


BATCH = (torch.tensor([0, 1, 2, 3, 5, 8]), torch.tensor([4, 0, 7, 11, 2, 30]), torch.tensor([1, 1, 1, 1, 1, 1]))


# -- both models -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bm3", "slmrec"])
def test_trains_scores_and_is_reproducible(name, tiny_data):
    runs = []
    for _ in range(2):
        model = build(name, tiny_data)
        losses = train_epochs(model, tiny_data, seed_torch=True)
        assert losses[-1] < losses[0]
        s = eval_scores(model, torch.arange(9))
        assert s.shape == (9, tiny_data.n_items)
        assert torch.isfinite(s).all()
        runs.append(s)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["bm3", "slmrec"])
def test_evaluation_is_a_fresh_forward_pass(name, tiny_data):
    model = build(name, tiny_data)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    users = torch.arange(tiny_data.n_users)
    before = eval_scores(model, users)
    model.train()
    loss = model.loss(*BATCH)
    opt.zero_grad()
    loss.backward()
    opt.step()  # no training forward after the step: a train-batch cache would hold the pre-step embeddings
    after = eval_scores(model, users)
    assert not torch.allclose(before, after)
    model.eval()
    with torch.no_grad():
        if name == "bm3":
            u, i = model.propagate()
            by_hand = model.predictor(u) @ model.predictor(i).T
        else:
            u, i, _ = model.compute()
            by_hand = u @ i.T
        torch.testing.assert_close(after, by_hand)
        torch.testing.assert_close(model.scores(users), after)  # without begin_eval: computed on the fly
    torch.testing.assert_close(eval_scores(model, users), after, rtol=0, atol=0)  # eval is deterministic


# -- BM3 -------------------------------------------------------------------------------------------------------
def bm3_loss_by_hand(model, data, users, pos, detach_targets=True):
    """MMRec's BM3 loss with dropout 0 (targets = stop-gradient copies), written from the formula."""
    p = model.params
    adj = dense_adjacency(data).float()
    e0 = torch.cat([model.user_embedding.weight, model.item_id_embedding.weight])
    e = lightgcn_dense(adj, e0, p["n_layers"])
    u_all, i_all = e[: data.n_users], e[data.n_users:] + model.item_id_embedding.weight

    def sg(x):
        return x.detach() if detach_targets else x

    def c(a, b):
        return 1 - (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1).mean()

    w, b = model.predictor.weight, model.predictor.bias
    q = lambda x: x @ w.T + b  # noqa: E731
    loss = c(q(u_all[users]), sg(i_all[pos])) + c(q(i_all[pos]), sg(u_all[users]))
    loss = loss + p["reg_weight"] * (u_all.norm() + i_all.norm()) / data.n_items  # EmbLoss: full matrices / n_items
    cl = 0.0
    for emb, trs in zip(model.feat_embeddings, model.feat_trs):
        z = emb.weight @ trs.weight.T + trs.bias
        cl = cl + c(q(z[pos]), sg(i_all[pos])) + c(q(z[pos]), sg(z[pos]))
    return loss + p["cl_weight"] * cl


def test_bm3_loss_and_gradients_match_the_formula(tiny_data):
    model = build("bm3", tiny_data, {"dropout": 0.0})
    users, pos, neg = BATCH
    got = model.loss(users, pos, neg)
    expected = bm3_loss_by_hand(model, tiny_data, users, pos)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)

    # the targets are stop-gradient (MMRec builds them under no_grad): gradients equal the detached formula's
    grads = torch.autograd.grad(got, list(model.parameters()), allow_unused=True)
    grads_sg = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)
    grads_full = torch.autograd.grad(bm3_loss_by_hand(model, tiny_data, users, pos, detach_targets=False),
                                     list(model.parameters()), allow_unused=True)
    for g, g_sg in zip(grads, grads_sg):
        torch.testing.assert_close(g, g_sg, rtol=1e-4, atol=1e-6)
    emb_index = [n for n, _ in model.named_parameters()].index("item_id_embedding.weight")
    assert not torch.allclose(grads[emb_index], grads_full[emb_index])


def test_bm3_target_dropout_is_random_in_training(tiny_data):
    # dropout 0.3 makes the target views: two calls draw other masks, dropout 0 is deterministic
    model = build("bm3", tiny_data)
    l1, l2 = model.loss(*BATCH), model.loss(*BATCH)
    assert torch.isfinite(l1) and not torch.isclose(l1, l2)
    model.params["dropout"] = 0.0
    torch.testing.assert_close(model.loss(*BATCH), model.loss(*BATCH), rtol=0, atol=0)


def test_bm3_features_reach_only_the_loss(tiny_data):
    # input placement: projected features become the trainable copies; BM3's scores never read them
    other = {m: np.random.default_rng(3).normal(size=x.shape).astype(np.float32) for m, x in tiny_data.features.items()}
    raw, proj = build("bm3", tiny_data, {"dropout": 0.0}), build("bm3", tiny_data.with_features(other),
                                                                   {"dropout": 0.0})
    torch.testing.assert_close(proj.feat_embeddings[0].weight.detach(), torch.as_tensor(other["image"]))
    assert proj.feat_embeddings[0].weight.requires_grad  # trainable copies, as MMRec's freeze=False
    assert not torch.allclose(raw.encoded_modalities()["image"], proj.encoded_modalities()["image"])
    assert not torch.isclose(raw.loss(*BATCH), proj.loss(*BATCH))
    users = torch.arange(20)
    torch.testing.assert_close(eval_scores(raw, users), eval_scores(proj, users), rtol=0, atol=0)


def test_bm3_latent_hook(tiny_data):
    model = build("bm3", tiny_data, {"dropout": 0.0})
    spy = Spy()
    model.modality_hook = spy
    model.train()
    model.loss(*BATCH)
    assert spy.calls == [((tiny_data.n_items, 64), (tiny_data.n_items, 64))]
    eval_scores(model, torch.arange(5))
    assert len(spy.calls) == 1  # documented: the modality encodings never enter BM3's scores
    # the hook's output is what the loss uses
    base = model.loss(*BATCH)
    model.modality_hook = LatentCLEAR(k=4)
    model.train()
    assert not torch.isclose(model.loss(*BATCH), base)

    get_model("bm3").check_latent({})
    with pytest.raises(ValueError, match="cl_weight = 0"):
        get_model("bm3").check_latent({"cl_weight": 0.0})


def test_bm3_refusals_and_parity_defaults(tiny_data):
    with pytest.raises(ValueError, match="feat_embed_dim .* must equal embedding_size"):
        build("bm3", tiny_data, {"feat_embed_dim": 32})
    with pytest.raises(ValueError, match="dropout"):
        build("bm3", tiny_data, {"dropout": 1.0})
    assert get_model("bm3").default_params == {"embedding_size": 64, "feat_embed_dim": 64, "n_layers": 1,
                                               "reg_weight": 0.1, "dropout": 0.3, "cl_weight": 2.0,
                                               "learning_rate": 1e-3}


@pytest.mark.parametrize("names", [["image"], ["text"], ["image", "text", "audio"]])
def test_bm3_modality_counts(tiny_data, names):
    data = with_modalities(tiny_data, names)
    model = build("bm3", data, {"dropout": 0.0})
    assert len(model.feat_trs) == len(names)
    torch.testing.assert_close(model.loss(*BATCH), bm3_loss_by_hand(model, data, *BATCH[:2]), rtol=1e-5, atol=1e-6)
    spy = Spy()
    model.modality_hook = spy
    model.loss(*BATCH)
    assert spy.calls == []  # the hook is for exactly two modalities
    model.modality_hook = IdentityHook()
    model.params["dropout"] = 0.3
    losses = train_epochs(model, data, epochs=3, seed_torch=True)
    assert losses[-1] < losses[0]


# -- SLMRec ----------------------------------------------------------------------------------------------------
def slmrec_by_hand(model, data):
    """Fused embeddings and per-branch item rows from the formula: one dense LightGCN per branch."""
    p = model.params
    adj = dense_adjacency(data).float()
    e_u = model.embedding_user.weight
    items = [model.embedding_item.weight]
    for j, name in enumerate(model.modality_names):
        x = torch.as_tensor(data.features[name])
        x = x / x.norm(dim=1, keepdim=True)
        items.append(x @ model.dense[j].weight.T + model.dense[j].bias)
    outs = [lightgcn_dense(adj, torch.cat([e_u, it]), p["layer_num"]) for it in items]
    g_u = torch.cat([o[: data.n_users] for o in outs], dim=1)
    g_i = torch.cat([o[data.n_users:] for o in outs], dim=1)
    user = g_u @ model.user_fusion.weight.T + model.user_fusion.bias
    item = g_i @ model.item_fusion.weight.T + model.item_fusion.bias
    return user, item, [o[data.n_users:] for o in outs]


def nce_by_hand(a, b, t):
    logits = a @ b.T / t
    return -(torch.diagonal(logits) - torch.logsumexp(logits, dim=1)).mean()


def test_slmrec_forward_and_loss_match_the_formula(tiny_data):
    model = build("slmrec", tiny_data)
    users, pos, neg = BATCH
    user, item, branches = model.compute()
    h_user, h_item, h_branches = slmrec_by_hand(model, tiny_data)
    torch.testing.assert_close(user, h_user, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(item, h_item, rtol=1e-4, atol=1e-6)

    # MMRec's FAC with image (v) and text (t): g_i_iv / g_v_iv (64-d), g_iv_iva (64-d, no term: the audio slot),
    # then g_iva_ivat / g_t_ivat (32-d)
    g_i_iv, g_iv_iva, g_iva_ivat = model.fac_chain
    g_v_iv, g_t_ivat = model.fac_heads["0"], model.fac_heads["2"]
    assert set(model.fac_heads) == {"0", "2"}
    assert [tuple(m.weight.shape) for m in (g_i_iv, g_v_iv, g_iv_iva, g_iva_ivat, g_t_ivat)] == [
        (64, 64), (64, 64), (64, 64), (32, 64), (32, 64)]
    t = model.params["ssl_temp"]
    x_i_iv = g_i_iv(h_branches[0][pos])
    v_loss = nce_by_hand(x_i_iv, g_v_iv(h_branches[1][pos]), t)
    t_loss = nce_by_hand(g_iva_ivat(g_iv_iva(x_i_iv)), g_t_ivat(h_branches[2][pos]), t)
    main = nce_by_hand(F.normalize(h_user[users], dim=1), F.normalize(h_item[pos], dim=1), model.params["temp"])
    expected = main + model.params["ssl_alpha"] * (v_loss + t_loss)
    torch.testing.assert_close(model.loss(users, pos, neg), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.fac_loss(pos, branches), v_loss + t_loss, rtol=1e-5, atol=1e-6)


def test_slmrec_features_are_normalised_and_reach_the_scores(tiny_data):
    model = build("slmrec", tiny_data)
    for j in range(2):
        torch.testing.assert_close(model.features(j).norm(dim=1), torch.ones(tiny_data.n_items))
        assert not model.features(j).requires_grad
    users = torch.arange(30)
    # rows rescaled by positive factors: identical model after the L2 normalisation at build time
    scale = np.random.default_rng(0).uniform(0.5, 3.0, size=(tiny_data.n_items, 1)).astype(np.float32)
    scaled = tiny_data.with_features({m: x * scale for m, x in tiny_data.features.items()})
    torch.testing.assert_close(eval_scores(build("slmrec", scaled), users), eval_scores(model, users))
    # other features (input placement): other scores
    other = {m: np.random.default_rng(3).normal(size=x.shape).astype(np.float32) for m, x in tiny_data.features.items()}
    assert not torch.allclose(eval_scores(build("slmrec", tiny_data.with_features(other)), users),
                              eval_scores(model, users))


def test_slmrec_latent_hook(tiny_data):
    model = build("slmrec", tiny_data)
    spy = Spy()
    model.modality_hook = spy
    model.train()
    model.loss(*BATCH)
    shape = (tiny_data.n_items, 64)
    assert spy.calls == [(shape, shape)]
    eval_scores(model, torch.arange(5))  # begin_eval
    model.eval()
    with torch.no_grad():
        model.scores(torch.arange(5))  # on the fly
    assert spy.calls == [(shape, shape)] * 3

    class Zero(torch.nn.Module):
        def forward(self, a, b):
            return torch.zeros_like(a), b

    before = eval_scores(model, torch.arange(5))
    model.modality_hook = Zero()
    assert not torch.allclose(eval_scores(model, torch.arange(5)), before)  # the hook's output reaches the scores
    get_model("slmrec").check_latent({})  # modalities enter the scores: always meaningful


def test_slmrec_refusals_and_parity_defaults(tiny_data):
    with pytest.raises(ValueError, match="ssl_task 'FD' is not supported"):
        build("slmrec", tiny_data, {"ssl_task": "FD"})
    with pytest.raises(ValueError, match="has no parameter reg"):
        get_model("slmrec").resolve_params({"reg": 1e-3})
    assert get_model("slmrec").default_params == {"recdim": 64, "layer_num": 3, "ssl_task": "FAC", "ssl_alpha": 0.1,
                                                  "ssl_temp": 0.2, "temp": 0.2, "learning_rate": 1e-3,
                                                  "weight_decay": 1e-4}


@pytest.mark.parametrize("names,slots", [(["image"], [(0, 64)]),
                                         (["image", "text", "audio"], [(0, 64), (2, 64), (1, 32)])])
def test_slmrec_modality_counts(tiny_data, names, slots):
    data = with_modalities(tiny_data, names)
    model = build("slmrec", data)
    assert model.fac_slots == slots
    assert model.user_fusion.in_features == model.item_fusion.in_features == 64 * (len(names) + 1)
    user, item, branches = model.compute()
    h_user, h_item, h_branches = slmrec_by_hand(model, data)
    torch.testing.assert_close(item, h_item, rtol=1e-4, atol=1e-6)
    # the FAC chain by hand: every link with a modality adds one InfoNCE term
    pos, t = BATCH[1], model.params["ssl_temp"]
    x, expected = h_branches[0][pos], 0.0
    for k, (j, _) in enumerate(slots):
        x = model.fac_chain[k](x)
        expected = expected + nce_by_hand(x, model.fac_heads[str(k)](h_branches[j + 1][pos]), t)
    torch.testing.assert_close(model.fac_loss(pos, branches), expected, rtol=1e-5, atol=1e-6)
    spy = Spy()
    model.modality_hook = spy
    model.loss(*BATCH)
    assert spy.calls == []  # the hook is for exactly two modalities
    model.modality_hook = IdentityHook()
    losses = train_epochs(model, data, epochs=3, seed_torch=True)
    assert losses[-1] < losses[0]

"""GRCN (Wei et al., ACM MM 2020: "Graph-Refined Convolutional Network for Multimedia Recommendation with Implicit
Feedback"), as in MMRec's ``grcn.py``.

Nodes are the ``N = n_users + n_items`` users and items; ``E`` are the training edges user -> item (MMRec's
``pack_edge_index``), ``E2 = cat(E, reversed E)`` both directions. In training each forward keeps every edge of ``E``
with probability ``1 - dropout`` (PyG's ``dropout_adj``; MMRec's dropout is 0), in evaluation all of them.

* **CGCN per modality m** (``latent_embedding`` = 64 = c): item features ``f_m = L2norm(leaky(MLP_m(x^(m))))`` with
  ``MLP_m = Linear(d_m, c)``, user preferences ``p_m = L2norm(P_m)`` (``P_m``: n_users x c). A parameter-free
  dot-product GAT, ``alpha_e = softmax_{e -> i}(x_i . x_j)`` over each target's edges and
  ``GAT(x)_i = sum_{e = j -> i} alpha_e x_j``, runs ``n_layers`` = 3 *routing* iterations
  ``p <- L2norm(p + GAT(cat(p, f))[users])`` and then one pass over ``E2``: ``rep_m = x + GAT_E2(x)`` with
  ``x = cat(p, f)`` (N x c) and the edge attentions ``alpha_m`` (one per edge of ``E2``).

  MMRec routes over ``E`` (user -> item) only, so in its routing the users are no edge's target, receive nothing,
  and ``p`` stays ``L2norm(P_m)``: the routing is a no-op. ``route_to_users`` = False reproduces that (and skips
  the dead computation); True routes over the reversed edges (item -> user), as the paper describes.
* **Edge weights** (``weight_mode`` = 'confid'): ``w_e = relu(max_m alpha_{m,e} conf_{j,m})`` with a learnable
  confidence ``conf`` (N x M) of the message's source node ``j``; 'max' drops ``conf``, 'mean' averages the
  attentions over modalities instead of taking the maximum. The relu is MMRec's pruning.
* **EGCN on IDs**: ``x = L2norm(E_id)`` (N x 64), ``h1 = sum_{e = j -> i} w_e x_j`` over ``E2``, ``h2`` the same on
  ``h1``, ``id_rep = x + h1 + h2`` (no activations: MMRec's ``has_act`` is False).
* Representation ``R = cat(id_rep, rep_1, ..., rep_M)`` (N x (64 + M c)); score ``s(u, i) = R_u . R_{n_users + i}``.

Loss per batch: ``BPR + reg_weight * (mean(E_id[u]^2) + mean(E_id[i+, i-]^2) + mean(P_1^2) + sum_m mean(P_m[u]^2))``
(the whole first preference is regularised once more, as MMRec does for ``v_gcn``). Initialisation as MMRec:
``E_id``, ``P_m``, ``conf`` and each ``MLP_m.weight`` xavier-normal, the ``MLP`` biases torch's default.

Modality roles: the first modality plays MMRec's ``v_feat`` (the extra ``mean(P_1^2)``); any number >= 1 works, one
CGCN each, the edge weight taking the maximum (or mean) over all of them.

Where CLEAR acts: under input placement the CGCN encoders read the projected features. Under latent placement the
hook sees ``z_m = MLP_m(x^(m))`` (n_items x c, before the leaky_relu and normalisation) in every forward; those
embeddings drive the edge attentions (hence the ID graph's weights) and form the content part of ``R``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clear_lab.message_passing import (
    bipartite_edges,
    both_directions,
    dot_attention_aggregate,
    weighted_sum_aggregate,
)
from clear_lab.models.base import Recommender, bpr_loss

WEIGHT_MODES = ("confid", "max", "mean")


class _CGCN(nn.Module):
    """One modality's encoder and user preference; the graph passes live in :meth:`GRCN.forward`."""

    def __init__(self, n_users: int, d_feat: int, d_c: int):
        super().__init__()
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.rand(n_users, d_c)))
        self.mlp = nn.Linear(d_feat, d_c)
        nn.init.xavier_normal_(self.mlp.weight)


class GRCN(Recommender):
    name = "grcn"
    uses_features = True
    latent_hook = ("z_m = MLP_m(x^(m)) (n_items x latent_embedding), each CGCN's Linear encoder before leaky_relu "
                   "and L2 normalisation; they set the edge attentions and the content part of the representation")
    default_params = {"embedding_size": 64, "latent_embedding": 64, "n_layers": 3, "reg_weight": 1e-3,
                      "learning_rate": 1e-3, "weight_mode": "confid", "dropout": 0.0, "route_to_users": False}
    param_help = {"embedding_size": "ID embedding width (EGCN)",
                  "latent_embedding": "width c of each modality's CGCN (encoder output and preference)",
                  "n_layers": "routing iterations of each CGCN (a no-op unless route_to_users, as in MMRec)",
                  "reg_weight": "weight of the squared-embedding regulariser",
                  "learning_rate": "Adam learning rate (MMRec grids 1 .. 1e-4)",
                  "weight_mode": "how modality attentions become edge weights: confid (MMRec), max or mean",
                  "dropout": "probability of dropping each user-item edge per training forward (MMRec: 0)",
                  "route_to_users": "route item -> user as the paper does (MMRec routes user -> item: a no-op)"}
    deviations = (
        "Any number of modalities (one CGCN each); MMRec crashes with text only (a 'conetent_rep' typo) and has "
        "at most v and t.",
        "No .cuda() in the loss (MMRec hard-codes it for the content regulariser).",
        "Evaluation runs a fresh eval-mode forward pass in begin_eval; MMRec ranks with self.result, the "
        "representation cached from the last training batch (bug).",
        "Edge dropout (0 by default, as MMRec) is applied only in training mode; MMRec's dropout_adj call keeps "
        "training=True and would drop edges at evaluation too.",
        "route_to_users (default False = MMRec) can make the routing iterations do something: MMRec routes over "
        "user -> item edges, so users receive no messages and n_layers has no effect; with False we skip that "
        "dead computation (same result).",
        "Message passing (GAT with PyG's softmax incl. its 1e-16, weighted-sum SAGE) is our own index_add / "
        "scatter_reduce code instead of PyG's MessagePassing.",
        "The confidence parameter exists only in 'confid' mode; MMRec's unused reg_confid_loss is not computed; "
        "only the 'concat' fusion is offered (MMRec's 'mean' fusion refers to undefined variables).",
        "BPR loss written with logsigmoid instead of log(sigmoid(.)) (MMRec's GRCN has no 1e-10 and can give -inf).",
    )

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        p = self.params
        if p["weight_mode"] not in WEIGHT_MODES:
            raise ValueError(f"GRCN weight_mode must be one of {', '.join(WEIGHT_MODES)}, got {p['weight_mode']!r}")
        if not 0 <= p["dropout"] < 1:
            raise ValueError(f"GRCN dropout must be in [0, 1), got {p['dropout']}")
        if p["n_layers"] < 0:
            raise ValueError(f"GRCN n_layers (routing iterations) must be >= 0, got {p['n_layers']}")
        self.modality_names = list(data.modalities)
        self.cgcn = nn.ModuleList()
        for j, name in enumerate(self.modality_names):
            x = torch.as_tensor(data.features[name], dtype=torch.float32)
            self.register_buffer(f"feat_{j}", x, persistent=False)
            self.cgcn.append(_CGCN(self.n_users, x.shape[1], p["latent_embedding"]))
        n = self.n_users + self.n_items
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.rand(n, p["embedding_size"])))
        self.confidence = None
        if p["weight_mode"] == "confid":
            self.confidence = nn.Parameter(nn.init.xavier_normal_(torch.rand(n, len(self.cgcn))))
        self.register_buffer("edge_index", bipartite_edges(data.train[:, 0], data.train[:, 1], self.n_users),
                             persistent=False)
        self._cache = None
        self.to(self.device)

    def encoded_modalities(self) -> dict[str, torch.Tensor]:
        return {name: cg.mlp(getattr(self, f"feat_{j}"))
                for j, (name, cg) in enumerate(zip(self.modality_names, self.cgcn))}

    def _edges(self) -> torch.Tensor:
        """The user -> item edges of this forward: all of them, or each kept with prob. 1 - dropout in training."""
        p = self.params["dropout"]
        if not self.training or p == 0:
            return self.edge_index
        keep = torch.rand(self.edge_index.shape[1], device=self.edge_index.device) >= p
        return self.edge_index[:, keep]

    def forward(self) -> torch.Tensor:
        """``(N, embedding_size + M * latent_embedding)``: ``cat(id_rep, rep_1, ..., rep_M)``."""
        n = self.n_users + self.n_items
        edges = self._edges()
        e2 = both_directions(edges)  # column e of the first half and its reverse E + e share an interaction
        z = list(self.encoded_modalities().values())
        if len(z) == 2:
            z = list(self.modality_hook(z[0], z[1]))
        reps, alphas = [], []
        for cg, zm in zip(self.cgcn, z):
            f = F.normalize(F.leaky_relu(zm))
            pref = F.normalize(cg.preference)
            if self.params["route_to_users"]:
                route = edges.flip(0)  # item -> user: each user attends over the items it interacted with
                for _ in range(self.params["n_layers"]):
                    out, _ = dot_attention_aggregate(torch.cat([pref, f]), route, n)
                    pref = F.normalize(pref + out[: self.n_users])
            x = torch.cat([pref, f])
            out, alpha = dot_attention_aggregate(x, e2, n)
            reps.append(x + out)
            alphas.append(alpha)
        a = torch.stack(alphas, dim=1)  # (|E2|, M)
        mode = self.params["weight_mode"]
        if mode == "confid":
            weight = (a * self.confidence[e2[0]]).max(dim=1).values  # confidence of each message's source node
        elif mode == "max":
            weight = a.max(dim=1).values
        else:
            weight = a.mean(dim=1)
        weight = torch.relu(weight)  # MMRec's pruning: negative weights cut the edge
        x = F.normalize(self.id_embedding)
        h1 = weighted_sum_aggregate(x, e2, weight, n)
        h2 = weighted_sum_aggregate(h1, e2, weight, n)
        return torch.cat([x + h1 + h2, *reps], dim=1)

    def loss(self, users, pos, neg):
        rep = self.forward()
        u, p, n = rep[users], rep[self.n_users + pos], rep[self.n_users + neg]
        mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
        items = torch.cat([pos, neg]) + self.n_users
        reg = (self.id_embedding[users] ** 2).mean() + (self.id_embedding[items] ** 2).mean()
        reg = reg + (self.cgcn[0].preference ** 2).mean()
        reg = reg + sum((cg.preference[users] ** 2).mean() for cg in self.cgcn)
        return mf + self.params["reg_weight"] * reg

    def begin_eval(self):
        self._cache = self.forward()

    def end_eval(self):
        self._cache = None

    def scores(self, users):
        rep = self._cache if self._cache is not None else self.forward()
        return rep[users] @ rep[self.n_users:].T

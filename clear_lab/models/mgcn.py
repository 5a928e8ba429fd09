"""MGCN (Yu et al., ACM MM 2023: "Multi-View Graph Convolutional Network for Multimedia Recommendation"), as in
MMRec's ``mgcn.py``.

Shapes: ``U`` users, ``I`` items, ``d`` = ``embedding_size`` (64), modality m has features ``x^(m)`` (I x d_m).

* **Item graphs**, frozen, one per modality: the similarity-weighted cosine kNN graph ``S_m`` (``knn_k`` = 10,
  self included), ``D^-1/2 S D^-1/2`` with row degrees (:func:`clear_lab.graph.weighted_knn_graph`).
* **Encoders**: ``z_m = Linear_m(x^(m))`` (I x d) on *trainable* copies of the features (MMRec's
  ``from_pretrained(freeze=False)``: the features themselves are fine-tuned).
* **Behaviour-guided purifier**: ``p_m = e_item * sigmoid(W_m z_m + b_m)`` (I x d), ``e_item`` the item ID embedding.
* **Item-item view**: ``h_m = S_m^L p_m`` (``n_layers`` = 1); users get ``R_hat h_m`` with ``R_hat`` the user x item
  block of the normalised training graph; ``v_m = [R_hat h_m ; h_m]`` ((U+I) x d).
* **User-item view**: ``C`` = LightGCN mean over ``n_ui_layers`` = 2 layers of ``[e_user ; e_item]``.
* **Behaviour-aware fuser**: ``a_m = q(v_m)`` with ``q = Linear(d, 1) . tanh . Linear(d, d)`` shared across
  modalities, ``w = softmax_m(a_m)``, common ``c = sum_m w_m v_m``; specific ``s_m = sigmoid(G_m C) * (v_m - c)``;
  ``side = (sum_m s_m + c) / (M + 1)`` (MMRec: M = 2, the /3). Output ``E = C + side``, score ``e_u . e_i``.
* **Loss**: ``BPR(E) + reg_weight * (|e_u|^2 + |e_i+|^2 + |e_i-|^2) / (2 B)`` on the output rows, plus
  ``cl_loss * [InfoNCE(side_i+, C_i+) + InfoNCE(side_u, C_u)]`` with in-batch negatives, temperature 0.2.

The first modality plays MMRec's ``v_feat`` role, the second its ``t_feat`` role. MMRec's fuser is written for
exactly two; the softmax attention above is its natural generalisation to any ``M >= 1`` (identical for M = 2; with
M = 1 the weight is 1, ``s_1 = 0`` and ``side = v_1 / 2``).

Where CLEAR acts: under input placement the kNN graphs are built from the projected features and the trainable
feature copies start from them (so the *projected* features are fine-tuned). Under latent placement the hook sees
``z_image``, ``z_text`` (I x d each) in every forward, before the purifier gates - on the path to the ranking.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from clear_lab.graph import (
    SparseOperator,
    lightgcn_mean,
    normalized_adjacency,
    normalized_interactions,
    weighted_knn_graph,
)
from clear_lab.models.base import Recommender, bpr_loss

CL_TEMPERATURE = 0.2  # hard-coded in MMRec's MGCN and SMORE (SMORE's yaml ``temperature`` key is unused)


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows i of ``-log(exp(c_ii / t) / sum_j exp(c_ij / t))``, ``c`` the cosine matrix of the rows of
    ``view1`` and ``view2`` (in-batch negatives, duplicates included as MMRec has them). Written as a cross-entropy
    (logsumexp), which is the same value without the exp overflow."""
    a, b = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    logits = a @ b.T / temperature
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def squared_reg(*rows: torch.Tensor) -> torch.Tensor:
    """MGCN's / SMORE's regulariser: ``sum of squared entries / 2``, divided by the batch size (rows of the first)."""
    return sum(0.5 * r.pow(2).sum() for r in rows) / rows[0].shape[0]


class ItemGraphViewsModel(Recommender):
    """What MGCN and SMORE share: the user-item graph, ``R_hat``, the BPR + reg + InfoNCE loss and evaluation.

    Subclasses implement :meth:`forward_views` returning ``(E, side, C)``, each ``(U + I) x d``.
    """

    def _init_common(self, data) -> None:
        """Check the layer counts, create the ID embeddings and build the user-item graphs.

        The embeddings are the first parameters drawn (xavier-uniform, users then items), in MMRec's creation order,
        so one seed gives MMRec's initial values; subclasses call this before creating any other parameter.
        """
        p = self.params
        for key in ("n_ui_layers", "n_layers"):
            if p[key] < 0:
                raise ValueError(f"{self.name.upper()} {key} must be >= 0, got {p[key]}")
        self.user_embedding = nn.Embedding(self.n_users, p["embedding_size"])
        self.item_id_embedding = nn.Embedding(self.n_items, p["embedding_size"])
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        u, i = data.train[:, 0], data.train[:, 1]
        self.norm_adj = SparseOperator(normalized_adjacency(u, i, self.n_users, self.n_items, self.device))
        self.r_hat = SparseOperator(normalized_interactions(u, i, self.n_users, self.n_items, self.device))
        self._cache = None

    def item_view(self, graph: SparseOperator, p: torch.Tensor) -> torch.Tensor:
        """``[R_hat S^L p ; S^L p]``: an item-side view propagated on its item graph, users read off through R_hat."""
        for _ in range(self.params["n_layers"]):
            p = graph @ p
        return torch.cat([self.r_hat @ p, p])

    def content_view(self) -> torch.Tensor:
        x = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        return lightgcn_mean(self.norm_adj, x, self.params["n_ui_layers"])

    def forward_views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(self, users, pos, neg):
        out, side, content = self.forward_views()
        u_all, i_all = out[: self.n_users], out[self.n_users:]
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        loss = bpr_loss((u * p).sum(1), (u * n).sum(1)) + self.params["reg_weight"] * squared_reg(u, p, n)
        if self.params["cl_loss"] > 0:
            nu = self.n_users
            cl = (info_nce(side[nu:][pos], content[nu:][pos], CL_TEMPERATURE)
                  + info_nce(side[:nu][users], content[:nu][users], CL_TEMPERATURE))
            loss = loss + self.params["cl_loss"] * cl
        return loss

    def begin_eval(self):
        out = self.forward_views()[0]
        self._cache = (out[: self.n_users], out[self.n_users:])

    def end_eval(self):
        self._cache = None

    def scores(self, users):
        if self._cache is None:
            out = self.forward_views()[0]
            u_all, i_all = out[: self.n_users], out[self.n_users:]
        else:
            u_all, i_all = self._cache
        return u_all[users] @ i_all.T


class MGCN(ItemGraphViewsModel):
    name = "mgcn"
    uses_features = True
    latent_hook = "z_m = Linear_m(x^(m)) (MMRec's image_trs/text_trs outputs, n_items x embedding_size), before " \
                  "the purifier gates"
    default_params = {"embedding_size": 64, "n_ui_layers": 2, "n_layers": 1, "knn_k": 10, "reg_weight": 1e-4,
                      "cl_loss": 0.01, "learning_rate": 1e-3}
    lr_schedule: ClassVar[tuple[float, int]] = (0.96, 50)
    param_help = {"embedding_size": "ID and encoder width d", "n_ui_layers": "user-item LightGCN layers",
                  "n_layers": "item-graph hops", "knn_k": "neighbours per item in each weighted feature graph",
                  "reg_weight": "weight of the squared-norm regulariser on the output rows",
                  "cl_loss": "weight of the two InfoNCE terms (side vs content view)",
                  "learning_rate": "Adam learning rate"}
    deviations = ("The weighted kNN graph cache is keyed by a hash of the features and k, not by k alone.",
                  "A zero feature row (or a non-positive kNN degree) gets cosine 0 / d^-1/2 = 0 instead of NaN.",
                  "The fuser takes any number M >= 1 of modalities: softmax attention over M views, "
                  "side = (sum of specific + common) / (M + 1); identical to MMRec for M = 2.",
                  "The regulariser divides by the actual batch size, not the configured train_batch_size (they "
                  "differ only on the last, smaller batch of an epoch).",
                  "InfoNCE written as logsumexp (same value); graph degrees get +1e-7 as in clear_lab's LightGCN.",
                  "Evaluation propagates once per evaluation instead of once per batch of users (same scores); "
                  "no hard-coded .cuda().")

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        p = self.params
        d = p["embedding_size"]
        self._init_common(data)  # the ID embeddings first: creation order follows MMRec's

        self.modality_names = list(data.modalities)
        self.feat_embeddings = nn.ModuleList()
        graphs = []
        for name in self.modality_names:
            x = torch.as_tensor(data.features[name], dtype=torch.float32, device=self.device)
            self.feat_embeddings.append(nn.Embedding.from_pretrained(x.clone(), freeze=False))
            graphs.append(SparseOperator(weighted_knn_graph(x, p["knn_k"], cache_dir=self.cache_dir)))
        self.item_graphs = graphs
        # MMRec's Linear layers keep torch's default initialisation (MGCN applies no xavier_normal)
        self.feat_trs = nn.ModuleList(nn.Linear(e.weight.shape[1], d) for e in self.feat_embeddings)
        self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.gates = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for _ in self.modality_names)
        self.prefer_gates = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for _ in self.modality_names)
        self.to(self.device)

    def encoded_modalities(self) -> dict[str, torch.Tensor]:
        return {name: trs(emb.weight) for name, emb, trs in
                zip(self.modality_names, self.feat_embeddings, self.feat_trs)}

    def forward_views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = list(self.encoded_modalities().values())
        if len(z) == 2:
            z = list(self.modality_hook(z[0], z[1]))
        item = self.item_id_embedding.weight
        views = [self.item_view(g, item * gate(zm)) for g, gate, zm in zip(self.item_graphs, self.gates, z)]
        content = self.content_view()

        weights = torch.softmax(torch.cat([self.query_common(v) for v in views], dim=1), dim=1)  # (U+I, M)
        common = sum(weights[:, m:m + 1] * v for m, v in enumerate(views))
        specific = sum(gate(content) * (v - common) for gate, v in zip(self.prefer_gates, views))
        side = (specific + common) / (len(views) + 1)
        return content + side, side, content

"""DRAGON (Zhou et al., ECAI 2023: "Enhancing Dyadic Relations with Homogeneous Graphs for Multimodal
Recommendation"), as in MMRec's ``dragon.py``.

DualGNN's per-modality branches (:class:`clear_lab.models.dualgnn.DualGraphRecommender`: encoder
``z_m = MLP_1(leaky_relu(MLP(x^(m))))`` ``d_m -> 4d -> d``, ``X_m = normalize([P_m ; z_m])``, ``n_layers`` (2) GCN
hops on the training graph, ``rep_m = X_m + H^1 + H^2``), then (``construction = 'cat'``):

* items: ``r_i = cat_m rep_m[items]`` (``(I, M d)``, 128 wide for two modalities), plus a **frozen item-item graph**
  built from the features exactly as FREEDOM's: per modality a binary cosine kNN graph (``knn_k`` = 10, symmetric
  row-degree normalisation, :func:`clear_lab.graph.knn_graph`), mixed ``S = w S_1 + (1 - w) S_2`` with
  ``w = mm_image_weight`` (0.1) on the first modality (MMRec's ``v_feat``; with more modalities the others share
  ``1 - w``); ``h = S^{n_mm_layers} r_i`` (1 hop); item ``= r_i + h``;
* users: ``u = cat_m w_{u,m} rep_m[users]`` with softmax-initialised per-user weights ``w_u`` (``(U, M, 1)``); with
  one modality ``u = rep_1[users]``; then the user-user graph ``u <- u + sum_{j in N_40(u)} softmax(c_uj) u_j``
  (:mod:`clear_lab.user_graph`, redrawn each epoch).

Score ``u . i``. Loss ``-mean log2 sigmoid(s+ - s-) + reg_weight (sum_m mean(P_m[users]^2) + mean(w_u^2))``.

Where CLEAR acts: under input placement the projected features feed both the encoders and the item kNN graph (built
from ``data.features``, cached by a hash of the features). Under latent placement the hook sees the encoder outputs
``z_m`` (``(I, d)`` each) in every forward pass.
"""

from __future__ import annotations

import torch

from clear_lab.graph import SparseOperator, knn_graph
from clear_lab.models.dualgnn import SHARED_DEVIATIONS, DualGraphRecommender


class DRAGON(DualGraphRecommender):
    name = "dragon"
    default_params = {"embedding_size": 64, "feat_embed_dim": 64, "n_mm_layers": 1, "n_layers": 2, "knn_k": 10,
                      "mm_image_weight": 0.1, "aggr_mode": "add", "k": 40, "reg_weight": 1e-3,
                      "learning_rate": 1e-3}
    param_help = {"embedding_size": "width d of encoders, preferences and GCN (items and users are M d wide)",
                  "feat_embed_dim": "must equal embedding_size (MMRec hard-codes both GCN widths to 64)",
                  "n_mm_layers": "item-graph hops", "n_layers": "GCN hops per modality",
                  "knn_k": "neighbours per item in the feature graph",
                  "mm_image_weight": "weight of the first modality's item graph",
                  "aggr_mode": "GCN aggregation ('add' only)", "k": "user-user neighbours per user",
                  "reg_weight": "weight of the preference and user-weight regulariser",
                  "learning_rate": "Adam learning rate"}
    deviations = SHARED_DEVIATIONS + (
        "image_embedding/text_embedding and image_trs/text_trs are not built: MMRec's forward never uses them (the "
        "raw features serve only to build the item graph); so feat_embed_dim has no role and must equal "
        "embedding_size.",
        "weight_i is not built: with construction 'cat' it enters neither the forward pass nor the loss.",
        "The kNN graph cache is keyed by a hash of the features and k (MMRec: mm_adj_<k>.pt, by k alone); a zero "
        "feature row gets cosine 0 to all items instead of NaN.",
        "With three or more modalities the others share 1 - mm_image_weight equally in the item graph (MMRec has "
        "two).",
    )

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        p = self.params
        if p["feat_embed_dim"] != p["embedding_size"]:
            raise ValueError(f"dragon: feat_embed_dim ({p['feat_embed_dim']}) must equal embedding_size "
                             f"({p['embedding_size']}): MMRec's encoders and preferences share one width")
        if p["n_mm_layers"] < 0:
            raise ValueError(f"dragon: n_mm_layers must be >= 0, got {p['n_mm_layers']}")
        graphs = [knn_graph(torch.as_tensor(data.features[name], device=self.device), p["knn_k"],
                            cache_dir=self.cache_dir) for name in self.modality_names]
        self.mm_adj = SparseOperator(mix_item_graphs(graphs, p["mm_image_weight"]))
        self.to(self.device)

    def fuse(self, reps):
        nu = self.n_users
        items = torch.cat([r[nu:] for r in reps], dim=1)
        h = items
        for _ in range(self.params["n_mm_layers"]):
            h = self.mm_adj @ h
        if len(reps) == 1:
            users = reps[0][:nu]
        else:
            users = torch.cat([self.weight_u[:, m] * r[:nu] for m, r in enumerate(reps)], dim=1)
        return users, items + h


def mix_item_graphs(graphs: list[torch.Tensor], first_weight: float) -> torch.Tensor:
    """``w S_1 + (1 - w) / (M - 1) sum_{m>1} S_m`` (``S_1`` alone for one modality), as FREEDOM mixes them."""
    if len(graphs) == 1:
        return graphs[0]
    rest = (1.0 - first_weight) / (len(graphs) - 1)
    mm = graphs[0] * first_weight
    for g in graphs[1:]:
        mm = mm + g * rest
    return mm.coalesce()

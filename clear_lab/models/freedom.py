"""FREEDOM (Zhou & Shen, ACM MM 2023: "A Tale of Two Graphs: Freezing and Denoising Graph Structures for
Multimodal Recommendation"), as in MMRec's ``freedom.py``.

* A **frozen item-item graph** from the modality features: per modality a binary cosine kNN graph ``S_m``
  (``knn_k`` = 10, see :func:`clear_lab.graph.knn_graph`), mixed as ``S = w S_1 + (1 - w) S_2`` with
  ``w = mm_image_weight`` (0.1) on the first modality (MMRec's ``v_feat``) and ``1 - w`` on the second
  (``t_feat``); with more modalities the others share ``1 - w`` equally. Then ``h = S^L E_item``
  (``n_mm_layers`` = 1) over the item ID embeddings.
* A **denoised user-item graph**: LightGCN (``n_ui_layers`` = 2) on a graph that keeps ``(1 - dropout)`` of the
  training edges each epoch, sampled without replacement with probability proportional to ``1/sqrt(d_u d_i)`` and
  renormalised; evaluation uses the full graph.
* Item representation ``i_cf + h``; score ``u . i``.
* Loss ``BPR(u, i+, i-) + reg_weight * sum_m BPR(u, z_m[i+], z_m[i-])`` with ``z_m = Linear_m(x^(m))`` on
  trainable copies of the features (``feat_embed_dim`` = 64).

Where CLEAR acts: under input placement the kNN graph is built from the projected features - the only path from
features to the ranking. Under latent placement the hook sees ``z_image``, ``z_text``, which enter only the
auxiliary loss, so it is refused when ``reg_weight`` is 0 (the default): it would change nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from clear_lab.graph import (
    SparseOperator,
    degree_sensitive_keep,
    knn_graph,
    lightgcn_mean,
    normalized_adjacency,
    sparse_tensor,
    sym_norm_values,
)
from clear_lab.models.base import Recommender, bpr_loss


class FREEDOM(Recommender):
    name = "freedom"
    uses_features = True
    latent_hook = "z_m = Linear_m(x^(m)) (n_items x feat_embed_dim), used only in the auxiliary BPR loss"
    default_params = {"embedding_size": 64, "feat_embed_dim": 64, "knn_k": 10, "n_mm_layers": 1, "n_ui_layers": 2,
                      "mm_image_weight": 0.1, "dropout": 0.8, "reg_weight": 0.0}
    param_help = {"knn_k": "neighbours per item in the feature graph", "mm_image_weight": "weight of the first "
                  "modality's graph", "dropout": "fraction of user-item edges dropped each epoch",
                  "reg_weight": "weight of the per-modality auxiliary BPR losses", "n_mm_layers": "item-graph hops",
                  "n_ui_layers": "user-item LightGCN layers", "embedding_size": "ID embedding width",
                  "feat_embed_dim": "width of the modality encoders"}
    deviations = ("Edge dropout samples with Efraimidis-Spirakis keys from numpy's seeded generator instead of "
                  "torch.multinomial (same distribution).",
                  "The kNN graph cache is keyed by a hash of the features and k, not by k alone.",
                  "A zero feature row gets cosine 0 to all items instead of NaN.",
                  "With three or more modalities the others share 1 - mm_image_weight equally (MMRec has two).")

    @classmethod
    def check_latent(cls, params: dict | None) -> None:
        super().check_latent(params)
        if cls.resolve_params(params)["reg_weight"] == 0:
            raise ValueError("latent placement on FREEDOM acts only on the auxiliary loss, which reg_weight = 0 "
                             "switches off; pass --set reg_weight=1e-4 (or use --clear input)")

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        p = self.params
        if not 0 <= p["dropout"] < 1:
            raise ValueError(f"FREEDOM dropout must be in [0, 1), got {p['dropout']}")
        self.user_embedding = nn.Embedding(self.n_users, p["embedding_size"])
        self.item_id_embedding = nn.Embedding(self.n_items, p["embedding_size"])
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

        self.modality_names = data.modalities
        self.feat_embeddings = nn.ModuleList()
        self.feat_trs = nn.ModuleList()
        graphs = []
        for name in self.modality_names:
            x = torch.as_tensor(data.features[name], device=self.device)
            self.feat_embeddings.append(nn.Embedding.from_pretrained(x.clone(), freeze=False))
            self.feat_trs.append(nn.Linear(x.shape[1], p["feat_embed_dim"]))
            graphs.append(knn_graph(x, p["knn_k"], cache_dir=self.cache_dir))
        w = p["mm_image_weight"]
        weights = [w] + [(1 - w) / (len(graphs) - 1)] * (len(graphs) - 1) if len(graphs) > 1 else [1.0]
        mm = graphs[0] * weights[0]
        for g, wt in zip(graphs[1:], weights[1:]):
            mm = mm + g * wt
        self.mm_adj = SparseOperator(mm)

        u, i = data.train[:, 0], data.train[:, 1]
        self.edge_users, self.edge_items = u, i
        self.edge_weights = sym_norm_values(u, i, self.n_users, self.n_items)
        self.norm_adj = SparseOperator(normalized_adjacency(u, i, self.n_users, self.n_items, self.device))
        self.masked_adj = self.norm_adj
        self._cache = None
        self.to(self.device)

    def pre_epoch(self, rng: np.random.Generator) -> None:
        """Degree-sensitive edge dropout: keep floor((1 - dropout) |E|) edges, renormalise on the kept graph."""
        if self.params["dropout"] <= 0:
            self.masked_adj = self.norm_adj
            return
        n_keep = int(len(self.edge_weights) * (1.0 - self.params["dropout"]))
        keep = degree_sensitive_keep(self.edge_weights, n_keep, rng)
        u, i = self.edge_users[keep], self.edge_items[keep]
        vals = sym_norm_values(u, i, self.n_users, self.n_items)
        n = self.n_users + self.n_items
        self.masked_adj = SparseOperator(sparse_tensor(np.concatenate([u, i + self.n_users]),
                                                       np.concatenate([i + self.n_users, u]),
                                                       np.concatenate([vals, vals]), (n, n), self.device))

    def propagate(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.item_id_embedding.weight
        for _ in range(self.params["n_mm_layers"]):
            h = self.mm_adj @ h
        x = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        out = lightgcn_mean(adj, x, self.params["n_ui_layers"])
        return out[: self.n_users], out[self.n_users:] + h

    def encoded_modalities(self) -> dict[str, torch.Tensor]:
        return {name: trs(emb.weight) for name, emb, trs in
                zip(self.modality_names, self.feat_embeddings, self.feat_trs)}

    def loss(self, users, pos, neg):
        u_all, i_all = self.propagate(self.masked_adj)
        u = u_all[users]
        loss = bpr_loss((u * i_all[pos]).sum(1), (u * i_all[neg]).sum(1))
        if self.params["reg_weight"] > 0:
            z = list(self.encoded_modalities().values())
            if len(z) == 2:
                z = list(self.modality_hook(z[0], z[1]))
            aux = sum(bpr_loss((u * zm[pos]).sum(1), (u * zm[neg]).sum(1)) for zm in z)
            loss = loss + self.params["reg_weight"] * aux
        return loss

    def begin_eval(self):
        self._cache = self.propagate(self.norm_adj)

    def end_eval(self):
        self._cache = None

    def scores(self, users):
        u_all, i_all = self._cache if self._cache is not None else self.propagate(self.norm_adj)
        return u_all[users] @ i_all.T

"""LightGCN (He et al., SIGIR 2020), as in MMRec's ``lightgcn.py``.

Embeddings ``E^0`` (users and items, xavier-uniform) are propagated on the normalised training graph,
``E^{l+1} = A_hat E^l``, and averaged over layers: ``E = mean(E^0, ..., E^L)``. Loss per batch:
``L = BPR + reg_weight * EmbLoss(e^0_u, e^0_i+, e^0_i-)`` (the regulariser acts on the layer-0 rows).
No modality features, so CLEAR does not apply.
"""

from __future__ import annotations

import torch
from torch import nn

from clear_lab.graph import SparseOperator, lightgcn_mean, normalized_adjacency
from clear_lab.models.base import Recommender, bpr_loss, emb_loss


class LightGCN(Recommender):
    name = "lightgcn"
    default_params = {"embedding_size": 64, "n_layers": 4, "reg_weight": 1e-4}
    param_help = {"embedding_size": "embedding width d", "n_layers": "propagation layers L",
                  "reg_weight": "weight of EmbLoss on layer-0 rows"}
    deviations = ("BPR loss written with logsigmoid instead of log(1e-10 + sigmoid).",
                  "Evaluation propagates once per evaluation instead of once per batch of 4096 users (same scores).")

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        d = self.params["embedding_size"]
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.adj = SparseOperator(normalized_adjacency(data.train[:, 0], data.train[:, 1], self.n_users, self.n_items,
                                                       self.device))
        self._cache = None
        self.to(self.device)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = lightgcn_mean(self.adj, torch.cat([self.user_emb, self.item_emb]), self.params["n_layers"])
        return out[: self.n_users], out[self.n_users:]

    def loss(self, users, pos, neg):
        u_all, i_all = self.propagate()
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
        return mf + self.params["reg_weight"] * emb_loss(self.user_emb[users], self.item_emb[pos], self.item_emb[neg])

    def begin_eval(self):
        self._cache = self.propagate()

    def end_eval(self):
        self._cache = None

    def scores(self, users):
        u_all, i_all = self._cache if self._cache is not None else self.propagate()
        return u_all[users] @ i_all.T

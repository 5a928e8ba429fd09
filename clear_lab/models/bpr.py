"""BPR-MF (Rendle et al., UAI 2009), as in MMRec's ``bpr.py``.

Score ``s(u, i) = e_u . e_i`` with ``e_u, e_i`` in R^64 (xavier-normal initialised). Loss per batch:
``L = BPR(s(u,i+), s(u,i-)) + reg_weight * EmbLoss(e_u, e_i+, e_i-)``. No modality features, so CLEAR does not apply.
"""

from __future__ import annotations

from torch import nn

from clear_lab.models.base import Recommender, bpr_loss, emb_loss


class BPR(Recommender):
    name = "bpr"
    default_params = {"embedding_size": 64, "reg_weight": 1e-4}
    param_help = {"embedding_size": "embedding width d", "reg_weight": "weight of MMRec's EmbLoss on batch rows"}
    deviations = ("BPR loss written with logsigmoid instead of log(1e-10 + sigmoid): equal up to 1e-10, no NaN.",)

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        d = self.params["embedding_size"]
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)
        self.to(self.device)

    def loss(self, users, pos, neg):
        u, p, n = self.user_embedding(users), self.item_embedding(pos), self.item_embedding(neg)
        mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
        return mf + self.params["reg_weight"] * emb_loss(u, p, n)

    def scores(self, users):
        return self.user_embedding(users) @ self.item_embedding.weight.T

"""VBPR (He & McAuley, AAAI 2016) in MMRec's "recommended version" (``vbpr.py``).

Users ``theta_u`` in R^{2d}; items ``e_i = [gamma_i ; W x_i + b]`` with ``gamma_i`` in R^d (ID) and
``x_i = cat(x_i^(1), ..., x_i^(M))`` the item's modality features (MMRec: text first, then image). Score
``s(u, i) = theta_u . e_i``; loss ``BPR + reg_weight * EmbLoss(theta_u, e_i+, e_i-)`` on the *output* rows.

Per-modality encoded embeddings, for latent placement: ``W x_i = sum_m W_m x_i^(m)`` where ``W_m`` is the block of
columns of ``W`` that multiplies modality m. We keep ``W`` as one parameter (same initialisation and optimisation
as MMRec's single ``Linear``) and compute ``z_m = x^(m) W_m^T`` separately, so ``z_image`` and ``z_text`` (each
``(n_items, d)``) can pass through CLEAR's latent hook before they are summed. Without the hook this is exactly
MMRec's model.
"""

from __future__ import annotations

import torch
from torch import nn

from clear_lab.models.base import Recommender, bpr_loss, emb_loss


class VBPR(Recommender):
    name = "vbpr"
    uses_features = True
    latent_hook = "z_m = x^(m) W_m^T, each modality's share of the content embedding W x_i (n_items x 64)"
    default_params = {"embedding_size": 64, "reg_weight": 1e-4}
    param_help = {"embedding_size": "ID and content width d (users get 2d)",
                  "reg_weight": "weight of EmbLoss on the output rows"}
    deviations = ("The joint Linear(cat(t, v)) is evaluated as a sum of per-modality blocks (identical values) so "
                  "latent placement can act on each modality's encoded embedding.",
                  "BPR loss written with logsigmoid instead of log(1e-10 + sigmoid).")

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        d = self.params["embedding_size"]
        # MMRec concatenates text before image; keep its column order so a given seed initialises the same W.
        names = data.modalities
        self.modality_names = list(names)
        self.order = sorted(range(len(names)), key=lambda j: 0 if names[j] == "text" else 1)
        feats = [torch.as_tensor(data.features[names[j]]) for j in range(len(names))]
        for j, x in enumerate(feats):
            self.register_buffer(f"feat_{j}", x, persistent=False)
        self.dims = [x.shape[1] for x in feats]
        self.u_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * d)))
        self.i_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.item_linear = nn.Linear(sum(self.dims), d)
        nn.init.xavier_normal_(self.item_linear.weight)  # MMRec: xavier_normal_initialization on Linear layers
        nn.init.zeros_(self.item_linear.bias)
        self._cache = None
        self.to(self.device)

    def encoded_modalities(self) -> dict[str, torch.Tensor]:
        """``{modality: (n_items, d)}`` before the hook, the bias left out."""
        out, col = {}, 0
        blocks = {}
        for j in self.order:
            blocks[j] = (col, col + self.dims[j])
            col += self.dims[j]
        for j, name in enumerate(self.modality_names):
            a, b = blocks[j]
            out[name] = getattr(self, f"feat_{j}") @ self.item_linear.weight[:, a:b].T
        return out

    def item_embeddings(self) -> torch.Tensor:
        z = list(self.encoded_modalities().values())
        if len(z) == 2:
            z = list(self.modality_hook(z[0], z[1]))
        content = torch.stack(z).sum(0) + self.item_linear.bias
        return torch.cat([self.i_embedding, content], dim=1)

    def loss(self, users, pos, neg):
        items = self.item_embeddings()
        u, p, n = self.u_embedding[users], items[pos], items[neg]
        mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
        return mf + self.params["reg_weight"] * emb_loss(u, p, n)

    def begin_eval(self):
        self._cache = self.item_embeddings()

    def end_eval(self):
        self._cache = None

    def scores(self, users):
        items = self._cache if self._cache is not None else self.item_embeddings()
        return self.u_embedding[users] @ items.T

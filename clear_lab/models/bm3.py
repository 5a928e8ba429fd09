"""BM3 (Zhou et al., WWW 2023: "Bootstrap Latent Representations for Multi-modal Recommendation"), as in MMRec's
``bm3.py``.

* **Online encoder**: LightGCN (``n_layers`` = 1) over user and item ID embeddings ``E^0`` (xavier-uniform) on the
  normalised training graph, ``E = mean(E^0, ..., E^L)``; the item side adds its ID embedding once more:
  ``u = E_u``, ``i = E_i + E^0_i`` (each ``(n, d)``, ``d = embedding_size`` = 64).
* **Modality encoders**: ``z_m = Linear_m(x^(m))`` ``(n_items, d)`` on *trainable* copies of the raw features
  (MMRec's ``Embedding.from_pretrained(freeze=False)``), weights xavier-normal.
* **Predictor** ``q = Linear(d, d)`` (xavier-normal weight), shared by users, items and every modality.
* **Targets** (no negatives): stop-gradient copies with dropout (``dropout`` = 0.3) over the full matrices,
  ``u~ = drop(sg(u))``, ``i~ = drop(sg(i))``, ``z~_m = drop(sg(z_m))``.
* **Loss** for a batch of (user, positive item) pairs, with ``c(a, b) = 1 - mean_batch cos(a, b)``::

      L = c(q(u), i~) + c(q(i), u~)
          + reg_weight * (||u||_F + ||i||_F) / n_items            # MMRec's EmbLoss on the FULL matrices
          + cl_weight * sum_m [ c(q(z_m), i~) + c(q(z_m), z~_m) ]

  (``reg_weight`` = 0.1, ``cl_weight`` = 2.0). MMRec has at most an image and a text term; here every modality
  adds its pair of terms.
* **Score** ``s(u, i) = q(u) . q(i)``: the modalities do not enter inference at all; they shape the ID embeddings
  only through the cross-modal loss terms.

Where CLEAR acts: under input placement the projected features initialise the trainable feature copies, which
again only feed the loss. Under latent placement the hook sees ``z_image``, ``z_text`` (before the predictor, as
the encoders output them) in every training forward; online and target views are both taken after the hook.
Evaluation never computes them, so the hook is not called there. With ``cl_weight`` = 0 the modality terms vanish
and latent placement is refused: it would change nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clear_lab.graph import SparseOperator, lightgcn_mean, normalized_adjacency
from clear_lab.models.base import Recommender, emb_loss


def _cos_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - mean_rows cos(a_r, b_r)``; ``b`` is a target and never carries gradient."""
    return 1.0 - F.cosine_similarity(a, b.detach(), dim=-1).mean()


class BM3(Recommender):
    name = "bm3"
    uses_features = True
    latent_hook = ("z_m = Linear_m(x^(m)) (n_items x embedding_size), the modality encoders' outputs; they feed only "
                   "the cross-modal loss terms (training), never the scores")
    default_params = {"embedding_size": 64, "feat_embed_dim": 64, "n_layers": 1, "reg_weight": 0.1, "dropout": 0.3,
                      "cl_weight": 2.0, "learning_rate": 1e-3}
    param_help = {"embedding_size": "ID embedding width d (also the predictor's width)",
                  "feat_embed_dim": "modality encoder width; must equal embedding_size (MMRec reads embedding_size "
                  "for it, and the shared predictor needs it)",
                  "n_layers": "LightGCN layers of the online encoder",
                  "reg_weight": "weight of EmbLoss on the full user and item matrices",
                  "dropout": "dropout rate that makes the target views",
                  "cl_weight": "weight of the cross-modal (modality vs item, modality vs its own target) terms",
                  "learning_rate": "Adam learning rate"}
    deviations = ("Any number of modalities >= 1: each adds its two cosine terms (MMRec has image and/or text).",
                  "feat_embed_dim is a parameter that must equal embedding_size (MMRec sets the encoder width from "
                  "embedding_size and ignores feat_embed_dim).",
                  "The predictor is applied to the batch rows only (MMRec applies it to all rows, then indexes: "
                  "same values).")

    @classmethod
    def check_latent(cls, params: dict | None) -> None:
        super().check_latent(params)
        if cls.resolve_params(params)["cl_weight"] == 0:
            raise ValueError("latent placement on BM3 acts only on the cross-modal loss terms, which cl_weight = 0 "
                             "switches off (modalities never enter BM3's scores); pass --set cl_weight=2.0 "
                             "(or use --clear input)")

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        p = self.params
        d = p["embedding_size"]
        if p["feat_embed_dim"] != d:
            raise ValueError(f"BM3 feat_embed_dim ({p['feat_embed_dim']}) must equal embedding_size ({d}): one "
                             "predictor maps both ID and modality embeddings")
        if not 0 <= p["dropout"] < 1:
            raise ValueError(f"BM3 dropout must be in [0, 1), got {p['dropout']}")
        if p["n_layers"] < 0:
            raise ValueError(f"BM3 n_layers must be >= 0, got {p['n_layers']}")
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_id_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.predictor = nn.Linear(d, d)
        nn.init.xavier_normal_(self.predictor.weight)  # bias keeps torch's default init, as in MMRec

        self.modality_names = list(data.modalities)
        self.feat_embeddings = nn.ModuleList()
        self.feat_trs = nn.ModuleList()
        for name in self.modality_names:
            x = torch.as_tensor(data.features[name], dtype=torch.float32)
            # trainable copies of the features, as MMRec's from_pretrained(freeze=False)
            self.feat_embeddings.append(nn.Embedding.from_pretrained(x.clone(), freeze=False))
            trs = nn.Linear(x.shape[1], d)
            nn.init.xavier_normal_(trs.weight)
            self.feat_trs.append(trs)

        self.norm_adj = SparseOperator(normalized_adjacency(data.train[:, 0], data.train[:, 1], self.n_users,
                                                            self.n_items, self.device))
        self._cache = None
        self.to(self.device)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Online ID embeddings ``(u (n_users, d), i (n_items, d))`` before the predictor."""
        h = self.item_id_embedding.weight
        out = lightgcn_mean(self.norm_adj, torch.cat([self.user_embedding.weight, h]), self.params["n_layers"])
        return out[: self.n_users], out[self.n_users:] + h

    def encoded_modalities(self) -> dict[str, torch.Tensor]:
        return {name: trs(emb.weight) for name, emb, trs in
                zip(self.modality_names, self.feat_embeddings, self.feat_trs)}

    def loss(self, users, pos, neg):
        p = self.params
        u_all, i_all = self.propagate()
        z = list(self.encoded_modalities().values())
        if len(z) == 2:
            z = list(self.modality_hook(z[0], z[1]))
        drop = p["dropout"]
        with torch.no_grad():  # targets: stop-gradient, dropout over the full matrices (as MMRec)
            u_target = F.dropout(u_all, drop, training=True)[users]
            i_target = F.dropout(i_all, drop, training=True)[pos]
            z_target = [F.dropout(zm, drop, training=True)[pos] for zm in z]
        q = self.predictor
        loss = _cos_loss(q(u_all[users]), i_target) + _cos_loss(q(i_all[pos]), u_target)
        loss = loss + p["reg_weight"] * emb_loss(u_all, i_all)
        cl = sum(_cos_loss(q(zm[pos]), i_target) + _cos_loss(q(zm[pos]), zt) for zm, zt in zip(z, z_target))
        return loss + p["cl_weight"] * cl

    def _embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        u_all, i_all = self.propagate()
        return self.predictor(u_all), self.predictor(i_all)

    def begin_eval(self):
        self._cache = self._embeddings()

    def end_eval(self):
        self._cache = None

    def scores(self, users):
        u_all, i_all = self._cache if self._cache is not None else self._embeddings()
        return u_all[users] @ i_all.T

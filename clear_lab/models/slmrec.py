"""SLMRec (Tao et al., IEEE TMM 2022: "Self-supervised Learning for Multimedia Recommendation"), as in MMRec's
``slmrec.py`` with its default ``ssl_task = 'FAC'`` (fine and coarse cross-modal alignment).

* Features are L2-normalised per row once at build time (fixed, not trained), ``x^(m) <- x^(m) / ||x^(m)||``, and
  encoded by ``v_m = Linear_m(x^(m))`` ``(n_items, d)`` (``d = recdim`` = 64, xavier-uniform weights).
* ``M + 1`` LightGCN branches (``layer_num`` = 3, layer mean incl. layer 0) on the symmetric-normalised training
  graph ``D^-1/2 A D^-1/2`` (no self-loops; MMRec's ``adj_type = 'pre'``), all sharing the user ID embedding
  ``E_u``: the ID branch propagates ``[E_u; E_i]``, modality branch m propagates ``[E_u; v_m]``. Each gives user
  rows ``g^b_u`` and item rows ``g^b_i``.
* Fusion (``mm_fusion_mode = 'concat'``): ``u = W_u cat_b(g^b_u) + c_u``, ``i = W_i cat_b(g^b_i) + c_i`` with
  ``W_u, W_i`` of shape ``(d, (M+1) d)``. Score ``s(u, i) = u . i`` (MMRec ranks by ``sigmoid(u . i)``: the same order).
* Main loss: in-batch InfoNCE over the (user, positive) pairs, on L2-normalised rows, temperature ``temp`` = 0.2:
  ``L_main = CE(norm(u_b) norm(i_b)^T / temp, diag)`` (the other positives of the batch are the negatives).
* FAC loss, on the batch's positive items, with *unnormalised* heads and temperature ``ssl_temp`` = 0.2,
  ``nce(a, b) = CE(a b^T / ssl_temp, diag)``. A chain of heads starts from the ID branch's item rows,
  ``x_0 = g_i_iv(g^id_i)``, and each link aligns with one modality branch::

      L_ssl = nce(x_0, g_v_iv(g^v_i))                               # 64-d, first modality (MMRec's v)
      x_1 = g_iv_iva(x_0)                                           # 64-d, the audio slot: no term with 2 mods
      x_2 = g_iva_ivat(x_1)                                         # 32-d (= recdim // 2)
      L_ssl += nce(x_2, g_t_ivat(g^t_i))                            # 32-d, second modality (MMRec's t)

  Loss ``L = L_main + ssl_alpha * L_ssl`` (``ssl_alpha`` = 0.1); Adam with weight decay 1e-4.

Modality counts: MMRec's model is written for image + text. With one modality it follows MMRec's single-modality
("kwai") branch: fusion of the ID branch and that modality, and only the first FAC term. With three or more, the
third modality takes the audio link of the original SLMRec chain (``g_iv_iva`` against ``g_a_iva``, commented out
in MMRec), a fourth and later ones add further 64-d links after it, and the second modality keeps the last (32-d)
link: slots ``(1st, 64), (3rd, 64), ..., (2nd, 32)``.

Where CLEAR acts: under input placement the projected features are normalised and encoded like raw ones (every
path from features to the ranking goes through them). Under latent placement the hook sees ``v_dense(x^(1))``,
``t_dense(x^(2))`` (each ``(n_items, recdim)``) in every forward pass, training and evaluation, before they enter
their LightGCN branches; so the projection reaches the fused embeddings, the scores and the FAC terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clear_lab.graph import SparseOperator, lightgcn_mean, normalized_adjacency
from clear_lab.models.base import Recommender


def in_batch_infonce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """``CE(a b^T / t, diag)``: row r of ``a`` should pick row r of ``b`` among the batch's rows."""
    logits = a @ b.T / temperature
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def _xavier_linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.xavier_uniform_(layer.weight)  # bias keeps torch's default init, as in MMRec
    return layer


class SLMRec(Recommender):
    name = "slmrec"
    uses_features = True
    latent_hook = ("v_m = dense_m(x^(m)) (n_items x recdim), the encoded (L2-normalised) features of the first two "
                   "modalities (MMRec's v_dense, t_dense), before their LightGCN branches; they reach the scores")
    default_params = {"recdim": 64, "layer_num": 3, "ssl_task": "FAC", "ssl_alpha": 0.1, "ssl_temp": 0.2,
                      "temp": 0.2, "learning_rate": 1e-3, "weight_decay": 1e-4}
    param_help = {"recdim": "embedding width d (MMRec's name for embedding_size)",
                  "layer_num": "LightGCN layers of every branch",
                  "ssl_task": "self-supervised task: only 'FAC' (MMRec's FD / FM / FD+FM paths crash)",
                  "ssl_alpha": "weight of the FAC loss",
                  "ssl_temp": "temperature of the FAC InfoNCE terms",
                  "temp": "temperature of the main (user, positive) InfoNCE",
                  "learning_rate": "Adam learning rate", "weight_decay": "Adam weight decay (coupled L2)"}
    deviations = ("Evaluation runs a fresh forward pass in begin_eval; MMRec scores with the embeddings cached by the "
                  "last training batch (computed before that batch's optimiser step).",
                  "scores returns u . i; MMRec returns sigmoid(u . i): the same ranking, but float32 sigmoid "
                  "saturates to 1.0 above ~17 and would tie items.",
                  "MMRec's 'reg' (gridded in its yaml) is read nowhere in its SLMRec: left out.",
                  "Only ssl_task 'FAC' (MMRec's default): MMRec's FD, FM and FD+FM read attributes and config keys "
                  "that are never set (a_dense_emb, 'data.input.dataset') and crash; other values raise ValueError. "
                  "dropout_rate is read only by FD / FD+FM, so it is left out.",
                  "Fixed to MMRec's yaml choices mm_fusion_mode 'concat' (its 'mean' feeds a d-wide vector to a "
                  "(M+1)d-input Linear and crashes), init 'xavier' ('normal' names a missing attribute) and "
                  "adj_type 'pre'.",
                  "One modality follows MMRec's single-modality ('kwai') branch, three or more fill the audio slot "
                  "of the original FAC chain and further 64-d links (MMRec crashes unless both v and t exist).",
                  "MMRec's audio head g_a_iva (built, never used) is built only when a third modality uses it.",
                  "Degrees get +1e-7 (the shared normalized_adjacency) instead of +1e-8: below float32 precision.",
                  "The M+1 LightGCN branches are propagated as one column-concatenated matrix (identical values).")

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        p = self.params
        if p["ssl_task"] != "FAC":
            raise ValueError(f"SLMRec ssl_task {p['ssl_task']!r} is not supported: only 'FAC' (MMRec's FD, FM and "
                             "FD+FM paths crash)")
        d = p["recdim"]
        if d < 2:
            raise ValueError(f"SLMRec recdim must be >= 2 (the last FAC pair is recdim // 2 wide), got {d}")
        if p["layer_num"] < 0:
            raise ValueError(f"SLMRec layer_num must be >= 0, got {p['layer_num']}")
        self.modality_names = list(data.modalities)
        n_mod = len(self.modality_names)

        self.embedding_user = nn.Embedding(self.n_users, d)
        self.embedding_item = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.embedding_user.weight)
        nn.init.xavier_uniform_(self.embedding_item.weight)
        self.dense = nn.ModuleList()
        for j, name in enumerate(self.modality_names):
            x = F.normalize(torch.as_tensor(data.features[name], dtype=torch.float32), dim=1)
            self.register_buffer(f"feat_{j}", x, persistent=False)  # fixed, as MMRec's normalised v_feat / t_feat
            self.dense.append(_xavier_linear(x.shape[1], d))
        self.user_fusion = _xavier_linear((n_mod + 1) * d, d)
        self.item_fusion = _xavier_linear((n_mod + 1) * d, d)

        # FAC chain: slot k = (modality index aligned at that link or None, width). With two modalities this is
        # MMRec's g_i_iv -> g_iv_iva -> g_iva_ivat with terms at the first and last links only.
        if n_mod == 1:
            slots = [(0, d)]
        else:
            middle = [(j, d) for j in range(2, n_mod)] or [(None, d)]
            slots = [(0, d), *middle, (1, d // 2)]
        self.fac_slots = slots
        self.fac_chain = nn.ModuleList(_xavier_linear(d, width) for _, width in slots)
        self.fac_heads = nn.ModuleDict({str(k): _xavier_linear(d, width)
                                        for k, (j, width) in enumerate(slots) if j is not None})

        self.norm_adj = SparseOperator(normalized_adjacency(data.train[:, 0], data.train[:, 1], self.n_users,
                                                            self.n_items, self.device))
        self._cache = None
        self.to(self.device)

    def features(self, j: int) -> torch.Tensor:
        return getattr(self, f"feat_{j}")

    def encoded_modalities(self) -> dict[str, torch.Tensor]:
        return {name: self.dense[j](self.features(j)) for j, name in enumerate(self.modality_names)}

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Fused ``(users (n_users, d), items (n_items, d))`` and the per-branch item rows ``[g^id_i, g^1_i, ...]``."""
        d, n_layers = self.params["recdim"], self.params["layer_num"]
        v = list(self.encoded_modalities().values())
        if len(v) == 2:
            v = list(self.modality_hook(v[0], v[1]))
        e_u = self.embedding_user.weight
        # all branches at once: propagation acts on columns independently, so column blocks are the branches
        x = torch.cat([torch.cat([e_u, item]) for item in [self.embedding_item.weight, *v]], dim=1)
        out = lightgcn_mean(self.norm_adj, x, n_layers)
        g_u, g_i = out[: self.n_users], out[self.n_users:]
        branches_i = list(torch.split(g_i, d, dim=1))
        return self.user_fusion(g_u), self.item_fusion(g_i), branches_i

    def fac_loss(self, items: torch.Tensor, branches_i: list[torch.Tensor]) -> torch.Tensor:
        """The FAC chain on the batch's items: ``sum_links nce(chain_k(...), head_k(g^m_i))``."""
        t = self.params["ssl_temp"]
        x = branches_i[0][items]  # the ID branch
        total = x.new_zeros(())
        for k, (j, _) in enumerate(self.fac_slots):
            x = self.fac_chain[k](x)
            if j is not None:
                total = total + in_batch_infonce(x, self.fac_heads[str(k)](branches_i[j + 1][items]), t)
        return total

    def loss(self, users, pos, neg):
        user, item, branches_i = self.compute()
        main = in_batch_infonce(F.normalize(user[users], dim=1), F.normalize(item[pos], dim=1), self.params["temp"])
        return main + self.params["ssl_alpha"] * self.fac_loss(pos, branches_i)

    def begin_eval(self):
        user, item, _ = self.compute()
        self._cache = (user, item)

    def end_eval(self):
        self._cache = None

    def scores(self, users):
        user, item = self._cache if self._cache is not None else self.compute()[:2]
        return user[users] @ item.T

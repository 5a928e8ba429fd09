"""LGMRec (Guo et al., AAAI 2024: "LGMRec: Local and Global Graph Learning for Multimodal Recommendation"), as in
MMRec's ``lgmrec.py`` with ``cf_model: lightgcn``.

Shapes: ``U`` users, ``I`` items, ``M`` modalities with *frozen* raw features ``x_m`` (I x d_m), ``d`` = 64,
``H`` = ``hyper_num`` hyperedges, ``R`` the binary U x I training matrix, ``A_hat`` the symmetric-normalised
(U+I) x (U+I) training graph.

* **CGE** (collaborative): LightGCN on the ID embeddings, ``C = mean(E, A_hat E, ..., A_hat^L E)``
  (``n_ui_layers`` = 2).
* **MGE** (modality, local): item features ``z_m = x_m W_m`` (W_m: d_m x ``feat_embed_dim``, no bias); user
  features = the mean of their training items' ``z_m``; then ``G_m = A_hat^K [z_u; z_m]`` (``n_mm_layers`` = 2, the
  last layer only). ``local = C + sum_m normalize(G_m)``.
* **GHE** (hypergraph, global): hyperedge memberships from the *raw* features, item logits ``x_m V_m`` (V_m:
  d_m x H) and user logits ``R (x_m V_m)``; each row becomes a distribution over the H hyperedges by
  gumbel_softmax (tau = 0.2) and is dropped out with keep probability ``keep_rate``. With item / user memberships
  ``Hi_m``, ``Hu_m`` and ``n_hyper_layer`` rounds on the CGE item rows ``c_i``: ``lat = Hi_m^T g``,
  ``g <- Hi_m lat``, ``u_m = Hu_m lat``; ``global = sum_m [u_m; g_m]``.
* **Output** ``local + alpha * normalize(global)``; score ``u . i``.
* **Loss** ``BPR + cl_weight * HCL + reg_weight * EmbLoss(u, i+, i-)`` on the output rows, where HCL is the
  hyperedge contrastive term: for a pair of modalities (a, b), ``InfoNCE(u_a[users], u_b[users] | all u_b)`` +
  ``InfoNCE(g_a[pos], g_b[pos] | all g_b)``, cosine / 0.2, *summed* over the batch, the positive included in the
  denominator.

Modalities: MMRec needs exactly two. We take any ``M >= 1``: MGE and GHE sum over the modalities; HCL sums its
term over every pair ``a < b`` (in modality order, ``a`` as anchor, so with two it is MMRec's single pair) and is
absent when ``M = 1``.

Evaluation (deterministic, unlike MMRec, which draws a fresh gumbel sample in every evaluation batch): no
hyperedge dropout (as MMRec) and, by default (``eval_membership = "mean"``), memberships ``softmax(logits)``: the
expectation of the training-time membership. It is exactly the mean of the hard Gumbel-max sample, and the relaxed
sample at tau = 0.2 has nearly the same mean (Monte Carlo: mean L1 gap per row ~0.05, against 0.3-0.7 for
``softmax(logits / tau)``). As inverted dropout is unbiased, the hyperedge embeddings ``Hu (Hi^T c)`` are then
close to their expectation over the training noise (the rows are drawn independently). ``eval_membership =
"noise_free"`` uses ``softmax(logits / tau)`` instead: gumbel_softmax with the noise replaced by a constant (a
sharper, mode-like assignment).

Where CLEAR acts: under input placement the projected features enter both ``z_m = x_m W_m`` and the hyperedge
logits ``x_m V_m``. Under latent placement the hook sees ``z_m = x_m W_m`` (I x ``feat_embed_dim``) before MGE,
i.e. the modality-local branch; the hyperedge branch multiplies the *raw* features by ``V_m`` and does not pass
through the hook.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clear_lab.graph import SparseOperator, lightgcn_mean, normalized_adjacency, sparse_tensor
from clear_lab.models.base import Recommender, bpr_loss, emb_loss

TAU = 0.2  # gumbel temperature and contrastive temperature, hard-coded in MMRec


def info_nce_sum(anchor: torch.Tensor, positive: torch.Tensor, candidates: torch.Tensor, tau: float) -> torch.Tensor:
    """``-sum_b log( exp(cos(a_b, p_b)/tau) / sum_j exp(cos(a_b, c_j)/tau) )``, written with logsumexp (MMRec
    exponentiates directly; with cosines the values are the same and no overflow is possible either way)."""
    a, p, c = F.normalize(anchor, dim=1), F.normalize(positive, dim=1), F.normalize(candidates, dim=1)
    pos = (a * p).sum(1) / tau
    return (torch.logsumexp(a @ c.T / tau, dim=1) - pos).sum()


class LGMRec(Recommender):
    name = "lgmrec"
    uses_features = True
    latent_hook = ("z_m = x_m W_m (n_items x feat_embed_dim), the item features of the modality graph embedding "
                   "(MGE); the hyperedge memberships use the raw x_m V_m and bypass the hook")
    default_params = {"embedding_size": 64, "feat_embed_dim": 64, "n_ui_layers": 2, "n_mm_layers": 2,
                      "n_hyper_layer": 1, "hyper_num": 4, "keep_rate": 0.5, "alpha": 0.3, "cl_weight": 1e-4,
                      "reg_weight": 1e-6, "learning_rate": 1e-3, "eval_membership": "mean"}
    param_help = {"embedding_size": "ID embedding width", "feat_embed_dim": "width of z_m = x_m W_m",
                  "n_ui_layers": "LightGCN layers (CGE)", "n_mm_layers": "propagations of the modality features",
                  "n_hyper_layer": "hypergraph rounds (>= 1)", "hyper_num": "hyperedges per modality",
                  "keep_rate": "keep probability of the hyperedge-membership dropout (training only)",
                  "alpha": "weight of the normalised global (hypergraph) embedding",
                  "cl_weight": "weight of the hyperedge contrastive loss", "reg_weight": "weight of EmbLoss",
                  "learning_rate": "Adam learning rate",
                  "eval_membership": "hyperedge memberships at evaluation: 'mean' = softmax(logits), the expected "
                                     "training membership; 'noise_free' = softmax(logits / tau)"}
    deviations = (
        "Evaluation is deterministic: hyperedge memberships softmax(logits), the expectation of the training-time "
        "gumbel membership (eval_membership='noise_free': softmax(logits / tau)), instead of a fresh gumbel "
        "sample per evaluation batch; dropout off as in MMRec.",
        "Any number M >= 1 of modalities (MMRec needs exactly two and crashes otherwise): MGE and GHE sum over "
        "modalities, the hyperedge contrastive loss sums over all pairs a < b (first as anchor) and is dropped "
        "for M = 1.",
        "Gumbel noise and hyperedge dropout are drawn from a torch generator seeded from the trainer's rng at "
        "each pre_epoch (same distributions as F.gumbel_softmax and nn.Dropout), not from torch's global RNG.",
        "InfoNCE written with logsumexp instead of log(exp / sum exp) (same values).",
        "Evaluation propagates once per evaluation instead of once per batch of 4096 users.",
    )

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        p = self.params
        if not 0 < p["keep_rate"] <= 1:
            raise ValueError(f"LGMRec keep_rate must be in (0, 1], got {p['keep_rate']}")
        if p["n_hyper_layer"] < 1 or p["hyper_num"] < 1:
            raise ValueError("LGMRec needs n_hyper_layer >= 1 and hyper_num >= 1 (MMRec fails on 0 layers)")
        if p["eval_membership"] not in ("mean", "noise_free"):
            raise ValueError(f"LGMRec eval_membership must be 'mean' or 'noise_free', got {p['eval_membership']!r}")
        if p["n_ui_layers"] < 0 or p["n_mm_layers"] < 0:
            raise ValueError("LGMRec n_ui_layers and n_mm_layers must be >= 0")
        d, f, h = p["embedding_size"], p["feat_embed_dim"], p["hyper_num"]
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_id_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))

        self.modality_names = list(data.modalities)
        self.feature_dims = []
        self.item_trs = nn.ParameterList()
        self.hyper = nn.ParameterList()
        for j, name in enumerate(self.modality_names):
            x = torch.as_tensor(data.features[name], dtype=torch.float32)
            self.register_buffer(f"feat_{j}", x, persistent=False)  # frozen, as MMRec's from_pretrained(freeze=True)
            self.feature_dims.append(x.shape[1])
            self.item_trs.append(nn.Parameter(nn.init.xavier_uniform_(torch.empty(x.shape[1], f))))
            self.hyper.append(nn.Parameter(nn.init.xavier_uniform_(torch.empty(x.shape[1], h))))

        u, i = data.train[:, 0], data.train[:, 1]
        self.norm_adj = SparseOperator(normalized_adjacency(u, i, self.n_users, self.n_items, self.device))
        self.ui = SparseOperator(sparse_tensor(u, i, np.ones(len(u)), (self.n_users, self.n_items), self.device))
        inv_deg = 1.0 / (np.bincount(u, minlength=self.n_users).astype(np.float64) + 1e-7)
        self.register_buffer("user_inv_deg", torch.as_tensor(inv_deg, dtype=torch.float32)[:, None],
                             persistent=False)
        self._gen: torch.Generator | None = None  # per-batch noise; seeded by pre_epoch, else torch's global RNG
        self._cache = None
        self.to(self.device)

    def features(self) -> list[torch.Tensor]:
        return [getattr(self, f"feat_{j}") for j in range(len(self.modality_names))]

    def encoded_modalities(self) -> dict[str, torch.Tensor]:
        return {name: x @ w for name, x, w in zip(self.modality_names, self.features(), self.item_trs)}

    # -- randomness -------------------------------------------------------------------------------------------
    def pre_epoch(self, rng: np.random.Generator) -> None:
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(int(rng.integers(2 ** 62)))

    def _memberships(self, logits: torch.Tensor, stochastic: bool) -> torch.Tensor:
        """Rows of ``logits`` (n x H) -> hyperedge distributions: gumbel_softmax + dropout in training; in
        evaluation their expectation ``softmax(logits)`` (or ``softmax(logits / tau)``, see ``eval_membership``)."""
        if not stochastic:
            return torch.softmax(logits if self.params["eval_membership"] == "mean" else logits / TAU, dim=1)
        # -log(Exp(1)) is a standard Gumbel sample: what F.gumbel_softmax draws, but from our generator
        gumbel = -torch.empty_like(logits).exponential_(generator=self._gen).log()
        y = torch.softmax((logits + gumbel) / TAU, dim=1)
        keep = self.params["keep_rate"]
        if keep < 1:
            mask = torch.rand(y.shape, generator=self._gen, device=y.device) < keep
            y = y * mask / keep
        return y

    # -- forward ----------------------------------------------------------------------------------------------
    def propagate(self, stochastic: bool) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """``(users (U x d), items (I x d), [(u_m, g_m) hyperedge embeddings per modality])``."""
        p = self.params
        cge = lightgcn_mean(self.norm_adj, torch.cat([self.user_embedding, self.item_id_embedding]), p["n_ui_layers"])
        cge_items = cge[self.n_users:]

        z = list(self.encoded_modalities().values())
        if len(z) == 2:
            z = list(self.modality_hook(z[0], z[1]))
        local = cge
        for zm in z:
            g = torch.cat([(self.ui @ zm) * self.user_inv_deg, zm])
            for _ in range(p["n_mm_layers"]):
                g = self.norm_adj @ g
            local = local + F.normalize(g, dim=1)

        hyper_embs = []
        glob = 0
        for xm, vm in zip(self.features(), self.hyper):
            item_logits = xm @ vm
            user_logits = self.ui @ item_logits  # a sum over the user's items, not a mean (as MMRec)
            hi, hu = self._memberships(item_logits, stochastic), self._memberships(user_logits, stochastic)
            gi = cge_items
            for _ in range(p["n_hyper_layer"]):
                lat = hi.T @ gi  # (H, d): each hyperedge's summary
                gi = hi @ lat
                gu = hu @ lat
            hyper_embs.append((gu, gi))
            glob = glob + torch.cat([gu, gi])
        out = local + p["alpha"] * F.normalize(glob, dim=1)
        return out[: self.n_users], out[self.n_users:], hyper_embs

    def loss(self, users, pos, neg):
        u_all, i_all, hyper = self.propagate(stochastic=self.training)
        u, pi, ni = u_all[users], i_all[pos], i_all[neg]
        loss = bpr_loss((u * pi).sum(1), (u * ni).sum(1))
        if self.params["cl_weight"] > 0 and len(hyper) > 1:
            hcl = sum(info_nce_sum(ua[users], ub[users], ub, TAU) + info_nce_sum(ga[pos], gb[pos], gb, TAU)
                      for (ua, ga), (ub, gb) in combinations(hyper, 2))
            loss = loss + self.params["cl_weight"] * hcl
        return loss + self.params["reg_weight"] * emb_loss(u, pi, ni)

    def begin_eval(self):
        self._cache = self.propagate(stochastic=False)[:2]

    def end_eval(self):
        self._cache = None

    def scores(self, users):
        u_all, i_all = self._cache if self._cache is not None else self.propagate(stochastic=False)[:2]
        return u_all[users] @ i_all.T

"""DualGNN (Wang et al., IEEE TMM 2021: "DualGNN: Dual Graph Neural Network for Multimedia Recommendation"), as in
MMRec's ``dualgnn.py``. Also the shared machinery of DRAGON (:mod:`clear_lab.models.dragon`).

Per modality m (features ``x^(m)``, ``(I, d_m)``; d = ``embedding_size`` = 64):

* Encoder ``z_m = W2 leaky_relu(W1 x^(m) + b1) + b2`` (``d_m -> 4d -> d``; MMRec's ``GCN.MLP`` and ``MLP_1``), the
  encoded item embedding, ``(I, d)``.
* ``X_m = normalize_rows([P_m ; z_m])`` with ``P_m`` a ``(U, d)`` user preference per modality (xavier-normal).
* ``n_layers`` (2) hops of a parameter-free GCN on the full training graph, ``H^{l+1} = A_hat H^l`` with
  ``A_hat = D^-1/2 A D^-1/2`` (PyG message passing with ``aggr='add'`` and ``deg^-1/2[row] deg^-1/2[col]``,
  written here as one sparse product for all modalities at once), and ``rep_m = X_m + H^1 + ... + H^L``.

Fusion (``construction = 'weighted_sum'``, the only one MMRec's forward implements):

* items ``i = sum_m rep_m[items]``;
* users ``u = sum_m w_{u,m} rep_m[users]`` with ``w_u = softmax_m`` of a xavier-normal ``(U, M, 1)`` draw at init
  (then trained freely). MMRec computes ``representation = v_rep; representation += t_rep``, an in-place add that
  also turns ``v_rep`` into ``v_rep + t_rep`` before the user weighting, so what MMRec trains is
  ``u = w_{u,1} sum_m rep_m + sum_{m>1} w_{u,m} rep_m``. ``user_fusion = 'mmrec'`` (default) keeps that;
  ``'paper'`` is the weighted sum as intended. With one modality ``u = rep_1[users]``.
* user-user graph: ``u <- u + sum_{j in N_40(u)} softmax(c_uj) u_j`` over co-interaction counts ``c`` from the
  training data, neighbours re-drawn each epoch (:mod:`clear_lab.user_graph`).

Score ``u . i``. Loss ``-mean log2 sigmoid(s+ - s-) + reg_weight (sum_m mean(P_m[users]^2) + mean(w_u^2) +
mean(w_i^2))``; ``w_i`` (``(I, M, 1)``, softmax-initialised like ``w_u``) enters nothing but this term, as in MMRec.

Where CLEAR acts: under input placement the encoders see projected features (no graph is built from features). Under
latent placement the hook sees the encoder outputs ``z_m`` (``(I, d)`` each), before the concatenation with ``P_m``,
in every forward pass; they reach the ranking through every item and (via the GCN) every user.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clear_lab.graph import SparseOperator, layer_sum, sparse_tensor
from clear_lab.models.base import Recommender, bpr_loss
from clear_lab.user_graph import co_interaction_graph, neighbour_operator, sample_neighbours

SHARED_DEVIATIONS = (
    "No torch_geometric: the GCN hop is one sparse product with A_hat (identical to Base_gcn's add aggregation), "
    "for all modalities at once; aggr_mode 'add' only (the only value MMRec's grid uses).",
    "Evaluation runs a fresh forward pass in begin_eval instead of reusing result_embed cached by the last training "
    "batch (stale by one optimiser step).",
    "The user-user graph is built from the training split with a sparse R R^T (MMRec's script: a dense U x U tensor "
    "and an O(U^2) loop); ties in the co-count are ordered by lower user id (torch.topk leaves them unspecified).",
    "topk_sample is vectorised over users (a loop over the k slots) and draws from the trainer's seeded generator; "
    "the Polya-urn padding of users with fewer than k neighbours has MMRec's distribution, not its random stream.",
    "The user aggregation is a sparse (U, U) product instead of a (U, k, d) gather (same values).",
    "log2 sigmoid written as logsigmoid / ln 2 (no -inf when the sigmoid underflows).",
    "The GCN width is embedding_size (MMRec hard-codes dim_latent = 64 and ignores embedding_size there), and "
    "n_layers sets the number of hops (MMRec hard-codes 2 and ignores n_layers).",
    "Not built, as they never reach the forward pass or the loss: the 'dropped' edge sets edge_index_dropv/dropt "
    "(passed to GCN.forward but unused), MLP_v, MLP_t, MLP_user, v_drop_ze/t_drop_ze and the result_embed "
    "Parameter. Their random draws at init are therefore not made.",
    "Any number of modalities >= 1 (MMRec: image and/or text); with one modality the user weights have one column "
    "(MMRec keeps two), which changes only a constant-like regulariser term.",
    "Scores asked for before the first pre_epoch use a user graph drawn from default_rng(0) (MMRec has none yet).",
    "k (user neighbours) is a parameter; MMRec hard-codes 40.",
)


class DualGraphRecommender(Recommender):
    """What DualGNN and DRAGON share: per-modality encoders and GCN branches, user weights, the user-user graph,
    the log2 BPR loss and fresh-forward evaluation. Subclasses implement :meth:`fuse`."""

    uses_features = True
    latent_hook = ("z_m = MLP_1(leaky_relu(MLP(x^(m)))), each modality's encoded item embedding "
                   "(n_items x embedding_size = 64)")
    uses_item_weights = False  # DualGNN keeps MMRec's w_i, which only enters the regulariser

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        p = self.params
        if p["aggr_mode"] != "add":
            raise ValueError(f"{self.name}: aggr_mode must be 'add' (the only mode MMRec's grid uses), "
                             f"got {p['aggr_mode']!r}")
        if p["k"] < 1 or p["n_layers"] < 0 or p["embedding_size"] < 1:
            raise ValueError(f"{self.name}: need k >= 1, n_layers >= 0 and embedding_size >= 1, got k={p['k']}, "
                             f"n_layers={p['n_layers']}, embedding_size={p['embedding_size']}")
        d = p["embedding_size"]
        self.dim = d
        self.modality_names = list(data.modalities)
        n_mod = len(self.modality_names)
        self.encoders = nn.ModuleList()
        self.preferences = nn.ParameterList()
        for j, name in enumerate(self.modality_names):
            x = torch.as_tensor(data.features[name], dtype=torch.float32)
            self.register_buffer(f"feat_{j}", x, persistent=False)
            # MMRec keeps PyTorch's default Linear init here (no xavier pass over the model)
            self.encoders.append(nn.Sequential(nn.Linear(x.shape[1], 4 * d), nn.LeakyReLU(),
                                               nn.Linear(4 * d, d)))
            self.preferences.append(nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, d))))
        # per-user modality weights: xavier-normal on (U, M, 1) (fan_in M, fan_out U), then softmax over modalities
        self.weight_u = nn.Parameter(torch.softmax(nn.init.xavier_normal_(torch.empty(self.n_users, n_mod, 1)), 1))
        if self.uses_item_weights:
            self.weight_i = nn.Parameter(torch.softmax(nn.init.xavier_normal_(torch.empty(self.n_items, n_mod, 1)),
                                                       1))

        u, i = data.train[:, 0], data.train[:, 1]
        self.adj = SparseOperator(_gcn_adjacency(u, i, self.n_users, self.n_items, self.device))
        self.user_graph = co_interaction_graph(u, i, self.n_users, self.n_items)
        # a graph for scores() before the first pre_epoch; training redraws it every epoch from the trainer's rng
        self.user_agg = self._sample_user_agg(np.random.default_rng(0))
        self._cache = None

    def _sample_user_agg(self, rng: np.random.Generator) -> SparseOperator:
        index, weights = sample_neighbours(self.user_graph, self.params["k"], rng)
        return neighbour_operator(index, weights, self.device)

    def pre_epoch(self, rng: np.random.Generator) -> None:
        """MMRec's pre_epoch_processing: redraw the k neighbour slots of users with fewer than k neighbours."""
        self.user_agg = self._sample_user_agg(rng)

    # -- forward ----------------------------------------------------------------------------------------------
    def encoded_modalities(self) -> dict[str, torch.Tensor]:
        return {name: enc(getattr(self, f"feat_{j}"))
                for j, (name, enc) in enumerate(zip(self.modality_names, self.encoders))}

    def modality_reps(self) -> list[torch.Tensor]:
        """``rep_m = X_m + A_hat X_m + ... + A_hat^L X_m`` per modality, each ``(U + I, d)``."""
        z = list(self.encoded_modalities().values())
        if len(z) == 2:
            z = list(self.modality_hook(z[0], z[1]))
        x = torch.cat([F.normalize(torch.cat([pref, zm]), dim=1) for pref, zm in zip(self.preferences, z)], dim=1)
        return list(layer_sum(self.adj, x, self.params["n_layers"]).split(self.dim, dim=1))

    def fuse(self, reps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users before the user graph, items)`` from the per-modality representations."""
        raise NotImplementedError

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.fuse(self.modality_reps())
        return users + self.user_agg @ users, items

    # -- training and evaluation ------------------------------------------------------------------------------
    def loss(self, users, pos, neg):
        u_all, i_all = self.propagate()
        u = u_all[users]
        # MMRec: -mean(log2(sigmoid(s+ - s-)))
        loss = bpr_loss((u * i_all[pos]).sum(1), (u * i_all[neg]).sum(1)) / math.log(2.0)
        reg = sum((pref[users] ** 2).mean() for pref in self.preferences) + (self.weight_u ** 2).mean()
        if self.uses_item_weights:
            reg = reg + (self.weight_i ** 2).mean()
        return loss + self.params["reg_weight"] * reg

    def begin_eval(self):
        self._cache = self.propagate()

    def end_eval(self):
        self._cache = None

    def scores(self, users):
        u_all, i_all = self._cache if self._cache is not None else self.propagate()
        return u_all[users] @ i_all.T


def _gcn_adjacency(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                   device: torch.device | str) -> torch.Tensor:
    """``(U + I)`` square ``D^-1/2 A D^-1/2`` with PyG's degrees (no +1e-7: isolated nodes have no edges)."""
    d_u = np.bincount(users, minlength=n_users).astype(np.float64)
    d_i = np.bincount(items, minlength=n_items).astype(np.float64)
    vals = (d_u[users] * d_i[items]) ** -0.5
    rows = np.concatenate([users, items + n_users])
    cols = np.concatenate([items + n_users, users])
    n = n_users + n_items
    return sparse_tensor(rows, cols, np.concatenate([vals, vals]), (n, n), device)


class DualGNN(DualGraphRecommender):
    name = "dualgnn"
    uses_item_weights = True
    default_params = {"embedding_size": 64, "n_layers": 2, "aggr_mode": "add", "k": 40, "reg_weight": 1e-3,
                      "learning_rate": 1e-3, "user_fusion": "mmrec"}
    param_help = {"embedding_size": "width d of encoders, preferences and GCN", "n_layers": "GCN hops per modality",
                  "aggr_mode": "GCN aggregation ('add' only)", "k": "user-user neighbours per user",
                  "reg_weight": "weight of the preference and modality-weight regulariser",
                  "learning_rate": "Adam learning rate",
                  "user_fusion": "'mmrec': w_1 sum_m rep_m + sum_{m>1} w_m rep_m (what MMRec's in-place += computes); "
                                 "'paper': sum_m w_m rep_m"}
    deviations = SHARED_DEVIATIONS + (
        "user_fusion='mmrec' reproduces MMRec's aliasing (representation += t_rep also changes v_rep, so users get "
        "w_v (v + t) + w_t t); user_fusion='paper' is the intended w_v v + w_t t.",)

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        if self.params["user_fusion"] not in ("mmrec", "paper"):
            raise ValueError(f"dualgnn: user_fusion must be 'mmrec' or 'paper', got {self.params['user_fusion']!r}")
        self.to(self.device)

    def fuse(self, reps):
        nu = self.n_users
        items = torch.stack([r[nu:] for r in reps]).sum(0)
        if len(reps) == 1:
            return reps[0][:nu], items
        per_mod = [r[:nu] for r in reps]
        if self.params["user_fusion"] == "mmrec":
            per_mod[0] = torch.stack(per_mod).sum(0)
        users = sum(self.weight_u[:, m] * per_mod[m] for m in range(len(per_mod)))
        return users, items

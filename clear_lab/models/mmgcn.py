"""MMGCN (Wei et al., ACM MM 2019: "Multi-modal Graph Convolution Network for Personalized Recommendation of
Micro-video"), as in MMRec's ``mmgcn.py``.

One graph branch per modality m on the user-item training graph (``N = n_users + n_items`` nodes, both edge
directions, no self loops), all branches sharing one ID embedding ``E_id`` (N x 64):

* input ``x^0 = L2norm_rows(cat(P_m, z_m))`` with a user preference ``P_m`` (n_users x d_m) and the item rows
  ``z_m = MLP_m(x^(m))`` (a ``Linear`` to ``d_m = dim_latent``) or the raw features ``z_m = x^(m)`` (``d_m`` = the
  feature width) when the branch has no encoder;
* ``n_layers`` = 3 layers, each (leaky = leaky_relu with slope 0.01)
  ``h = leaky(mean_{j -> i} (x W)_j)`` (PyG's mean aggregation, isolated nodes get 0),
  ``x_hat = leaky(Linear(x)) + E_id``, ``x <- leaky(g(cat(h, x_hat)))``: ``W`` is ``d x d`` and ``g`` maps
  ``d + 64 -> 64`` (``d = d_m`` in the first layer, 64 after). MMRec's ``concate`` flag is the *string* ``'False'``,
  which is truthy, so its concatenation form ``g(cat(h, x_hat))`` is the one that always runs; that is the
  architecture here;
* representation ``R = mean_m x_m^L`` (N x 64); score ``s(u, i) = R_u . R_{n_users + i}``.

Loss per batch: ``BPR + reg_weight * (mean(E_id[u]^2) + mean(E_id[i+, i-]^2) + mean(P_1^2))``, the last term on the
*whole* preference of the first branch only (MMRec regularises ``v_gcn.preference`` alone).

Modality roles: the first modality plays MMRec's ``v_feat`` (its branch has ``MLP = Linear(d, 256)``,
``dim_latent`` = 256), the others its ``t_feat`` (MMRec's text branch has **no** encoder: the raw 384-d text enters
the graph, with a 384-d preference; ``dim_latent_others`` = 0 keeps that). Any number of modalities >= 1 works.

Initialisation as MMRec: ``E_id``, ``P_m`` xavier-normal; every ``W``, every ``Linear`` of ``x_hat`` and the first
layer's ``g`` xavier-normal weights; the later ``g`` layers, every bias and the ``MLP`` keep torch's default init.

Where CLEAR acts: under input placement the features are the projected ones, whether a branch encodes them or not.
Under latent placement the hook sees ``z_1, z_2 = MLP_1(x^(1)), MLP_2(x^(2))`` (the item rows fed to the graph), in
every forward. With MMRec's settings the second modality has no encoder, so there is nothing encoded to project:
latent placement is refused unless ``--set dim_latent_others=256`` (a deviation from MMRec) gives it one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clear_lab.graph import SparseOperator
from clear_lab.message_passing import bipartite_edges, both_directions, mean_operator
from clear_lab.models.base import IdentityHook, Recommender, bpr_loss


class _Branch(nn.Module):
    """One modality's graph branch: ``(n_items, d_feat)`` item input -> ``(N, d_id)`` node representation."""

    def __init__(self, n_users: int, d_feat: int, d_latent: int, d_id: int, n_layers: int):
        super().__init__()
        self.mlp = nn.Linear(d_feat, d_latent) if d_latent else None  # MMRec leaves the MLP at torch's default init
        d_in = d_latent or d_feat
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.rand(n_users, d_in)))
        self.conv = nn.ParameterList()
        self.linear = nn.ModuleList()
        self.gate = nn.ModuleList()
        for layer in range(n_layers):
            d = d_in if layer == 0 else d_id
            self.conv.append(nn.Parameter(nn.init.xavier_normal_(torch.empty(d, d))))
            lin = nn.Linear(d, d_id)
            nn.init.xavier_normal_(lin.weight)
            gate = nn.Linear(d + d_id, d_id)
            if layer == 0:  # MMRec re-initialises g_layer1 only; g_layer2/3 keep the default init
                nn.init.xavier_normal_(gate.weight)
            self.linear.append(lin)
            self.gate.append(gate)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features) if self.mlp is not None else features

    def forward(self, z_items: torch.Tensor, id_embedding: torch.Tensor, mean_adj: SparseOperator) -> torch.Tensor:
        x = F.normalize(torch.cat([self.preference, z_items]))
        for w, lin, gate in zip(self.conv, self.linear, self.gate):
            h = F.leaky_relu(mean_adj @ (x @ w))
            x_hat = F.leaky_relu(lin(x)) + id_embedding
            x = F.leaky_relu(gate(torch.cat([h, x_hat], dim=1)))
        return x


class MMGCN(Recommender):
    name = "mmgcn"
    uses_features = True
    latent_hook = ("z_m = MLP_m(x^(m)) (n_items x dim_latent for the first modality, dim_latent_others for the "
                   "second), each modality's Linear encoder before its graph branch; MMRec's second (text) branch "
                   "has none, so latent placement needs --set dim_latent_others=256")
    default_params = {"embedding_size": 64, "n_layers": 3, "dim_latent": 256, "dim_latent_others": 0,
                      "reg_weight": 1e-4, "learning_rate": 1e-3}
    param_help = {"embedding_size": "ID embedding and layer output width",
                  "n_layers": "graph layers per branch (MMRec hard-codes 3 and ignores its yaml's n_layers: 2)",
                  "dim_latent": "width of the first modality's Linear encoder (MMRec's v_gcn: 256; 0 = raw)",
                  "dim_latent_others": "width of the other modalities' encoders (0 = raw features, as MMRec's text "
                                       "branch; > 0 is a deviation that enables latent placement)",
                  "reg_weight": "weight of the squared-embedding regulariser",
                  "learning_rate": "Adam learning rate (MMRec grids 1e-4 .. 1e-2)"}
    deviations = (
        "id_embedding and every preference are trained nn.Parameters; in MMRec they are plain tensors that the "
        "optimiser never sees, frozen at their random initialisation (bug).",
        "Evaluation runs a fresh eval-mode forward pass in begin_eval; MMRec ranks with self.result, the "
        "representation cached from the last training batch (bug).",
        "n_layers is a parameter (default 3, MMRec's hard-coded depth; MMRec ignores its yaml's n_layers: 2).",
        "Modality roles: the first modality takes v_gcn's place (Linear encoder to dim_latent = 256, its preference "
        "regularised), every other one t_gcn's (raw features); MMRec has at most v and t, and a text-only MMRec run "
        "builds a raw branch with no preference term.",
        "dim_latent_others (default 0 = MMRec) can give the other modalities a Linear encoder, so that latent "
        "placement has an encoded embedding to project.",
        "Mean aggregation is a fixed sparse product D_in^-1 A built from the both-direction edge index instead of "
        "PyG's MessagePassing (same values: no self loops, isolated nodes get 0).",
        "BPR loss written with logsigmoid instead of log(sigmoid(.)) (MMRec's MMGCN has no 1e-10 and can give -inf).",
    )

    @classmethod
    def check_latent(cls, params: dict | None) -> None:
        super().check_latent(params)
        p = cls.resolve_params(params)
        if p["dim_latent"] <= 0 or p["dim_latent_others"] <= 0:
            raise ValueError("latent placement on model 'mmgcn' needs an encoded embedding of both modalities, but "
                             "MMRec feeds the second modality raw into its graph branch (dim_latent_others = 0; "
                             "dim_latent = 0 does the same to the first); pass --set dim_latent_others=256 to give it "
                             "a Linear encoder (a deviation from MMRec), or use --clear input")

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        p = self.params
        if p["n_layers"] < 1:
            raise ValueError(f"MMGCN n_layers must be >= 1, got {p['n_layers']}")
        if p["dim_latent"] < 0 or p["dim_latent_others"] < 0:
            raise ValueError("MMGCN dim_latent and dim_latent_others must be >= 0 (0 = raw features)")
        d = p["embedding_size"]
        self.modality_names = list(data.modalities)
        self.branches = nn.ModuleList()
        for j, name in enumerate(self.modality_names):
            x = torch.as_tensor(data.features[name], dtype=torch.float32)
            self.register_buffer(f"feat_{j}", x, persistent=False)
            d_latent = p["dim_latent"] if j == 0 else p["dim_latent_others"]
            self.branches.append(_Branch(self.n_users, x.shape[1], d_latent, d, p["n_layers"]))
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.rand(self.n_users + self.n_items, d)))
        edges = both_directions(bipartite_edges(data.train[:, 0], data.train[:, 1], self.n_users, self.device))
        # the graph is fixed, so the mean over each node's neighbours is one sparse product (see mean_operator)
        self.mean_adj = mean_operator(edges, self.n_users + self.n_items)
        self._cache = None
        self.to(self.device)

    def _inputs(self) -> list[torch.Tensor]:
        """Each branch's item rows (encoded or raw), after the latent hook where it applies."""
        z = [branch.encode(getattr(self, f"feat_{j}")) for j, branch in enumerate(self.branches)]
        if len(z) == 2:
            if all(b.mlp is not None for b in self.branches):
                z = list(self.modality_hook(z[0], z[1]))
            elif not isinstance(self.modality_hook, IdentityHook):
                raise ValueError("model 'mmgcn' got a latent hook but a modality enters raw (no encoder): set "
                                 "dim_latent and dim_latent_others > 0 for latent placement")
        return z

    def forward(self) -> torch.Tensor:
        """``(N, embedding_size)``: the mean over modality branches."""
        reps = [branch(z, self.id_embedding, self.mean_adj) for branch, z in zip(self.branches, self._inputs())]
        return torch.stack(reps).mean(0)

    def encoded_modalities(self) -> dict[str, torch.Tensor]:
        """``{modality: MLP_m(x^(m))}`` for the modalities that have an encoder (raw ones are left out)."""
        return {name: branch.encode(getattr(self, f"feat_{j}"))
                for j, (name, branch) in enumerate(zip(self.modality_names, self.branches)) if branch.mlp is not None}

    def loss(self, users, pos, neg):
        rep = self.forward()
        u, p, n = rep[users], rep[self.n_users + pos], rep[self.n_users + neg]
        mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
        items = torch.cat([pos, neg]) + self.n_users
        reg = (self.id_embedding[users] ** 2).mean() + (self.id_embedding[items] ** 2).mean()
        reg = reg + (self.branches[0].preference ** 2).mean()
        return mf + self.params["reg_weight"] * reg

    def begin_eval(self):
        self._cache = self.forward()

    def end_eval(self):
        self._cache = None

    def scores(self, users):
        rep = self._cache if self._cache is not None else self.forward()
        return rep[users] @ rep[self.n_users:].T

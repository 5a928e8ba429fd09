"""LATTICE (Zhang et al., ACM MM 2021: "Mining Latent Structures for Multimedia Recommendation"), as in MMRec's
``lattice.py`` with ``cf_model: lightgcn``.

Shapes: ``I`` items, ``U`` users, ``M >= 1`` modalities with raw features ``x_m`` (I x d_m), ``d`` = 64.

* **Original item graph** (built once, from the raw features): per modality the cosine similarity, each row keeps its
  ``knn_k`` = 10 largest entries *with their similarity as weight* (itself included, not symmetrised), then
  ``O_m = D^-1/2 S_m D^-1/2`` with ``D`` the row sums. It has ``I k`` non-zeros, so we store it sparse
  (:func:`weighted_knn_graph`, cached by a hash of the features); MMRec stores it dense.
* **Learned item graph** (rebuilt from the current parameters): ``z_m = Linear_m(x_m)`` (I x ``feat_embed_dim``) on
  *trainable* copies of the raw features, the same weighted kNN on each ``z_m``, mixed with
  ``w = softmax(modal_weight)`` (M logits, initialised equal, as MMRec's [0.5, 0.5]):
  ``A = sum_m w_m kNN(z_m)``, ``L = D_A^-1/2 A D_A^-1/2``. This one is **dense I x I** (as in MMRec).
* **Item graph** ``S = (1 - lambda) L + lambda sum_m w_m O_m`` (``lambda_coeff`` = 0.9); ``h = S^n E_item``
  (``n_layers`` = 1). We apply ``S`` to ``h`` as ``(1 - lambda) d * (A (d * h)) + lambda sum_m w_m (O_m h)`` with
  ``d = diag(D_A^-1/2)``: the same matrix, without materialising ``L`` or ``S``.
* **CF part**: LightGCN with ``n_ui_layers`` = 2 (MMRec: ``len(weight_size)``) on LATTICE's own adjacency
  ``P = D^-1 (A_ui + I)`` over U + I nodes: self-loops and *row* normalisation (a random walk), not the symmetric
  ``A_hat`` of LightGCN. ``E = mean(E^0, P E^0, P^2 E^0)``; item output ``e_i + normalize(h_i)``.
* **Loss** ``BPR + reg_weight * 1/2 (|u|^2 + |i+|^2 + |i-|^2) / B`` on the output rows of the batch.
* **When the learned graph is rebuilt** (as MMRec): at the first training batch of each epoch, with gradients (the
  only batch in which ``Linear_m``, the raw features and ``modal_weight`` receive gradients); the other batches of
  the epoch reuse that graph detached. Evaluation rebuilds it from the current parameters (once in ``begin_eval``).

Memory: the learned graph and its gradient are dense I x I float32 matrices. Before building anything we estimate
the peak (:data:`DENSE_MATRICES_AT_PEAK` such matrices plus the Adam state of the trainable raw features) and refuse,
naming the estimate and the limit, when it exceeds 60% of the memory available on the device (override:
environment variable ``CLEAR_LAB_MAX_DENSE_GB``).

Where CLEAR acts: under input placement the original graph (weight ``lambda`` = 0.9) is built from the projected
features, which are also the initial values of the trainable features behind the learned graph. Under latent
placement the hook sees ``z_m = Linear_m(x_m)`` (I x ``feat_embed_dim``), which feed *only* the learned graph
(weight ``1 - lambda`` = 0.1): it is refused when ``lambda_coeff`` = 1 or ``n_layers`` = 0, where that graph
does not reach the ranking.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clear_lab.graph import SparseOperator, cached_graph, knn_topk, lightgcn_mean, sparse_tensor
from clear_lab.models.base import Recommender, bpr_loss

# Dense I x I float32 matrices alive at once at the worst moment, the backward pass of the first batch of an epoch:
# the learned graph A (saved for backward, and shared with the detached copy kept for the epoch), the gradient of A
# from the product A (d * h), the gradient accumulated from the row sums, and the gradient of one similarity matrix
# z_m z_m^T scattered back by topk. The forward pass needs two (A and one similarity); we do not keep L, S or the
# per-modality kNN matrices. One more is added as a margin for allocator fragmentation.
DENSE_MATRICES_AT_PEAK = 5
MAX_DENSE_ENV = "CLEAR_LAB_MAX_DENSE_GB"
MEMORY_FRACTION = 0.6


class DenseGraphMemoryError(MemoryError, ValueError):
    """LATTICE's dense item graphs would not fit (a ValueError too, so the CLI reports it as a refusal)."""


def _available_bytes(device: torch.device) -> tuple[float, str]:
    """Memory a new allocation can use on ``device``, and where that number comes from."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free), f"free memory on {device}"
    try:
        import psutil

        return float(psutil.virtual_memory().available), "available CPU memory"
    except ImportError:  # psutil is optional: Linux exposes the same number
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024, "available CPU memory (MemAvailable)"
    raise RuntimeError("cannot tell how much memory is available; set " + MAX_DENSE_ENV)


def dense_memory_limit(device: torch.device) -> tuple[float, str]:
    """``(bytes, description)``: ``CLEAR_LAB_MAX_DENSE_GB`` if set, else 60% of the device's available memory."""
    env = os.environ.get(MAX_DENSE_ENV)
    if env:
        try:
            gb = float(env)
        except ValueError:
            raise ValueError(f"{MAX_DENSE_ENV} must be a number of GB, got {env!r}") from None
        return gb * 1e9, f"{MAX_DENSE_ENV}={env}"
    avail, what = _available_bytes(device)
    return MEMORY_FRACTION * avail, f"{MEMORY_FRACTION:.0%} of the {avail / 1e9:.1f} GB {what}"


def estimate_peak_bytes(n_items: int, feature_dims: list[int]) -> float:
    """Peak bytes of LATTICE's dense graphs plus the trainable raw features with their Adam state (4 copies)."""
    return 4.0 * (DENSE_MATRICES_AT_PEAK * n_items * n_items + 4 * n_items * sum(feature_dims))


def check_dense_memory(n_items: int, feature_dims: list[int], device: torch.device) -> float:
    """Raise :class:`DenseGraphMemoryError` when the estimated peak exceeds the limit; return the estimate."""
    need = estimate_peak_bytes(n_items, feature_dims)
    limit, what = dense_memory_limit(device)
    if need > limit:
        raise DenseGraphMemoryError(
            f"LATTICE builds dense n_items x n_items item graphs: with n_items = {n_items} its peak is about "
            f"{need / 1e9:.2f} GB ({DENSE_MATRICES_AT_PEAK} dense {n_items} x {n_items} float32 matrices plus the "
            f"trainable features), over the limit of {limit / 1e9:.2f} GB ({what}). Use a backbone with sparse item "
            f"graphs (e.g. freedom, lgmrec) or a device with more memory; {MAX_DENSE_ENV} overrides the limit.")
    return need


def weighted_knn_graph(features: torch.Tensor, k: int, cache_dir: str | Path | None = None,
                       chunk_size: int = 2048) -> torch.Tensor:
    """LATTICE's original graph, ``(n, n)`` sparse: each row keeps its ``k`` largest cosine similarities (self
    included) as weights, then ``value_ij = s_ij (r_i r_j)^-1/2`` with ``r`` the row sums.

    Computed in chunks of rows, so the ``n x n`` similarity never exists at once. A row sum <= 0 (a zero feature
    row, or only negative neighbours) gets inverse-sqrt degree 0 instead of MMRec's inf/NaN. With ``cache_dir`` the
    graph is stored as ``lattice_knn_<hash>.pt``, the hash covering the feature bytes and ``k``.
    """
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"knn_k must be in [1, n_items = {n}], got {k}")
    device = features.device

    def build() -> torch.Tensor:
        vals, cols = knn_topk(features.detach(), k, chunk_size)
        inv = _inv_sqrt(vals.sum(1))
        values = (vals * inv[:, None] * inv[cols]).reshape(-1)
        rows = torch.arange(n, device=device).repeat_interleave(k)
        return torch.sparse_coo_tensor(torch.stack([rows, cols.reshape(-1)]), values, (n, n), device=device,
                                       check_invariants=False).coalesce()

    return cached_graph(build, cache_dir, "lattice_knn", features, k)


def learned_knn_graph(encoded: list[torch.Tensor], weights: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, d)``: the dense mixed kNN graph ``A = sum_m w_m kNN_k(cos(z_m))`` (I x I) and ``d = rowsum(A)^-1/2``,
    so that ``L = diag(d) A diag(d)``. Differentiable in ``z_m`` (through the kept similarities) and in ``w``.

    The kept entries are added into one matrix in modality order (``0 + w_1 S_1 + w_2 S_2``, the same floats as
    MMRec's ``w_1 S_1 + w_2 S_2``), so the per-modality kNN matrices are never materialised.
    """
    n = encoded[0].shape[0]
    adj = encoded[0].new_zeros(n, n)
    for z, w in zip(encoded, weights):
        zn = F.normalize(z, dim=1)
        val, idx = torch.topk(zn @ zn.T, k, dim=1)  # the (n, n) similarity is freed here: topk saves indices only
        adj.scatter_add_(1, idx, w * val)
    return adj, _inv_sqrt(adj.sum(1))


def _inv_sqrt(deg: torch.Tensor) -> torch.Tensor:
    # clamp first so the unused branch of where() has no inf (whose gradient would poison the used one)
    return torch.where(deg > 0, deg.clamp_min(1e-12).pow(-0.5), torch.zeros_like(deg))


def random_walk_adjacency(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """LATTICE's CF graph ``D^-1 (A + I)`` over ``N = n_users + n_items`` nodes, sparse: value ``1/(deg_r + 1)``
    on each edge and on the diagonal of row ``r`` (item node j is index ``n_users + j``)."""
    n = n_users + n_items
    rows = np.concatenate([users, items + n_users, np.arange(n)])
    cols = np.concatenate([items + n_users, users, np.arange(n)])
    deg = np.bincount(rows, minlength=n).astype(np.float64)  # includes the self-loop, so >= 1
    return sparse_tensor(rows, cols, 1.0 / deg[rows], (n, n), device)


class LATTICE(Recommender):
    name = "lattice"
    uses_features = True
    latent_hook = ("z_m = Linear_m(x_m) (n_items x feat_embed_dim) on the trainable features; they feed only the "
                   "learned kNN item graph (weight 1 - lambda_coeff), rebuilt at each epoch's first batch and at eval")
    default_params = {"embedding_size": 64, "feat_embed_dim": 64, "knn_k": 10, "lambda_coeff": 0.9, "n_layers": 1,
                      "n_ui_layers": 2, "reg_weight": 1e-4, "learning_rate": 1e-3}
    lr_schedule: ClassVar[tuple[float, int]] = (0.96, 50)
    param_help = {"embedding_size": "ID embedding width", "feat_embed_dim": "width of the modality encoders",
                  "knn_k": "neighbours per item in the original and learned graphs",
                  "lambda_coeff": "weight of the original (raw-feature) graph; 1 - lambda goes to the learned one",
                  "n_layers": "item-graph hops", "n_ui_layers": "LightGCN layers (MMRec: len(weight_size))",
                  "reg_weight": "weight of 1/2 squared norms of the output rows / batch",
                  "learning_rate": "Adam learning rate"}
    deviations = (
        "The learned graph is rebuilt once per evaluation in begin_eval instead of in every evaluation batch of 4096 "
        "users (same parameters, so the same graph and scores).",
        "The original (raw-feature) kNN graphs are stored sparse (k entries per row) and S h is computed as "
        "(1 - lambda) d*(A (d*h)) + lambda sum_m w_m O_m h without materialising L or S: the same matrix, "
        "different float rounding, far less memory. The learned graph A stays dense as in MMRec.",
        "Before building the dense graphs the peak memory is estimated and LATTICE refuses (ValueError/MemoryError) "
        "above 60% of the device's available memory or CLEAR_LAB_MAX_DENSE_GB (MMRec just runs out of memory).",
        "Any number M >= 1 of modalities: softmax over M modal weights initialised equal (MMRec: two, [0.5, 0.5]).",
        "The original-graph cache is keyed by a hash of the features and k, not by k alone (MMRec reuses a stale "
        "image_adj_10.pt for projected features).",
        "A zero feature row gets cosine 0 to all items instead of NaN; a non-positive row sum gets inverse-sqrt "
        "degree 0 instead of inf/NaN.",
        "The regulariser divides by the batch's size instead of the configured train_batch_size (differs only on "
        "the last, partial batch).",
        "No hard-coded .cuda(): the graphs live on the model's device.",
    )

    @classmethod
    def check_latent(cls, params: dict | None) -> None:
        super().check_latent(params)
        p = cls.resolve_params(params)
        if p["lambda_coeff"] >= 1 or p["n_layers"] == 0:
            raise ValueError("latent placement on LATTICE acts only on the learned item graph, which lambda_coeff = 1 "
                             "or n_layers = 0 cuts off from the ranking; use lambda_coeff < 1 and n_layers >= 1 (or "
                             "--clear input)")

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        p = self.params
        if not 0 <= p["lambda_coeff"] <= 1:
            raise ValueError(f"LATTICE lambda_coeff must be in [0, 1], got {p['lambda_coeff']}")
        if not 1 <= p["knn_k"] <= self.n_items:
            raise ValueError(f"LATTICE knn_k must be in [1, n_items = {self.n_items}], got {p['knn_k']}")
        if p["n_layers"] < 0 or p["n_ui_layers"] < 0:
            raise ValueError("LATTICE n_layers and n_ui_layers must be >= 0")
        self.modality_names = list(data.modalities)
        feats = [torch.as_tensor(data.features[m], dtype=torch.float32, device=self.device)
                 for m in self.modality_names]
        self.memory_estimate = check_dense_memory(self.n_items, [x.shape[1] for x in feats], self.device)

        d = p["embedding_size"]
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_id_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        # MMRec: Embedding.from_pretrained(freeze=False), so Adam fine-tunes the raw features; Linear keeps torch's
        # default init (MMRec applies no xavier to LATTICE's encoders)
        self.feat_embeddings = nn.ParameterList([nn.Parameter(x.clone()) for x in feats])
        self.feat_trs = nn.ModuleList([nn.Linear(x.shape[1], p["feat_embed_dim"]) for x in feats])
        self.modal_weight = nn.Parameter(torch.full((len(feats),), 0.5))
        self.original_adj = [SparseOperator(weighted_knn_graph(x, p["knn_k"], cache_dir=self.cache_dir))
                             for x in feats]
        self.norm_adj = SparseOperator(random_walk_adjacency(data.train[:, 0], data.train[:, 1], self.n_users,
                                                             self.n_items, self.device))
        self._train_graph = None  # (A, d, w) detached, reused by the batches after an epoch's first one
        self._cache = None
        self.to(self.device)

    # -- forward ----------------------------------------------------------------------------------------------
    def encoded_modalities(self) -> dict[str, torch.Tensor]:
        return {name: trs(x) for name, x, trs in zip(self.modality_names, self.feat_embeddings, self.feat_trs)}

    def _hooked(self) -> list[torch.Tensor]:
        z = list(self.encoded_modalities().values())
        if len(z) == 2:
            z = list(self.modality_hook(z[0], z[1]))
        return z

    def build_item_graph(self, z: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A, d, w)`` from the current encoders: the dense learned graph, its inverse-sqrt degrees, the weights."""
        w = torch.softmax(self.modal_weight, dim=0)
        adj, d = learned_knn_graph(z, w, self.params["knn_k"])
        return adj, d, w

    def propagate(self, graph: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        adj, d, w = graph
        lam = self.params["lambda_coeff"]
        h = self.item_id_embedding
        for _ in range(self.params["n_layers"]):
            learned = d[:, None] * (adj @ (d[:, None] * h))
            original = sum(w[m] * (g @ h) for m, g in enumerate(self.original_adj))
            h = (1 - lam) * learned + lam * original
        out = lightgcn_mean(self.norm_adj, torch.cat([self.user_embedding, self.item_id_embedding]),
                            self.params["n_ui_layers"])
        return out[: self.n_users], out[self.n_users:] + F.normalize(h, dim=1)

    def _fresh(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(self.build_item_graph(self._hooked()))

    # -- what the trainer calls ---------------------------------------------------------------------------------
    def pre_epoch(self, rng: np.random.Generator) -> None:
        """Rebuild the learned graph (with gradients) at the next batch, as MMRec's ``build_item_graph`` flag."""
        self._train_graph = None

    def loss(self, users, pos, neg):
        z = self._hooked()  # every forward, as MMRec computes image_feats/text_feats; used only when rebuilding
        if self._train_graph is None:
            graph = self.build_item_graph(z)
            self._train_graph = tuple(t.detach() for t in graph)
        else:
            graph = self._train_graph
        u_all, i_all = self.propagate(graph)
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
        reg = 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / users.shape[0]
        return mf + self.params["reg_weight"] * reg

    def begin_eval(self):
        # drop the epoch's training graph first: the trainer's pre_epoch rebuilds it anyway, and two dense graphs
        # need not coexist
        self._train_graph = None
        self._cache = self._fresh()

    def end_eval(self):
        self._cache = None

    def scores(self, users):
        u_all, i_all = self._cache if self._cache is not None else self._fresh()
        return u_all[users] @ i_all.T

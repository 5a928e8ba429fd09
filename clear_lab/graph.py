"""Graphs the backbones propagate over: the normalised user-item graph and the item-item kNN graph from features.

* ``normalized_adjacency``: the symmetric bipartite graph of training interactions over ``N = n_users + n_items``
  nodes, ``A_hat = D^-1/2 A D^-1/2`` (LightGCN; MMRec adds 1e-7 to each degree so isolated nodes give no NaN).
* ``knn_graph``: FREEDOM's frozen item-item graph. Rows are L2-normalised, ``S = X X^T`` is cosine similarity, each
  item keeps its ``k`` most similar items (itself included, as in MMRec), edges are binary and normalised with the
  *row* degrees, ``value_ij = (d_i d_j)^-1/2``. Computed in chunks of rows so the ``n x n`` similarity never exists
  at once.
* ``lightgcn_mean`` / ``layer_sum``: LightGCN's propagation ``mean`` (or sum) of ``x, A x, ..., A^L x``, shared by
  the backbones that propagate on the user-item graph.
* ``degree_sensitive_keep``: FREEDOM's edge dropout, which keeps a fraction of user-item edges sampled without
  replacement with probability proportional to ``1/sqrt(d_u d_i)``.

Graphs built from features follow the features: under CLEAR's input placement the kNN graph is built from the
projected features, and the optional on-disk cache (``cached_graph``) is keyed by a hash of the feature bytes
(MMRec keys its cache by ``k`` alone, so a projected run silently reuses the raw graph there).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def sparse_tensor(rows: np.ndarray | torch.Tensor, cols: np.ndarray | torch.Tensor, values: np.ndarray | torch.Tensor,
                  shape: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """A coalesced float32 sparse COO tensor (``torch.sparse.mm`` and autograd both accept it on CPU and CUDA)."""
    idx = torch.stack([torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)])
    val = torch.as_tensor(values, dtype=torch.float32)
    return torch.sparse_coo_tensor(idx, val, shape, device=device, check_invariants=False).coalesce()


class _SpMM(torch.autograd.Function):
    """``y = A x`` with ``dL/dx = A^T dL/dy``, both products in CSR. torch's own backward of a sparse product
    rebuilds the transpose every call, which made it ~5x slower than the forward on CPU."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
        ctx.a_t = a_t
        return a @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.a_t @ grad, None, None


class SparseOperator:
    """A fixed sparse ``(n, m)`` matrix used as ``A @ X`` inside autograd: CSR for the product and a CSR copy of
    the transpose for the backward pass. Graphs are constants, so no gradient flows to ``A`` itself."""

    def __init__(self, coo: torch.Tensor):
        coo = coo.coalesce()
        self.shape = tuple(coo.shape)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are stable
            warnings.simplefilter("ignore", UserWarning)
            self.csr = coo.to_sparse_csr()
            self.csr_t = coo.t().coalesce().to_sparse_csr()

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            return _SpMM.apply(x, self.csr, self.csr_t)
        return self.csr @ x

    def to(self, device: torch.device | str) -> SparseOperator:
        out = object.__new__(SparseOperator)
        out.shape, out.csr, out.csr_t = self.shape, self.csr.to(device), self.csr_t.to(device)
        return out

    def to_dense(self) -> torch.Tensor:
        return self.csr.to_dense()

    def nnz(self) -> int:
        return int(self.csr.values().numel())


def sym_norm_values(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """``(d_r d_c)^-1/2`` per edge of a binary bipartite edge list, degrees counted on that edge list (+1e-7)."""
    d_r = np.bincount(rows, minlength=n_rows).astype(np.float64) + 1e-7
    d_c = np.bincount(cols, minlength=n_cols).astype(np.float64) + 1e-7
    return (d_r[rows] ** -0.5) * (d_c[cols] ** -0.5)


def normalized_adjacency(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """``(N, N)`` sparse ``D^-1/2 A D^-1/2`` of the bipartite graph; item node j is index ``n_users + j``.

    ``users``/``items`` are the training pairs (duplicates must already be removed).
    """
    vals = sym_norm_values(users, items, n_users, n_items)
    rows = np.concatenate([users, items + n_users])
    cols = np.concatenate([items + n_users, users])
    n = n_users + n_items
    return sparse_tensor(rows, cols, np.concatenate([vals, vals]), (n, n), device)


def layer_sum(adj: SparseOperator | torch.Tensor, x: torch.Tensor, n_layers: int) -> torch.Tensor:
    """``x + A x + ... + A^L x`` (``L = n_layers``): the sum of a LightGCN-style propagation's layers, each layer
    ``A`` times the previous one, added in layer order. ``n_layers = 0`` gives ``x``."""
    acc = x
    for _ in range(n_layers):
        x = adj @ x
        acc = acc + x
    return acc


def lightgcn_mean(adj: SparseOperator | torch.Tensor, x: torch.Tensor, n_layers: int) -> torch.Tensor:
    """``mean(x, A x, ..., A^L x)``: LightGCN's layer-mean propagation, :func:`layer_sum` divided by ``L + 1``.

    Used on the normalised user-item graph by LightGCN, BM3, FREEDOM, LATTICE, LGMRec, SLMRec, MGCN and SMORE
    (``x`` the stacked ``[users ; items]`` rows, or several column blocks at once: columns propagate independently).
    """
    return layer_sum(adj, x, n_layers) / (n_layers + 1)


def features_key(features: torch.Tensor | np.ndarray, *extra: object) -> str:
    """Short sha256 of a feature matrix's bytes plus any settings, for graph caches."""
    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    h = hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(repr((x.shape, *extra)).encode())
    return h.hexdigest()[:16]


def knn_indices(features: torch.Tensor, k: int, chunk_size: int = 2048) -> torch.Tensor:
    """``(n, k)`` indices of each row's ``k`` nearest rows by cosine similarity (self included): the indices of
    :func:`knn_topk`.

    Zero rows have no direction: they get a similarity of 0 to everything instead of MMRec's NaN.
    """
    return knn_topk(features, k, chunk_size)[1]


def cached_graph(build: Callable[[], torch.Tensor], cache_dir: str | Path | None, prefix: str,
                 features: torch.Tensor, *key: object) -> torch.Tensor:
    """``build()``, the graph that ``features`` (and the settings ``key``) give, with an optional on-disk cache.

    With ``cache_dir`` None nothing is read or written. Otherwise the graph lives in
    ``cache_dir/<prefix>_<features_key(features, *key)>.pt``: loaded onto ``features.device`` when that file exists,
    else built and saved there (on the CPU).
    """
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{prefix}_{features_key(features, *key)}.pt"
        if path.is_file():
            return torch.load(path, map_location=features.device)
    graph = build()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(graph.cpu(), path)
    return graph


def knn_graph(features: torch.Tensor, k: int, cache_dir: str | Path | None = None) -> torch.Tensor:
    """FREEDOM's binary cosine kNN item graph, ``(n, n)`` sparse, values ``(d_i d_j)^-1/2`` with row degrees.

    With ``cache_dir`` the graph is stored as ``knn_<hash>.pt``, the hash covering the feature bytes and ``k``.
    """
    n = features.shape[0]
    device = features.device

    def build() -> torch.Tensor:
        nbr = knn_indices(features, k)
        rows = torch.arange(n, device=device).repeat_interleave(k)
        cols = nbr.reshape(-1)
        # degree = number of stored entries in each row (k for every row, but computed for clarity and safety)
        deg = torch.bincount(rows, minlength=n).float() + 1e-7
        inv = deg.pow(-0.5)
        vals = inv[rows] * inv[cols]
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n), device=device,
                                       check_invariants=False).coalesce()

    return cached_graph(build, cache_dir, "knn", features, k)


def degree_sensitive_keep(weights: np.ndarray, n_keep: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n_keep`` edges drawn without replacement with probability proportional to ``weights``.

    Efraimidis-Spirakis keys ``u^(1/w)`` (here ``log(u)/w``): taking the largest ``n_keep`` keys is a draw from the
    same distribution as successive weighted draws without replacement (what ``torch.multinomial`` does), in one
    vectorised pass.
    """
    keys = np.log(rng.random(weights.size)) / weights
    keep = np.argpartition(-keys, n_keep - 1)[:n_keep]
    return np.sort(keep)


# -- similarity-weighted graphs (MGCN, SMORE) --------------------------------------------------------------------
def knn_topk(features: torch.Tensor, k: int, chunk_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)``, each ``(n, k)``: every row's ``k`` largest cosine similarities (self included) and
    whose they are. Same neighbours as :func:`knn_indices`; zero rows have similarity 0 to everything."""
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"knn_k must be in [1, n_items = {n}], got {k}")
    x = torch.nn.functional.normalize(features.float(), dim=1)
    vals = torch.empty((n, k), dtype=torch.float32, device=features.device)
    idx = torch.empty((n, k), dtype=torch.long, device=features.device)
    for start in range(0, n, chunk_size):
        top = torch.topk(x[start:start + chunk_size] @ x.T, k, dim=1)  # the (chunk, n) similarity, one chunk at a time
        vals[start:start + chunk_size], idx[start:start + chunk_size] = top.values, top.indices
    return vals, idx


def weighted_knn_graph(features: torch.Tensor, k: int, cache_dir: str | Path | None = None) -> torch.Tensor:
    """MGCN's / SMORE's item graph: ``(n, n)`` sparse ``D^-1/2 S D^-1/2`` of the similarity-weighted kNN graph.

    ``S_ij = cos(x_i, x_j)`` when j is among i's ``k`` most similar items (itself included), else 0, so ``S`` is not
    symmetric; ``D = diag(S 1)`` holds the *row* sums of the kept similarities (MMRec's ``get_sparse_laplacian``
    scatters the weights by row), and ``value_ij = d_i^-1/2 S_ij d_j^-1/2``. A row whose degree is not positive
    (a zero feature row, or neighbours so dissimilar that they cancel itself) gets ``d^-1/2 = 0`` where MMRec would
    give inf/NaN. With ``cache_dir`` the graph is stored as ``wknn_<hash>.pt``, the hash covering features and ``k``.
    """
    n = features.shape[0]
    device = features.device

    def build() -> torch.Tensor:
        vals, nbr = knn_topk(features, k)
        rows = torch.arange(n, device=device).repeat_interleave(k)
        cols = nbr.reshape(-1)
        w = vals.reshape(-1)
        deg = torch.zeros(n, dtype=torch.float32, device=device).index_add_(0, rows, w)
        inv = torch.where(deg > 0, deg.clamp_min(1e-30).pow(-0.5), torch.zeros_like(deg))
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), inv[rows] * w * inv[cols], (n, n), device=device,
                                       check_invariants=False).coalesce()

    return cached_graph(build, cache_dir, "wknn", features, k, "weighted")


def normalized_interactions(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                            device: torch.device | str = "cpu") -> torch.Tensor:
    """``R_hat``: the ``(n_users, n_items)`` user-item block of :func:`normalized_adjacency`, values
    ``(d_u d_i)^-1/2``. MGCN and SMORE map item-side views to users with it (``users = R_hat @ items``)."""
    return sparse_tensor(users, items, sym_norm_values(users, items, n_users, n_items), (n_users, n_items), device)


def max_fusion_graph(*graphs: torch.Tensor) -> torch.Tensor:
    """SMORE's fusion graph: the union of the graphs' edges, each edge taking the largest value it has in any graph
    that contains it (an edge absent from a graph does not count there as 0). All graphs share one shape."""
    shape = graphs[0].shape
    if any(g.shape != shape for g in graphs):
        raise ValueError(f"max_fusion_graph needs graphs of one shape, got {[tuple(g.shape) for g in graphs]}")
    gs = [g.coalesce() for g in graphs]
    idx = torch.cat([g.indices() for g in gs], dim=1)
    val = torch.cat([g.values() for g in gs])
    keys, inverse = torch.unique(idx[0] * shape[1] + idx[1], return_inverse=True)
    fused = torch.full((keys.numel(),), float("-inf"), dtype=val.dtype, device=val.device)
    fused = fused.scatter_reduce(0, inverse, val, reduce="amax", include_self=False)
    out_idx = torch.stack([keys // shape[1], keys % shape[1]])
    return torch.sparse_coo_tensor(out_idx, fused, shape, device=val.device, check_invariants=False).coalesce()

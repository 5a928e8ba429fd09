"""Message passing over an explicit edge index, without torch_geometric: the pieces MMGCN and GRCN need.

An edge index is a ``(2, E)`` LongTensor of directed edges ``j -> i``: row 0 holds the *source* ``j``, row 1 the
*target* ``i``. This is PyG's ``flow="source_to_target"`` (its default, the one MMRec's MMGCN and GRCN use): a
message ``m_e`` computed from ``x_j`` is aggregated at ``i``, so a node that is no edge's target receives nothing.

* :func:`bipartite_edges` / :func:`both_directions`: the user-item training graph over the ``N = n_users + n_items``
  nodes (item ``k`` is node ``n_users + k``). MMRec's ``pack_edge_index`` gives the user -> item direction only;
  ``cat(E, E[[1, 0]])`` adds the reverse edges (MMGCN always; GRCN for its final pass and its ID graph).
* :func:`scatter_sum`, :func:`scatter_mean`: ``out[i] = sum`` (or mean) of the rows of ``src`` whose ``index`` is
  ``i``; a target with no rows gets 0 (PyG's ``aggr="add"`` / ``aggr="mean"``, which divides by ``max(count, 1)``).
* :func:`mean_aggregate`: ``out_i = mean_{j -> i} x_j`` (MMGCN's conv after its linear map; PyG adds no self loops
  there, and MMRec's ``BaseModel`` adds none either).
* :func:`mean_operator`: the same mean as a fixed sparse ``(n, n)`` matrix ``M = D_in^-1 A`` (``A[i, j]`` = number of
  edges ``j -> i``), for a graph that does not change between forward passes: ``M @ x`` equals
  ``mean_aggregate(x, edge_index)`` and, as a CSR product, is several times faster on CPU than gathering one row
  per edge and scattering it back (MMGCN's hot path).
* :func:`weighted_sum_aggregate`: ``out_i = sum_{e = j -> i} w_e x_j`` (GRCN's ID graph, ``aggr="add"``).
* :func:`scatter_softmax`: ``alpha_e = exp(s_e - max_g s) / (sum_{e' in g} exp(s_e' - max_g s) + 1e-16)`` over the
  edges ``g`` sharing a target (``torch_geometric.utils.softmax``, the 1e-16 included).
* :func:`dot_attention_aggregate`: GRCN's GAT, ``s_e = x_i . x_j``, ``alpha = softmax`` over each target's edges,
  ``out_i = sum_{e = j -> i} alpha_e x_j``.
* :func:`remove_self_loops`: drops edges ``i -> i`` (MMRec's GATConv does; the bipartite graph has none).

Everything is vectorised (``index_add`` / ``scatter_reduce``), differentiable in ``x`` and the edge weights, and runs
on whatever device its inputs live on. On CUDA ``index_add`` of floats uses atomics, so sums may differ in the last
bits from run to run; on CPU they are deterministic.
"""

from __future__ import annotations

import numpy as np
import torch

from clear_lab.graph import SparseOperator


def bipartite_edges(users: np.ndarray | torch.Tensor, items: np.ndarray | torch.Tensor, n_users: int,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """``(2, E)`` user -> item edges of the training pairs: sources ``users``, targets ``n_users + items``."""
    u = torch.as_tensor(users, dtype=torch.long, device=device)
    i = torch.as_tensor(items, dtype=torch.long, device=device) + n_users
    return torch.stack([u, i])


def both_directions(edge_index: torch.Tensor) -> torch.Tensor:
    """``(2, 2E)``: the edges followed by their reverses (``cat(E, E[[1, 0]])``); column ``E + e`` reverses ``e``."""
    return torch.cat([edge_index, edge_index.flip(0)], dim=1)


def remove_self_loops(edge_index: torch.Tensor) -> torch.Tensor:
    """The edges whose source differs from their target."""
    return edge_index[:, edge_index[0] != edge_index[1]]


def scatter_sum(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """``out[i] = sum_{e: index[e] = i} src[e]``, shape ``(n, *src.shape[1:])``; rows nobody points to are 0."""
    out = torch.zeros((n, *src.shape[1:]), dtype=src.dtype, device=src.device)
    return out.index_add(0, index, src)  # out-of-place: autograd sees a fresh tensor


def scatter_mean(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """``out[i] = mean_{e: index[e] = i} src[e]``; 0 where no row maps to ``i`` (count clamped to 1, as PyG)."""
    count = torch.bincount(index, minlength=n).clamp_min(1).to(src.dtype)
    return scatter_sum(src, index, n) / count.view(-1, *([1] * (src.dim() - 1)))


def mean_aggregate(x: torch.Tensor, edge_index: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """``out_i = mean_{j -> i} x_j`` for ``x`` of shape ``(n, d)`` (``n`` defaults to ``x.shape[0]``)."""
    n = x.shape[0] if n is None else n
    return scatter_mean(x[edge_index[0]], edge_index[1], n)


def mean_operator(edge_index: torch.Tensor, n: int) -> SparseOperator:
    """``M`` with ``M @ x == mean_aggregate(x, edge_index, n)``: ``M[i, j] = #(j -> i) / max(#(-> i), 1)``, on the
    edge index's device. Repeated edges count with their multiplicity, as in the gather-scatter mean."""
    src, dst = edge_index[0], edge_index[1]
    count = torch.bincount(dst, minlength=n).clamp_min(1).to(torch.float32)
    coo = torch.sparse_coo_tensor(torch.stack([dst, src]), 1.0 / count[dst], (n, n), device=edge_index.device,
                                  check_invariants=False)
    return SparseOperator(coo.coalesce())  # coalesce sums the entries of repeated edges


def weighted_sum_aggregate(x: torch.Tensor, edge_index: torch.Tensor, weight: torch.Tensor,
                           n: int | None = None) -> torch.Tensor:
    """``out_i = sum_{e = j -> i} w_e x_j``; ``weight`` has one value per edge, shape ``(E,)`` or ``(E, 1)``."""
    n = x.shape[0] if n is None else n
    return scatter_sum(x[edge_index[0]] * weight.reshape(-1, 1), edge_index[1], n)


def scatter_softmax(scores: torch.Tensor, index: torch.Tensor, n: int, eps: float = 1e-16) -> torch.Tensor:
    """Softmax of ``scores`` (shape ``(E,)``) within each group of equal ``index`` (``n`` groups).

    The group maximum is subtracted first for stability; it is taken from detached scores, which changes nothing
    mathematically (softmax is shift-invariant) and keeps the gradient off the argmax.
    """
    group_max = torch.full((n,), float("-inf"), dtype=scores.dtype, device=scores.device)
    group_max = group_max.scatter_reduce(0, index, scores.detach(), reduce="amax", include_self=False)
    e = torch.exp(scores - group_max[index])
    return e / (scatter_sum(e, index, n)[index] + eps)


def dot_attention_aggregate(x: torch.Tensor, edge_index: torch.Tensor,
                            n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GRCN's parameter-free GAT: ``(out (n, d), alpha (E,))`` with ``alpha_e = softmax_{e -> i}(x_i . x_j)`` and
    ``out_i = sum_{e = j -> i} alpha_e x_j``. Self loops are neither added nor removed here."""
    n = x.shape[0] if n is None else n
    src, dst = edge_index[0], edge_index[1]
    x_j = x[src]
    alpha = scatter_softmax((x[dst] * x_j).sum(-1), dst, n)
    return scatter_sum(x_j * alpha.unsqueeze(-1), dst, n), alpha

"""The user-user co-interaction graph of DualGNN and DRAGON, and their per-epoch neighbour sampling.

**Graph** (MMRec: ``preprocessing/dualgnn-gen-u-u-matrix.py``, which writes ``user_graph_dict.npy``). With ``R`` the
binary ``(U, I)`` matrix of *training* interactions, ``C = R R^T`` counts the items two users share; the diagonal is
dropped. Each user keeps its co-interacting users sorted by count, largest first, at most ``max_neighbours`` (200, as
MMRec). MMRec fills a dense ``U x U`` float tensor with an O(U^2) loop of set intersections (Baby: 1.5 GB, hours);
here ``C`` is a sparse product computed a block of rows at a time, so memory is O(nnz(C)) and no ``U x U`` array
exists. Ties in the count are ordered by the lower user id first (MMRec's ``torch.topk`` leaves their order
unspecified).

**Sampling** (MMRec: ``topk_sample`` in ``dualgnn.py``/``dragon.py``, called before every epoch). Each user gets
exactly ``k`` (40) neighbour slots and weights ``softmax`` of the slots' counts:

* ``n >= k`` neighbours: the first ``k`` (the ``k`` largest counts); no randomness.
* ``1 <= n < k``: the ``n`` neighbours, then slots ``n .. k-1`` filled one at a time, each copying a uniformly drawn
  slot among those already filled (a Polya urn: repeats can be repeated). The softmax runs over all ``k`` slots, so a
  neighbour drawn twice counts twice.
* ``n = 0``: all slots point at user 0 with weight 0, so the aggregate is 0.

The aggregate ``h_u = sum_s w_us e_{j_us}`` is a sparse ``(U, U)`` product (:func:`neighbour_operator`, duplicate
slots summed), the same as MMRec's gather ``e[index]`` (``U x k x d``) and batched matmul, without the gather.

:func:`save_mmrec_user_graph` writes our graph as MMRec's ``user_graph_dict.npy`` (``{user: [ids, counts]}`` for every
user, counts as floats) so MMRec can be run on exactly our graph; :func:`load_mmrec_user_graph` reads one back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from clear_lab.graph import SparseOperator, sparse_tensor


@dataclass(frozen=True)
class UserGraph:
    """Neighbour lists in CSR layout: user ``u``'s neighbours are ``neighbours[indptr[u]:indptr[u + 1]]``, ordered
    by ``counts`` (shared training items) from largest to smallest."""

    indptr: np.ndarray  # (n_users + 1,) int64
    neighbours: np.ndarray  # (nnz,) int64
    counts: np.ndarray  # (nnz,) int64

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    def row(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.indptr[user], self.indptr[user + 1]
        return self.neighbours[a:b], self.counts[a:b]

    def equals(self, other: UserGraph) -> bool:
        return all(np.array_equal(x, y) for x, y in ((self.indptr, other.indptr), (self.neighbours, other.neighbours),
                                                     (self.counts, other.counts)))


def _ranks(rows: np.ndarray) -> np.ndarray:
    """Position of each entry within its run of equal (sorted) ``rows``: 0, 1, 2, ... per row."""
    if rows.size == 0:
        return rows.copy()
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    run_len = np.diff(np.r_[starts, rows.size])
    return np.arange(rows.size) - np.repeat(starts, run_len)


def co_interaction_graph(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                         max_neighbours: int = 200, chunk_size: int = 4096) -> UserGraph:
    """The co-interaction graph of the (training) pairs ``users[e], items[e]``; duplicate pairs count once.

    ``C[a:b] = R[a:b] R^T`` is formed ``chunk_size`` rows at a time and each block is reduced to its top
    ``max_neighbours`` per row at once, so peak memory is one block of ``C`` plus the kept lists.
    """
    if max_neighbours < 1:
        raise ValueError(f"max_neighbours must be >= 1, got {max_neighbours}")
    r = sp.csr_matrix((np.ones(len(users), dtype=np.int32), (np.asarray(users), np.asarray(items))),
                      shape=(n_users, n_items))
    r.sum_duplicates()
    r.data[:] = 1  # a set of items per user, as MMRec's edge_dict
    rt = r.T.tocsr()
    parts_rows, parts_cols, parts_cnt = [], [], []
    for start in range(0, n_users, chunk_size):
        block = (r[start:start + chunk_size] @ rt).tocoo()  # (chunk, U) shared-item counts
        rows = block.row.astype(np.int64) + start
        cols = block.col.astype(np.int64)
        cnt = block.data.astype(np.int64)
        off = rows != cols  # MMRec only fills pairs of distinct users
        rows, cols, cnt = rows[off], cols[off], cnt[off]
        order = np.lexsort((cols, -cnt, rows))  # by user, then count descending, then neighbour id ascending
        rows, cols, cnt = rows[order], cols[order], cnt[order]
        keep = _ranks(rows) < max_neighbours
        parts_rows.append(rows[keep])
        parts_cols.append(cols[keep])
        parts_cnt.append(cnt[keep])
    rows = np.concatenate(parts_rows) if parts_rows else np.zeros(0, np.int64)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
    return UserGraph(indptr, np.concatenate(parts_cols) if parts_cols else rows.copy(),
                     np.concatenate(parts_cnt) if parts_cnt else rows.copy())


def sample_neighbours(graph: UserGraph, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """MMRec's ``topk_sample``: ``(U, k)`` neighbour ids and ``(U, k)`` float32 weights (see the module docstring).

    Vectorised over users: slot ``p`` of every user with ``1 <= n <= p`` neighbours is filled in one step, so the
    loop runs over the ``k - 1`` slots, not over users. (MMRec draws user by user; the distribution is the same.)
    """
    if k < 1:
        raise ValueError(f"the number of user neighbours k must be >= 1, got {k}")
    n_users = graph.n_users
    deg = graph.degree()
    index = np.zeros((n_users, k), dtype=np.int64)
    counts = np.zeros((n_users, k), dtype=np.float64)
    rows = np.repeat(np.arange(n_users), deg)
    slot = np.arange(len(rows)) - np.repeat(graph.indptr[:-1], deg)
    first = slot < k  # the first min(n, k) neighbours, in count order
    index[rows[first], slot[first]] = graph.neighbours[first]
    counts[rows[first], slot[first]] = graph.counts[first]

    short = np.flatnonzero((deg >= 1) & (deg < k))
    short = short[np.argsort(deg[short], kind="stable")]
    short_deg = deg[short]
    for p in range(1, k):
        todo = short[: np.searchsorted(short_deg, p, side="right")]  # users whose slot p is a padding slot
        if todo.size == 0:
            continue
        src = rng.integers(0, p, size=todo.size)  # uniform over the slots filled so far, repeats included
        index[todo, p] = index[todo, src]
        counts[todo, p] = counts[todo, src]

    weights = np.exp(counts - counts.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    weights[deg == 0] = 0.0  # MMRec leaves these rows at zero (and their ids at user 0)
    return index, weights.astype(np.float32)


def neighbour_operator(index: np.ndarray, weights: np.ndarray, device: torch.device | str = "cpu") -> SparseOperator:
    """``(U, U)`` sparse ``W`` with ``W @ E = sum_s weights[:, s, None] * E[index[:, s]]`` (repeated slots summed)."""
    n_users, k = index.shape
    rows = np.repeat(np.arange(n_users), k)
    vals = weights.reshape(-1)
    nz = vals > 0
    return SparseOperator(sparse_tensor(rows[nz], index.reshape(-1)[nz], vals[nz], (n_users, n_users), device))


def to_mmrec_dict(graph: UserGraph) -> dict[int, list[list]]:
    """MMRec's ``user_graph_dict``: ``{u: [[neighbour ids (int)], [counts (float)]]}`` for every user."""
    return {u: [graph.neighbours[a:b].tolist(), graph.counts[a:b].astype(np.float64).tolist()]
            for u, (a, b) in enumerate(zip(graph.indptr[:-1], graph.indptr[1:]))}


def from_mmrec_dict(user_graph_dict: dict, n_users: int | None = None) -> UserGraph:
    """Our graph from MMRec's dict, keeping its neighbour order (so MMRec's own file reproduces its ties)."""
    n = n_users if n_users is not None else (max(user_graph_dict) + 1 if user_graph_dict else 0)
    ids, cnts = [], []
    for u in range(n):
        nb, ct = user_graph_dict.get(u, ([], []))
        if len(nb) != len(ct):
            raise ValueError(f"user_graph_dict[{u}] has {len(nb)} neighbours but {len(ct)} counts")
        ids.append(np.asarray(nb, dtype=np.int64))
        cnts.append(np.asarray(ct, dtype=np.float64))
    counts = np.concatenate(cnts) if cnts else np.zeros(0)
    if not np.all(counts == np.round(counts)):
        raise ValueError("user_graph_dict counts must be whole numbers (shared-item counts)")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(x) for x in ids], out=indptr[1:])
    return UserGraph(indptr, np.concatenate(ids) if ids else np.zeros(0, np.int64), counts.astype(np.int64))


def save_mmrec_user_graph(graph: UserGraph, path: str | Path) -> Path:
    """Write ``graph`` as MMRec's ``user_graph_dict.npy`` (a pickled dict, read with ``np.load(...).item()``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, to_mmrec_dict(graph), allow_pickle=True)
    return path if path.suffix == ".npy" else Path(f"{path}.npy")  # np.save appends the suffix


def load_mmrec_user_graph(path: str | Path, n_users: int | None = None) -> UserGraph:
    return from_mmrec_dict(np.load(path, allow_pickle=True).item(), n_users)

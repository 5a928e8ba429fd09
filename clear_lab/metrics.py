"""Full-ranking top-k evaluation, following the MMRec protocol (enoche/MMRec).

MMRec (``src/common/trainer.py`` + ``src/utils/topk_evaluator.py`` + ``src/utils/metrics.py``):

1. every user with at least one item in the evaluated split is evaluated;
2. the model scores ALL items for that user (full ranking, no negative sampling);
3. the user's training items are masked out, then ``torch.topk`` takes the top ``max(ks)`` items;
4. the top-k list is compared with the user's truth set, giving a 0/1 hit matrix ``rel``;
5. each metric is computed per user and averaged over the evaluated users.

With ``rel_i`` the hit at rank ``i`` (1-based), ``h(k) = sum_{i<=k} rel_i`` and ``T`` the user's truth set:

    Recall@k    = h(k) / |T|                                   (full |T|, not min(k, |T|))
    Precision@k = h(k) / k
    NDCG@k      = [sum_{i<=k} rel_i / log2(i+1)] / [sum_{i<=min(k,|T|)} 1 / log2(i+1)]
    MAP@k       = (1 / min(k, |T|)) * sum_{i<=k} Precision@i * rel_i

Differences from MMRec, all deliberate and none of which changes a number in practice:

* MMRec rounds the means to 4 decimals; we keep full float64 precision (and the per-user values,
  for paired significance tests, see ``clear_lab.stats``).
* MMRec writes -1e10 into masked scores; we write -inf, so a masked item can never outrank a finite
  score. Both only matter if a user has fewer than ``max(ks)`` unmasked items.
* Ties: like MMRec we rank with ``torch.topk``, whose order among equal scores is an implementation
  detail of torch (it can differ between CPU and CUDA). Neither protocol breaks ties explicitly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)
METRICS: tuple[str, ...] = ("recall", "ndcg", "precision", "map")  # MMRec's default order

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Sorted, de-duplicated cut-offs; each must be a positive integer."""
    out = set()
    for k in ks:
        if int(k) != k or k < 1:
            raise ValueError(f"cut-offs must be positive integers, got {k!r} in ks={tuple(ks)!r}")
        out.add(int(k))
    if not out:
        raise ValueError("ks must not be empty")
    return tuple(sorted(out))


# -----------------------------------------------------------------------------
# metrics from a hit matrix (pure function)


def ranking_metrics(
    hits: np.ndarray | torch.Tensor,
    n_relevant: np.ndarray | torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, np.ndarray]:
    """Per-user Recall / NDCG / Precision / MAP at each cut-off in ``ks``.

    Args:
        hits: (U, K) boolean; ``hits[u, i]`` is True if the item at rank ``i + 1`` of user ``u``'s
            ranking is in the user's truth set. Needs ``K >= max(ks)``.
        n_relevant: (U,) int, ``|T_u|`` (>= 1), the size of each user's truth set.
        ks: cut-offs.

    Returns:
        ``{"recall@k", "ndcg@k", "precision@k", "map@k"}`` -> (U,) float64 arrays (formulas in the
        module docstring), keys ordered metric-major like MMRec's log lines.
    """
    if isinstance(hits, torch.Tensor):
        hits = hits.detach().cpu().numpy()
    if isinstance(n_relevant, torch.Tensor):
        n_relevant = n_relevant.detach().cpu().numpy()
    hits = np.asarray(hits)
    n_rel = np.asarray(n_relevant)
    ks = _check_ks(ks)
    k_max = ks[-1]

    if hits.ndim != 2:
        raise ValueError(f"hits must be 2-D (users, ranks), got shape {hits.shape}")
    if hits.dtype != np.bool_:
        if hits.size and not np.isin(hits, (0, 1)).all():
            raise ValueError("hits must be boolean (or 0/1)")
        hits = hits.astype(bool)
    if hits.shape[1] < k_max:
        raise ValueError(f"hits has {hits.shape[1]} ranks but max(ks) = {k_max}")
    if n_rel.shape != (hits.shape[0],):
        raise ValueError(f"n_relevant must have shape ({hits.shape[0]},), got {n_rel.shape}")
    if n_rel.size and (not np.issubdtype(n_rel.dtype, np.integer) or n_rel.min() < 1):
        raise ValueError("n_relevant must hold integers >= 1 (users with no truth are not evaluated)")

    rel = hits[:, :k_max].astype(np.float64)  # (U, K)
    if rel.size and (rel.sum(axis=1) > n_rel).any():
        raise ValueError("a user has more hits than relevant items; hits and n_relevant disagree")

    ranks = np.arange(1, k_max + 1, dtype=np.float64)  # i = 1..K
    discount = 1.0 / np.log2(ranks + 1.0)  # 1 / log2(i + 1)
    h = np.cumsum(rel, axis=1)  # h(i): hits in the top i
    dcg = np.cumsum(rel * discount, axis=1)  # DCG@i
    ap_sum = np.cumsum(h / ranks * rel, axis=1)  # sum_{j<=i} Precision@j * rel_j
    ideal = np.cumsum(discount)  # ideal[j-1] = DCG of j hits at the top = IDCG when min(k,|T|) = j

    out: dict[str, np.ndarray] = {}
    for metric in METRICS:
        for k in ks:
            hk = h[:, k - 1]
            cut = np.minimum(n_rel, k)  # at most min(k, |T|) relevant items fit in the top k
            if metric == "recall":
                v = hk / n_rel
            elif metric == "precision":
                v = hk / k
            elif metric == "ndcg":
                v = dcg[:, k - 1] / ideal[cut - 1]
            else:  # map
                v = ap_sum[:, k - 1] / cut
            out[f"{metric}@{k}"] = v.astype(np.float64, copy=False)
    return out


# -----------------------------------------------------------------------------
# full-ranking evaluation


@dataclass
class EvalResult:
    """Means over evaluated users, per-user values (aligned with ``users``) and wall time."""

    mean: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray  # (U,) int64 ids of the evaluated users, ascending
    seconds: float  # wall time of the whole evaluate() call, score_fn included

    @property
    def n_users(self) -> int:
        return int(len(self.users))

    def to_dict(self) -> dict[str, float]:
        """JSON-friendly: ``{"recall@20": 0.0871..., ...}`` (means only, plain floats)."""
        return {k: float(v) for k, v in self.mean.items()}

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in self.mean.items() if k.endswith("@20")) or "..."
        return f"EvalResult({shown}, n_users={self.n_users}, seconds={self.seconds:.2f})"


def _as_csr(m: sp.spmatrix | sp.sparray, name: str) -> sp.csr_matrix:
    """Canonical CSR copy: stored zeros dropped (a stored 0 is not an interaction), duplicates
    summed and column indices sorted within each row (the searchsorted hit lookup needs this)."""
    if not sp.issparse(m):
        raise TypeError(f"{name} must be a scipy.sparse matrix, got {type(m).__name__}")
    m = sp.csr_matrix(m, copy=True)
    m.eliminate_zeros()
    m.sum_duplicates()  # also sorts indices
    return m


def _batch_coo(
    indptr: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(local row, col) index tensors of the CSR rows ``rows``, without a Python loop over users.

    Entry ``j`` of the output belongs to local row ``r = local[j]`` and sits at offset
    ``j - first[r]`` inside that row, i.e. at ``indptr[rows[r]] + j - first[r]`` in ``indices``.
    """
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    local = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
    first = torch.cumsum(counts, 0) - counts  # position of each row's first entry in the output
    pos = starts[local] + torch.arange(len(local), device=rows.device) - first[local]
    return local, indices[pos]


@torch.no_grad()
def evaluate(
    score_fn: ScoreFn,
    train_csr: sp.spmatrix,
    truth_csr: sp.spmatrix,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    extra_mask: sp.spmatrix | None = None,
) -> EvalResult:
    """Full-ranking evaluation of ``score_fn`` against ``truth_csr``, MMRec protocol.

    Args:
        score_fn: ``score_fn(users) -> (B, n_items)`` float scores, higher = better; ``users`` is a
            LongTensor on ``device``. The returned tensor is masked IN PLACE (it is cloned first if it
            is a view of another tensor, e.g. a slice of a precomputed score matrix, or requires grad).
        train_csr: (n_users, n_items) training interactions; these items are masked for each user.
        truth_csr: (n_users, n_items) held-out interactions (valid or test split). Users with at least
            one entry are evaluated, ``n_items = truth_csr.shape[1]``.
        ks: cut-offs; the top ``max(ks)`` items are retrieved.
        batch_size: users per score_fn call.
        device: where masking, topk and the hit lookup run (should match score_fn's output).
        extra_mask: optional (n_users, n_items) CSR of further items to mask, e.g. the validation
            items when evaluating test. MMRec does not do this (default None).

    Returns:
        EvalResult with per-user metrics aligned with ``users`` (ascending ids) and their means.
    """
    t0 = time.perf_counter()
    ks = _check_ks(ks)
    k_max = ks[-1]
    device = torch.device(device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    truth = _as_csr(truth_csr, "truth_csr")
    n_users, n_items = truth.shape
    mask = _as_csr(train_csr, "train_csr")
    if mask.shape != truth.shape:
        raise ValueError(f"train_csr shape {mask.shape} != truth_csr shape {truth.shape}")
    if extra_mask is not None:
        extra = _as_csr(extra_mask, "extra_mask")
        if extra.shape != truth.shape:
            raise ValueError(f"extra_mask shape {extra.shape} != truth_csr shape {truth.shape}")
        mask = _as_csr((mask + extra).astype(bool), "mask")  # union of the two patterns

    n_rel_all = np.diff(truth.indptr)
    users = np.flatnonzero(n_rel_all > 0).astype(np.int64)
    if len(users) == 0:
        raise ValueError("truth_csr has no interactions: no user to evaluate")
    n_rel = n_rel_all[users]

    # Mask pattern as CSR arrays on the device, so each batch gathers its (row, col) pairs there.
    mask_indptr = torch.from_numpy(mask.indptr.astype(np.int64)).to(device)
    mask_indices = torch.from_numpy(mask.indices.astype(np.int64)).to(device)
    # Truth as sorted int64 keys user * n_items + item (canonical CSR is row-major with sorted columns,
    # so the keys are already ascending); a ranked item is a hit iff its key is in this array.
    truth_rows = np.repeat(np.arange(n_users, dtype=np.int64), n_rel_all)
    truth_keys = torch.from_numpy(truth_rows * n_items + truth.indices.astype(np.int64)).to(device)
    users_t = torch.from_numpy(users).to(device)

    k_top = min(k_max, n_items)  # a catalogue smaller than max(ks): the missing ranks are misses
    hits = np.zeros((len(users), k_max), dtype=bool)
    neg_inf = torch.tensor(float("-inf"), device=device)
    for start in range(0, len(users), batch_size):
        u = users_t[start : start + batch_size]
        scores = score_fn(u)
        scores = _check_scores(scores, len(u), n_items, device, u)

        rows, cols = _batch_coo(mask_indptr, mask_indices, u)
        scores.index_put_((rows, cols), neg_inf.to(scores.dtype))

        top = torch.topk(scores, k_top, dim=1, sorted=True).indices  # (B, k_top), best first
        query = u[:, None] * n_items + top
        pos = torch.searchsorted(truth_keys, query).clamp_(max=len(truth_keys) - 1)
        hits[start : start + len(u), :k_top] = (truth_keys[pos] == query).cpu().numpy()

    per_user = ranking_metrics(hits, n_rel, ks)
    mean = {k: float(v.mean()) for k, v in per_user.items()}
    return EvalResult(mean=mean, per_user=per_user, users=users, seconds=time.perf_counter() - t0)


def _check_scores(
    scores: torch.Tensor, batch: int, n_items: int, device: torch.device, users: torch.Tensor
) -> torch.Tensor:
    """Validate one batch of scores and make it safe to mask in place."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"score_fn must return a torch.Tensor, got {type(scores).__name__}")
    if scores.shape != (batch, n_items):
        raise ValueError(
            f"score_fn returned shape {tuple(scores.shape)}, expected (batch={batch}, n_items={n_items})"
        )
    if not scores.is_floating_point():
        raise TypeError(f"score_fn must return floating-point scores, got {scores.dtype}")
    if scores.device != device and not (device.type == scores.device.type and device.index is None):
        raise ValueError(f"score_fn returned scores on {scores.device}, evaluate runs on {device}")
    # NaN would silently rank first (torch.topk orders NaN above every number). The sum is a cheap
    # screen (~10x faster than isnan over the block); it is also NaN for +inf + -inf, hence the recheck.
    if torch.isnan(scores.sum()):
        nan_rows = torch.isnan(scores).any(dim=1)
        if nan_rows.any():
            bad = users[nan_rows][:5].tolist()
            raise ValueError(f"score_fn returned NaN scores ({int(nan_rows.sum())} users, e.g. {bad})")
    # We write -inf into the scores; never into the caller's storage (a view, or a parameter).
    if scores._base is not None or scores.requires_grad:
        scores = scores.detach().clone()
    return scores

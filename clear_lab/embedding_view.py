"""Looking at item representations: fixed subsamples, cosine kNN neighbourhoods, the numbers that go with a 2-D
picture, and the item embeddings of a trained backbone (cached beside its run).

Every UMAP picture in the workbook is paired with numbers computed in the full-dimensional space, because a 2-D
layout's cluster sizes and distances mean little. Notation: X (n, d) item representation, N_k^X(i) the k nearest
items of i by cosine similarity of the rows of X (i itself excluded), as FREEDOM builds its item graph
(:func:`clear_lab.graph.knn_indices`).

* :func:`knn_overlap` (X, Y): mean_i |N_k^X(i) ∩ N_k^Y(i)| / k. 1 = the same neighbourhoods, k / (n - 1) = chance.
* :func:`co_interaction_rate` (X, R): the fraction of kNN pairs (i, j in N_k^X(i)) that some user interacted with
  both (R^T R)_ij > 0, with R the (users x items) training matrix; compare with :func:`co_interaction_baseline`,
  the same fraction over all item pairs. Interactions never saw the features, so this is not circular.
* :func:`neighbour_smoothness` (X, v): Pearson correlation between v_i and mean_{j in N_k^X(i)} v_j: how strongly
  a per-item value (a planted factor, log-popularity) organises the neighbourhoods.
* :func:`trustworthiness`: sklearn's trustworthiness of a 2-D layout with respect to X (1 = every 2-D neighbour is
  a true neighbour), using cosine distances like the layout.
* :func:`umap_2d`: UMAP with cosine metric, fixed ``random_state`` (which also makes it single-threaded).
* :func:`planted_truth`: the generator's in-memory output behind a synthetic folder (planted factors, preference
  vectors), regenerated from its ``meta.json``; None for real data.

:func:`trained_item_embeddings` trains a backbone once (through the same cache key as
:func:`clear_lab.runs.cached_train`) and stores its final item embeddings as ``<key>.item_emb.npy`` next to the
run, because a cached run keeps no model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from clear_lab.graph import knn_indices


def fixed_subsample(n: int, size: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``min(size, n)`` items drawn without replacement by ``default_rng(seed)``; all items when
    ``size`` is None or >= n. The same (n, size, seed) always gives the same items."""
    if size is None or size >= n:
        return np.arange(n)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return np.sort(np.random.default_rng(seed).choice(n, size=int(size), replace=False))


def knn(X: Any, k: int) -> np.ndarray:
    """(n, k) int64: each row's k nearest OTHER rows by cosine similarity (self removed, ties as torch.topk)."""
    x = torch.as_tensor(np.ascontiguousarray(np.asarray(X, dtype=np.float32)))
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n_items - 1 = {n - 1}], got {k}")
    idx = knn_indices(x, k + 1).numpy()
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):  # drop i itself (usually first; an exact duplicate row may come before it)
        row = idx[i][idx[i] != i]
        out[i] = row[:k]
    return out


def knn_overlap(X: Any, Y: Any, k: int = 10) -> float:
    """mean_i |N_k^X(i) ∩ N_k^Y(i)| / k for two representations X (n, d1), Y (n, d2) of the same n items."""
    a, b = knn(X, k), knn(Y, k)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"X and Y must describe the same items; got {a.shape[0]} and {b.shape[0]} rows")
    return float(np.mean([len(np.intersect1d(a[i], b[i], assume_unique=True)) for i in range(len(a))]) / k)


def co_interaction_matrix(train_csr: sp.spmatrix) -> sp.csr_matrix:
    """Binary (items x items) CSR: 1 where at least one user interacted with both items (diagonal included)."""
    r = sp.csr_matrix(train_csr, dtype=np.float32)
    r.data[:] = 1.0
    c = (r.T @ r).tocsr()
    c.data[:] = 1.0
    return c


def co_interaction_rate(X: Any, train_csr: sp.spmatrix, k: int = 10, neighbours: np.ndarray | None = None,
                        items: np.ndarray | None = None) -> float:
    """Fraction of the pairs (i, j), j in N_k^X(i), that some user co-interacted in ``train_csr`` (users x items).

    ``neighbours`` (n, k) may be given instead of recomputing them from X. ``items`` (m,) restricts the mean to
    those items (e.g. items with training interactions).
    """
    nbr = knn(X, k) if neighbours is None else np.asarray(neighbours)
    c = co_interaction_matrix(train_csr)
    rows = np.repeat(np.arange(nbr.shape[0]), nbr.shape[1])
    hit = np.asarray(c[rows, nbr.ravel()]).ravel().reshape(nbr.shape) > 0
    if items is not None:
        hit = hit[np.asarray(items)]
    return float(hit.mean())


def co_interaction_baseline(train_csr: sp.spmatrix, items: np.ndarray | None = None) -> float:
    """Fraction of distinct item pairs (i != j) co-interacted by some user: the chance level of
    :func:`co_interaction_rate`. ``items`` restricts the pairs to those items."""
    c = co_interaction_matrix(train_csr)
    if items is not None:
        items = np.asarray(items)
        c = c[items][:, items]
    n = c.shape[0]
    off = c.nnz - int((c.diagonal() > 0).sum())
    return float(off / (n * (n - 1))) if n > 1 else 0.0


def neighbour_smoothness(X: Any, values: Any, k: int = 10) -> float:
    """Pearson correlation of v_i with the mean of v over N_k^X(i): how much ``values`` (n,) organise the kNN
    neighbourhoods of X (n, d). About 0 when the neighbourhoods ignore v."""
    v = np.asarray(values, dtype=np.float64).ravel()
    nbr = knn(X, k)
    if len(v) != nbr.shape[0]:
        raise ValueError(f"values has {len(v)} entries, X has {nbr.shape[0]} rows")
    return float(np.corrcoef(v, v[nbr].mean(axis=1))[0, 1])


def trustworthiness(X: Any, layout: Any, k: int = 10) -> float:
    """sklearn's trustworthiness of the 2-D ``layout`` (n, 2) for X (n, d), cosine distances in the high space."""
    from sklearn.manifold import trustworthiness as tw

    return float(tw(np.asarray(X, dtype=np.float64), np.asarray(layout, dtype=np.float64), n_neighbors=k,
                    metric="cosine"))


def umap_2d(X: Any, random_state: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
            metric: str = "cosine", n_epochs: int | None = None) -> np.ndarray:
    """(n, 2) UMAP layout of X (n, d), seeded (``random_state`` makes UMAP single-threaded and reproducible).

    ``n_neighbors`` is capped at n - 1 so tiny subsamples work; ``n_epochs`` None is umap-learn's default (500 below
    10,000 points). A 1,500-item layout takes about 4 s on one core, but the first call in a process also compiles
    umap-learn's numba code (~20-25 s; only its ``cache=True`` functions are kept between processes).
    """
    import warnings

    import umap

    x = np.asarray(X, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # random_state forces n_jobs=1: intended
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        reducer = umap.UMAP(n_components=2, n_neighbors=int(min(n_neighbors, len(x) - 1)), min_dist=min_dist,
                            metric=metric, random_state=random_state, n_jobs=1, n_epochs=n_epochs)
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def planted_truth(data_dir: str | Path):
    """The in-memory :class:`clear_lab.synthetic.SyntheticData` behind a generated folder (its ``shared_factor``
    (n_items, r), ``preference_embedding()``, ...), regenerated from ``meta.json``'s config and seed; None for a
    folder without ``meta.json`` (real data). Raises ValueError when the regenerated features differ from the
    folder's files (the folder was edited or written by another generator version)."""
    import dataclasses
    import json

    from clear_lab.synthetic import SyntheticConfig, generate

    meta_path = Path(data_dir) / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    cfg = {k: v for k, v in meta["config"].items() if k in fields}
    cfg["modalities"] = tuple(cfg["modalities"])
    truth = generate(SyntheticConfig(**cfg), seed=int(meta["seed"]))
    for m, x in truth.features.items():
        path = Path(data_dir) / f"{m}_feat.npy"
        if path.is_file() and not np.array_equal(np.load(path), x):
            raise ValueError(f"{path} differs from what meta.json regenerates: the planted factors do not apply")
    return truth


def item_popularity(train: np.ndarray, n_items: int) -> np.ndarray:
    """(n_items,) number of training interactions per item, from the (n, 2) (user, item) training pairs."""
    return np.bincount(np.asarray(train)[:, 1], minlength=n_items).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# item embeddings of a trained backbone


def item_embeddings(model: torch.nn.Module) -> np.ndarray:
    """(n_items, d) float32 final item representations that the model scores with (``s(u, i) = u . e_i``).

    LightGCN: the layer-averaged propagated embedding; FREEDOM: propagated ID embedding plus the item-graph term
    (full graph, as at evaluation); VBPR: [gamma_i ; W x_i + b]; BPR: the ID embedding.
    """
    name = getattr(model, "name", "")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if name == "lightgcn":
                _, items = model.propagate()
            elif name == "freedom":
                _, items = model.propagate(model.norm_adj)
            elif name == "vbpr":
                items = model.item_embeddings()
            elif name == "bpr":
                items = model.item_embedding.weight
            else:
                items = _items_from_eval_cache(model)
    finally:
        model.train(was_training)
    return items.detach().cpu().numpy().astype(np.float32)


def eval_vectors(model) -> tuple[torch.Tensor, torch.Tensor]:
    """``(user_vectors (n_users, d), item_vectors (n_items, d))`` with ``scores(u) = user_vectors[u] @ items.T``,
    read from what the model computes in ``begin_eval``: a ``(users, items)`` pair, or one ``(n_users + n_items, d)``
    matrix with users first (MMGCN, GRCN). Raises ValueError for a model that scores otherwise."""
    model.begin_eval()
    try:
        cache = getattr(model, "_cache", None)
        if (isinstance(cache, tuple) and len(cache) == 2 and all(isinstance(c, torch.Tensor) for c in cache)
                and cache[0].shape[0] == model.n_users and cache[1].shape[0] == model.n_items):
            return cache[0], cache[1]
        if isinstance(cache, torch.Tensor) and cache.shape[0] == model.n_users + model.n_items:
            return cache[: model.n_users], cache[model.n_users:]
    finally:
        model.end_eval()
    raise ValueError(f"item_embeddings: model {getattr(model, 'name', model)!r} does not score with one vector per "
                     "user and item (its evaluation cache is neither (users, items) nor users and items stacked)")


def _items_from_eval_cache(model) -> torch.Tensor:
    return eval_vectors(model)[1]


def trained_item_embeddings(data, config, cache_dir: str | Path = "runs/cache", force: bool = False):
    """``(RunResult, item_embeddings (n_items, d) float32)`` of training ``config`` on ``data``, cached.

    The run is stored exactly as :func:`clear_lab.runs.cached_train` stores it (same key, so either function
    finds the other's record) plus ``<key>.item_emb.npy``. A cached record without the embedding file is
    trained again (the record alone cannot give them back). The returned RunResult has ``model=None`` either way.
    """
    from clear_lab.runs import load_run, run_key, save_run
    from clear_lab.train import train

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = run_key(data, config)
    run_path, emb_path = cache_dir / f"{key}.json", cache_dir / f"{key}.item_emb.npy"
    if not force and run_path.is_file() and emb_path.is_file():
        try:
            return load_run(run_path), np.load(emb_path, allow_pickle=False)
        except (OSError, ValueError, KeyError):
            pass  # unreadable leftovers: train again
    result = train(data, config, keep_model=True)
    emb = item_embeddings(result.model)
    tmp = emb_path.with_name(f".{emb_path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, emb)
    os.replace(tmp, emb_path)  # the embeddings first: the record's json marks the run finished
    save_run(result, run_path)
    result.model = None
    return result, emb

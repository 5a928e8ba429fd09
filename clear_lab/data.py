"""Load MMRec-format data: interactions with a train/valid/test label, and one feature matrix per modality.

A dataset is a folder::

    <name>.inter        tab-separated, header row; columns userID, itemID, x_label (0 train, 1 valid, 2 test);
                        any other column (rating, timestamp, ...) is ignored, as MMRec does
    <modality>_feat.npy one float matrix per modality, row i = item i (image_feat.npy, text_feat.npy, ...)

Conventions follow the MMRec toolbox (enoche/MMRec), so numbers are comparable:

* ``n_users = max userID + 1`` and ``n_items = max itemID + 1`` over the whole file (all splits);
* interactions are implicit (weight 1); duplicated pairs inside a split are dropped with a warning;
* valid/test users with no training item are dropped with a counted warning (MMRec's
  ``filter_out_cod_start_users``);
* features are cast to float32.

Anything that would give a silently wrong answer is a ``DataError`` whose one-line message names the file and the
row or column: a missing file or column, a label outside {0, 1, 2}, a negative or non-integer id, a feature matrix
whose row count is not ``n_items``, NaN/Inf in features, or a (user, item) pair that is in train and also in valid
or test (a leak).

The BPR sampler reproduces MMRec's negative sampling: one negative per positive, drawn uniformly from the items
that have at least one *training* interaction, redrawn while it is in the user's training history.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

SPLITS = ("train", "valid", "test")
LABELS = {"train": 0, "valid": 1, "test": 2}
REQUIRED_COLUMNS = ("userID", "itemID", "x_label")


class DataError(ValueError):
    """Bad input data. The message is one line naming the file and the row, column or parameter."""


def feature_path(data_dir: str | Path, modality: str) -> Path:
    """The conventional file of a modality: ``<data_dir>/<modality>_feat.npy``."""
    return Path(data_dir) / f"{modality}_feat.npy"


def available_modalities(data_dir: str | Path) -> list[str]:
    """Modalities with a ``<name>_feat.npy`` file in ``data_dir``, sorted (image before text by convention)."""
    names = sorted(p.name[: -len("_feat.npy")] for p in Path(data_dir).glob("*_feat.npy"))
    order = {"image": 0, "text": 1, "audio": 2}
    return sorted(names, key=lambda n: (order.get(n, 9), n))


def parse_feature_overrides(pairs: Sequence[str] | None) -> dict[str, str]:
    """Parse ``["name=path", ...]`` (the CLI's ``--features``) into a dict; malformed entries raise DataError."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise DataError(f"--features expects name=path, got {pair!r}")
        out[name.strip()] = path.strip()
    return out


def load_features(path: str | Path, n_items: int | None = None) -> np.ndarray:
    """Load one modality's ``(n_items, d)`` matrix as float32, checking shape and finiteness.

    float16/float64 files are cast to float32 (MMRec does the same). Raises DataError naming the file for a missing
    file, a non-2-D array, a row count different from ``n_items``, or NaN/Inf (with their count and first row).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: feature file not found")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:  # corrupt header, pickled object array, ...
        raise DataError(f"{path}: cannot read as a .npy array ({exc})") from exc
    if x.ndim != 2:
        raise DataError(f"{path}: expected a 2-D (items x dims) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: expected a numeric array, got dtype {x.dtype}")
    if n_items is not None and x.shape[0] != n_items:
        raise DataError(f"{path}: has {x.shape[0]} rows but the interactions define n_items = {n_items} "
                        f"(max itemID + 1); row i must be item i")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise DataError(f"{path}: {int(bad.sum())} NaN/Inf values in {rows.size} rows, first at row {rows[0]}")
    return x


def _read_inter(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: interaction file not found")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot parse as a tab-separated file with a header ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}")
    if len(df) == 0:
        raise DataError(f"{path}: no interaction rows")
    out = {}
    for col in REQUIRED_COLUMNS:
        raw = df[col].str.strip()
        num = pd.to_numeric(raw, errors="coerce")
        ok = num.notna() & (num == np.floor(num.fillna(0)))
        if not ok.all():
            row = int(np.flatnonzero(~ok.to_numpy())[0])
            # +2: one for the header, one because file rows are counted from 1
            raise DataError(f"{path}: row {row + 2}: column {col} must be an integer, got {raw.iloc[row]!r}")
        vals = num.to_numpy(dtype=np.int64)
        if col != "x_label" and (vals < 0).any():
            row = int(np.flatnonzero(vals < 0)[0])
            raise DataError(f"{path}: row {row + 2}: column {col} must be a non-negative id, got {vals[row]}")
        if col == "x_label" and not np.isin(vals, (0, 1, 2)).all():
            row = int(np.flatnonzero(~np.isin(vals, (0, 1, 2)))[0])
            raise DataError(f"{path}: row {row + 2}: x_label must be 0 (train), 1 (valid) or 2 (test), "
                            f"got {vals[row]}")
        out[col] = vals
    return pd.DataFrame(out)


@dataclass
class InteractionData:
    """An MMRec-format dataset in memory.

    ``train``, ``valid``, ``test`` are ``(n, 2)`` int64 arrays of (user, item) pairs; ``features`` maps a modality
    name to its ``(n_items, d)`` float32 matrix (possibly empty: ID-only models need none).
    """

    name: str
    n_users: int
    n_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None
    dropped: dict[str, int] = field(default_factory=dict)  # what loading removed, for the record

    # -- views ---------------------------------------------------------------------------------------------------
    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)

    def csr(self, split: str = "train") -> sp.csr_matrix:
        """Binary users x items matrix of one split (CSR, float32, sorted indices)."""
        pairs = self.split(split)
        m = sp.csr_matrix((np.ones(len(pairs), dtype=np.float32), (pairs[:, 0], pairs[:, 1])),
                          shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.sort_indices()
        return m

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    def with_features(self, features: Mapping[str, np.ndarray]) -> InteractionData:
        """A copy sharing the interactions but carrying other features (e.g. CLEAR-projected ones)."""
        for name, x in features.items():
            if x.shape[0] != self.n_items:
                raise DataError(f"feature {name!r} has {x.shape[0]} rows, expected n_items = {self.n_items}")
        return InteractionData(self.name, self.n_users, self.n_items, self.train, self.valid, self.test,
                               dict(features), self.path, dict(self.dropped))

    # -- record --------------------------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counts per split, density and feature shapes (JSON-friendly)."""
        out: dict = {"name": self.name, "n_users": self.n_users, "n_items": self.n_items}
        total = 0
        for s in SPLITS:
            pairs = self.split(s)
            total += len(pairs)
            out[f"n_{s}"] = int(len(pairs))
            out[f"n_users_{s}"] = int(np.unique(pairs[:, 0]).size) if len(pairs) else 0
        out["n_interactions"] = total
        out["density"] = total / float(self.n_users * self.n_items)
        out["features"] = {k: list(v.shape) for k, v in self.features.items()}
        out["dropped"] = dict(self.dropped)
        return out

    def content_hash(self) -> str:
        """sha256 over the interactions and the features actually used (so caches follow the data)."""
        h = hashlib.sha256()
        h.update(f"{self.n_users},{self.n_items}".encode())
        for s in SPLITS:
            h.update(s.encode())
            h.update(np.ascontiguousarray(self.split(s), dtype=np.int64).tobytes())
        for name in sorted(self.features):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.features[name]).tobytes())
        return h.hexdigest()[:16]


def _dedupe(pairs: np.ndarray, n_items: int) -> tuple[np.ndarray, int]:
    keys = pairs[:, 0] * n_items + pairs[:, 1]
    _, first = np.unique(keys, return_index=True)
    first.sort()  # keep the file order of first occurrences
    return pairs[first], len(pairs) - len(first)


def load_dataset(data_dir: str | Path, modalities: Sequence[str] | None = None,
                 features: Mapping[str, str | Path] | None = None, name: str | None = None,
                 load_all_features: bool = True) -> InteractionData:
    """Load an MMRec-format folder.

    Args:
        data_dir: the folder. Its ``.inter`` file is ``<name>.inter``; when ``name`` is None the folder must hold
            exactly one ``*.inter`` file.
        modalities: which modalities to load (``["image", "text"]``). None loads every ``*_feat.npy`` found when
            ``load_all_features`` (or none when False); an explicitly named modality whose file is missing is an
            error.
        features: overrides ``name -> path`` for feature files (the CLI's ``--features``); relative paths are read
            relative to the current directory.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    if name is None:
        inters = sorted(data_dir.glob("*.inter"))
        if len(inters) != 1:
            found = ", ".join(p.name for p in inters) or "none"
            raise DataError(f"{data_dir}: expected exactly one *.inter file (found {found}); pass its name")
        inter_path = inters[0]
        name = inter_path.stem
    else:
        inter_path = data_dir / f"{name}.inter"
    df = _read_inter(inter_path)
    pairs = df[["userID", "itemID"]].to_numpy(dtype=np.int64)
    labels = df["x_label"].to_numpy()
    n_users = int(pairs[:, 0].max()) + 1
    n_items = int(pairs[:, 1].max()) + 1

    split_pairs: dict[str, np.ndarray] = {}
    dropped: dict[str, int] = {}
    for s, lab in LABELS.items():
        p, n_dup = _dedupe(pairs[labels == lab], n_items)
        if n_dup:
            warnings.warn(f"{inter_path}: removed {n_dup} duplicated (user, item) pairs in {s}", stacklevel=2)
            dropped[f"duplicates_{s}"] = n_dup
        split_pairs[s] = p

    # A pair in train and also in valid/test would let a model be scored on what it trained on.
    train_keys = split_pairs["train"][:, 0] * n_items + split_pairs["train"][:, 1]
    for s in ("valid", "test"):
        keys = split_pairs[s][:, 0] * n_items + split_pairs[s][:, 1]
        leak = np.isin(keys, train_keys)
        if leak.any():
            u, i = split_pairs[s][np.flatnonzero(leak)[0]]
            raise DataError(f"{inter_path}: {int(leak.sum())} (user, item) pairs are in train and also in {s} "
                            f"(a leak); first: userID {u}, itemID {i}")
    vk = split_pairs["valid"][:, 0] * n_items + split_pairs["valid"][:, 1]
    tk = split_pairs["test"][:, 0] * n_items + split_pairs["test"][:, 1]
    vt = np.isin(tk, vk)
    if vt.any():
        u, i = split_pairs["test"][np.flatnonzero(vt)[0]]
        raise DataError(f"{inter_path}: {int(vt.sum())} (user, item) pairs are in valid and also in test "
                        f"(a leak); first: userID {u}, itemID {i}")

    # MMRec drops valid/test rows of users that have no training interaction (they cannot be scored).
    has_train = np.zeros(n_users, dtype=bool)
    has_train[split_pairs["train"][:, 0]] = True
    for s in ("valid", "test"):
        keep = has_train[split_pairs[s][:, 0]]
        if not keep.all():
            n_users_dropped = int(np.unique(split_pairs[s][~keep, 0]).size)
            warnings.warn(f"{inter_path}: dropped {int((~keep).sum())} {s} rows of {n_users_dropped} users "
                          f"without training interactions", stacklevel=2)
            dropped[f"cold_{s}_rows"] = int((~keep).sum())
            dropped[f"cold_{s}_users"] = n_users_dropped
            split_pairs[s] = split_pairs[s][keep]

    overrides = {k: Path(v) for k, v in (features or {}).items()}
    if modalities is None:
        names = list(overrides) if overrides else (available_modalities(data_dir) if load_all_features else [])
        for n in available_modalities(data_dir) if load_all_features else []:
            if n not in names:
                names.append(n)
    else:
        names = list(modalities)
    feats = {}
    for m in names:
        feats[m] = load_features(overrides.get(m, feature_path(data_dir, m)), n_items)
    return InteractionData(name, n_users, n_items, split_pairs["train"], split_pairs["valid"], split_pairs["test"],
                           feats, data_dir, dropped)


def load_feature_folder(data_dir: str | Path, modalities: Sequence[str] | None = None,
                        features: Mapping[str, str | Path] | None = None) -> dict[str, np.ndarray]:
    """Feature matrices alone (no ``.inter`` needed): for diagnosing redundancy in bare feature files."""
    overrides = {k: Path(v) for k, v in (features or {}).items()}
    names = list(modalities) if modalities else (list(overrides) or available_modalities(data_dir))
    if not names:
        raise DataError(f"{data_dir}: no *_feat.npy files found and no --features given")
    out = {m: load_features(overrides.get(m, feature_path(data_dir, m))) for m in names}
    rows = {m: x.shape[0] for m, x in out.items()}
    if len(set(rows.values())) > 1:
        raise DataError(f"{data_dir}: modalities have different row counts {rows}; row i must be item i in each")
    return out


class BPRSampler:
    """Shuffled mini-batches of (user, positive, negative) triples, one epoch at a time.

    MMRec's rule (``TrainDataLoader``): an epoch is one pass over the training pairs in a fresh random order; each
    positive gets exactly one negative drawn uniformly from the items that have at least one training interaction,
    redrawn while it is one of the user's training items. (A user's valid/test item can be drawn as a negative.)

    Vectorised: all negatives of an epoch are drawn at once and only the collisions are redrawn, which gives the
    same distribution as MMRec's per-row rejection loop.
    """

    def __init__(self, train: np.ndarray, n_users: int, n_items: int, batch_size: int = 2048, seed: int = 0):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.train = np.ascontiguousarray(train, dtype=np.int64)
        self.n_items = n_items
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.pool = np.unique(self.train[:, 1])  # items with a training interaction
        self._keys = np.sort(self.train[:, 0] * n_items + self.train[:, 1])
        per_user = np.bincount(self.train[:, 0], minlength=n_users)
        if (per_user >= self.pool.size).any():
            u = int(np.flatnonzero(per_user >= self.pool.size)[0])
            raise DataError(f"user {u} has interacted with every training item: no negative can be drawn")

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Boolean mask: is (user, item) a training pair."""
        keys = users * self.n_items + items
        pos = np.searchsorted(self._keys, keys)
        pos = np.minimum(pos, self._keys.size - 1)
        return self._keys[pos] == keys

    def sample_negatives(self, users: np.ndarray) -> np.ndarray:
        neg = self.pool[self.rng.integers(0, self.pool.size, size=users.size)]
        bad = np.flatnonzero(self.is_positive(users, neg))
        while bad.size:
            neg[bad] = self.pool[self.rng.integers(0, self.pool.size, size=bad.size)]
            bad = bad[self.is_positive(users[bad], neg[bad])]
        return neg

    def __len__(self) -> int:
        return -(-len(self.train) // self.batch_size)

    def epoch(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(users, positives, negatives)`` int64 arrays of length batch_size (the last may be shorter)."""
        order = self.rng.permutation(len(self.train))
        pairs = self.train[order]
        neg = self.sample_negatives(pairs[:, 0])
        for start in range(0, len(pairs), self.batch_size):
            sl = slice(start, start + self.batch_size)
            yield pairs[sl, 0], pairs[sl, 1], neg[sl]

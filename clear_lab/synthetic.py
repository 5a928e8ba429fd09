"""Deterministic planted-redundancy data sets in MMRec format.

CLEAR removes the directions that the visual and the textual features *share* (the top singular
directions of their cross-covariance) on the bet that this shared part is redundant for preference.
To study when that bet pays off we need data where we *know* the shared subspace and *choose* how
much it drives preference.  This module plants both.

Generative story (n = n_items, U = n_users, M = the modalities, r_* = ranks, all draws from one
``numpy.random.Generator(seed)``)::

    item factors (rows are items, entries iid N(0, 1), all groups independent of each other; with
    whiten_factors the whole (n, R) block is then centred and Gram-Schmidt'ed so that its SAMPLE
    covariance is exactly I: the groups are then exactly uncorrelated in-sample, not just in expectation)
        z_s   (n, r_shared)        shared factor, expressed by EVERY modality
        z_m   (n, r_specific)      one per modality m, expressed by modality m only
        z_cf  (n, r_cf)            collaborative-only factor, visible in no feature
        b     (n,)                 log-popularity, b = popularity_std * N(0, 1)

    features, for each modality m with dimension d_m
        [A_m | B_m] = QR(N(0, 1)^(d_m, r_shared + r_specific))   orthonormal columns, A_m ⟂ B_m
        X_m = shared_strength * z_s A_m^T + specific_strength * z_m B_m^T + E_m      (n, d_m)
        E_m entries iid N(0, noise_norm^2 / d_m)      (so E||e_i||^2 = noise_norm^2 whatever d_m)

    preferences, user latents p_u^s, p_u^m, p_u^cf entries iid N(0, 1)
        score(u, i) = w_shared <p_u^s, z_s_i> + w_specific sum_m <p_u^m, z_m_i> + w_cf <p_u^cf, z_cf_i> + b_i
                    = <p_u, q_i> + b_i,   q_i = [w_shared z_s_i, w_specific z_m_i ..., w_cf z_cf_i]

    interactions
        n_u = min_interactions + Poisson(LogNormal) with mean mean_interactions, capped
        user u picks n_u distinct items ~ sampling without replacement from softmax(score(u, .) / T),
        done as Gumbel top-k: the n_u largest of score/T + Gumbel noise.
        Every item nobody picked is then given to ONE user, drawn from softmax over users of
        score(., i) / T, so that every item id occurs (MMRec sets n_items = max itemID + 1).  That
        user's count grows by one; the item then goes through the split like any other, so a few
        long-tail items may occur only in valid/test (cold items, as in real data).

Why the cross-covariance recovers the plant: the only factor common to two modalities is z_s, so
E[X_v^T X_t] / n = shared_strength^2 A_v A_t^T, a rank-r_shared matrix whose left / right singular
subspaces are col(A_v) / col(A_t).  We save A_m as ``<m>_planted_basis.npy``.  Note its r_shared
singular values are equal, so only the subspace (not single vectors) is identifiable.

``q_i`` is the item's "preference-relevant" vector (``SyntheticData.preference_embedding``): two
items are preference neighbours when their q's are similar.  In ``default`` w_shared is small, so the
high-variance shared directions mislead a feature kNN graph and removing them (CLEAR) helps; in
``control`` w_shared is large, so removing them hurts (the honest negative case).  The two presets
draw features before preferences from the same stream, so with equal seeds their feature files are
identical and only the interactions differ.

Split, per user, as MMRec's random split: shuffle the user's items; if n < 10 then n-2 train,
1 valid, 1 test; else vt = floor(0.2 n), valid = floor(vt / 2), test = vt - valid, train = n - vt.
Rows are written grouped by user, train then valid then test, with timestamp = row number.

Files written by ``write_mmrec(data, out_dir, name)``::

    <name>.inter               TSV, header userID itemID rating timestamp x_label (0/1/2 = train/valid/test)
    <m>_feat.npy               float32 (n_items, d_m), row i = item i   (image, text, [audio])
    <m>_planted_basis.npy      float64 (d_m, r_shared), orthonormal columns A_m
    meta.json                  preset, every config parameter, seed, GENERATOR_VERSION, counts
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

GENERATOR_VERSION = "1"
INTER_COLUMNS = ("userID", "itemID", "rating", "timestamp", "x_label")
KNOWN_MODALITIES = ("image", "text", "audio")
_CHUNK_ELEMENTS = 1 << 22  # ~4M float64 (32 MB) per score block: bounds memory on big presets


@dataclass(frozen=True)
class SyntheticConfig:
    preset: str = "custom"  # name recorded in meta.json
    n_users: int = 3000  # users, ids 0..n_users-1
    n_items: int = 1500  # items, ids 0..n_items-1
    modalities: tuple[str, ...] = ("image", "text")  # any subset (>= 2) of image/text/audio, in file order
    d_image: int = 256  # image feature dimension
    d_text: int = 128  # text feature dimension
    d_audio: int = 64  # audio feature dimension (used only if "audio" in modalities)
    r_shared: int = 4  # planted rank of the shared factor z_s (expressed by all modalities)
    r_specific: int = 6  # rank of each modality-specific factor z_m
    r_cf: int = 8  # rank of the collaborative-only factor z_cf (no feature shows it)
    shared_strength: float = 4.0  # std of the features along each planted shared direction
    specific_strength: float = 1.5  # std of the features along each modality-specific direction
    noise_norm: float = 0.5  # expected L2 norm of a row's isotropic Gaussian noise (per coord: /sqrt(d))
    w_shared: float = 0.1  # weight of <p_u^s, z_s_i> in the score: small = shared part is redundant
    w_specific: float = 0.5  # weight of each <p_u^m, z_m_i> in the score
    w_cf: float = 0.3  # weight of <p_u^cf, z_cf_i> in the score
    popularity_std: float = 1.0  # std of the log-popularity b_i added to the score (log-normal skew)
    temperature: float = 1.0  # softmax temperature T over score / T; lower = more deterministic choices
    mean_interactions: float = 20.0  # mean interactions per user (before the every-item fix-up)
    min_interactions: int = 5  # minimum per user; >= 5 guarantees >= 1 train, valid and test each
    interactions_sigma: float = 0.8  # log-normal sigma of the per-user count (higher = heavier tail)
    max_interactions_frac: float = 0.25  # cap n_u at this fraction of n_items
    whiten_factors: bool = True  # make the item factors' SAMPLE covariance exactly I (see _whiten)

    def dim(self, modality: str) -> int:
        return {"image": self.d_image, "text": self.d_text, "audio": self.d_audio}[modality]

    def check(self) -> None:
        """Raise ValueError for configs that would generate broken or degenerate data."""
        if len(self.modalities) < 2 or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"need >= 2 distinct modalities, got {self.modalities}")
        for m in self.modalities:
            if m not in KNOWN_MODALITIES:
                raise ValueError(f"unknown modality {m!r}; known: {KNOWN_MODALITIES}")
            if self.dim(m) < self.r_shared + self.r_specific:
                raise ValueError(f"d_{m}={self.dim(m)} < r_shared + r_specific")
        if self.min_interactions < 5:
            raise ValueError("min_interactions must be >= 5 so every user gets train, valid and test items")
        if self.mean_interactions < self.min_interactions:
            raise ValueError("mean_interactions must be >= min_interactions")
        if int(self.max_interactions_frac * self.n_items) < self.min_interactions:
            raise ValueError("n_items too small for min_interactions at max_interactions_frac")
        rank = self.r_shared + len(self.modalities) * self.r_specific + self.r_cf
        if self.whiten_factors and self.n_items <= rank:
            raise ValueError("whiten_factors needs n_items > total factor rank")
        if min(self.n_users, self.r_shared, self.r_specific, self.r_cf) < 1 or self.temperature <= 0:
            raise ValueError("n_users, ranks and temperature must be positive")


PRESETS: dict[str, SyntheticConfig] = {
    # Teaching size: dozens of short LightGCN/FREEDOM-like runs fit a 2-core CPU budget.
    "default": SyntheticConfig(preset="default"),
    # Same features as default (same seed -> identical feature files); now the shared factor drives
    # preference and the specific ones barely do.  Total score variance is close to default's:
    # 0.85^2 * 4 + 0.1^2 * 12 + 0.3^2 * 8 = 3.73  vs  0.1^2 * 4 + 0.5^2 * 12 + 0.3^2 * 8 = 3.76.
    "control": SyntheticConfig(preset="control", w_shared=0.85, w_specific=0.1),
    # Amazon-Baby-sized (MMRec's 19,445 x 7,050, ~160k interactions, 4096-d image, 384-d text).
    "baby-like": SyntheticConfig(
        preset="baby-like", n_users=19445, n_items=7050, d_image=4096, d_text=384,
        mean_interactions=8.3, interactions_sigma=1.0, max_interactions_frac=0.05,
    ),
    # Unit tests: generates in milliseconds.
    "tiny": SyntheticConfig(
        preset="tiny", n_users=200, n_items=120, d_image=32, d_text=24, d_audio=16,
        r_shared=3, r_specific=4, r_cf=4, shared_strength=4.0, noise_norm=1.0, mean_interactions=12.0,
    ),
}


@dataclass
class SyntheticData:
    """One generated data set, in memory.  Interaction arrays are aligned, grouped by user."""

    config: SyntheticConfig
    seed: int
    user_ids: np.ndarray  # (N,) int64
    item_ids: np.ndarray  # (N,) int64
    x_label: np.ndarray  # (N,) int64, 0 train / 1 valid / 2 test
    features: dict[str, np.ndarray]  # modality -> (n_items, d_m) float32
    planted_bases: dict[str, np.ndarray]  # modality -> (d_m, r_shared) float64, orthonormal A_m
    shared_factor: np.ndarray  # (n_items, r_shared) z_s
    specific_factors: dict[str, np.ndarray]  # modality -> (n_items, r_specific) z_m
    cf_factor: np.ndarray  # (n_items, r_cf) z_cf
    popularity: np.ndarray  # (n_items,) log-popularity b
    user_factor: np.ndarray  # (n_users, R) p_u = [p^s, p^m ..., p^cf]; true score = p_u . q_i + b_i
    n_fixup: int = 0  # interactions added so that every item occurs
    extra: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return self.config.n_users

    @property
    def n_items(self) -> int:
        return self.config.n_items

    @property
    def n_interactions(self) -> int:
        return len(self.user_ids)

    def preference_embedding(self) -> np.ndarray:
        """q_i = [w_shared z_s, w_specific z_m ..., w_cf z_cf]: score(u, i) = <p_u, q_i> + b_i."""
        c = self.config
        parts = [c.w_shared * self.shared_factor]
        parts += [c.w_specific * self.specific_factors[m] for m in c.modalities]
        return np.concatenate(parts + [c.w_cf * self.cf_factor], axis=1)

    def true_scores(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """score(u, i) = p_u . q_i + b_i for aligned arrays of users and items (an oracle for analysis)."""
        q = self.preference_embedding()
        return np.einsum("nr,nr->n", self.user_factor[users], q[items]) + self.popularity[items]


def _orthonormal(rng: np.random.Generator, d: int, r: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, r)))
    return q


def _whiten(z: np.ndarray) -> np.ndarray:
    """Centre and Gram-Schmidt the columns of z (n, R) so that z^T z / (n - 1) = I exactly.

    Independent draws are only uncorrelated in expectation: with n items the sample cross-covariance
    of z_s and z_m is O(1/sqrt(n)) and tilts the cross-covariance's singular vectors towards the
    specific directions (several degrees on 120 items).  Whitening removes that finite-sample leak, so
    the noiseless cross-covariance is exactly shared_strength^2 A_v A_t^T and only feature noise is left.
    """
    zc = z - z.mean(axis=0)
    q, r = np.linalg.qr(zc)
    q *= np.sign(np.diag(r))  # fix QR's column signs: q is then the unique Gram-Schmidt of zc
    return q * math.sqrt(len(z) - 1)


def _sample_counts(rng: np.random.Generator, c: SyntheticConfig) -> np.ndarray:
    # Poisson-log-normal: a skewed count with E[n_u] = mean_interactions (before the cap).
    excess = c.mean_interactions - c.min_interactions
    mu = math.log(max(excess, 1e-9)) - c.interactions_sigma**2 / 2
    rate = rng.lognormal(mu, c.interactions_sigma, size=c.n_users) if excess > 0 else np.zeros(c.n_users)
    cap = int(c.max_interactions_frac * c.n_items)
    return np.minimum(c.min_interactions + rng.poisson(rate), cap).astype(np.int64)


def _gumbel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Gumbel(0, 1) noise drawn as -log(Exp(1)): the same law, ~30% faster than rng.gumbel."""
    e = rng.standard_exponential(size=shape)
    return np.negative(np.log(e, out=e), out=e)


def _sample_interactions(rng: np.random.Generator, c: SyntheticConfig, p: np.ndarray, q: np.ndarray,
                         b: np.ndarray, n_u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel top-k per user, over blocks of users so the score matrix is never held whole."""
    users, items = [], []
    block = max(1, _CHUNK_ELEMENTS // c.n_items)
    for start in range(0, c.n_users, block):
        stop = min(start + block, c.n_users)
        keys = p[start:stop] @ q.T
        keys += b
        keys /= c.temperature
        keys += _gumbel(rng, keys.shape)
        k = n_u[start:stop]
        kmax = int(k.max())
        top = np.argpartition(keys, c.n_items - kmax, axis=1)[:, c.n_items - kmax:]  # kmax largest, unordered
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), axis=1), 1)
        keep = np.arange(kmax) < k[:, None]  # first n_u of the ordered top-kmax = top-n_u
        users.append(np.repeat(np.arange(start, stop), k))
        items.append(top[keep])
    return np.concatenate(users), np.concatenate(items)


def _fixup_missing_items(rng: np.random.Generator, c: SyntheticConfig, p: np.ndarray, q: np.ndarray,
                         items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give each never-picked item to one user ~ softmax over users of score(., i) / T (Gumbel-max).

    b_i is constant over users, so it drops out.  No duplicate can arise: nobody had the item.
    """
    missing = np.flatnonzero(np.bincount(items, minlength=c.n_items) == 0)
    owners = []
    block = max(1, _CHUNK_ELEMENTS // c.n_users)
    for start in range(0, len(missing), block):
        cols = missing[start:start + block]
        keys = (p @ q[cols].T) / c.temperature + _gumbel(rng, (c.n_users, len(cols)))
        owners.append(np.argmax(keys, axis=0))
    owners_arr = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
    return owners_arr.astype(np.int64), missing.astype(np.int64)


def split_labels(rng: np.random.Generator, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MMRec random split.  Returns (order, x_label): rows user_ids[order] are grouped by user,
    shuffled within the user, and labelled train (0) then valid (1) then test (2)."""
    order = np.lexsort((rng.random(len(user_ids)), user_ids))  # by user, random within user
    u = user_ids[order]
    counts = np.bincount(u)
    rank = np.arange(len(u)) - (np.cumsum(counts) - counts)[u]  # position within the user's shuffle
    n = counts[u]
    n_vt = np.where(n < 10, 2, n // 5)  # floor(0.2 n) == n // 5 exactly for integers
    n_valid = np.where(n < 10, 1, n_vt // 2)
    n_train = n - n_vt
    x_label = np.where(rank < n_train, 0, np.where(rank < n_train + n_valid, 1, 2))
    return order, x_label.astype(np.int64)


def generate(config: SyntheticConfig, seed: int = 0) -> SyntheticData:
    """Draw one data set; the same (config, seed) always gives identical arrays."""
    c = config
    c.check()
    rng = np.random.default_rng(seed)
    n, mods = c.n_items, c.modalities

    # Item factors (independent groups) and log-popularity.
    sizes = [c.r_shared] + [c.r_specific] * len(mods) + [c.r_cf]
    z = rng.standard_normal((n, sum(sizes)))
    if c.whiten_factors:
        z = _whiten(z)
    z_s, *z_spec, z_cf = np.split(z, np.cumsum(sizes)[:-1], axis=1)
    z_m = dict(zip(mods, z_spec))
    b = c.popularity_std * rng.standard_normal(n)

    # Features: shared + specific on orthonormal planted directions, plus isotropic noise.
    features, bases = {}, {}
    for m in mods:
        d = c.dim(m)
        ab = _orthonormal(rng, d, c.r_shared + c.r_specific)
        a, bm = ab[:, :c.r_shared], ab[:, c.r_shared:]
        x = c.shared_strength * z_s @ a.T + c.specific_strength * z_m[m] @ bm.T
        x += (c.noise_norm / math.sqrt(d)) * rng.standard_normal((n, d))
        features[m], bases[m] = x.astype(np.float32), a

    empty = np.zeros(0, np.int64)
    data = SyntheticData(c, seed, empty, empty, empty, features, bases, z_s, z_m, z_cf, b, empty)
    q = data.preference_embedding()  # (n, R); score = p_u . q_i + b_i
    p = rng.standard_normal((c.n_users, q.shape[1]))  # concatenated user latents [p^s, p^m..., p^cf]
    data.user_factor = p

    n_u = _sample_counts(rng, c)
    users, items = _sample_interactions(rng, c, p, q, b, n_u)
    fix_users, fix_items = _fixup_missing_items(rng, c, p, q, items)
    users = np.concatenate([users, fix_users])
    items = np.concatenate([items, fix_items])

    order, x_label = split_labels(rng, users)
    data.user_ids, data.item_ids, data.x_label = users[order], items[order], x_label
    data.n_fixup = len(fix_items)
    validate(data)
    return data


def _check_interactions(users: np.ndarray, items: np.ndarray, labels: np.ndarray,
                        n_users: int, n_items: int) -> None:
    def fail(msg: str) -> None:
        raise ValueError(f"invalid synthetic data: {msg}")

    if not np.isin(labels, (0, 1, 2)).all():
        fail("x_label outside {0, 1, 2}")
    if users.min() < 0 or items.min() < 0:
        fail("negative ids")
    if users.max() + 1 != n_users or len(np.unique(users)) != n_users:
        fail("user ids are not exactly 0..n_users-1")
    if items.max() + 1 != n_items or len(np.unique(items)) != n_items:
        fail("item ids are not exactly 0..n_items-1 (some item never occurs)")
    pairs = users.astype(np.int64) * n_items + items
    if len(np.unique(pairs)) != len(pairs):
        fail("duplicate (user, item) pairs (this also covers a pair in two splits)")
    per_split = np.zeros((n_users, 3), dtype=np.int64)
    np.add.at(per_split, (users, labels), 1)
    if (per_split == 0).any():
        fail("some user lacks a train, valid or test interaction")


def _check_features(features: dict[str, np.ndarray], n_items: int) -> None:
    for m, x in features.items():
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[0] != n_items:
            raise ValueError(f"{m} features: want float32 (n_items={n_items}, d), got {x.dtype} {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{m} features contain non-finite values")


def validate(data: SyntheticData) -> None:
    """Check the in-memory data against the MMRec invariants; raise ValueError on the first failure."""
    _check_interactions(data.user_ids, data.item_ids, data.x_label, data.n_users, data.n_items)
    _check_features(data.features, data.n_items)
    for m, a in data.planted_bases.items():
        if not np.allclose(a.T @ a, np.eye(a.shape[1]), atol=1e-10):
            raise ValueError(f"{m} planted basis is not orthonormal")


def check_mmrec(out_dir: str | Path, name: str = "synthetic") -> dict:
    """Re-read a written data set (pandas for the .inter) and check the MMRec invariants.

    Returns a small summary dict; raises ValueError on any violation.
    """
    out = Path(out_dir)
    meta = json.loads((out / "meta.json").read_text())
    df = pd.read_csv(out / f"{name}.inter", sep="\t")
    if tuple(df.columns) != INTER_COLUMNS:
        raise ValueError(f"{name}.inter header {tuple(df.columns)} != {INTER_COLUMNS}")
    n_users, n_items = int(df.userID.max()) + 1, int(df.itemID.max()) + 1  # as MMRec infers them
    _check_interactions(df.userID.to_numpy(), df.itemID.to_numpy(), df.x_label.to_numpy(), n_users, n_items)
    features = {m: np.load(out / f"{m}_feat.npy") for m in meta["config"]["modalities"]}
    _check_features(features, n_items)
    return {"n_users": n_users, "n_items": n_items, "n_interactions": len(df),
            "dims": {m: x.shape[1] for m, x in features.items()}}


def _meta(data: SyntheticData) -> dict:
    c = data.config
    config = dataclasses.asdict(c)
    config["modalities"] = list(c.modalities)
    base = PRESETS.get(c.preset)
    overrides = {} if base is None else {
        k: v for k, v in config.items() if getattr(base, k) != getattr(c, k)
    }
    return {
        "generator": "clear_lab.synthetic", "generator_version": GENERATOR_VERSION,
        "preset": c.preset, "seed": data.seed, "config": config, "overrides": overrides,
        "n_users": data.n_users, "n_items": data.n_items, "n_interactions": data.n_interactions,
        "n_fixup_interactions": data.n_fixup,
        "split_counts": {s: int((data.x_label == i).sum()) for i, s in enumerate(("train", "valid", "test"))},
        "dims": {m: int(x.shape[1]) for m, x in data.features.items()},
    }


def write_mmrec(data: SyntheticData, out_dir: str | Path, name: str = "synthetic") -> Path:
    """Write data as an MMRec folder (see module docstring) and return its path.

    Validates before writing and re-reads after.  Overwrites only the files it writes; other files in
    out_dir are left alone (so a stale e.g. audio_feat.npy from an earlier run would survive).
    """
    validate(data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({
        "userID": data.user_ids, "itemID": data.item_ids, "rating": 1,
        "timestamp": np.arange(data.n_interactions), "x_label": data.x_label,
    })
    df.to_csv(out / f"{name}.inter", sep="\t", index=False, lineterminator="\n")
    for m in data.config.modalities:
        np.save(out / f"{m}_feat.npy", data.features[m])
        np.save(out / f"{m}_planted_basis.npy", data.planted_bases[m])
    (out / "meta.json").write_text(json.dumps(_meta(data), indent=2, sort_keys=True) + "\n")
    check_mmrec(out, name)
    return out


def generate_preset(preset: str, out_dir: str | Path, seed: int = 0, name: str | None = None,
                    **overrides) -> Path:
    """Generate a preset (optionally with SyntheticConfig field overrides) and write it to out_dir.

    name defaults to the folder's name, MMRec's convention (data/<dataset>/<dataset>.inter).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown SyntheticConfig field(s) {unknown}; valid: {sorted(fields)}")
    if "modalities" in overrides:  # keep the frozen config hashable when a list is passed
        overrides["modalities"] = tuple(overrides["modalities"])
    config = dataclasses.replace(PRESETS[preset], **overrides)
    return write_mmrec(generate(config, seed), out_dir, name or Path(out_dir).name)

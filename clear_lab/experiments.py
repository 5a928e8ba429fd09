"""Grids of training runs as tidy tables: configurations x seeds, selection on validation, intervals, paired tests.

The notebooks compare CLEAR with its baseline and sweep its knobs. Every such comparison is the same few steps,
kept here so a notebook holds only parameters, calls and plots:

1. :func:`run_grid` trains ``base`` updated by each *variant* (a dict of :class:`~clear_lab.train.TrainConfig`
   fields, ``params`` merged into the base's model parameters) for each seed, through
   :func:`clear_lab.runs.cached_train`, and returns one row per run (variant label, the fields it sets, seed,
   best epoch, validation and test metrics, seconds per epoch, cache key and path).
2. :func:`select_on_valid` averages a *validation* metric over seeds for each value of a swept field and picks
   the best value; test numbers are then read only at that value.
3. :func:`summary_table` gives, per group, the mean over seeds and its Student-t interval
   ``mean -/+ t_{(1+level)/2, n-1} s / sqrt(n)`` (:func:`clear_lab.stats.mean_ci`).
4. :func:`compare_paired` tests run A against run B (rows = seeds) twice: over users (per-user test values
   averaged over the common seeds, then a paired bootstrap and a Wilcoxon signed-rank test on the per-user
   differences ``d_u = a_u - b_u``) and over seeds (paired t-test on the per-seed means ``d_s = a_s - b_s``).

Runs that provably remove nothing are not trained twice (:func:`canonical_config`): under input placement a rank
``k = 0`` or a strength ``lam = 0`` leaves the features byte-for-byte unchanged (``x P = x - lam (x Q) Q^T`` with
``Q`` empty or ``lam = 0``), so the run *is* the no-CLEAR run of the same seed, and an energy-ratio rule under input
placement picks one rank from the raw spectrum once, so it *is* the fixed-rank run at that rank. The row keeps the
requested settings and says which run it reused (``same_as``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clear_lab.data import InteractionData
from clear_lab.projection import CLEARProjector
from clear_lab.runs import DEFAULT_CACHE, cached_train, load_run, run_key
from clear_lab.stats import align_users, mean_ci, paired_bootstrap, paired_seeds_test, paired_wilcoxon
from clear_lab.train import TrainConfig, pick_modalities

# metrics copied into every row: (split, metric)
ROW_METRICS = (("valid", "recall@20"), ("valid", "ndcg@20"), ("test", "recall@10"), ("test", "recall@20"),
               ("test", "ndcg@10"), ("test", "ndcg@20"))
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ",".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


def variant_label(variant: dict[str, Any]) -> str:
    """``variant["label"]``, or the fields it sets joined as ``"clear=input k=4"`` (``"base"`` if none)."""
    if "label" in variant:
        return str(variant["label"])
    parts = [f"{k}={_fmt(v)}" for k, v in variant.items()]
    return " ".join(parts) or "base"


def variant_config(base: TrainConfig, variant: dict[str, Any], seed: int | None = None) -> TrainConfig:
    """``base`` with the variant's fields replaced (``params`` is merged into ``base.params``) and ``seed``."""
    fields = {k: v for k, v in variant.items() if k != "label"}
    unknown = sorted(set(fields) - _CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"variant {variant!r} sets unknown TrainConfig fields {unknown}")
    if "params" in fields:
        fields["params"] = {**base.params, **fields["params"]}
    if seed is not None:
        fields["seed"] = int(seed)
    config = dataclasses.replace(base, **fields)
    config.validate()
    return config


def canonical_config(config: TrainConfig, data: InteractionData | None = None) -> tuple[TrainConfig, str | None]:
    """The configuration that gives exactly the same training as ``config``, and why (None if it is itself).

    * input placement with ``k == 0`` or ``lam == 0`` (any basis, any sides): the features are unchanged, so it is
      the ``clear="none"`` run (CLEAR fields reset to their defaults);
    * input placement with an energy ``ratio`` and ``data`` given: the rank is resolved once on the raw features'
      spectrum (:class:`~clear_lab.projection.CLEARProjector`), so it is the fixed-``k`` run at that rank (and the
      no-CLEAR run if that rank is 0).
    """
    defaults = TrainConfig()
    none_fields = {"clear": "none", "k": None, "ratio": None, "lam": defaults.lam, "clear_basis": "shared",
                   "clear_sides": "both", "clear_modalities": None}
    if config.clear != "input":
        return config, None
    if config.ratio is not None and data is not None:
        a, b = pick_modalities(data, config.clear_modalities)
        k = CLEARProjector(ratio=config.ratio, lam=config.lam).fit(data.features[a], data.features[b]).k_
        fixed = dataclasses.replace(config, k=int(k), ratio=None)
        inner, why = canonical_config(fixed, data)
        picked = f"ratio {config.ratio:g} picks k={k}"
        return inner, (f"{picked}; {why}" if why else picked)
    if config.k == 0 or config.lam == 0:
        reason = "k=0" if config.k == 0 else "lam=0"
        return dataclasses.replace(config, **none_fields), f"{reason}: nothing removed = no CLEAR"
    return config, None


def run_grid(data: InteractionData, base: TrainConfig, variants: Sequence[dict[str, Any]], seeds: Iterable[int],
             cache_dir: str | Path = DEFAULT_CACHE, force: bool = False, progress: bool = True,
             dedupe: bool = True) -> pd.DataFrame:
    """Train every variant of ``base`` for every seed (cached) and return one row per (variant, seed).

    Args:
        data: the dataset every run trains on.
        base: the shared settings (model, epochs, threads, ``progress=False`` ...).
        variants: dicts of TrainConfig fields (plus an optional ``label``); ``params`` merges into ``base.params``.
            ``[{}]`` runs the base alone.
        seeds: TrainConfig seeds; run s of variant A is paired with run s of variant B.
        cache_dir: :func:`~clear_lab.runs.cached_train`'s folder; a finished run is read back, never retrained.
        force: retrain and overwrite cached runs.
        progress: print one line per run.
        dedupe: reuse the equivalent run for settings that remove nothing (see :func:`canonical_config`).

    Returns:
        DataFrame with columns ``label``, one column per field the variants set (``params`` entries as
        ``param_<name>``), ``model``, ``clear``, ``k``, ``ratio``, ``lam``, ``clear_basis``, ``clear_sides``,
        ``seed``, ``k_used``, ``energy_removed``, ``best_epoch``, ``epochs_run``, ``valid_<metric>`` and
        ``test_<metric>`` for :data:`ROW_METRICS`, ``sec_per_epoch``, ``run_seconds`` (the run's own training and
        evaluation time), ``wall_seconds`` (this call's, ~0 when cached), ``cached``, ``same_as``, ``dataset``,
        ``data_hash``, ``key`` and ``path`` (the cached record, for :func:`per_user` and :func:`load_record`).
    """
    seeds = [int(s) for s in seeds]
    if not variants:
        raise ValueError("run_grid needs at least one variant ([{}] runs the base config alone)")
    if not seeds:
        raise ValueError("run_grid needs at least one seed")
    labels = [variant_label(v) for v in variants]
    if len(set(labels)) != len(labels):
        raise ValueError(f"variant labels must be unique, got {labels}")
    cache_dir = Path(cache_dir)
    data_hash = data.content_hash()
    rows = []
    for variant, label in zip(variants, labels):
        for seed in seeds:
            requested = variant_config(base, variant, seed)
            config, same_as = canonical_config(requested, data) if dedupe else (requested, None)
            key = run_key(data, config)
            path = cache_dir / f"{key}.json"
            was_cached = path.is_file() and not force
            t0 = time.perf_counter()
            result = cached_train(data, config, cache_dir=cache_dir, force=force)
            wall = time.perf_counter() - t0
            rec = result.record
            row: dict[str, Any] = {"label": label}
            for name, value in variant.items():
                if name == "label":
                    continue
                if name == "params":
                    row.update({f"param_{p}": v for p, v in value.items()})
                else:
                    row[name] = value
            for name in ("model", "clear", "k", "ratio", "lam", "clear_basis", "clear_sides"):
                row.setdefault(name, getattr(requested, name))
            clear = rec.get("clear", {})
            row.update({
                "seed": seed,
                "k_used": clear.get("k_used", 0) if requested.clear != "none" else 0,
                "energy_removed": clear.get("energy_removed", 0.0 if requested.clear != "latent" else np.nan),
                "best_epoch": rec["best_epoch"],
                "epochs_run": rec["epochs_run"],
            })
            if same_as and same_as.endswith("no CLEAR"):
                row["k_used"], row["energy_removed"] = (0 if requested.k == 0 else requested.k), 0.0
            for split, metric in ROW_METRICS:
                src = rec["best_valid"] if split == "valid" else rec["test"]
                row[f"{split}_{metric}"] = float(src[metric]) if src else np.nan
            secs = rec.get("seconds", {})
            row.update({"sec_per_epoch": secs.get("train_epoch_mean"), "run_seconds": secs.get("total"),
                        "wall_seconds": wall, "cached": was_cached, "same_as": same_as, "dataset": data.name,
                        "data_hash": data_hash, "key": key, "path": str(path)})
            rows.append(row)
            if progress:
                how = "cached" if was_cached else f"trained in {wall:.0f} s"
                note = f" [{same_as}]" if same_as else ""
                print(f"{label:<28} seed {seed:<5} valid R@20 {row['valid_recall@20']:.4f}  test R@20 "
                      f"{row['test_recall@20']:.4f}  best epoch {row['best_epoch']:>4}  ({how}){note}", flush=True)
    return pd.DataFrame(rows)


def load_study_data(dataset: str, data_dir: str | Path | None = None, smoke: bool = False) -> InteractionData:
    """Load the data a notebook studies: a synthetic preset (generated on first use), a folder, or ``"tiktok"``.

    Known real sets get their two modalities (:func:`clear_lab.datasets.dataset_modalities`). In ``smoke`` mode a
    synthetic preset is swapped for the ``tiny`` preset with that preset's preference weights (``w_shared``,
    ``w_specific``), so ``control`` stays the negative case in miniature (written to ``<data_dir>/tiny-<preset>``).
    """
    from clear_lab.data import load_dataset
    from clear_lab.datasets import DATA_DIR, dataset_modalities, resolve_dataset
    from clear_lab.synthetic import GENERATOR_VERSION, PRESETS, generate_preset

    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    if smoke and dataset in PRESETS and dataset != "tiny":
        src, tiny = PRESETS[dataset], PRESETS["tiny"]
        weights = {f: getattr(src, f) for f in ("w_shared", "w_specific") if getattr(src, f) != getattr(tiny, f)}
        if weights:
            path = data_dir / f"tiny-{dataset}"
            want = dataclasses.asdict(dataclasses.replace(tiny, **weights))
            want["modalities"] = list(want["modalities"])
            try:
                meta = json.loads((path / "meta.json").read_text())
            except (OSError, ValueError):
                meta = {}
            current = meta.get("generator_version") == GENERATOR_VERSION and meta.get("config") == want
            if not (current and (path / f"tiny-{dataset}.inter").is_file()):  # absent, or from another generator
                generate_preset("tiny", path, seed=0, **weights)
            return load_dataset(path)
        dataset = "tiny"
    path = resolve_dataset(dataset, data_dir)
    return load_dataset(path, modalities=dataset_modalities(dataset, path))


# ----------------------------------------------------------------------------------------------------------------
# reading runs back


def _path_of(run: pd.Series | dict | str | Path) -> Path:
    if isinstance(run, (str, Path)):
        return Path(run)
    return Path(run["path"])


def load_record(run: pd.Series | dict | str | Path) -> dict[str, Any]:
    """The full result record of a grid row (or of a cached run's JSON path)."""
    return json.loads(_path_of(run).read_text())


def per_user(run: pd.Series | dict | str | Path, metric: str = "recall@20",
             split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """``(users, values)`` of one run's per-user ``metric`` on ``split`` (ascending user ids)."""
    res = load_run(_path_of(run))
    ev = res.test if split == "test" else res.valid
    if ev is None:
        raise ValueError(f"run {_path_of(run)} has no per-user {split} values")
    if metric not in ev.per_user:
        raise KeyError(f"metric {metric!r} not stored; have {sorted(ev.per_user)}")
    return np.asarray(ev.users), np.asarray(ev.per_user[metric], dtype=np.float64)


def learning_curves(df: pd.DataFrame, metric: str = "recall@20", split: str = "valid",
                    keep: Sequence[str] = ("label", "model", "seed")) -> pd.DataFrame:
    """Long table of the per-epoch ``split`` metric of every row: ``keep`` columns, ``epoch``, ``loss``, value.

    Only ``valid`` is measured every epoch (``test`` is stored only at improving epochs)."""
    out = []
    for _, row in df.iterrows():
        for h in load_record(row)["history"]:
            if split in h:
                out.append({**{c: row[c] for c in keep if c in row}, "epoch": h["epoch"], "loss": h["loss"],
                            f"{split}_{metric}": h[split][metric]})
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------------------------
# intervals and selection


def summary_table(df: pd.DataFrame, by: str | Sequence[str] = "label",
                  metrics: Sequence[str] = ("valid_recall@20", "test_recall@20", "test_ndcg@20"),
                  level: float = 0.95) -> pd.DataFrame:
    """Mean over seeds and its t-interval, per group and metric (long format).

    Columns: the ``by`` columns, ``metric``, ``n`` (seeds), ``mean``, ``low``, ``high``, ``std`` (ddof 1). Groups
    keep their first-appearance order. With one seed ``low``/``high``/``std`` are NaN (no spread to estimate).
    """
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for keys, g in df.groupby(by, sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        for m in metrics:
            vals = g[m].to_numpy(dtype=np.float64)
            mean, low, high = mean_ci(vals, level)
            rows.append({**dict(zip(by, keys)), "metric": m, "n": len(vals), "mean": mean, "low": low,
                         "high": high, "std": float(vals.std(ddof=1)) if len(vals) > 1 else np.nan})
    return pd.DataFrame(rows)


def format_ci(summary: pd.DataFrame, index: str | Sequence[str] = "label", digits: int = 4) -> pd.DataFrame:
    """A wide, readable view of :func:`summary_table`: one row per group, one ``"mean [low, high]"`` column per
    metric (``"mean"`` alone with one seed)."""
    index = [index] if isinstance(index, str) else list(index)

    def cell(r) -> str:
        if np.isfinite(r["low"]):
            return f"{r['mean']:.{digits}f} [{r['low']:.{digits}f}, {r['high']:.{digits}f}]"
        return f"{r['mean']:.{digits}f}"

    s = summary.assign(value=summary.apply(cell, axis=1))
    wide = s.pivot(index=index, columns="metric", values="value")
    order = list(dict.fromkeys(s["metric"]))
    groups = list(dict.fromkeys(map(tuple, s[index].to_numpy())))
    wide = wide.reindex(pd.MultiIndex.from_tuples(groups, names=index) if len(index) > 1 else [g[0] for g in groups])
    return wide[order].rename_axis(columns=None)


@dataclasses.dataclass
class Selection:
    """The value of ``by`` with the highest mean validation ``metric`` over seeds.

    Attributes:
        by: the swept column; metric: the validation column it was chosen on; best: the chosen value;
        table: per value ``n``, ``mean``, ``low``, ``high`` (t-interval over seeds), ``chosen`` (bool).
    """

    by: str
    metric: str
    best: Any
    table: pd.DataFrame


def select_on_valid(df: pd.DataFrame, by: str, metric: str = "valid_recall@20", level: float = 0.95) -> Selection:
    """Choose the value of ``by`` whose mean over seeds of ``metric`` is highest (ties: the first in row order).

    ``metric`` must be a validation column: choosing a knob on test numbers would report an optimistic test
    score. The returned table keeps the first-appearance order of the values.
    """
    if not metric.startswith("valid_"):
        raise ValueError(f"select on a validation metric (valid_*), got {metric!r}")
    if df[by].isna().any():
        raise ValueError(f"column {by!r} has missing values; select within rows that set it")
    table = summary_table(df, by=by, metrics=[metric], level=level).drop(columns="metric")
    best_pos = int(np.argmax(table["mean"].to_numpy()))
    table["chosen"] = np.arange(len(table)) == best_pos
    best = table[by].iloc[best_pos]
    best = best.item() if hasattr(best, "item") else best
    return Selection(by=by, metric=metric, best=best, table=table)


# ----------------------------------------------------------------------------------------------------------------
# paired comparisons


def _as_frame(runs: pd.DataFrame | pd.Series) -> pd.DataFrame:
    return runs.to_frame().T if isinstance(runs, pd.Series) else runs


def compare_paired(run_a: pd.DataFrame | pd.Series, run_b: pd.DataFrame | pd.Series, metric: str = "recall@20",
                   split: str = "test", n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """A (``run_a``) against B (``run_b``): grid rows of one variant each, paired by seed.

    Over users: for every common seed the two runs' per-user values are aligned (:func:`clear_lab.stats.align_users`,
    common users in ascending order), then averaged over seeds per user; on ``d_u = a_u - b_u`` a paired bootstrap
    (percentile interval, p-value by interval inversion) and a Wilcoxon signed-rank test. Over seeds: a paired t-test
    on the per-seed means (NaN with one seed).

    Returns a flat dict: ``n_seeds``, ``seeds``, ``n_users``, ``mean_a``, ``mean_b``, ``diff``, ``rel_diff``
    (``diff / mean_b``), ``boot_low``, ``boot_high``, ``boot_p``, ``wilcoxon_p``, ``seed_low``, ``seed_high``,
    ``seed_t``, ``seed_p`` and ``per_seed_boot_p`` (one per seed).
    """
    a, b = _as_frame(run_a), _as_frame(run_b)
    for name, f in (("run_a", a), ("run_b", b)):
        if f["seed"].duplicated().any():
            raise ValueError(f"{name} has several rows per seed: pass the rows of one variant")
    if set(a["data_hash"]) != set(b["data_hash"]) or a["data_hash"].nunique() != 1:
        raise ValueError("compare_paired needs runs on the same data (their users must be the same)")
    seeds = [s for s in a["seed"] if s in set(b["seed"])]
    if not seeds:
        raise ValueError("run_a and run_b share no seed to pair on")
    a = a.set_index("seed").loc[seeds]
    b = b.set_index("seed").loc[seeds]
    users_ref, sum_a, sum_b, per_seed_p = None, None, None, []
    for s in seeds:
        ua, va = per_user(a.loc[s], metric, split)
        ub, vb = per_user(b.loc[s], metric, split)
        users, xa, xb = align_users(ua, va, ub, vb)
        if users_ref is None:
            users_ref, sum_a, sum_b = users, xa.copy(), xb.copy()
        else:
            if not np.array_equal(users, users_ref):
                raise ValueError(f"seed {s} evaluated other users than seed {seeds[0]}")
            sum_a += xa
            sum_b += xb
        per_seed_p.append(paired_bootstrap(xa, xb, n_boot=n_boot, seed=seed, level=level)["p_value"])
    ma, mb = sum_a / len(seeds), sum_b / len(seeds)
    boot = paired_bootstrap(ma, mb, n_boot=n_boot, seed=seed, level=level)
    wil = paired_wilcoxon(ma, mb)
    col = f"{split}_{metric}"
    seed_test = paired_seeds_test(a[col].to_numpy(float), b[col].to_numpy(float), level=level)
    mean_a, mean_b = float(a[col].mean()), float(b[col].mean())
    return {"metric": col, "n_seeds": len(seeds), "seeds": [int(s) for s in seeds], "n_users": int(len(users_ref)),
            "mean_a": mean_a, "mean_b": mean_b, "diff": mean_a - mean_b,
            "rel_diff": (mean_a - mean_b) / mean_b if mean_b else np.nan,
            "boot_low": boot["low"], "boot_high": boot["high"], "boot_p": boot["p_value"],
            "wilcoxon_p": wil["p_value"], "seed_low": seed_test["low"], "seed_high": seed_test["high"],
            "seed_t": seed_test["t_statistic"], "seed_p": seed_test["p_value"], "per_seed_boot_p": per_seed_p}


def paired_effects(df: pd.DataFrame, group: str, arm: str, treated: Any, control: Any,
                   metrics: Sequence[str] = ("valid_recall@20", "test_recall@20"), level: float = 0.95
                   ) -> pd.DataFrame:
    """Per value of ``group`` (e.g. ``model``), the seed-paired effect of ``arm == treated`` vs ``arm == control``.

    One row per (group, metric): ``mean_treated``, ``mean_control``, ``diff``, ``rel_diff``, the t-interval of the
    per-seed differences (``low``, ``high``), ``p_value`` (paired t-test) and ``n`` seeds. Groups lacking either arm
    are left out.
    """
    rows = []
    for g, sub in df.groupby(group, sort=False):
        t, c = sub[sub[arm] == treated], sub[sub[arm] == control]
        seeds = [s for s in t["seed"] if s in set(c["seed"])]
        if not seeds:
            continue
        t, c = t.set_index("seed").loc[seeds], c.set_index("seed").loc[seeds]
        for m in metrics:
            res = paired_seeds_test(t[m].to_numpy(float), c[m].to_numpy(float), level=level)
            mt, mc = float(t[m].mean()), float(c[m].mean())
            rows.append({group: g, "metric": m, "n": len(seeds), "mean_treated": mt, "mean_control": mc,
                         "diff": mt - mc, "rel_diff": (mt - mc) / mc if mc else np.nan, "low": res["low"],
                         "high": res["high"], "p_value": res["p_value"]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------------
# the standard plots


def bar_ci(ax, summary: pd.DataFrame, x: str, metric: str, hue: str | None = None, points: pd.DataFrame | None = None,
           colors: dict | None = None, ylabel: str | None = None):
    """Bars of ``mean`` with ``[low, high]`` error bars from :func:`summary_table` rows of ``metric``.

    ``hue`` splits each x position into side-by-side bars; ``points`` (the grid rows) overlays each seed's value.
    Returns the axes. Single-seed groups get no error bar.
    """
    s = summary[summary["metric"] == metric]
    xs = list(dict.fromkeys(s[x]))
    hues = list(dict.fromkeys(s[hue])) if hue else [None]
    width = 0.8 / len(hues)
    for j, h in enumerate(hues):
        sh = s if h is None else s[s[hue] == h]
        pos, means, err = [], [], [[], []]
        for i, xv in enumerate(xs):
            r = sh[sh[x] == xv]
            if r.empty:
                continue
            r = r.iloc[0]
            pos.append(i + (j - (len(hues) - 1) / 2) * width)
            means.append(r["mean"])
            err[0].append(r["mean"] - r["low"] if np.isfinite(r["low"]) else 0.0)
            err[1].append(r["high"] - r["mean"] if np.isfinite(r["high"]) else 0.0)
            if points is not None:
                pts = points[points[x] == xv] if h is None else points[(points[x] == xv) & (points[hue] == h)]
                ax.scatter(np.full(len(pts), pos[-1]), pts[metric], s=12, color="black", zorder=3, alpha=0.7)
        color = (colors or {}).get(h) if h is not None else None
        ax.bar(pos, means, width=width * 0.92, yerr=err, capsize=3, label=None if h is None else str(h),
               color=color, alpha=0.85)
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_ylabel(ylabel or metric)
    if hue:
        ax.legend(title=hue, fontsize="small")
    return ax


def sweep_ci(ax, summary: pd.DataFrame, x: str, metric: str, chosen: Any = None, label: str | None = None,
             color=None, marker: str = "o"):
    """Line of ``mean`` over the swept ``x`` with the interval shaded, and the chosen value marked."""
    s = summary[summary["metric"] == metric].sort_values(x)
    xs, m = s[x].to_numpy(float), s["mean"].to_numpy(float)
    line = ax.plot(xs, m, marker=marker, label=label or metric, color=color)[0]
    lo, hi = s["low"].to_numpy(float), s["high"].to_numpy(float)
    if np.isfinite(lo).any():
        ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
    if chosen is not None:
        ax.axvline(float(chosen), color="grey", linestyle="--", linewidth=1)
        hit = s[s[x] == chosen]
        if not hit.empty:
            ax.scatter([float(chosen)], [hit["mean"].iloc[0]], s=90, facecolors="none", edgecolors="red",
                       linewidths=2, zorder=4)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    return ax

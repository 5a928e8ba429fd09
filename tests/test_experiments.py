"""Grid runner, validation-based selection, intervals over seeds and paired comparisons (tiny data, 2-3 epochs)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from clear_lab import experiments as ex  # noqa: E402
from clear_lab.projection import CLEARProjector  # noqa: E402
from clear_lab.runs import run_key  # noqa: E402
from clear_lab.stats import mean_ci, paired_bootstrap  # noqa: E402
from clear_lab.train import TrainConfig  # noqa: E402


def base(model="freedom", **kw):
    cfg = dict(model=model, epochs=3, patience=20, batch_size=256, device="cpu", progress=False, threads=1)
    cfg.update(kw)
    return TrainConfig(**cfg)


@pytest.fixture(scope="module")
def grid(tiny_data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    variants = [{"label": "none"}, {"label": "clear", "clear": "input", "k": 2}]
    df = ex.run_grid(tiny_data, base(), variants, seeds=[1, 2], cache_dir=cache, progress=False)
    return df, cache, variants


def test_grid_has_one_row_per_variant_and_seed(grid, tiny_data):
    df, cache, variants = grid
    assert len(df) == 4
    assert list(df["label"]) == ["none", "none", "clear", "clear"] and list(df["seed"]) == [1, 2, 1, 2]
    for split, metric in ex.ROW_METRICS:
        assert np.isfinite(df[f"{split}_{metric}"]).all()
    assert (df["k_used"] == [0, 0, 2, 2]).all()
    assert (df.loc[df.label == "clear", "energy_removed"] > 0).all()
    assert (df["best_epoch"] < df["epochs_run"]).all() and (df["epochs_run"] == 3).all()
    # the key is the cache key of the (seeded) config, and the run is read back on the second call
    cfg = ex.variant_config(base(), variants[1], seed=2)
    assert df["key"].iloc[3] == run_key(tiny_data, cfg)
    again = ex.run_grid(tiny_data, base(), variants, seeds=[1, 2], cache_dir=cache, progress=False)
    assert again["cached"].all() and not df["cached"].any()
    pd.testing.assert_series_equal(again["test_recall@20"], df["test_recall@20"])


def test_variant_config_merges_params_and_rejects_unknown_fields():
    cfg = ex.variant_config(base(params={"knn_k": 5}), {"params": {"reg_weight": 1e-3}, "lam": 0.5}, seed=9)
    assert cfg.params == {"knn_k": 5, "reg_weight": 1e-3} and cfg.lam == 0.5 and cfg.seed == 9
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        ex.variant_config(base(), {"kk": 3})
    with pytest.raises(ValueError, match="exactly one"):
        ex.variant_config(base(), {"clear": "input"})  # validated: no k or ratio


def test_settings_that_remove_nothing_reuse_the_no_clear_run(grid, tiny_data):
    df, cache, _ = grid
    variants = [{"label": "k0", "clear": "input", "k": 0}, {"label": "lam0", "clear": "input", "k": 2, "lam": 0.0},
                {"label": "pca0", "clear": "input", "k": 0, "clear_basis": "pca"}]
    alias = ex.run_grid(tiny_data, base(), variants, seeds=[1], cache_dir=cache, progress=False)
    none = df[(df.label == "none") & (df.seed == 1)].iloc[0]
    assert (alias["key"] == none["key"]).all() and alias["cached"].all()
    assert (alias["test_recall@20"] == none["test_recall@20"]).all()
    assert alias["same_as"].str.contains("no CLEAR").all()
    assert list(alias["k"]) == [0, 2, 0] and list(alias["lam"]) == [1.0, 0.0, 1.0]  # the requested settings kept
    assert (alias["energy_removed"] == 0).all()


def test_ratio_under_input_placement_is_the_fixed_rank_it_picks(tiny_data):
    a, b = tiny_data.modalities[:2]
    k = CLEARProjector(ratio=0.5).fit(tiny_data.features[a], tiny_data.features[b]).k_
    cfg_ratio = ex.variant_config(base(), {"clear": "input", "ratio": 0.5}, seed=1)
    cfg_fixed = ex.variant_config(base(), {"clear": "input", "k": k}, seed=1)
    canon, why = ex.canonical_config(cfg_ratio, tiny_data)
    assert canon == cfg_fixed and f"k={k}" in why
    assert ex.canonical_config(cfg_fixed, tiny_data) == (cfg_fixed, None)
    latent = ex.variant_config(base("vbpr"), {"clear": "latent", "ratio": 0.5}, seed=1)
    assert ex.canonical_config(latent, tiny_data) == (latent, None)  # latent rank changes during training


def test_summary_table_matches_mean_ci(grid):
    df, _, _ = grid
    s = ex.summary_table(df, by="label", metrics=["test_recall@20", "valid_ndcg@20"])
    assert list(s["label"]) == ["none", "none", "clear", "clear"]
    for _, r in s.iterrows():
        vals = df.loc[df.label == r["label"], r["metric"]].to_numpy()
        m, lo, hi = mean_ci(vals)
        assert r["n"] == 2 and r["mean"] == pytest.approx(m) and r["low"] == pytest.approx(lo)
        assert r["high"] == pytest.approx(hi) and r["low"] <= r["mean"] <= r["high"]
    one = ex.summary_table(df[df.seed == 1], by="label", metrics=["test_recall@20"])
    assert one["low"].isna().all() and (one["n"] == 1).all()


def test_select_on_valid_picks_the_highest_mean_validation_value():
    df = pd.DataFrame({"k": [1, 1, 2, 2, 4, 4], "seed": [1, 2] * 3,
                       "valid_recall@20": [0.10, 0.30, 0.25, 0.26, 0.40, 0.0],
                       "test_recall@20": [0.9, 0.9, 0.0, 0.0, 0.0, 0.0]})
    sel = ex.select_on_valid(df, "k")
    assert sel.best == 2  # means 0.20, 0.255, 0.20: k=2, whatever test says
    assert list(sel.table["k"]) == [1, 2, 4] and sel.table["chosen"].tolist() == [False, True, False]
    assert sel.table["mean"].tolist() == pytest.approx([0.2, 0.255, 0.2])
    tie = ex.select_on_valid(df.assign(**{"valid_recall@20": 0.5}), "k")
    assert tie.best == 1  # ties go to the first value
    with pytest.raises(ValueError, match="validation"):
        ex.select_on_valid(df, "k", metric="test_recall@20")


def test_per_user_values_average_to_the_record_mean(grid):
    df, _, _ = grid
    users, vals = ex.per_user(df.iloc[2], "recall@20", "test")
    assert np.all(np.diff(users) > 0) and len(users) == len(vals)
    assert vals.mean() == pytest.approx(df["test_recall@20"].iloc[2])
    _, v_valid = ex.per_user(df.iloc[2], "ndcg@20", "valid")
    assert v_valid.mean() == pytest.approx(df["valid_ndcg@20"].iloc[2])


def test_compare_paired_pairs_users_and_seeds(grid):
    df, _, _ = grid
    a, b = df[df.label == "clear"], df[df.label == "none"]
    res = ex.compare_paired(a, b, n_boot=500)
    assert res["n_seeds"] == 2 and res["seeds"] == [1, 2]
    assert res["diff"] == pytest.approx(a["test_recall@20"].mean() - b["test_recall@20"].mean())
    for key in ("boot_p", "wilcoxon_p", "seed_p", *res["per_seed_boot_p"]):
        p = res[key] if isinstance(key, str) else key
        assert 0 <= p <= 1
    assert res["boot_low"] <= res["boot_high"]
    # the user-level bootstrap runs on per-user values averaged over the seeds
    ua1, va1 = ex.per_user(a.iloc[0])
    ua2, va2 = ex.per_user(a.iloc[1])
    ub1, vb1 = ex.per_user(b.iloc[0])
    ub2, vb2 = ex.per_user(b.iloc[1])
    assert np.array_equal(ua1, ub1) and np.array_equal(ua2, ub2)
    boot = paired_bootstrap((va1 + va2) / 2, (vb1 + vb2) / 2, n_boot=500, seed=0)
    assert res["boot_p"] == boot["p_value"] and res["boot_low"] == boot["low"]
    same = ex.compare_paired(a, a, n_boot=200)
    assert same["diff"] == 0 and same["wilcoxon_p"] == 1.0 and same["boot_p"] == 1.0
    one = ex.compare_paired(a.iloc[0], b.iloc[0], n_boot=200)
    assert one["n_seeds"] == 1 and np.isnan(one["seed_p"]) and 0 <= one["boot_p"] <= 1
    with pytest.raises(ValueError, match="several rows per seed"):
        ex.compare_paired(df, b)


def test_paired_effects_per_group(grid):
    df, _, _ = grid
    eff = ex.paired_effects(df.assign(model="freedom"), "model", "label", "clear", "none",
                            metrics=["valid_recall@20"])
    assert len(eff) == 1
    r = eff.iloc[0]
    t = df.loc[df.label == "clear", "valid_recall@20"].to_numpy()
    c = df.loc[df.label == "none", "valid_recall@20"].to_numpy()
    assert r["diff"] == pytest.approx((t - c).mean()) and r["n"] == 2
    assert r["low"] <= r["diff"] <= r["high"] or not np.isfinite(r["low"])


def test_learning_curves_come_from_the_history(grid):
    df, _, _ = grid
    lc = ex.learning_curves(df)
    assert len(lc) == int(df["epochs_run"].sum())
    rec = ex.load_record(df.iloc[0])
    first = lc[(lc.label == "none") & (lc.seed == 1)]
    assert first["valid_recall@20"].tolist() == [h["valid"]["recall@20"] for h in rec["history"]]
    assert first["valid_recall@20"].max() == pytest.approx(df["valid_recall@20"].iloc[0])


def test_plots_draw_intervals(grid):
    df, _, _ = grid
    s = ex.summary_table(df.assign(k=df["k_used"]), by=["label", "k"])
    fig, (a1, a2) = plt.subplots(1, 2)
    ex.bar_ci(a1, s, "label", "test_recall@20", points=df)
    assert len(a1.patches) == 2
    ex.sweep_ci(a2, s, "k", "valid_recall@20", chosen=2)
    assert len(a2.lines) >= 2  # the mean line and the chosen-value marker line
    plt.close(fig)


def test_format_ci_keeps_group_order(grid):
    df, _, _ = grid
    s = ex.summary_table(df, by="label", metrics=["test_recall@20"])
    wide = ex.format_ci(s)
    assert list(wide.index) == ["none", "clear"] and list(wide.columns) == ["test_recall@20"]
    r = s.iloc[0]
    assert wide.iloc[0, 0] == f"{r['mean']:.4f} [{r['low']:.4f}, {r['high']:.4f}]"


def test_smoke_data_keeps_the_control_weights(tmp_path):
    from clear_lab.synthetic import PRESETS

    d = ex.load_study_data("control", tmp_path, smoke=True)
    assert d.n_items == PRESETS["tiny"].n_items and (tmp_path / "tiny-control").is_dir()
    t = ex.load_study_data("default", tmp_path, smoke=True)
    assert t.n_items == PRESETS["tiny"].n_items and t.name == "tiny"
    assert d.content_hash() != t.content_hash()
    meta = (tmp_path / "tiny-control" / "meta.json")
    stale = meta.read_text().replace('"w_shared": 0.85', '"w_shared": 0.5')
    meta.write_text(stale)  # as if written by another generator design: regenerated on the next load
    again = ex.load_study_data("control", tmp_path, smoke=True)
    assert again.content_hash() == d.content_hash() and '"w_shared": 0.85' in meta.read_text()

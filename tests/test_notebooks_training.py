"""Notebooks 02 (CLEAR vs no CLEAR) and 03 (ablations) in smoke mode: tiny data, one seed, two epochs.

The tests read each notebook's ``metrics.json`` and check properties of the numbers (never printed text): every run
of the grid is there, metrics are finite, choices come from the validation values of the swept grid, intervals are
ordered and p-values are probabilities.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.nbutil import run_notebook

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def ordered(low, mean, high) -> bool:
    """``low <= mean <= high``, or no interval at all (one seed: NaN/None bounds)."""
    if low is None or high is None or not (finite(low) and finite(high)):
        return True
    return low - 1e-12 <= mean <= high + 1e-12


def prob(p) -> bool:
    return finite(p) and 0.0 <= p <= 1.0


def prob_or_missing(p) -> bool:
    return p is None or (isinstance(p, float) and math.isnan(p)) or prob(p)


@pytest.fixture(scope="module")
def nb02(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nb02")
    return run_notebook("02_projected_vs_unprojected.ipynb", tmp), tmp


@pytest.fixture(scope="module")
def nb03(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nb03")
    return run_notebook("03_ablations.ipynb", tmp), tmp


def test_nb02_grid_and_projected_metrics(nb02):
    m, tmp = nb02
    s = m["settings"]
    assert s["smoke"] is True and s["dataset"] == "tiny" and len(s["seeds"]) == 1 and s["epochs"] == 2
    assert m["n_runs"] == m["n_runs_expected"] == len(s["seeds"]) * 6  # 4 backbones, 2 of them also with CLEAR
    assert 0 <= m["k_used"] == m["suggested_k"]
    rows = {(r["model"], r["label"], r["metric"]): r for r in m["summary"]}
    for model in ("freedom", "vbpr"):
        for metric in ("valid_recall@20", "test_recall@20", "test_ndcg@20"):
            r = rows[(model, "CLEAR", metric)]
            assert finite(r["mean"]) and 0 <= r["mean"] <= 1 and r["n"] == len(s["seeds"])
            assert ordered(r["low"], r["mean"], r["high"])
    assert ("lightgcn", "CLEAR", "test_recall@20") not in rows  # CLEAR does not apply to ID-only backbones
    assert ("bpr", "no CLEAR", "test_recall@20") in rows


def test_nb02_paired_tests(nb02):
    m, _ = nb02
    tests = m["paired_tests"]
    assert {(t["model"], t["metric"]) for t in tests} == {(mod, f"test_{x}") for mod in ("freedom", "vbpr")
                                                         for x in ("recall@20", "ndcg@20")}
    for t in tests:
        assert prob(t["boot_p"]) and prob(t["wilcoxon_p"]) and prob_or_missing(t["seed_p"])
        assert t["boot_low"] <= t["boot_high"] and t["n_users"] > 0
        assert t["diff"] == pytest.approx(t["mean_a"] - t["mean_b"])
    for ps in m["paired_tests_per_seed_boot_p"].values():
        assert all(prob(p) for p in ps)
    assert m["seconds_total"] > 0


def test_nb02_figures_go_under_out_dir(nb02):
    _, tmp = nb02
    figs = tmp / "out" / "figures"
    for name in ("02_clear_vs_none_bars", "02_learning_curves"):
        assert (figs / f"{name}.png").is_file() and (figs / f"{name}.csv").is_file()
        meta = json.loads((figs / f"{name}.json").read_text())
        assert meta["settings"]["dataset"] == "tiny" and meta["caption"]


def test_nb03_choices_come_from_validation(nb03):
    m, _ = nb03
    s = m["settings"]
    assert m["backbone"] in ("freedom", "vbpr")
    valid_effects = [e for e in m["backbone_effects"] if e["metric"] == "valid_recall@20"]
    best = max(valid_effects, key=lambda e: abs(e["rel_diff"]) if finite(e["rel_diff"]) else -1)
    assert m["backbone"] == best["model"]

    ks = m["k_sweep"]
    assert sorted(r["k"] for r in ks) == sorted(s["k_grid"]) and 0 in s["k_grid"] and m["k_null"] in s["k_grid"]
    assert m["k_star"] in s["k_grid"]
    assert m["k_star"] == max(ks, key=lambda r: r["mean"])["k"]  # the highest mean validation value
    assert sum(r["chosen"] for r in ks) == 1 and next(r for r in ks if r["chosen"])["k"] == m["k_star"]
    lams = m["lam_sweep"]
    assert sorted(r["lam"] for r in lams) == sorted(s["lam_grid"]) and m["lam_star"] in s["lam_grid"]
    assert m["lam_star"] == max(lams, key=lambda r: r["mean"])["lam"]
    assert m["k_ablation"] == (m["k_star"] if m["k_star"] > 0 else max(m["k_null"], 1))
    for r in ks + lams:
        assert r["n"] == len(s["sweep_seeds"]) and ordered(r["low"], r["mean"], r["high"])


def test_nb03_every_ablation_is_recorded(nb03):
    m, _ = nb03
    for key in ("a_summary", "e_summary", "f_summary", "g_summary", "h_summary", "d_summary"):
        assert m[key], key
        for r in m[key]:
            assert finite(r["mean"]) and ordered(r["low"], r["mean"], r["high"])
    assert {r["label"] for r in m["e_summary"]} == {"no CLEAR", f"shared (CLEAR) k={m['k_ablation']}",
                                                     f"random k={m['k_ablation']}", f"PCA k={m['k_ablation']}"}
    assert {r["label"] for r in m["f_summary"]} == {"no CLEAR", "input", "latent"}
    assert len({r["label"] for r in m["g_summary"]}) == 4
    assert {r["data"] for r in m["h_summary"]} == {"tiny", "tiny-control"}
    assert len({r["schedule"] for r in m["a_summary"]}) == 2  # MMRec's and the ablation learning rate
    for key in ("a_tests", "e_tests", "f_tests", "g_tests", "h_tests"):
        for t in m[key]:
            assert prob(t["boot_p"]) and prob(t["wilcoxon_p"]) and prob_or_missing(t["seed_p"]), key
            assert t["boot_low"] <= t["boot_high"]
    assert set(m["ratio_ranks"]) == {f"{r:g}" for r in m["settings"]["ratio_grid"]}
    assert all(0 <= v <= 24 for v in m["ratio_ranks"].values())  # at most min(d_image, d_text) of tiny
    assert prob(m["chosen_test"]["boot_p"])
    assert len(m["overview"]) >= 8


def test_nb03_run_counts_match_the_grid(nb03):
    m, _ = nb03
    s = m["settings"]
    n = m["n_trained"]
    # a fresh cache: each section trains exactly its runs that no earlier section trained
    n_seeds, n_sweep = len(s["seeds"]), len(s["sweep_seeds"])
    assert n["backbone"] == 2 * 2 * n_seeds  # freedom and vbpr, with and without CLEAR (notebook 02's runs)
    assert n["a"] == 2 * n_seeds  # the ablation schedule, with and without
    k_new = [kk for kk in s["k_grid"] if kk not in (0, m["k_null"])]  # k=0 and the null's k are (a)'s runs
    assert n["b"] == len(k_new) * n_sweep
    assert n["c"] == len([lv for lv in s["lam_grid"] if lv not in (0.0, 1.0)]) * n_sweep  # 0: none, 1: in (b)
    assert n.get("d", 0) == len({kk for kk in m["ratio_ranks"].values() if kk not in s["k_grid"]}) * n_sweep
    assert n["e"] == 2 * n_sweep and n["g"] == 2 * n_sweep
    if m["backbone"] == s["latent_model"]:
        assert n["f"] == n_sweep  # latent only: no CLEAR and input are (b)'s runs (k=0 and the null's k)
    else:
        assert n["f"] == 3 * n_sweep  # no CLEAR, input and latent on another backbone
    assert n["h"] == 2 * n_seeds  # the control data (the default arms are (a)'s)


def test_nb02_takes_every_backbone_without_edits(tmp_path):
    """The notebook's ``models`` parameter accepts all registered backbones: each trains, and exactly the ones with
    modality features also train with CLEAR."""
    from clear_lab.models import MODELS

    m = run_notebook("02_projected_vs_unprojected.ipynb", tmp_path, models=list(MODELS))
    multimodal = [n for n, cls in MODELS.items() if cls.uses_features]
    assert m["n_runs"] == m["n_runs_expected"] == len(MODELS) + len(multimodal)
    rows = {(r["model"], r["label"]) for r in m["summary"] if r["metric"] == "test_recall@20"}
    assert {name for name, _ in rows} == set(MODELS)
    assert {name for name, label in rows if label == "CLEAR"} == set(multimodal)

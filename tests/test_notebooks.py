"""The notebooks: committed clean (no outputs, kernel python3, a typed parameters cell), every one of them runs top to
bottom in smoke mode under nbval, and the papermill smoke runs of 01 and 04 record numbers with the properties the
text claims. Smoke runs use the tiny preset and a few epochs; the figures they draw never land in figures/."""

from __future__ import annotations

import os
import subprocess
import sys

import nbformat
import numpy as np
import pytest

from tests.nbutil import NOTEBOOKS, ROOT, run_notebook

NOTEBOOK_FILES = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
STANDARD_PARAMETERS = {"dataset", "data_dir", "models", "seeds", "epochs", "k", "lam", "smoke", "out_dir", "fig_dir",
                       "cache_dir", "threads"}
NBVAL_TIMEOUT_S = 300


def _figures_listing() -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in (ROOT / "figures").glob("*")}


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    import papermill as pm

    nb = nbformat.read(str(path), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["kernelspec"]["display_name"] == "Python 3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip the outputs before committing"
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged parameters"
    assert nb.cells[0].cell_type == "markdown", "open with what the reader will learn"
    params = pm.inspect_notebook(str(path))
    missing = STANDARD_PARAMETERS - set(params)
    assert not missing, f"standard parameters missing: {sorted(missing)}"
    untyped = [p for p, info in params.items() if info["inferred_type_name"] == "None" or not info["help"]]
    assert not untyped, f"parameters without a type or a comment (papermill cannot read them): {untyped}"


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_notebook_runs_under_nbval_in_smoke_mode(path):
    before = _figures_listing()
    env = {**os.environ, "CLEAR_LAB_SMOKE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
                           f"--nbval-cell-timeout={NBVAL_TIMEOUT_S}", "-p", "no:cacheprovider", "-q",
                           str(path.relative_to(ROOT))], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=4 * NBVAL_TIMEOUT_S)
    assert proc.returncode == 0, f"nbval failed on {path.name}:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    assert _figures_listing() == before, "a smoke run wrote into the committed figures/"


@pytest.mark.notebooks
@pytest.mark.slow
def test_redundancy_diagnosis_smoke(tmp_path):
    m = run_notebook("01_redundancy_diagnosis.ipynb", tmp_path, umap="yes")
    assert m["planted_rank"] == 3  # the tiny preset
    assert m["suggested_k"] == m["planted_rank"] == m["k_used"]
    assert set(m["max_principal_angle_deg"]) == {"image", "text"}
    assert max(m["max_principal_angle_deg"].values()) < 5
    assert m["identity_max_abs_error"] < 1e-8
    s, sp = np.array(m["singular_values"]), np.array(m["projected_singular_values"])
    assert len(s) == len(sp) == 24 and np.all(np.diff(s) <= 0)
    assert np.allclose(np.sort(sp)[::-1][: len(s) - 3], s[3:], rtol=1e-8, atol=1e-10)  # lam = 1: the rest is kept
    assert m["lam"] == 1.0
    assert m["linear_cka_after"] < 0.5 * m["linear_cka_before"]
    assert 0 < m["co_interaction_chance"] < 1
    rates = [r["value"] for r in m["knn_agreement"]]
    assert rates and all(np.isfinite(rates))
    views = m["embedding_view"]
    assert len(views) == 4 and all(0 <= v["trustworthiness"] <= 1 for v in views)  # UMAP ran
    raw = {v["modality"]: v["smoothness"] for v in views if v["variant"] == "raw"}
    clear = {v["modality"]: v["smoothness"] for v in views if v["variant"] == "CLEAR"}
    assert all(raw[mod] > clear[mod] for mod in raw)  # the planted factor organises raw neighbourhoods, not projected
    figs = tmp_path / "out" / "figures"
    for name in ("spectrum", "cka-between-modalities", "cka-vs-embeddings", "knn-agreement", "umap"):
        assert (figs / f"01-tiny-{name}.png").is_file() and (figs / f"01-tiny-{name}.csv").is_file()


@pytest.mark.notebooks
@pytest.mark.slow
def test_training_dynamics_smoke(tmp_path):
    m = run_notebook("04_training_dynamics.ipynb", tmp_path)
    assert m["identity_max_abs_error"] < 1e-8
    assert m["probe_matches_plain_vbpr_999"] is True
    assert len(m["spectra"]) == 2  # measured plain run and latent CLEAR run
    for per_epoch in m["spectra"].values():
        arr = np.array(per_epoch)
        assert arr.shape[0] == 3 and np.all(np.isfinite(arr)) and np.all(np.diff(arr, axis=1) <= 1e-12)
    assert len(m["test_metrics"]) == 2
    for metrics in m["test_metrics"].values():
        assert np.isfinite(metrics["recall@20"]) and np.isfinite(metrics["ndcg@20"])
    clear_runs = [r for r in m["runs"] if r["placement"].startswith("latent CLEAR")]
    assert clear_runs and all(np.isfinite(r["test_recall@20"]) for r in clear_runs)
    for name in ("spectra", "amplification", "identity"):
        assert (tmp_path / "out" / "figures" / f"04-tiny-{name}.png").is_file()

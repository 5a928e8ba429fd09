"""The clear-lab command line end to end on a tiny generated set, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clear_lab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> int:
    return main(list(args))


def test_generate_diagnose_project_train(tmp_path, capsys):
    data = tmp_path / "tiny"
    assert run("generate", "--preset", "tiny", "--out", str(data), "--seed", "1") == 0
    assert (data / "tiny.inter").is_file() and (data / "image_planted_basis.npy").is_file()

    assert run("diagnose", "--data", str(data), "--json", str(tmp_path / "d.json"), "--permutations", "10") == 0
    report = json.loads((tmp_path / "d.json").read_text())
    planted = json.loads((data / "meta.json").read_text())["config"]["r_shared"]
    assert report["suggested_k"] == planted and report["k_used"] == planted
    assert max(report["principal_angles_deg_a"]) < 5 and max(report["principal_angles_deg_b"]) < 5
    assert report["linear_cka_after"] < report["linear_cka_before"]

    out = tmp_path / "projected"
    assert run("project", "--data", str(data), "--k", "2", "--out", str(out)) == 0
    x = np.load(out / "image_feat.npy")
    assert x.dtype == np.float32 and x.shape == np.load(data / "image_feat.npy").shape
    assert (out / "tiny.inter").is_file() and (out / "clear_projector.npz").is_file()
    assert run("project", "--data", str(data), "--k", "2", "--out", str(out)) == 2  # no silent overwrite
    assert "exists; pass --force" in capsys.readouterr().err

    res = tmp_path / "run.json"
    assert run("train", "--data", str(data), "--model", "freedom", "--clear", "input", "--k", "2", "--epochs", "2",
               "--seed", "3", "--set", "knn_k=5", "reg_weight=1e-4", "--no-progress", "--threads", "1",
               "--json", str(res)) == 0
    rec = json.loads(res.read_text())
    assert rec["config"]["params"]["knn_k"] == 5 and rec["config"]["params"]["reg_weight"] == 1e-4
    assert rec["clear"]["k_used"] == 2 and len(rec["history"]) == 2

    # the projected files are an MMRec-format folder the trainer (or MMRec) reads unchanged
    assert run("train", "--data", str(out), "--model", "vbpr", "--epochs", "1", "--no-progress",
               "--json", str(tmp_path / "run2.json")) == 0


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "{d}", "--model", "lightgcn", "--clear", "input", "--k", "2"], "uses no modality features"),
    (["train", "--data", "{d}", "--model", "vbpr", "--clear", "input"], "needs --k or --ratio"),
    (["train", "--data", "{d}", "--model", "freedom", "--set", "bogus=1"], "has no parameter bogus"),
    (["train", "--data", "{d}", "--model", "freedom", "--set", "knn_k"], "expects key=value"),
    (["train", "--data", "{d}/missing", "--model", "bpr"], "data folder not found"),
    (["diagnose", "--data", "{d}", "--k", "-1"], "k"),
    (["diagnose", "--data", "{d}", "--lam", "1.5"], "lam"),
    (["project", "--data", "{d}", "--ratio", "0", "--out", "{d}/p"], "ratio"),
    (["project", "--data", "{d}", "--k", "1", "--out", "{d}"], "would overwrite the raw ones"),
    (["train", "--data", "{d}", "--model", "vbpr", "--features", "image={d}/nope.npy"], "nope.npy: feature file"),
])
def test_errors_are_one_line_and_nonzero(tiny_dir, tmp_path, capsys, args, message):
    args = [a.replace("{d}", str(tiny_dir)) for a in args]
    if "--json" not in args and args[0] in ("train", "diagnose"):
        args += ["--json", str(tmp_path / "x.json")]
    assert run(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith(f"clear-lab {args[0]}: error:")


def test_module_entry_point_and_help():
    out = subprocess.run([sys.executable, "-m", "clear_lab", "train", "--help"], capture_output=True, text=True,
                         check=True)
    for flag in ("--data", "--model", "--clear", "--k", "--ratio", "--lam", "--modalities", "--epochs",
                 "--patience", "--seed", "--set", "--json", "--features"):
        assert flag in out.stdout


def test_environment_yml_lists_what_pyproject_lists():
    import tomllib
    import yaml

    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(py["dependencies"])
    for group in py["optional-dependencies"].values():
        wanted += [d for d in group if not d.startswith("clear-lab")]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)

    def name(req: str) -> str:
        return req.split(";")[0].replace(" ", "").split("=")[0].split(">")[0].split("<")[0].split("[")[0].lower()

    assert {name(r) for r in wanted} <= {name(r) for r in pip if not r.startswith("-e")}
    lock = {line.split("==")[0].lower() for line in (ROOT / "requirements-cpu.lock").read_text().splitlines()
            if "==" in line}
    assert {name(r) for r in wanted} - {"torch"} <= lock  # the lock pins every dependency (torch comes first)


@pytest.fixture(scope="module")
def unseen_data(tmp_path_factory):
    """A set no test has used: the tiny preset drawn with another seed, written by the CLI itself."""
    out = tmp_path_factory.mktemp("unseen") / "unseen"
    assert main(["generate", "--preset", "tiny", "--out", str(out), "--seed", "2026", "--name", "unseen"]) == 0
    return out


@pytest.mark.parametrize("name", sorted(__import__("clear_lab.models", fromlist=["MODELS"]).MODELS))
def test_train_every_backbone_from_the_command_line(name, unseen_data, tmp_path):
    from clear_lab.models import get_model

    cls = get_model(name)
    placements = [p for p in ("none", "input", "latent") if cls.refusal(p) is None]
    for placement in placements:
        res = tmp_path / f"{placement}.json"
        extra = [] if placement == "none" else ["--clear", placement, "--k", "2"]
        assert run("train", "--data", str(unseen_data), "--model", name, *extra, "--epochs", "1", "--no-progress",
                   "--threads", "1", "--device", "cpu", "--json", str(res)) == 0
        rec = json.loads(res.read_text())
        assert rec["config"]["model"] == name and rec["clear"]["placement"] == placement
        assert rec["data"]["name"] == "unseen" and 0 <= rec["test"]["recall@20"] <= 1
    for refused in sorted({"input", "latent"} - set(placements)):
        assert run("train", "--data", str(unseen_data), "--model", name, "--clear", refused, "--k", "2",
                   "--epochs", "1", "--no-progress", "--json", str(tmp_path / "x.json")) == 2
        assert not (tmp_path / "x.json").exists()

"""benchmarks/parity.py's table: means over the seeds both sides ran, relative gaps, and the file it writes into."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def parity(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("parity", ROOT / "benchmarks" / "parity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [("clear-lab", 999, 0.22, 0.11), ("clear-lab", 1, 0.20, 0.09), ("clear-lab", 2, 0.5, 0.5),
            ("MMRec", 999, 0.20, 0.10), ("MMRec", 1, 0.20, 0.10)]
    path = tmp_path / "runs.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=mod.FIELDS)
        w.writeheader()
        for side, seed, r, n in rows:
            w.writerow({"side": side, "data": "default", "model": "vbpr", "seed": seed, "epoch_cap": 300,
                        "recall@20": r, "ndcg@20": n, "best_epoch": 10, "epochs_run": 31, "train_s_per_epoch": 1.0,
                        "train_cpu_s_per_epoch": 0.5})
    monkeypatch.setattr(mod, "CSV", path)
    return mod


def test_gap_is_over_the_seeds_both_sides_ran(parity, capsys):
    parity.table(SimpleNamespace(write=None))
    line = [ln for ln in capsys.readouterr().out.splitlines() if "| vbpr |" in ln][0]
    cells = [c.strip() for c in line.strip("|").split("|")]
    # seed 2 ran only on our side: left out; R@20 mean (0.22 + 0.20) / 2 = 0.21 vs 0.20 -> +5.0%
    assert cells[2] == "1, 999" and cells[4:7] == ["0.2100", "0.2000", "+5.0%"]
    assert cells[7:10] == ["0.1000", "0.1000", "+0.0%"]


def test_write_replaces_only_between_the_markers(parity, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- parity-table:start -->\nold\n<!-- parity-table:end -->\nafter\n")
    parity.table(SimpleNamespace(write=str(doc)))
    text = doc.read_text()
    assert text.startswith("intro\n<!-- parity-table:start -->\n| data |") and text.endswith("-->\nafter\n")
    assert "old" not in text and text.count("| vbpr |") == 1
    doc.write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        parity.table(SimpleNamespace(write=str(doc)))

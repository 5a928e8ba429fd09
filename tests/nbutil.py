"""Running a notebook in smoke mode from a test: papermill with the project's kernel, per-cell and whole-run
limits, then the metrics the notebook recorded (tests compare numbers, never printed text)."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT_S = 300


def run_notebook(name: str, tmp_path: Path, **parameters) -> dict:
    """Execute ``notebooks/<name>`` with ``smoke=True`` and ``out_dir``/``fig_dir`` under ``tmp_path``; return its
    ``metrics.json``. Raises papermill's error (naming the cell) when a cell fails."""
    import papermill as pm

    out_dir = tmp_path / "out"
    params = {"smoke": True, "out_dir": str(out_dir), "fig_dir": str(out_dir / "figures"),
              "cache_dir": str(tmp_path / "cache"), "data_dir": str(tmp_path / "data"), **parameters}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pm.execute_notebook(str(NOTEBOOKS / name), str(tmp_path / name), parameters=params, kernel_name="python3",
                        cwd=str(NOTEBOOKS), progress_bar=False, execution_timeout=CELL_TIMEOUT_S,
                        start_timeout=120)
    return json.loads((out_dir / "metrics.json").read_text())

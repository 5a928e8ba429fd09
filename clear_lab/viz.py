"""Saving figures the reproducible way: a PNG with its caption in the metadata, the tidy CSV behind it, and a JSON
sidecar naming the dataset, seeds and settings. Outside a notebook the figure is closed afterwards (open figures
pile up in long runs); inside one, the inline backend displays it at the end of the cell and closes it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import matplotlib

# Headless scripts get Agg; inside a Jupyter kernel (JupyterLab, papermill, nbval) keep the inline backend, or no
# figure would show in the notebook.
if "MPLBACKEND" not in os.environ and "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, name: str, table=None, caption: str = "", settings: dict[str, Any] | None = None,
                out_dir: str | Path = "figures", dpi: int = 120) -> Path:
    """Write ``<out_dir>/<name>.png`` (+ ``.csv`` from ``table``, a pandas DataFrame, + ``.json``); return the PNG.

    ``settings`` should name at least the dataset, seeds and the run settings; they go into the PNG's
    ``Description`` and the JSON sidecar. The PNG carries no timestamp or software version, so re-rendering the
    same numbers gives the same file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(settings or {})
    desc = caption + (" | " + "; ".join(f"{k}={v}" for k, v in settings.items()) if settings else "")
    png = out / f"{name}.png"
    fig.savefig(png, dpi=dpi, bbox_inches="tight", metadata={"Title": name, "Description": desc, "Software": None})

    if table is not None:
        table.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.json").write_text(json.dumps({"figure": name, "caption": caption, "settings": settings},
                                                 indent=2, default=str) + "\n")
    if "ipykernel" not in sys.modules:
        plt.close(fig)  # scripts: free it now; in a notebook the inline backend shows it, then closes it
    return png

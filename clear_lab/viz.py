"""Saving figures the reproducible way: a PNG with its caption in the metadata, the tidy CSV behind it, and a JSON
sidecar naming the dataset, seeds and settings. The figure is closed afterwards (open figures pile up in long
papermill runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)  # headless by default; JupyterLab's inline backend still takes over
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
    plt.close(fig)
    return png

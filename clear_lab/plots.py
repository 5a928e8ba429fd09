"""Small plotting helpers shared by the notebooks (matplotlib only; saving goes through :mod:`clear_lab.viz`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def grouped_bars(ax, table: pd.DataFrame, chance: float | None = None, chance_label: str = "chance",
                 colors: Sequence[str] | None = None, value_labels: bool = False, fmt: str = "{:.3g}") -> None:
    """Bars of ``table`` (rows = groups on the x axis, columns = bars within a group, e.g. raw / CLEAR / control).

    ``chance`` draws a dashed horizontal reference line. ``value_labels`` writes each bar's value above it.
    The legend is left to the caller (``ax.legend()`` or ``fig.legend()``) so several panels can share one.
    """
    n_rows, n_cols = table.shape
    width = 0.8 / max(n_cols, 1)
    x = np.arange(n_rows)
    for j, column in enumerate(table.columns):
        kw = {"color": colors[j]} if colors is not None else {}
        bars = ax.bar(x + j * width, table[column].to_numpy(dtype=float), width, label=str(column), **kw)
        if value_labels:
            ax.bar_label(bars, labels=[fmt.format(v) for v in table[column].to_numpy(dtype=float)], fontsize=7)
    ax.set_xticks(x + width * (n_cols - 1) / 2, [str(i) if not isinstance(i, tuple) else " ".join(map(str, i))
                                                 for i in table.index])
    if chance is not None:
        ax.axhline(chance, color="k", lw=0.8, ls="--", label=chance_label)

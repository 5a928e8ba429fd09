"""Helpers for notebooks run by hand, by papermill and by nbval: smoke mode and the recorded-metrics sidecar.

Every notebook writes ``<out_dir>/metrics.json``; tests read that file back and assert properties on the numbers,
never on printed text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SMOKE_ENV = "CLEAR_LAB_SMOKE"


def smoke_mode(parameter: bool = False) -> bool:
    """The notebook's ``smoke`` parameter, switched on as well by ``CLEAR_LAB_SMOKE=1`` (what nbval uses)."""
    return bool(parameter) or os.environ.get(SMOKE_ENV, "") not in ("", "0", "false", "False")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def record(out_dir: str | Path, name: str, value: Any) -> Any:
    """Add ``name: value`` to ``<out_dir>/metrics.json`` (created on first use) and return ``value``."""
    path = Path(out_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = _jsonable(value)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return value

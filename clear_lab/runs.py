"""Training runs cached on disk, so figures re-render without retraining and an interrupted batch resumes.

A run is keyed by ``sha256(full TrainConfig, data content hash, clear_lab version, training-code hash)``: change
any setting, any feature byte, the package version or the source of a module that shapes a run (trainer, models,
graphs, data, metrics, projection) and it trains again. Knobs that cannot change the numbers (progress bar, thread
count, graph-cache folder) are left out of the key. Each finished run is written as ``<key>.json`` (the record) and
``<key>.per_user.npz`` (per-user metrics), each first to a temporary name and then renamed, so a batch killed
mid-write never leaves a half-written run that would later be read as finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from clear_lab import __version__
from clear_lab.data import InteractionData
from clear_lab.metrics import EvalResult
from clear_lab.train import RunResult, TrainConfig, train

DEFAULT_CACHE = Path("runs") / "cache"
_NOT_IN_KEY = ("progress", "threads", "cache_dir")
_CODE = ("train.py", "data.py", "graph.py", "metrics.py", "projection.py", "controls.py", "models")


def code_hash() -> str:
    """sha256 of the source files whose change can change a run's numbers."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in _CODE:
        for path in sorted((root / name).rglob("*.py")) if (root / name).is_dir() else [root / name]:
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run_key(data: InteractionData, config: TrainConfig) -> str:
    """The cache key of training ``config`` on ``data``."""
    cfg = {k: v for k, v in asdict(config).items() if k not in _NOT_IN_KEY}
    payload = json.dumps({"config": cfg, "data": data.content_hash(), "version": __version__, "code": code_hash()},
                         sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_run(result: RunResult, path: Path) -> None:
    """Write a run's record and per-user values atomically (npz first: the json marks the run finished)."""
    arrays = {}
    for split, res in (("test", result.test), ("valid", result.valid)):
        if res is not None:
            arrays[f"{split}_users"] = res.users
            arrays.update({f"{split}_{k}": v for k, v in res.per_user.items()})

    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    _atomic_write(path.with_suffix(".per_user.npz"), write_npz)
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(result.record, indent=1) + "\n"))


def load_run(path: str | Path) -> RunResult:
    """Read a run written by :func:`save_run` (or ``RunResult.save``)."""
    path = Path(path)
    record = json.loads(path.read_text())
    splits: dict[str, EvalResult | None] = {"test": None, "valid": None}
    npz_path = path.with_suffix(".per_user.npz")
    if npz_path.is_file():
        with np.load(npz_path) as z:
            for split in splits:
                if f"{split}_users" in z:
                    per_user = {k[len(split) + 1:]: z[k] for k in z.files
                                if k.startswith(split + "_") and k != f"{split}_users"}
                    mean = record["test"] if split == "test" else record["best_valid"]
                    splits[split] = EvalResult(mean=dict(mean), per_user=per_user, users=z[f"{split}_users"],
                                               seconds=0.0)
    return RunResult(record, splits["test"], splits["valid"])


def cached_train(data: InteractionData, config: TrainConfig, cache_dir: str | Path = DEFAULT_CACHE,
                 force: bool = False) -> RunResult:
    """``train(data, config)``, or the stored result of the same run. ``force`` retrains and overwrites."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{run_key(data, config)}.json"
    if path.is_file() and not force:
        try:
            return load_run(path)
        except (OSError, ValueError, KeyError):
            pass  # unreadable leftovers: train again and overwrite
    result = train(data, config)
    save_run(result, path)
    return result

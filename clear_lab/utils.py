"""Small shared helpers: seeding, device resolution, thread control and the environment record of a run."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; anything else is passed to ``torch.device`` (checked)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device (use --device cpu or auto)")
    return dev


def set_threads(n: int | None) -> None:
    """Cap torch's intra-op threads (``None`` leaves the default). Two torch processes with default thread counts
    on a 2-core machine slow each other down many times over, so parallel workers should ask for one."""
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        torch.set_num_threads(n)


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the checkout holding this package, or None outside a git checkout."""
    path = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    """Versions, device and threads: enough to tell two result records apart."""
    versions = {}
    for pkg in ("clear-lab", "torch", "numpy", "scipy", "pandas"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    dev = str(device)
    if device.type == "cuda":
        dev = f"{device} ({torch.cuda.get_device_name(device)})"
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "device": dev, "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "git_commit": git_commit()}

"""Shared fixtures. Tests that read ../shared/data skip when it is absent, unless CLEAR_LAB_REQUIRE_SHARED_DATA=1
(set by .ci/run, since CI has it), which turns the skip into a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CLEAR_LAB_SHARED_DATA", ROOT.parent / "shared" / "data"))

# One torch thread per test process: parallel workers on a 2-core machine otherwise slow each other down badly.
torch.set_num_threads(1)


def shared_dataset(name: str) -> Path:
    """Path of ../shared/data/<name>, skipping (or failing in CI) when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        msg = f"research data {path} not present (read from ../shared/data, never committed)"
        if os.environ.get("CLEAR_LAB_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + "; CLEAR_LAB_REQUIRE_SHARED_DATA=1 requires it")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The `tiny` synthetic preset written in MMRec format (seed 0)."""
    from clear_lab.synthetic import generate_preset

    return generate_preset("tiny", tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def tiny_data(tiny_dir):
    from clear_lab.data import load_dataset

    return load_dataset(tiny_dir)

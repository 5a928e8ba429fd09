"""LATTICE: placeholder, being written (issue 4)."""

from __future__ import annotations

from clear_lab.models.base import Recommender


class LATTICE(Recommender):
    name = "lattice"
    uses_features = True

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        raise NotImplementedError("LATTICE is not written yet")

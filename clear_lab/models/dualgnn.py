"""DualGNN: placeholder, being written (issue 4)."""

from __future__ import annotations

from clear_lab.models.base import Recommender


class DualGNN(Recommender):
    name = "dualgnn"
    uses_features = True

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        raise NotImplementedError("DualGNN is not written yet")

"""LGMRec: placeholder, being written (issue 4)."""

from __future__ import annotations

from clear_lab.models.base import Recommender


class LGMRec(Recommender):
    name = "lgmrec"
    uses_features = True

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        raise NotImplementedError("LGMRec is not written yet")

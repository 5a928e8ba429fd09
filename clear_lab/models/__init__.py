"""Backbones that host CLEAR. ``MODELS`` maps a CLI name to its class; ``get_model`` looks one up."""

from __future__ import annotations

from clear_lab.models.base import Recommender
from clear_lab.models.bpr import BPR
from clear_lab.models.freedom import FREEDOM
from clear_lab.models.lightgcn import LightGCN
from clear_lab.models.vbpr import VBPR

MODELS: dict[str, type[Recommender]] = {m.name: m for m in (BPR, LightGCN, VBPR, FREEDOM)}


def get_model(name: str) -> type[Recommender]:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


__all__ = ["MODELS", "Recommender", "get_model"]

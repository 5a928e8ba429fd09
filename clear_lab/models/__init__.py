"""Backbones that host CLEAR. ``MODELS`` maps a CLI name to its class; ``get_model`` looks one up.

The 14 backbones of the CLEAR paper's comparison, each following the MMRec toolbox (see ``docs/backbones.md``
for where each takes its modality features and which CLEAR placements it supports).
"""

from __future__ import annotations

from clear_lab.models.base import Recommender
from clear_lab.models.bm3 import BM3
from clear_lab.models.bpr import BPR
from clear_lab.models.dragon import DRAGON
from clear_lab.models.dualgnn import DualGNN
from clear_lab.models.freedom import FREEDOM
from clear_lab.models.grcn import GRCN
from clear_lab.models.lattice import LATTICE
from clear_lab.models.lgmrec import LGMRec
from clear_lab.models.lightgcn import LightGCN
from clear_lab.models.mgcn import MGCN
from clear_lab.models.mmgcn import MMGCN
from clear_lab.models.slmrec import SLMRec
from clear_lab.models.smore import SMORE
from clear_lab.models.vbpr import VBPR

# ID-only first, then the multimodal ones in the order of MMRec's survey table
MODELS: dict[str, type[Recommender]] = {m.name: m for m in (
    BPR, LightGCN, VBPR, MMGCN, GRCN, DualGNN, LATTICE, SLMRec, BM3, FREEDOM, MGCN, DRAGON, LGMRec, SMORE)}


def register(cls: type[Recommender]) -> type[Recommender]:
    """Make your own backbone reachable by name (``clear-lab train --model`` from Python, the notebooks'
    ``models`` parameter). Usable as a class decorator; see ``docs/backbones.md``."""
    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise TypeError(f"register expects a Recommender subclass, got {cls!r}")
    if not cls.name or cls.name != cls.name.lower():
        raise ValueError(f"{cls.__name__}.name must be a non-empty lower-case string, got {cls.name!r}")
    if cls.name in MODELS and MODELS[cls.name] is not cls:
        raise ValueError(f"a backbone named {cls.name!r} is already registered ({MODELS[cls.name].__name__})")
    MODELS[cls.name] = cls
    return cls


def get_model(name: str) -> type[Recommender]:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


__all__ = ["MODELS", "Recommender", "get_model", "register"]

"""The one small interface every backbone shares, so CLEAR plugs in without editing a model.

Two hooks:

* **Input placement** needs nothing from a model: the trainer hands it already-projected feature matrices
  (``features``), so anything the model builds from features (FREEDOM's item-item kNN graph, VBPR's content
  embedding) sees the projected ones.
* **Latent placement** needs the model's *encoded per-modality item embeddings*. A model that has them passes them
  through ``self.modality_hook(z_a, z_b)`` in every forward pass; by default the hook is the identity, and the
  trainer swaps in :class:`clear_lab.projection.LatentCLEAR`. ``latent_hook`` (a class attribute) says which tensors
  that is, in words, or is None when the model has no such embedding (then latent placement is refused).

A backbone implements ``loss(users, pos, neg)`` for one BPR batch and ``scores(users)`` for full ranking. The
trainer calls ``scores`` inside ``torch.no_grad()`` and ``model.eval()``: models must compute a fresh forward pass
there (never reuse embeddings cached from the last training batch, a bug of several MMRec models).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from clear_lab.data import InteractionData


class IdentityHook(nn.Module):
    """The default modality hook: leaves the encoded embeddings as they are."""

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z_a, z_b


class Recommender(nn.Module):
    """Base class of every backbone.

    Subclasses set the class attributes and implement :meth:`loss` and :meth:`scores`.

    Args:
        data: the dataset (interactions; ``data.features`` are the features this model gets, already projected
            under input placement).
        params: model hyper-parameters; missing keys take ``default_params``; unknown keys are an error.
        device: where parameters and buffers live.
        cache_dir: optional folder for graphs built from features.
    """

    name: ClassVar[str] = ""
    uses_features: ClassVar[bool] = False
    latent_hook: ClassVar[str | None] = None  # which encoded embeddings the latent hook sees, in words
    default_params: ClassVar[dict[str, Any]] = {}
    param_help: ClassVar[dict[str, str]] = {}
    deviations: ClassVar[tuple[str, ...]] = ()  # differences from the MMRec implementation, for the docs
    # MMRec's learning_rate_scheduler (s0, s1): the rate at epoch e is lr * s0 ** (e / s1); (1.0, 50) = constant.
    # A model's learning_rate / weight_decay, when MMRec sets or grids them, are keys of default_params.
    lr_schedule: ClassVar[tuple[float, int]] = (1.0, 50)

    def __init__(self, data: InteractionData, params: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu", cache_dir: str | None = None):
        super().__init__()
        self.cache_dir = cache_dir  # where feature-built graphs may be cached (keyed by a hash of the features)
        self.n_users, self.n_items = data.n_users, data.n_items
        self.device = torch.device(device)
        self.params = self.resolve_params(params)
        self.modality_hook: nn.Module = IdentityHook()
        if self.uses_features and not data.features:
            raise ValueError(f"model {self.name!r} needs modality features, but the dataset has none")

    @classmethod
    def check_latent(cls, params: dict[str, Any] | None) -> None:
        """Raise ValueError when latent placement would be meaningless for these parameters."""
        if cls.latent_hook is None:
            raise ValueError(f"model {cls.name!r} has no per-modality encoded embedding: latent placement does not "
                             "apply (use --clear input, or a model with modality encoders)")

    @classmethod
    def refusal(cls, placement: str, params: dict[str, Any] | None = None) -> str | None:
        """Why CLEAR's ``placement`` (none | input | latent) would be meaningless on this model with ``params``,
        or None when it is supported."""
        if placement == "none":
            return None
        if not cls.uses_features:
            return (f"--clear {placement}: model {cls.name!r} uses no modality features, so CLEAR has nothing to "
                    "project (choose a multimodal backbone)")
        if placement == "latent":
            try:
                cls.check_latent(params)
            except ValueError as err:
                return str(err)
        elif placement != "input":
            raise ValueError(f"unknown placement {placement!r}; choose none, input or latent")
        return None

    @classmethod
    def resolve_params(cls, params: dict[str, Any] | None) -> dict[str, Any]:
        params = dict(params or {})
        unknown = sorted(set(params) - set(cls.default_params))
        if unknown:
            known = ", ".join(sorted(cls.default_params)) or "none"
            raise ValueError(f"model {cls.name!r} has no parameter {', '.join(unknown)} (known: {known})")
        out = dict(cls.default_params)
        for k, v in params.items():
            default = cls.default_params[k]
            # --set values arrive as YAML scalars: let an int stand for a float, but keep types otherwise honest
            if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if default is not None and not isinstance(v, type(default)):
                raise ValueError(f"model {cls.name!r} parameter {k} expects {type(default).__name__}, got {v!r}")
            out[k] = v
        return out

    # -- what the trainer calls -------------------------------------------------------------------------------
    def pre_epoch(self, rng: np.random.Generator) -> None:
        """Per-epoch work before training batches (edge dropout, graph resampling). Default: nothing."""

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def begin_eval(self) -> None:
        """Called in eval mode under no_grad before an evaluation: a model may compute its embeddings once here
        (a fresh forward pass, never embeddings left over from training). Default: nothing."""

    def end_eval(self) -> None:
        """Called after an evaluation: drop whatever ``begin_eval`` cached."""

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """``(len(users), n_items)`` preference scores, for full ranking."""
        raise NotImplementedError

    def encoded_modalities(self) -> dict[str, torch.Tensor]:
        """The encoded per-modality item embeddings *before* the hook (for diagnostics). Default: none."""
        return {}


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """L = -mean log sigmoid(s+ - s-), written with logsigmoid for stability (MMRec adds 1e-10 inside the log)."""
    return -torch.nn.functional.logsigmoid(pos_scores - neg_scores).mean()


def emb_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """MMRec's EmbLoss: sum of the (non-squared) Frobenius norms divided by the batch size (rows of the last)."""
    total = sum(torch.linalg.norm(e) for e in embeddings)
    return total / embeddings[-1].shape[0]

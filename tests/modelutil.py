"""Helpers the backbone tests share: a seeded model, a short BPR training loop, one evaluation pass and a
recording modality hook.

Import them as ``from tests.modelutil import build, eval_scores, train_epochs`` (the suite runs with
``python -m pytest`` from the project root).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clear_lab.data import BPRSampler, InteractionData
from clear_lab.models import Recommender, get_model


def build(model: str | type[Recommender], data: InteractionData, params: dict[str, Any] | None = None,
          seed: int = 0, **kwargs: Any) -> Recommender:
    """``model(data, params)`` after ``torch.manual_seed(seed)``, so that one seed gives one initialisation.

    ``model`` is a backbone class or a registered name (``"bm3"``); ``kwargs`` go to the constructor (``device``,
    ``cache_dir``).
    """
    cls = get_model(model) if isinstance(model, str) else model
    torch.manual_seed(seed)
    return cls(data, params or {}, **kwargs)


def train_epochs(model: Recommender, data: InteractionData, epochs: int = 4, lr: float = 1e-2,
                 batch_size: int = 256, seed: int = 0, seed_torch: bool = False,
                 set_to_none: bool = True) -> list[float]:
    """Train ``model`` for ``epochs`` epochs as the trainer does and return the summed batch loss of each epoch.

    Adam at rate ``lr``; batches from a ``BPRSampler(batch_size, seed=seed)``; each epoch calls ``model.train()`` and
    ``model.pre_epoch(rng)`` with ``rng = np.random.default_rng(seed)`` (one generator across the epochs), then
    ``loss / zero_grad(set_to_none) / backward / step`` per batch.

    ``seed_torch`` calls ``torch.manual_seed(seed)`` before the optimiser is created, for models that draw from
    torch's generator while training (BM3's target dropout), so a run does not depend on what ran before it.
    """
    if seed_torch:
        torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sampler = BPRSampler(data.train, data.n_users, data.n_items, batch_size, seed=seed)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        model.train()
        model.pre_epoch(rng)
        total = 0.0
        for u, p, n in sampler.epoch():
            loss = model.loss(torch.as_tensor(u), torch.as_tensor(p), torch.as_tensor(n))
            opt.zero_grad(set_to_none=set_to_none)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total)
    return losses


def eval_scores(model: Recommender, users: torch.Tensor | None = None) -> torch.Tensor:
    """``model.scores(users)`` (all users when None) as the trainer evaluates: eval mode, no gradients, between
    ``begin_eval`` and ``end_eval`` (``end_eval`` runs even when ``scores`` raises). Leaves the model in eval mode."""
    users = torch.arange(model.n_users) if users is None else users
    model.eval()
    with torch.no_grad():
        model.begin_eval()
        try:
            return model.scores(users)
        finally:
            model.end_eval()


class Spy(torch.nn.Module):
    """A modality hook that records the shapes ``(a.shape, b.shape)`` of each call in ``calls`` and returns its
    inputs unchanged."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append((tuple(a.shape), tuple(b.shape)))
        return a, b

"""Spectra of a backbone's encoded modality embeddings across training, measured BEFORE any projection.

Latent-placement CLEAR acts on a backbone's encoded per-modality item embeddings z_a (n, d_a), z_b (n, d_b)
(VBPR: each modality's share ``x^(m) W_m^T`` of the content embedding; FREEDOM: ``Linear_m(x^(m))``). The question
"does the projection keep the encoder from amplifying the shared semantics?" is answered by the spectrum of

    C_z = (z_a - 1 mean_a^T)^T (z_b - 1 mean_b^T) / (n - 1),      C_z = U S W^T,  s_1 >= s_2 >= ...

across epochs, with and without CLEAR. It has to be measured on the embeddings *before* the projection: after it,
the top k singular values are (1 - lam)^2 s_i by construction (see :mod:`clear_lab.projection`), so a measurement
there would only restate the identity.

How it is recorded with the standard trainer. :class:`clear_lab.projection.LatentCLEAR` already records, at every
refresh (the trainer asks for one at each epoch start), the pre-projection spectrum in ``history``, and the trainer
copies it to ``record["clear"]["history"]``. With ``lam = 0`` the projection ``z - 0 (z U) U^T`` returns ``z``
itself, so ``TrainConfig(clear="latent", lam=0.0)`` trains *exactly* the unprojected model (same numbers, bit for
bit: the refresh is a detached statistic and draws no random numbers) while recording its spectrum each epoch.
:func:`probe_config` builds that configuration; the run goes through ``clear_lab.runs.cached_train`` like any
other. History entry e is the state after e epochs of training (entry 0: at initialisation).

:class:`SpectrumProbe` is the same measurement as a stand-alone hook, for custom training loops or tensors the
trainer does not expose: it records the spectrum of whatever passes through it, then hands the pair to an optional
inner hook (e.g. a LatentCLEAR), so ``record -> project`` is one module.

:func:`suppression_identity` checks the identity numerically: the spectrum of the cross-covariance of
(X_a P_a, X_b P_b) against {(1 - lam)^2 s_1, ..., (1 - lam)^2 s_k, s_{k+1}, ...}.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from clear_lab.projection import CLEARProjector, cross_covariance


def probe_config(config: Any, k: int | None = None) -> Any:
    """The measured-but-unprojected twin of a :class:`clear_lab.train.TrainConfig`: ``clear="latent", lam=0``.

    ``k`` only labels the history entries (nothing is projected); it defaults to ``config.k`` or 1. A config that
    already uses latent placement is returned unchanged (it records its own pre-projection spectrum).
    """
    if config.clear == "latent":
        return config
    if config.clear != "none":
        raise ValueError(f"probe_config measures an unprojected run; got clear={config.clear!r} (input placement "
                         "changes the features the encoder sees: measure it with clear='latent', lam=0 on the "
                         "projected data instead)")
    rank = k if k is not None else (config.k if config.k is not None else 1)
    return dataclasses.replace(config, clear="latent", lam=0.0, k=int(rank), ratio=None)


def spectra_table(record: dict, run: str = "", top: int | None = None) -> pd.DataFrame:
    """The per-epoch pre-projection spectra of a latent-placement run record, tidy.

    Columns: run, epoch (0 = at initialisation; e = after e epochs), step (training steps before the
    measurement), rank (1-based), singular_value, k (the rank the run projected, 0 for a ``lam = 0`` probe's
    label only), lam, total_energy (sum of ALL s_i^2, not only the stored first 32), energy_fraction
    (s_i^2 / total_energy). ``top`` keeps the first ``top`` ranks.
    """
    clear = record.get("clear") or {}
    history = clear.get("history")
    if not history:
        raise ValueError("the record holds no latent history: train with clear='latent' (probe_config for an "
                         "unprojected run)")
    lam = float(clear.get("lam", record.get("config", {}).get("lam", float("nan"))))
    rows = []
    for epoch, h in enumerate(history):
        s = np.asarray(h["singular_values"], dtype=np.float64)
        if top is not None:
            s = s[:top]
        total = float(h["total_energy"])
        for i, v in enumerate(s):
            rows.append({"run": run, "epoch": epoch, "step": int(h["step"]), "rank": i + 1,
                         "singular_value": float(v), "k": int(h["k"]), "lam": lam, "total_energy": total,
                         "energy_fraction": float(v * v / total) if total > 0 else 0.0})
    return pd.DataFrame(rows)


def shared_energy(spectra: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per run and epoch: the fraction of cross-covariance energy in the top ``k`` directions,
    ``sum_{i<=k} s_i^2 / sum_i s_i^2``, the top singular value s_1, s_k and s_{k+1}, and the gap s_k / s_{k+1}."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out = []
    for (run, epoch), g in spectra.groupby(["run", "epoch"], sort=True):
        s = g.sort_values("rank")["singular_value"].to_numpy()
        total = float(g["total_energy"].iloc[0])
        nxt = s[k] if len(s) > k else float("nan")
        out.append({"run": run, "epoch": int(epoch), "topk_energy_fraction": float((s[:k] ** 2).sum() / total)
                    if total > 0 else 0.0, "s1": float(s[0]), "s_k": float(s[k - 1]), "s_k_plus_1": float(nxt),
                    "gap": float(s[k - 1] / nxt) if nxt and nxt > 0 else float("nan"), "total_energy": total})
    return pd.DataFrame(out)


def suppression_identity(X_a: Any, X_b: Any, k: int, lam: float) -> dict[str, Any]:
    """Check spec(cov(X_a P_a, X_b P_b)) = {(1 - lam)^2 s_1..s_k, s_{k+1}, ...} numerically, in float64.

    X_a (n, d_a), X_b (n, d_b) are cast to float64 (the float32 arithmetic of ``transform`` would limit the
    agreement to ~1e-6). Returns original (r,), projected (r,) and predicted (r,) spectra (descending: predicted is
    sorted, since (1 - lam)^2 s_k may fall below s_{k+1}), max_abs_error = max |projected - predicted|, and
    max_rel_error = max_abs_error / s_1.
    """
    xa, xb = np.asarray(X_a, dtype=np.float64), np.asarray(X_b, dtype=np.float64)
    proj = CLEARProjector(k=k, lam=lam).fit(xa, xb)
    s = np.asarray(proj.singular_values_, dtype=np.float64)
    pa, pb = proj.transform(xa, xb)
    s_proj = np.linalg.svd(np.asarray(cross_covariance(pa, pb).matrix), compute_uv=False)
    predicted = s.copy()
    predicted[:k] *= (1.0 - lam) ** 2
    predicted = np.sort(predicted)[::-1]
    err = float(np.max(np.abs(s_proj - predicted))) if len(s) else 0.0
    return {"k": int(k), "lam": float(lam), "original": s, "projected": s_proj, "predicted": predicted,
            "max_abs_error": err, "max_rel_error": err / float(s[0]) if len(s) and s[0] > 0 else 0.0}


class SpectrumProbe(nn.Module):
    """A modality hook that records the cross-covariance spectrum of (z_a, z_b), then passes them on.

    forward(z_a (n, d_a), z_b (n, d_b)) -> inner(z_a, z_b), or (z_a, z_b) unchanged without ``inner``.

    A measurement is taken at the first training-mode forward pass after :meth:`request_refresh` (or every
    ``every`` training forward passes when given), from the detached embeddings, in float64, before ``inner``
    sees them. ``request_refresh`` is forwarded to ``inner`` when it has one, so a ``SpectrumProbe`` can stand in for
    a :class:`~clear_lab.projection.LatentCLEAR` wherever that is refreshed. Nothing is recorded in eval mode.

    Attributes:
        history: list of {step, singular_values (first ``top``, numpy float64), total_energy (sum of all s_i^2)},
            the same layout as ``LatentCLEAR.history`` (without k), so :func:`spectra_table` reads both.
    """

    def __init__(self, inner: nn.Module | None = None, every: int | None = None, top: int = 32):
        super().__init__()
        if every is not None and (isinstance(every, bool) or int(every) < 1):
            raise ValueError(f"every must be a positive integer or None; got {every!r}")
        self.inner = inner
        self.every = None if every is None else int(every)
        self.top = int(top)
        self.num_steps = 0
        self._requested = True  # the first training forward pass is always measured
        self.history: list[dict[str, Any]] = []

    def request_refresh(self) -> None:
        self._requested = True
        if self.inner is not None and hasattr(self.inner, "request_refresh"):
            self.inner.request_refresh()

    @torch.no_grad()
    def measure(self, z_a: torch.Tensor, z_b: torch.Tensor) -> np.ndarray:
        """Record and return the full spectrum (descending) of the cross-covariance of the detached z_a, z_b."""
        cc = cross_covariance(z_a.detach(), z_b.detach())
        s = torch.linalg.svdvals(cc.matrix).cpu().numpy().astype(np.float64)
        self.history.append({"step": self.num_steps, "k": 0, "singular_values": s[: self.top].copy(),
                             "total_energy": float((s ** 2).sum())})
        return s

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            due = self._requested or (self.every is not None and self.num_steps % self.every == 0)
            if due:
                self.measure(z_a, z_b)
                self._requested = False
            self.num_steps += 1
        if self.inner is None:
            return z_a, z_b
        return self.inner(z_a, z_b)

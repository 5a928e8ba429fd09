"""Train a backbone with or without CLEAR, under MMRec's protocol, and return a result record.

Protocol (MMRec's ``Trainer``, so numbers are comparable):

* BPR mini-batches of 2048 (user, positive, negative) triples, one negative per positive (:class:`BPRSampler`);
* Adam, learning rate 1e-3, no weight decay, up to 1000 epochs;
* after every epoch, full-ranking evaluation on valid; the best epoch is the first that reaches the highest valid
  Recall@20 (a *strict* improvement resets the counter), and training stops once the counter exceeds
  ``patience`` (MMRec's ``stopping_step`` = 20: after 21 epochs without improvement);
* the test metrics reported are those of the best valid epoch. MMRec evaluates test after every epoch; we evaluate
  it only when valid improves, which gives the same numbers for less time.

CLEAR plugs in without touching a model:

* ``clear="input"``: fit :class:`CLEARProjector` on the two modalities' item features, replace the features by
  ``X P`` before the model is built (so graphs built from features use the projected ones);
* ``clear="latent"``: set the model's ``modality_hook`` to :class:`LatentCLEAR`, which projects the encoded
  per-modality embeddings in every forward pass with a detached basis refreshed at each epoch start (or every
  ``latent_refresh_every`` steps).

Grids are chosen on validation, never on test: this module trains one setting; a caller compares
``record["best_valid"]`` across settings.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clear_lab import __version__
from clear_lab.controls import BASES, control_bases, project_out
from clear_lab.data import BPRSampler, InteractionData
from clear_lab.metrics import EvalResult, evaluate
from clear_lab.models import get_model
from clear_lab.projection import CLEARProjector, LatentCLEAR
from clear_lab.utils import environment, resolve_device, set_seed, set_threads

PLACEMENTS = ("none", "input", "latent")


@dataclass
class TrainConfig:
    """One training run. Defaults are MMRec's ``overall.yaml``."""

    model: str = "lightgcn"  # backbone name (clear_lab.models.MODELS)
    params: dict[str, Any] = field(default_factory=dict)  # model hyper-parameters; missing ones take the defaults
    clear: str = "none"  # CLEAR placement: none | input | latent
    k: int | None = None  # CLEAR rank (fixed); exactly one of k / ratio when clear != none
    ratio: float | None = None  # CLEAR rank by energy ratio over squared singular values
    lam: float = 1.0  # projection strength in [0, 1]; 1 = exact null space
    clear_modalities: tuple[str, str] | None = None  # the two modalities CLEAR acts on (default: the data's two)
    latent_refresh_every: int | None = None  # latent basis refresh, in training steps; None = each epoch start
    clear_basis: str = "shared"  # ablation control: shared (CLEAR) | random | pca (each modality's own top-k)
    clear_sides: str = "both"  # project both modalities, or only the first (a) or the second (b)
    epochs: int = 1000  # maximum epochs
    patience: int = 20  # MMRec's stopping_step: stop after patience + 1 epochs without improvement
    batch_size: int = 2048  # training triples per step
    lr: float | None = None  # Adam learning rate; None = the model's learning_rate parameter, else MMRec's 1e-3
    weight_decay: float | None = None  # Adam's (coupled) L2; None = the model's weight_decay parameter, else 0
    seed: int = 999  # seeds model init, sampling and edge dropout
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    eval_batch_size: int = 4096  # users per evaluation batch
    valid_metric: str = "recall@20"  # early-stopping metric (on valid)
    ks: tuple[int, ...] = (5, 10, 20, 50)  # cut-offs of every metric
    mask_valid_at_test: bool = False  # also mask valid items when ranking for test (MMRec does not)
    threads: int | None = None  # torch intra-op threads (None = torch's default)
    progress: bool = True  # show a progress bar
    cache_dir: str | None = None  # where feature-built graphs may be cached

    def validate(self) -> None:
        if self.clear not in PLACEMENTS:
            raise ValueError(f"clear must be one of {', '.join(PLACEMENTS)}, got {self.clear!r}")
        if self.clear != "none" and (self.k is None) == (self.ratio is None):
            raise ValueError(f"--clear {self.clear} needs exactly one of --k or --ratio")
        if self.clear_basis not in BASES:
            raise ValueError(f"clear_basis must be one of {', '.join(BASES)}, got {self.clear_basis!r}")
        if self.clear_sides not in ("both", "a", "b"):
            raise ValueError(f"clear_sides must be both, a or b, got {self.clear_sides!r}")
        if self.clear == "latent" and (self.clear_basis != "shared" or self.clear_sides != "both"):
            raise ValueError("latent placement projects the shared basis on both sides; the controls "
                             "(clear_basis, clear_sides) are input-placement ablations")
        if self.clear_basis != "shared" and self.k is None:
            raise ValueError(f"clear_basis={self.clear_basis} needs a fixed k (the ratio rule is CLEAR's own)")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.valid_metric.split("@")[-1] not in {str(k) for k in self.ks}:
            raise ValueError(f"valid_metric {self.valid_metric} needs its cut-off in ks {self.ks}")


@dataclass
class RunResult:
    """What a run returns: the JSON-friendly ``record`` and the per-user test values for paired tests."""

    record: dict[str, Any]
    test: EvalResult | None
    valid: EvalResult | None
    model: torch.nn.Module | None = None

    def save(self, path: str | Path) -> Path:
        """Write ``record`` as JSON and the per-user test/valid values beside it as ``<stem>.per_user.npz``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.record, indent=2, sort_keys=False) + "\n")
        arrays = {}
        for split, res in (("test", self.test), ("valid", self.valid)):
            if res is not None:
                arrays[f"{split}_users"] = res.users
                for key, values in res.per_user.items():
                    arrays[f"{split}_{key}"] = values
        if arrays:
            np.savez_compressed(path.with_suffix(".per_user.npz"), **arrays)
        return path


class EarlyStopping:
    """MMRec's rule: the best score moves only on a *strict* improvement; any other epoch adds one to a counter,
    and training stops once the counter exceeds ``patience`` (so after ``patience + 1`` epochs in a row)."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = -math.inf
        self.bad_epochs = 0

    def update(self, score: float) -> tuple[bool, bool]:
        """Record one epoch's valid score; returns ``(improved, stop)``."""
        if score > self.best:
            self.best, self.bad_epochs = score, 0
            return True, False
        self.bad_epochs += 1
        return False, self.bad_epochs > self.patience


def pick_modalities(data: InteractionData, wanted: tuple[str, str] | None) -> tuple[str, str]:
    """The two modalities CLEAR acts on: ``wanted``, or the data's own when it has exactly two (else an error)."""
    names = tuple(wanted) if wanted else tuple(data.modalities)
    if len(names) != 2:
        raise ValueError(f"CLEAR projects exactly two modalities; the data has {len(names)} "
                         f"({', '.join(names) or 'none'}): pick two with --modalities")
    missing = [n for n in names if n not in data.features]
    if missing:
        raise ValueError(f"CLEAR modality {', '.join(missing)} not in the data (has {', '.join(data.modalities)})")
    return names  # type: ignore[return-value]


def apply_input_clear(data: InteractionData, config: TrainConfig) -> tuple[InteractionData, dict]:
    """Project the two modalities' raw features once: ``X_a P_a``, ``X_b P_b``. Returns new data and a summary."""
    a, b = pick_modalities(data, config.clear_modalities)
    fa, fb = data.features[a], data.features[b]
    proj = CLEARProjector(k=config.k, ratio=config.ratio, lam=config.lam).fit(fa, fb)
    if config.clear_basis == "shared":
        xa, xb = proj.transform(fa, fb)
    else:  # ablation controls: remove another k-dimensional subspace with the same projector
        qa, qb = control_bases(fa, fb, proj.k_, config.clear_basis, seed=config.seed)
        xa, xb = project_out(fa, qa, config.lam), project_out(fb, qb, config.lam)
    feats = dict(data.features)
    if config.clear_sides in ("both", "a"):
        feats[a] = np.ascontiguousarray(xa, dtype=np.float32)
    if config.clear_sides in ("both", "b"):
        feats[b] = np.ascontiguousarray(xb, dtype=np.float32)
    s = np.asarray(proj.singular_values_)
    summary = {"modalities": [a, b], "k_used": int(proj.k_), "lam": config.lam, "basis": config.clear_basis,
               "sides": config.clear_sides, "singular_values_top": s[:32].tolist(),
               "energy_removed": float((s[: proj.k_] ** 2).sum() / max((s ** 2).sum(), 1e-300))}
    return data.with_features(feats), summary


def optimiser_settings(model_cls, params: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    """Adam's learning rate and weight decay and the per-epoch lr schedule for this model.

    MMRec sets these per model (LATTICE, MGCN, SMORE decay the rate as ``lr * s0 ** (epoch / s1)`` with
    ``(s0, s1) = (0.96, 50)``; SLMRec uses weight decay 1e-4; several models grid the rate). A model declares them
    as its ``learning_rate`` / ``weight_decay`` parameters (reachable through ``--set``) and its ``lr_schedule``;
    ``config.lr`` / ``config.weight_decay``, when given, override the model's default (so a notebook's ``lr``
    parameter works for every backbone), but may not contradict a value set explicitly in ``config.params``.
    """
    out = {}
    for key, cfg_value, fallback in (("learning_rate", config.lr, 1e-3), ("weight_decay", config.weight_decay, 0.0)):
        explicit = key in (config.params or {})
        if cfg_value is not None and explicit and float(cfg_value) != float(params[key]):
            raise ValueError(f"{key} is set twice: {params[key]} in the model parameters and {cfg_value} in the "
                             "trainer config; set it once")
        if cfg_value is not None:
            out[key] = float(cfg_value)
        elif key in model_cls.default_params:
            out[key] = float(params[key])
        else:
            out[key] = float(fallback)
    if not out["learning_rate"] > 0:
        raise ValueError(f"learning_rate must be > 0, got {out['learning_rate']}")
    s0, s1 = model_cls.lr_schedule
    out["lr_schedule"] = [float(s0), int(s1)]
    return out


def _evaluate(model, data: InteractionData, split: str, config: TrainConfig, device, train_csr) -> EvalResult:
    model.eval()
    extra = data.csr("valid") if (split == "test" and config.mask_valid_at_test) else None
    with torch.no_grad():
        model.begin_eval()
        try:
            res = evaluate(model.scores, train_csr, data.csr(split), ks=config.ks,
                           batch_size=config.eval_batch_size, device=device, extra_mask=extra)
        finally:
            model.end_eval()
    return res


def train(data: InteractionData, config: TrainConfig, keep_model: bool = False) -> RunResult:
    """Train ``config.model`` on ``data`` and return the result record (see the module docstring)."""
    config.validate()
    set_threads(config.threads)
    device = resolve_device(config.device)
    model_cls = get_model(config.model)
    params = model_cls.resolve_params(config.params)
    refusal = model_cls.refusal(config.clear, params)
    if refusal:
        raise ValueError(refusal)
    clear_summary: dict[str, Any] = {"placement": config.clear}
    if config.clear == "latent":
        pick_modalities(data, config.clear_modalities)
    if config.clear == "input":
        data, summary = apply_input_clear(data, config)
        clear_summary.update(summary)
    if model_cls.uses_features and config.clear_modalities and config.clear == "latent":
        # the model's hook sees its first two modalities: keep only the chosen two, in order
        data = data.with_features({m: data.features[m] for m in config.clear_modalities})

    set_seed(config.seed)
    t_build = time.perf_counter()
    model = model_cls(data, params, device=device, cache_dir=config.cache_dir)
    hook = None
    if config.clear == "latent":
        hook = LatentCLEAR(k=config.k, ratio=config.ratio, lam=config.lam,
                           refresh_every=config.latent_refresh_every)
        model.modality_hook = hook.to(device)
        clear_summary.update({"modalities": list(data.modalities[:2]), "lam": config.lam,
                              "refresh_every": config.latent_refresh_every or "epoch"})
    build_seconds = time.perf_counter() - t_build
    optim = optimiser_settings(model_cls, params, config)
    opt = torch.optim.Adam(model.parameters(), lr=optim["learning_rate"], weight_decay=optim["weight_decay"])
    s0, s1 = optim["lr_schedule"]
    # MMRec's LambdaLR: the rate at epoch e is lr * s0 ** (e / s1), stepped once after each epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: s0 ** (e / s1))
    sampler = BPRSampler(data.train, data.n_users, data.n_items, config.batch_size, seed=config.seed)
    rng = np.random.default_rng(config.seed + 1)  # edge dropout and other per-epoch randomness
    train_csr = data.csr("train")

    history: list[dict[str, Any]] = []
    stopper = EarlyStopping(config.patience)
    best_epoch = -1
    best_valid: EvalResult | None = None
    best_test: EvalResult | None = None
    stop_reason = "max_epochs"
    bar = tqdm(range(config.epochs), desc=f"{model_cls.name} clear={config.clear}", disable=not config.progress,
               leave=False)
    for epoch in bar:
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        model.pre_epoch(rng)
        if hook is not None and config.latent_refresh_every is None:
            hook.request_refresh()
        total, n_batches = 0.0, 0
        for users, pos, neg in sampler.epoch():
            u = torch.as_tensor(users, device=device)
            p = torch.as_tensor(pos, device=device)
            n = torch.as_tensor(neg, device=device)
            loss = model.loss(u, p, n)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            n_batches += 1
        scheduler.step()
        train_seconds = time.perf_counter() - t0
        train_cpu_seconds = time.process_time() - c0  # all threads of this process: robust to a busy machine
        mean_loss = total / max(n_batches, 1)
        if not math.isfinite(mean_loss):
            stop_reason = f"loss became {mean_loss} at epoch {epoch}"
            history.append({"epoch": epoch, "loss": mean_loss, "train_seconds": train_seconds})
            break
        valid = _evaluate(model, data, "valid", config, device, train_csr)
        score = valid.mean[config.valid_metric]
        entry = {"epoch": epoch, "loss": mean_loss, "train_seconds": train_seconds,
                 "train_cpu_seconds": train_cpu_seconds, "eval_seconds": valid.seconds, "valid": valid.to_dict()}
        improved, stop = stopper.update(score)
        if improved:
            best_epoch, best_valid = epoch, valid
            best_test = _evaluate(model, data, "test", config, device, train_csr)
            entry["test"] = best_test.to_dict()
        history.append(entry)
        bar.set_postfix(loss=f"{mean_loss:.4f}", **{config.valid_metric: f"{score:.4f}"},
                        best=f"{stopper.best:.4f}")
        if stop:
            stop_reason = f"no valid improvement for {stopper.bad_epochs} epochs"
            break
    bar.close()

    if hook is not None:
        clear_summary["k_used"] = hook.k_
        clear_summary["history"] = [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in h.items()}
                                    for h in hook.history]
    train_times = [h["train_seconds"] for h in history]
    eval_times = [h["eval_seconds"] for h in history if "eval_seconds" in h]
    record = {
        "config": {**asdict(config), "params": params},
        "optimiser": optim,
        "data": {**data.stats(), "content_hash": data.content_hash()},
        "clear": clear_summary,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "stop_reason": stop_reason,
        "best_valid": best_valid.to_dict() if best_valid else None,
        "test": best_test.to_dict() if best_test else None,
        "seconds": {"build": build_seconds, "train_epoch_mean": float(np.mean(train_times)) if train_times else None,
                    "train_epoch_cpu_mean": float(np.mean([h["train_cpu_seconds"] for h in history
                                                           if "train_cpu_seconds" in h])) if train_times else None,
                    "eval_mean": float(np.mean(eval_times)) if eval_times else None,
                    "total": float(sum(train_times) + sum(eval_times) + build_seconds)},
        "history": history,
        "environment": environment(device),
        "clear_lab_version": __version__,
    }
    return RunResult(record, best_test, best_valid, model if keep_model else None)

"""Every backbone through the real trainer: each CLEAR placement it supports runs, each one it does not is refused
with a clear error, a seed reproduces a run, the declared metadata is complete, and the optimiser settings MMRec
gives a model (learning rate, weight decay, lr schedule) reach Adam."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from clear_lab.models import MODELS, Recommender, get_model, register
from clear_lab.train import TrainConfig, optimiser_settings, train

ALL = sorted(MODELS)
PLACEMENTS = ("none", "input", "latent")


def quick(model: str, **kw) -> TrainConfig:
    base = dict(model=model, epochs=2, patience=20, batch_size=512, seed=5, device="cpu", progress=False, threads=1)
    base.update(kw)
    if base.get("clear", "none") != "none":
        base.setdefault("k", 2)
    return TrainConfig(**base)


def test_the_fourteen_backbones_of_the_paper_are_registered():
    expected = {"bpr", "lightgcn", "vbpr", "mmgcn", "grcn", "dualgnn", "lattice", "slmrec", "bm3", "freedom", "mgcn",
                "dragon", "lgmrec", "smore"}
    assert expected <= set(MODELS)


@pytest.mark.parametrize("name", ALL)
def test_metadata_is_complete(name):
    cls = get_model(name)
    assert cls.name == name
    module_doc = sys.modules[cls.__module__].__doc__ or ""
    assert len(module_doc) > 200, f"{name}: the module docstring should give the model's math and shapes"
    missing_help = set(cls.default_params) - set(cls.param_help)
    assert not missing_help, f"{name}: parameters without help text: {missing_help}"
    assert cls.deviations, f"{name}: list the differences from MMRec (or say there are none)"
    if cls.uses_features and cls.latent_hook is None:
        assert "no per-modality encoded embedding" in cls.refusal("latent")
    s0, s1 = cls.lr_schedule
    assert 0 < s0 <= 1 and s1 >= 1


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("name", ALL)
def test_each_placement_runs_or_is_refused(name, placement, tiny_data):
    cls = get_model(name)
    reason = cls.refusal(placement)
    config = quick(name, clear=placement)
    if reason:
        with pytest.raises(ValueError) as err:
            train(tiny_data, config)
        assert str(err.value) == reason and name in reason.lower()
        return
    rec = train(tiny_data, config).record
    assert rec["epochs_run"] == 2 and rec["stop_reason"] == "max_epochs"
    assert all(math.isfinite(h["loss"]) for h in rec["history"])
    for split in ("best_valid", "test"):
        values = rec[split]
        assert values is not None and all(0.0 <= v <= 1.0 for v in values.values()), (name, placement, values)
    if placement == "input":
        assert rec["clear"]["k_used"] == 2
    if placement == "latent":
        assert rec["clear"]["k_used"] == 2 and rec["clear"]["history"], "the latent basis was never fitted"


@pytest.mark.parametrize("name", ALL)
def test_a_seed_reproduces_a_run(name, tiny_data):
    a = train(tiny_data, quick(name, epochs=1)).record
    b = train(tiny_data, quick(name, epochs=1)).record
    assert a["history"][0]["loss"] == b["history"][0]["loss"] and a["test"] == b["test"]


@pytest.mark.parametrize("name", [n for n in ALL if get_model(n).uses_features])
def test_multimodal_models_refuse_data_without_features(name, tiny_data):
    with pytest.raises(ValueError, match="feature"):
        get_model(name)(tiny_data.with_features({}), {})


def test_optimiser_settings_follow_the_model_and_refuse_contradictions():
    class Scheduled(Recommender):
        name = "scheduled"
        default_params = {"learning_rate": 5e-4, "weight_decay": 1e-4}
        lr_schedule = (0.96, 50)

    params = Scheduled.resolve_params({"learning_rate": 0.01})
    config = TrainConfig(params={"learning_rate": 0.01})
    assert optimiser_settings(Scheduled, params, config) == {"learning_rate": 0.01, "weight_decay": 1e-4,
                                                             "lr_schedule": [0.96, 50]}
    with pytest.raises(ValueError, match="learning_rate is set twice"):
        optimiser_settings(Scheduled, params, TrainConfig(params={"learning_rate": 0.01}, lr=0.1))
    # the trainer's lr overrides the model's default when the parameter was not set explicitly
    assert optimiser_settings(Scheduled, Scheduled.resolve_params({}), TrainConfig(lr=0.1))["learning_rate"] == 0.1
    assert optimiser_settings(Scheduled, Scheduled.resolve_params({}), TrainConfig())["learning_rate"] == 5e-4
    lgcn = get_model("lightgcn")
    assert optimiser_settings(lgcn, lgcn.resolve_params({}), TrainConfig()) == {
        "learning_rate": 1e-3, "weight_decay": 0.0, "lr_schedule": [1.0, 50]}
    assert optimiser_settings(lgcn, lgcn.resolve_params({}), TrainConfig(lr=0.05))["learning_rate"] == 0.05


def test_lr_schedule_is_mmrecs_lambda_rule(tiny_data, monkeypatch):
    """MMRec steps LambdaLR(lr * s0 ** (epoch / s1)) once per epoch: after 3 epochs the rate is lr * s0 ** (3/s1)."""
    seen = []
    real_step = torch.optim.lr_scheduler.LambdaLR.step

    def spy(self, *a, **k):
        real_step(self, *a, **k)
        seen.append(self.optimizer.param_groups[0]["lr"])

    monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step", spy)
    monkeypatch.setattr(get_model("bpr"), "lr_schedule", (0.5, 2))
    train(tiny_data, quick("bpr", epochs=3, lr=0.1))
    np.testing.assert_allclose(seen[-3:], [0.1 * 0.5 ** (e / 2) for e in (1, 2, 3)])


def test_register_refuses_clashes_and_non_models():
    with pytest.raises(TypeError):
        register(object)  # type: ignore[arg-type]
    clash = type("Clash", (Recommender,), {"name": "bpr"})
    with pytest.raises(ValueError, match="already registered"):
        register(clash)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_every_backbone_trains_on_cuda(name, tiny_data):
    placement = "latent" if get_model(name).refusal("latent") is None else "none"
    rec = train(tiny_data, quick(name, epochs=1, device="cuda", clear=placement)).record
    assert rec["environment"]["device"].startswith("cuda") and math.isfinite(rec["history"][0]["loss"])


def test_readme_table_has_every_backbone_and_its_true_placements():
    """The README's backbone table is checked against the code: one row per backbone, and its input / latent
    columns say 'yes' exactly where the trainer accepts that placement at the default setting."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Backbones\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0] not in ("backbone", "---"):
            rows[cells[0].lower()] = cells
    assert set(rows) == set(MODELS)
    for name, cells in rows.items():
        cls = get_model(name)
        for placement, cell in (("input", cells[4]), ("latent", cells[5])):
            assert (cell == "yes") == (cls.refusal(placement) is None), (name, placement, cell)


@pytest.mark.parametrize("name", [n for n in ALL if n not in ("bpr", "lightgcn", "vbpr", "freedom")])
def test_item_embeddings_are_what_the_model_scores_with(name, tiny_data):
    """embedding_view reads the newer backbones' user and item vectors from their evaluation pass (the first four
    have their own branch, tested in test_embedding_view); their products must be the ranking scores."""
    from clear_lab.embedding_view import eval_vectors, item_embeddings

    torch.manual_seed(0)
    model = get_model(name)(tiny_data, {})
    model.eval()
    with torch.no_grad():
        users_vec, items_vec = eval_vectors(model)
        model.begin_eval()
        expected = model.scores(torch.arange(7))
        model.end_eval()
    torch.testing.assert_close(users_vec[:7] @ items_vec.T, expected, rtol=1e-4, atol=1e-5)
    assert item_embeddings(model).shape == (tiny_data.n_items, items_vec.shape[1])

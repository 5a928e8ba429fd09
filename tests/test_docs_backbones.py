"""The worked example of docs/backbones.md runs as written: the custom backbone registers, trains under every
placement, its latent hook sees the documented shapes, and the snippet that drives it works."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from clear_lab.models import MODELS
from clear_lab.train import TrainConfig, train

DOC = Path(__file__).resolve().parents[1] / "docs" / "backbones.md"


def code_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def contentmf():
    namespace: dict = {}
    exec(compile(code_blocks()[0], str(DOC), "exec"), namespace)
    yield namespace["ContentMF"]
    MODELS.pop("contentmf", None)  # leave the registry as the other tests expect it


def test_the_doc_has_the_model_and_the_driver():
    blocks = code_blocks()
    assert len(blocks) == 2 and "class ContentMF(Recommender)" in blocks[0] and "train(data, config)" in blocks[1]


def test_worked_example_trains_under_every_placement(contentmf, tiny_data):
    assert MODELS["contentmf"] is contentmf
    results = {}
    for placement in ("none", "input", "latent"):
        config = TrainConfig(model="contentmf", clear=placement, k=None if placement == "none" else 2, epochs=3,
                             device="cpu", progress=False, threads=1, batch_size=512, seed=3)
        rec = train(tiny_data, config).record
        losses = [h["loss"] for h in rec["history"]]
        assert losses[-1] < losses[0]
        results[placement] = rec["test"]["recall@20"]
    assert len(set(results.values())) > 1  # the placements change the model


def test_worked_example_hook_sees_the_encoded_modalities(contentmf, tiny_data):
    model = contentmf(tiny_data, {})
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, a, b):
            seen.append((tuple(a.shape), tuple(b.shape)))
            return a, b

    model.modality_hook = Spy()
    model.loss(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 3]))
    model.eval()
    with torch.no_grad():
        model.begin_eval()
        model.scores(torch.arange(4))
    assert seen == [((tiny_data.n_items, 32), (tiny_data.n_items, 32))] * 2


def test_driver_snippet_runs(contentmf, tiny_dir, capsys, monkeypatch):
    monkeypatch.chdir(tiny_dir.parent)
    snippet = code_blocks()[1].replace('"data/tiny"', repr(str(tiny_dir)))
    exec(compile(snippet, str(DOC), "exec"), {})
    lines = capsys.readouterr().out.split("\n")
    assert [ln.split()[0] for ln in lines if ln] == ["none", "input", "latent"]

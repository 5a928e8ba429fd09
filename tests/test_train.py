"""The trainer: MMRec's early-stopping rule, exact reproducibility, CLEAR placements and the result record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clear_lab.train import EarlyStopping, TrainConfig, train


def test_early_stopping_is_mmrec_rule():
    stop = EarlyStopping(patience=2)
    seq = [0.1, 0.2, 0.2, 0.15, 0.3, 0.3, 0.3, 0.3]
    out = [stop.update(s) for s in seq]
    # strict improvement only: the second 0.2 does not reset; stop once 3 (= patience + 1) epochs in a row fail
    assert [o[0] for o in out] == [True, True, False, False, True, False, False, False]
    assert [o[1] for o in out] == [False] * 7 + [True]


def quick(model, **kw):
    base = dict(model=model, epochs=3, patience=20, batch_size=256, seed=7, device="cpu", progress=False,
                threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_same_seed_twice_gives_identical_metrics(tiny_data):
    a = train(tiny_data, quick("freedom")).record
    b = train(tiny_data, quick("freedom")).record
    assert a["test"] == b["test"] and a["best_valid"] == b["best_valid"]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    c = train(tiny_data, quick("freedom", seed=8)).record
    assert [h["loss"] for h in c["history"]] != [h["loss"] for h in a["history"]]


def test_record_contents_and_save(tiny_data, tmp_path):
    res = train(tiny_data, quick("lightgcn", epochs=2))
    rec = res.record
    for key in ("config", "data", "history", "best_valid", "test", "seconds", "environment"):
        assert key in rec
    assert rec["data"]["content_hash"] == tiny_data.content_hash()
    assert len(rec["history"]) == 2 and rec["seconds"]["train_epoch_mean"] > 0
    assert set(rec["test"]) >= {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map") for k in (5, 10, 20, 50)}
    assert rec["environment"]["packages"]["torch"]
    path = res.save(tmp_path / "run.json")
    assert json.loads(path.read_text())["test"] == rec["test"]
    per_user = np.load(path.with_suffix(".per_user.npz"))
    assert np.isclose(per_user["test_recall@20"].mean(), rec["test"]["recall@20"])


def test_best_epoch_test_is_reported(tiny_data):
    rec = train(tiny_data, quick("bpr", epochs=6)).record
    valid_scores = [h["valid"]["recall@20"] for h in rec["history"]]
    assert rec["best_epoch"] == int(np.argmax(valid_scores))  # first epoch reaching the maximum
    assert rec["history"][rec["best_epoch"]]["test"] == rec["test"]


@pytest.mark.parametrize("model, placement, extra", [
    ("vbpr", "input", {}), ("vbpr", "latent", {}), ("freedom", "input", {}),
    ("freedom", "latent", {"reg_weight": 1e-3}),
])
def test_clear_placements_run(tiny_data, model, placement, extra):
    rec = train(tiny_data, quick(model, clear=placement, k=2, params=extra, epochs=2)).record
    assert rec["clear"]["placement"] == placement and rec["clear"]["k_used"] == 2
    assert np.isfinite(rec["test"]["recall@20"])
    if placement == "latent":
        assert len(rec["clear"]["history"]) == 2  # refreshed at each epoch start


def test_input_clear_changes_the_features_the_model_sees(tiny_data):
    a = train(tiny_data, quick("freedom", epochs=2)).record
    b = train(tiny_data, quick("freedom", epochs=2, clear="input", k=3)).record
    assert a["data"]["content_hash"] != b["data"]["content_hash"]
    assert b["clear"]["energy_removed"] > 0


@pytest.mark.parametrize("kw, pattern", [
    ({"model": "lightgcn", "clear": "input", "k": 2}, "uses no modality features"),
    ({"model": "freedom", "clear": "latent", "k": 2}, "reg_weight = 0"),
    ({"model": "vbpr", "clear": "input"}, "exactly one of --k or --ratio"),
    ({"model": "vbpr", "clear": "sideways", "k": 1}, "clear must be one of"),
    ({"model": "bpr", "epochs": 0}, "epochs must be >= 1"),
])
def test_bad_configs_are_refused(tiny_data, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        train(tiny_data, quick(**kw))


def test_three_modalities_refused_for_clear(tmp_path):
    from clear_lab.data import load_dataset
    from clear_lab.synthetic import generate_preset

    d = load_dataset(generate_preset("tiny", tmp_path / "three", modalities=("image", "text", "audio")))
    with pytest.raises(ValueError, match="exactly two modalities"):
        train(d, quick("vbpr", clear="input", k=1))
    rec = train(d, quick("vbpr", clear="input", k=1, clear_modalities=("image", "audio"), epochs=1)).record
    assert rec["clear"]["modalities"] == ["image", "audio"]


def test_control_bases_and_sides(tiny_data):
    from clear_lab.controls import pca_basis, project_out, random_basis
    from clear_lab.train import apply_input_clear

    q = random_basis(10, 3, seed=0)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-12)
    x = np.random.default_rng(0).normal(size=(50, 10)) * np.arange(1, 11)  # variance grows with the column
    p = pca_basis(x, 2)
    assert set(np.argmax(np.abs(p), axis=0)) == {8, 9}  # the two largest-variance axes
    np.testing.assert_allclose(project_out(x, p) @ p, 0, atol=1e-9)
    for basis in ("random", "pca"):
        cfg = quick("freedom", clear="input", k=2, clear_basis=basis)
        new, summary = apply_input_clear(tiny_data, cfg)
        assert summary["basis"] == basis
        assert not np.allclose(new.features["image"], tiny_data.features["image"])
    new, _ = apply_input_clear(tiny_data, quick("freedom", clear="input", k=2, clear_sides="a"))
    assert not np.allclose(new.features["image"], tiny_data.features["image"])
    np.testing.assert_array_equal(new.features["text"], tiny_data.features["text"])
    with pytest.raises(ValueError, match="input-placement ablations"):
        quick("vbpr", clear="latent", k=2, clear_basis="pca").validate()

"""Run cache: same configuration and data -> no retraining; any change -> a new run; leftovers never read."""

from __future__ import annotations

import json

import numpy as np

from clear_lab.nbtools import record, smoke_mode
from clear_lab.runs import cached_train, load_run, run_key
from clear_lab.train import TrainConfig


def cfg(**kw):
    return TrainConfig(**{"model": "bpr", "epochs": 2, "batch_size": 256, "device": "cpu", "progress": False,
                          "threads": 1, **kw})


def test_key_follows_config_and_data_but_not_cosmetics(tiny_data):
    k = run_key(tiny_data, cfg())
    assert k == run_key(tiny_data, cfg(progress=True, threads=2, cache_dir="/elsewhere"))
    assert k != run_key(tiny_data, cfg(seed=1))
    assert k != run_key(tiny_data, cfg(params={"reg_weight": 0.1}))
    feats = {m: x + 1 for m, x in tiny_data.features.items()}
    assert k != run_key(tiny_data.with_features(feats), cfg())


def test_cached_run_is_reused_and_force_retrains(tiny_data, tmp_path):
    a = cached_train(tiny_data, cfg(), tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2  # <key>.json and <key>.per_user.npz, no temporaries left
    path = tmp_path / files[0] if files[0].endswith(".json") else tmp_path / files[1]
    stamp = path.stat().st_mtime_ns
    b = cached_train(tiny_data, cfg(), tmp_path)
    assert path.stat().st_mtime_ns == stamp and b.record["test"] == a.record["test"]
    np.testing.assert_array_equal(b.test.per_user["recall@20"], a.test.per_user["recall@20"])
    np.testing.assert_array_equal(b.test.users, a.test.users)
    cached_train(tiny_data, cfg(), tmp_path, force=True)
    assert path.stat().st_mtime_ns != stamp


def test_half_written_leftovers_are_not_finished_runs(tiny_data, tmp_path):
    key = run_key(tiny_data, cfg())
    (tmp_path / f"{key}.json").write_text("{ truncated")
    res = cached_train(tiny_data, cfg(), tmp_path)  # unreadable: trains again and overwrites
    assert load_run(tmp_path / f"{key}.json").record["test"] == res.record["test"]


def test_record_and_smoke(tmp_path, monkeypatch):
    record(tmp_path, "a", np.float64(1.5))
    record(tmp_path, "b", np.arange(3))
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1.5, "b": [0, 1, 2]}
    monkeypatch.delenv("CLEAR_LAB_SMOKE", raising=False)
    assert not smoke_mode(False) and smoke_mode(True)
    monkeypatch.setenv("CLEAR_LAB_SMOKE", "1")
    assert smoke_mode(False)


def test_resolve_dataset_generates_and_refreshes_stale_presets(tmp_path):
    import json as _json

    from clear_lab.datasets import resolve_dataset

    path = resolve_dataset("tiny", data_dir=tmp_path)
    assert path == tmp_path / "tiny" and (path / "tiny.inter").is_file()
    stamp = (path / "tiny.inter").stat().st_mtime_ns
    assert resolve_dataset("tiny", data_dir=tmp_path) == path and (path / "tiny.inter").stat().st_mtime_ns == stamp
    meta = _json.loads((path / "meta.json").read_text())
    meta["config"]["noise_norm"] = 123.0  # as if written by an older generator design
    (path / "meta.json").write_text(_json.dumps(meta))
    resolve_dataset("tiny", data_dir=tmp_path)
    assert _json.loads((path / "meta.json").read_text())["config"]["noise_norm"] != 123.0


def test_key_follows_the_training_code(tiny_data, monkeypatch):
    import clear_lab.runs as runs

    before = run_key(tiny_data, cfg())
    monkeypatch.setattr(runs, "code_hash", lambda: "edited-model-code")
    assert run_key(tiny_data, cfg()) != before

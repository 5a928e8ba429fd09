"""Spectrum probes: the lam = 0 measured run is the plain run, the stand-alone probe, the suppression identity."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from clear_lab.probes import SpectrumProbe, probe_config, shared_energy, spectra_table, suppression_identity
from clear_lab.projection import LatentCLEAR, cross_covariance
from clear_lab.train import TrainConfig, train


def quick(model, **kw):
    base = dict(model=model, epochs=3, patience=20, batch_size=256, seed=5, device="cpu", progress=False,
                threads=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("model, params", [("vbpr", {}), ("freedom", {"reg_weight": 1e-3})])
def test_lam0_probe_reproduces_the_plain_run_exactly(tiny_data, model, params):
    plain = train(tiny_data, quick(model, params=params)).record
    probed = train(tiny_data, probe_config(quick(model, params=params), k=2)).record
    assert [h["loss"] for h in probed["history"]] == [h["loss"] for h in plain["history"]]
    assert [h["valid"] for h in probed["history"]] == [h["valid"] for h in plain["history"]]
    assert probed["test"] == plain["test"]
    history = probed["clear"]["history"]
    assert len(history) == 3 and all(h["k"] == 2 for h in history)  # one spectrum per epoch start
    table = spectra_table(probed, run="p")
    assert set(table["epoch"]) == {0, 1, 2} and (table["singular_value"] >= 0).all()
    assert table.groupby("epoch")["singular_value"].apply(lambda s: bool(np.all(np.diff(s.to_numpy()) <= 0))).all()


def test_probe_config_rules():
    base = TrainConfig(model="vbpr", k=None)
    probe = probe_config(base)
    assert probe.clear == "latent" and probe.lam == 0.0 and probe.k == 1 and probe.ratio is None
    assert dataclasses.replace(probe, clear="none", lam=1.0, k=None) == base  # nothing else changes
    latent = TrainConfig(model="vbpr", clear="latent", k=3, lam=0.5)
    assert probe_config(latent) is latent
    with pytest.raises(ValueError, match="input placement"):
        probe_config(TrainConfig(model="vbpr", clear="input", k=2))


def test_spectra_table_needs_a_latent_history():
    with pytest.raises(ValueError, match="no latent history"):
        spectra_table({"clear": {"placement": "none"}})


def test_shared_energy_from_a_known_spectrum():
    rows = [{"run": "r", "epoch": 0, "rank": i + 1, "singular_value": v, "total_energy": 30.0}
            for i, v in enumerate([4.0, 3.0, 2.0, 1.0])]
    out = shared_energy(pd.DataFrame(rows), k=2)
    assert out.loc[0, "topk_energy_fraction"] == pytest.approx(25 / 30)
    assert out.loc[0, "gap"] == pytest.approx(1.5) and out.loc[0, "s_k_plus_1"] == 2.0


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.9, 1.0])
def test_suppression_identity_holds_to_rounding(lam):
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((300, 3))
    xa = shared @ rng.standard_normal((3, 20)) * 3 + rng.standard_normal((300, 20))
    xb = shared @ rng.standard_normal((3, 12)) * 2 + rng.standard_normal((300, 12))
    res = suppression_identity(xa.astype(np.float32), xb.astype(np.float32), k=3, lam=lam)
    assert res["max_abs_error"] < 1e-10
    assert len(res["projected"]) == 12
    if lam == 1.0:
        assert np.all(res["projected"][-3:] < 1e-10)  # the top 3 became the three zeros


def test_spectrum_probe_records_before_the_inner_projection():
    torch.manual_seed(0)
    za, zb = torch.randn(50, 6, dtype=torch.float64), torch.randn(50, 5, dtype=torch.float64)
    za[:, 0] += 3 * zb[:, 0]
    inner = LatentCLEAR(k=1, lam=1.0)
    probe = SpectrumProbe(inner=inner)
    pa, pb = probe(za, zb)
    reference = LatentCLEAR(k=1, lam=1.0)
    ra, rb = reference(za, zb)
    assert torch.allclose(pa, ra) and torch.allclose(pb, rb)
    expected = np.linalg.svd(np.asarray(cross_covariance(za, zb).matrix), compute_uv=False)
    np.testing.assert_allclose(probe.history[0]["singular_values"], expected, rtol=1e-12)
    np.testing.assert_allclose(probe.history[0]["singular_values"], inner.history[0]["singular_values"], rtol=1e-12)
    probe(za, zb)  # no refresh requested: no second measurement
    assert len(probe.history) == 1
    probe.request_refresh()  # forwarded to the inner hook as well
    assert inner._refresh_requested
    probe(za, zb)
    assert len(probe.history) == 2 and len(inner.history) == 2
    probe.eval()
    probe(za, zb)
    assert len(probe.history) == 2  # nothing recorded in eval mode


def test_spectrum_probe_alone_is_the_identity_and_can_measure_every_n_steps():
    za, zb = torch.randn(20, 4, requires_grad=True), torch.randn(20, 3)
    probe = SpectrumProbe(every=2)
    for _ in range(5):
        oa, ob = probe(za, zb)
        assert oa is za and ob is zb
    assert [h["step"] for h in probe.history] == [0, 2, 4]
    with pytest.raises(ValueError):
        SpectrumProbe(every=0)

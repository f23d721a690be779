"""The diffusion stage against independent references: the curve basis against the real MATR curves,
the diffusion parametrisations, the end-of-life rule stored with the model, and the model file's training
cells (baselines refitted through ``.fit``, older files included). The shared scores, conformal quantile,
end-of-life rule and baselines are tested in tests/test_cycling.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from batterytwin.cycling.loaders import load_npz_split
from batterytwin.degradation.basis import CurveBasis, roughness
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK

CYCLING = Path(__file__).resolve().parents[1] / "data/cycling"


def test_curve_basis_on_real_matr_curves():
    """Full-rank basis (K = n - 1, sklearn PCA) reproduces the real training curves and lengths; a
    truncated basis is monotone and as smooth as the data, and encodes the curves to within 1 SOH point."""
    cs = load_npz_split(CYCLING / "matr_1_train.npz")
    full = CurveBasis.fit(cs.soh, cs.valid_len, len(cs) - 1, monotone=False)
    soh, length = full.decode(full.encode(cs.soh, cs.valid_len))
    np.testing.assert_array_equal(length, cs.valid_len)
    inside = np.arange(256)[None] < cs.valid_len[:, None]
    np.testing.assert_allclose(soh[inside], cs.soh[inside], atol=1e-3)
    small = CurveBasis.fit(cs.soh, cs.valid_len, 8)
    soh8, _ = small.decode(small.encode(cs.soh, cs.valid_len))
    assert np.all(np.diff(np.nan_to_num(soh8, nan=-1.0), axis=1)[:, :-1][inside[:, 1:-1]] <= 0)  # non-increasing
    assert np.sqrt(np.nanmean((soh8 - cs.soh)[inside] ** 2)) < 1.0
    assert roughness(soh8, 10) < 2 * roughness(cs.soh, 10)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parametrisations_recover_x0_and_noise(prediction):
    """Given its exact target as the network output, every parametrisation returns the true (x0, eps)."""
    from batterytwin.degradation.diffusion import Diffusion

    d = Diffusion(100, prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 1, 9, generator=g), torch.randn(3, 1, 9, generator=g)
    for t in (0, 40, 99):
        tt = torch.full((3,), t)
        xt = d.q_sample(x0, tt, noise)
        got_x0, got_eps = d._x0(xt, d.target(x0, tt, noise), t, None)
        torch.testing.assert_close(got_x0, x0, rtol=0, atol=2e-4 if t < 99 else 5e-3)
        torch.testing.assert_close(got_eps, noise, rtol=0, atol=2e-4 if t > 0 else 5e-3)


@pytest.mark.slow
def test_rule_mismatch_is_an_error(tmp_path):
    """The rule is stored with the model: a model trained on HUST (threshold rule) refuses MATR test data
    (end of record): one line, exit 2, nothing at the output path; the same data under the model's rule runs."""
    env = {**os.environ, "BATTERYTWIN_NO_MPI": "1"}
    cli = [sys.executable, "-m", "batterytwin.cli"]
    small = '{"train": {"mlp_width": 16, "mlp_blocks": 1, "cond_dim": 8, "cond_layers": 1, "cond_heads": 1, ' \
            '"emb_dim": 16, "timesteps": 20}}'
    r = subprocess.run(cli + ["train-degradation", "--npz", str(CYCLING / "hust_train.npz"), "-o",
                              str(tmp_path / "m.pt"), "--checkpoint", str(tmp_path / "ck.pt"), "--steps", "2",
                              "--threads", "1", "--config-json", small], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == EXIT_OK, r.stderr[-2000:]
    pred = cli + ["predict-degradation", "--model", str(tmp_path / "m.pt"), "--npz", str(CYCLING / "matr_1_test.npz"),
                  "-o", str(tmp_path / "p.zarr"), "--samples", "2", "--ddim-steps", "2", "--threads", "1"]
    r = subprocess.run(pred, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == EXIT_BAD_INPUT
    assert r.stderr.strip().count("\n") == 0 and "end-of-life rule 'end_of_record' differs" in r.stderr
    assert not (tmp_path / "p.zarr").exists()
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["eol_rule"] == "threshold"
    assert len(payload["calibration"]["names"]) == 19  # round(0.35 * 55) HUST cells held out of training
    # the whole capacity matrices of every training cell travel with the model: any baseline or
    # predictor refits from them through .fit; a file without them (older) refits the same baselines
    from batterytwin.degradation.predict import fit_baselines

    hust = load_npz_split(CYCLING / "hust_train.npz")
    q = payload["train"]["qmatrix"]
    assert q.dtype == torch.float32 and tuple(q.shape) == hust.qmatrix.shape
    np.testing.assert_array_equal(q.numpy(), hust.qmatrix)
    test = load_npz_split(CYCLING / "matr_1_test.npz").qmatrix[:, :hust.qmatrix.shape[1], :hust.qmatrix.shape[2]]
    new = fit_baselines(payload, "threshold", 80.0, 0)
    old_payload = {**payload, "train": {k: v for k, v in payload["train"].items() if k != "qmatrix"}}
    old = fit_baselines(old_payload, "threshold", 80.0, 0)
    assert set(new) == set(old) == {"variance_model", "random_forest", "mean_curve"}
    for name in new:
        np.testing.assert_array_equal(new[name].predict(test), old[name].predict(test))

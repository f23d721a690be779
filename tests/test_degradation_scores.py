"""Degradation scoring against independent references: hand-computed conformal quantiles and C-index,
the analytic coverage of split conformal, DiffBatt's convention and the loaders on the shipped real data
(data/cycling), the curve basis against the real MATR curves, and the diffusion parametrisations."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from batterytwin.degradation import baselines, evaluate
from batterytwin.degradation.basis import CurveBasis, roughness
from batterytwin.degradation.data import load_npz_split
from batterytwin.errors import InputError

CYCLING = Path(__file__).resolve().parents[1] / "data/cycling"


def test_conformal_quantile_hand_computed():
    s = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 1.0, 0.4, 0.8, 0.6])  # n = 10
    assert evaluate.conformal_quantile(s, 0.9) == 1.0   # ceil(11 * 0.9) = 10th smallest
    assert evaluate.conformal_quantile(s, 0.8) == 0.9   # ceil(8.8) = 9th
    assert evaluate.conformal_quantile(s, 0.5) == 0.6   # ceil(5.5) = 6th
    assert evaluate.conformal_quantile(s[:5], 0.9) == math.inf  # ceil(5.4) = 6 > 5: too few cells
    # the same as numpy's inverted-CDF quantile at ceil((n + 1) level) / n
    for level in (0.5, 0.8, 0.9):
        assert evaluate.conformal_quantile(s, level) == np.quantile(s, math.ceil(11 * level) / 10,
                                                                    method="inverted_cdf")


def test_split_conformal_coverage_is_the_analytic_value():
    """Exchangeable scores: P(score_test <= q) = ceil((n+1) level) / (n+1) exactly (Vovk et al. 2005);
    with n = 19, level 0.9: 18/20 = 0.90. Monte Carlo over 4000 draws (std 0.005)."""
    rng = np.random.default_rng(0)
    n, trials = 19, 4000
    hits = 0
    for _ in range(trials):
        s = rng.standard_exponential(n + 1)
        hits += s[-1] <= evaluate.conformal_quantile(s[:-1], 0.9)
    assert abs(hits / trials - 18 / 20) < 0.02


def test_cqr_interval_contains_exactly_the_scored_truth():
    lo, hi, y = np.array([100.0, 200.0]), np.array([400.0, 300.0]), np.array([50.0, 600.0])
    s = evaluate.cqr_scores(lo, hi, y)
    np.testing.assert_allclose(s, [math.log10(2), math.log10(2)])  # 100/50 below, 600/300 above
    a, b = evaluate.conformal_interval(lo, hi, float(s.max()))
    np.testing.assert_allclose(a, [50, 100])
    np.testing.assert_allclose(b, [800, 600])


def test_concordance_index_hand_computed():
    time = np.array([2.0, 4.0, 6.0, 8.0])
    event = np.array([True, False, True, True])
    # comparable pairs (i observed, t_i < t_j): (0,1) (0,2) (0,3) (2,3)
    assert evaluate.concordance_index(time, np.array([1.0, 3, 2, 5]), event) == 1.0
    assert evaluate.concordance_index(time, np.array([3.0, 1, 2, 5]), event) == 0.5     # (0,3) (2,3)
    assert evaluate.concordance_index(time, np.array([2.0, 1, 2, 5]), event) == 0.625   # + a tie (0,2)
    assert math.isnan(evaluate.concordance_index(time, time, np.zeros(4, bool)))


def test_censoring_scores_hand_computed():
    pred = np.array([100.0, 300.0, 500.0, 700.0])
    true = np.array([150.0, 300.0, 600.0, 650.0])   # cells 2, 3 censored: lower bounds
    cens = np.array([False, False, True, True])
    c = evaluate.censoring_scores(pred, true, cens)
    assert c["n_censored"] == 2 and c["n_censored_pred_below_bound"] == 1
    assert c["censored_shortfall_rmse_cycles"] == pytest.approx(math.sqrt((100.0 ** 2 + 0.0) / 2))
    assert c["censoring_aware_rmse_cycles"] == pytest.approx(math.sqrt((50.0 ** 2 + 0 + 100.0 ** 2 + 0) / 4))


def test_diffbatt_convention_on_real_cells():
    """SNL: full records that never reach 80 % score 2560 cycles; crossing cells score their crossing;
    MATR test cells (records stop above 80 %) score their record length."""
    snl = load_npz_split(CYCLING / "snl_train.npz")
    life, cens = evaluate.cycle_life(snl.soh, snl.valid_len, "threshold", 10)
    db = evaluate.diffbatt_life(snl.soh, snl.valid_len, 10)
    full = cens & (snl.valid_len == 256)
    assert full.any()
    np.testing.assert_array_equal(db[full], 2560)
    np.testing.assert_array_equal(db[~cens], life[~cens])
    short = cens & (snl.valid_len < 256)          # record ends above 80 %: DiffBatt's padding ends the life there
    np.testing.assert_array_equal(db[short], snl.valid_len[short] * 10)
    m2 = load_npz_split(CYCLING / "matr_2_test.npz")
    np.testing.assert_array_equal(evaluate.diffbatt_life(m2.soh, m2.valid_len, 10), m2.valid_len * 10)


def test_all_zero_capacity_matrices_are_excluded_and_named():
    snl = load_npz_split(CYCLING / "snl_train.npz")
    raw = np.load(CYCLING / "snl_train.npz")["qmatrix"]
    zero = [i for i in range(len(raw)) if not raw[i].any()]
    assert zero == [2, 17, 33] and len(snl) == len(raw) - 3
    assert [e.split(":")[0] for e in snl.excluded] == [f"snl_train[{i}]" for i in zero]
    assert not np.all(snl.qmatrix == 0, axis=(1, 2)).any()
    with pytest.raises(InputError, match="identical capacity-matrix rows 9 and 19"):
        baselines.variance_feature(raw[zero])
    # the 20-row matrices use Q_20 - Q_10 (rows 9, 19); 100 rows: Q_100 - Q_10
    assert baselines.variance_rows(20) == (9, 19) and baselines.variance_rows(100) == (9, 99)
    dq = raw[0, 19].astype(np.float64) - raw[0, 9]
    assert baselines.variance_feature(raw[:1])[0] == pytest.approx(math.log10(np.var(dq)))


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


def test_rule_mismatch_is_an_error(tmp_path):
    """The rule is stored with the model: a model trained on HUST (threshold rule) refuses MATR test data
    (end of record): one line, exit 2, nothing at the output path; the same data under the model's rule runs."""
    env = {**os.environ, "BATTERYTWIN_NO_MPI": "1"}
    cli = [sys.executable, "-m", "batterytwin.cli"]
    small = '{"train": {"mlp_width": 16, "mlp_blocks": 1, "cond_dim": 8, "cond_layers": 1, "cond_heads": 1, ' \
            '"emb_dim": 16, "timesteps": 20}}'
    r = subprocess.run(cli + ["train-degradation", "--npz", str(CYCLING / "hust_train.npz"), "--out",
                              str(tmp_path / "m.pt"), "--checkpoint", str(tmp_path / "ck.pt"), "--steps", "2",
                              "--threads", "1", "--config-json", small], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    pred = cli + ["predict-degradation", "--model", str(tmp_path / "m.pt"), "--npz", str(CYCLING / "matr_1_test.npz"),
                  "--out", str(tmp_path / "p.zarr"), "--samples", "2", "--ddim-steps", "2", "--threads", "1"]
    r = subprocess.run(pred, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "end-of-life rule 'end_of_record' differs" in r.stderr
    assert not (tmp_path / "p.zarr").exists()
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["eol_rule"] == "threshold"
    assert len(payload["calibration"]["names"]) == 19  # round(0.35 * 55) HUST cells held out of training


def test_calibration_split_sizes():
    from batterytwin.degradation.train import calibration_split

    flags = calibration_split(41, 0.35, 0, 9)
    assert flags.sum() == 14 and flags.dtype == bool           # round(0.35 * 41)
    np.testing.assert_array_equal(flags, calibration_split(41, 0.35, 0, 9))  # seeded
    assert not np.array_equal(flags, calibration_split(41, 0.35, 1, 9))
    assert calibration_split(12, 0.35, 0, 9).sum() == 0      # 4 < 9: too few to calibrate, all cells train
    assert calibration_split(12, 0.35, 0, 1).sum() == 4
    assert calibration_split(10, 0.9, 0, 1).sum() == 8       # at least 2 cells stay in training

"""Hybrid digital twin: parameter recovery against the generating formula and PyBaMM itself,
the learned correction on synthetic cells with a known systematic error, failed fits, bad inputs.

Tolerances were measured (docs/twin.md, "Tests"): each is a few times the observed error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from batterytwin.cycling.curves import CurveSet
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK, InputError
from batterytwin.twin import physics
from batterytwin.twin.config import TwinConfig
from batterytwin.twin.fitting import EXCLUDED, FAILED, OK, Cells
from batterytwin.twin.forecast import forecast_split
from batterytwin.twin.physics import EmpiricalModel, PybammModel, fit_cell
from batterytwin.twin.scoring import score

CPP, L = 10, 128


def _truth(n: int, rng, extra: float = 0.0, noise: float = 0.05):
    """Synthetic cells: the empirical model (random a, z) + ``extra`` * (N/1000)^3 (a knee the physics lacks)."""
    model = EmpiricalModel()
    cycles = np.arange(L) * float(CPP)
    params = np.column_stack([np.ones(n), rng.uniform(np.log10(0.08), np.log10(0.3), n), rng.uniform(0.8, 1.2, n)])
    clean = model.predict(params, cycles) - 100.0 * extra * (cycles / 1000.0) ** 3
    soh = clean + rng.normal(0, noise, clean.shape)
    soh[:, 0] = 100.0
    valid = np.array([min(L, int(np.argmax(c <= 75.0)) if (c <= 75.0).any() else L) for c in clean])
    soh = np.where(np.arange(L)[None] < valid[:, None], soh, np.nan)
    q = rng.normal(0, 1e-3, (n, 12, 8)).astype(np.float32)
    return CurveSet(soh, np.maximum(valid, 2), q, CPP, "threshold", source="synthetic"), clean, params


def test_empirical_fit_recovers_the_generating_parameters():
    rng = np.random.default_rng(1)
    model = EmpiricalModel(z_prior_sd=10.0)  # no prior: plain least squares
    cycles = np.arange(0, 1001, 10.0)
    errs, z_scores = [], []
    for _ in range(20):
        true = np.array([rng.uniform(0.99, 1.01), rng.uniform(-1.2, -0.6), rng.uniform(0.7, 1.6)])
        y = model.predict(true, cycles) + rng.normal(0, 0.05, len(cycles))
        fit = fit_cell(model, cycles, y)
        assert fit.ok
        errs.append(fit.params - true)
        z_scores.append((fit.params - true) / np.sqrt(np.diag(fit.cov)))
    errs, z_scores = np.abs(np.array(errs)), np.abs(np.array(z_scores))
    # measured (20 cells, noise 0.05 %): max |error| q0 4.6e-4, log10 a 1.5e-3, z 0.011
    assert errs[:, 0].max() < 2e-3 and errs[:, 1].max() < 0.01 and errs[:, 2].max() < 0.05
    # the Jacobian covariance is calibrated: measured 97 % of the errors within 2 SD
    assert np.mean(z_scores < 2.0) > 0.85


@pytest.fixture(scope="module")
def pybamm_model():
    return PybammModel(simulated_cycles=12, cycles_per_simulated_cycle=64, log10_k_range=(-16.0, -13.0),
                       grid_points=7).build()


def test_pybamm_fit_recovers_the_sei_rate_constant(pybamm_model):
    rng = np.random.default_rng(2)
    for log_k in (-15.3, -14.4):
        cycles, soh = pybamm_model.simulate(log_k)          # PyBaMM itself at the true constant
        y = 100 * soh + rng.normal(0, 0.05, len(soh))
        fit = fit_cell(pybamm_model, cycles, y)
        assert fit.ok, fit.reason
        # measured: |error| 0.011 and 0.001 decades, q0 within 4e-4
        assert abs(fit.params[1] - log_k) < 0.05, (fit.params, log_k)
        assert abs(fit.params[0] - 1.0) < 2e-3
        # the surrogate itself against PyBaMM at this off-grid constant: measured max 0.09 % SOH
        assert np.abs(pybamm_model.predict(np.array([1.0, log_k]), cycles) - 100 * soh).max() < 0.3
        # the fitted curve explains the data down to the added noise (0.05 %): measured residual RMS 0.051, 0.054
        residual = np.sqrt(np.mean((pybamm_model.predict(fit.params, cycles) - y) ** 2))
        assert fit.rmse == pytest.approx(residual, rel=1e-9) and residual < 0.1, (fit.rmse, residual)


def test_correction_fixes_a_misspecified_physics_model():
    rng = np.random.default_rng(3)
    train, _, _ = _truth(40, rng, extra=0.08)
    test, clean, _ = _truth(12, rng, extra=0.08)
    settings = TwinConfig(fit_cycles=200, correction={"steps": 800}, param_draws=8)
    run = forecast_split(Cells(train), Cells(test), settings)
    metrics, arrays = score(run["arrays"], test, settings)
    k = run["k_fit"]
    inside = (np.arange(L)[None] < test.valid_len[:, None]) & (np.arange(L)[None] >= k)
    err = {m: np.sqrt(np.mean((arrays[f"soh_{m}"][:, :L][inside] - clean[inside]) ** 2)) for m in ("physics", "hybrid")}
    # measured: physics 3.9 %, hybrid 0.71 % SOH RMSE against the generating curves; RUL RMSE 219 -> 27 cycles
    assert err["hybrid"] < 0.35 * err["physics"], err
    assert metrics["hybrid"]["rul_rmse_cycles"] < 0.5 * metrics["physics"]["rul_rmse_cycles"], metrics


def test_correction_leaves_a_correct_physics_model_alone():
    rng = np.random.default_rng(4)
    train, _, _ = _truth(40, rng)
    test, clean, _ = _truth(12, rng)
    settings = TwinConfig(fit_cycles=300, correction={"steps": 800}, param_draws=8, empirical={"z_prior_sd": 10.0})
    run = forecast_split(Cells(train), Cells(test), settings)
    _, arrays = score(run["arrays"], test, settings)
    k = run["k_fit"]
    inside = (np.arange(L)[None] < test.valid_len[:, None]) & (np.arange(L)[None] >= k)
    err = {m: np.sqrt(np.mean((arrays[f"soh_{m}"][:, :L][inside] - clean[inside]) ** 2)) for m in ("physics", "hybrid")}
    change = np.sqrt(np.mean((arrays["soh_hybrid"][:, :L][inside] - arrays["soh_physics"][:, :L][inside]) ** 2))
    # measured: physics 0.27 %, hybrid 0.30 % SOH RMSE; the correction moves the curves by 0.30 % RMS, the
    # size of the physics fit's own extrapolation error (noise 0.05 %), and barely changes their error
    assert err["hybrid"] < err["physics"] + 0.1, err
    assert change < 0.5, change


def test_failed_fits_and_short_records_are_recorded(monkeypatch):
    rng = np.random.default_rng(5)
    train, _, _ = _truth(20, rng, extra=0.05)
    test, _, _ = _truth(6, rng, extra=0.05)
    test.valid_len[1] = 5          # shorter than the fit window: excluded
    test.soh[1, 5:] = np.nan
    stress = np.ones(6)
    stress[3] = 2.0                # the patched solver fails on this cell
    real = EmpiricalModel.predict

    def flaky(self, params, cycles, stress=1.0):
        if stress == 2.0:
            raise RuntimeError("solver error (injected)")
        return real(self, params, cycles, stress)

    monkeypatch.setattr(EmpiricalModel, "predict", flaky)
    settings = TwinConfig(fit_cycles=100, correction={"steps": 50}, param_draws=4)
    run = forecast_split(Cells(train), Cells(test, stress), settings)
    metrics, arrays = score(run["arrays"], test, settings)
    assert list(arrays["status"]) == [OK, EXCLUDED, OK, FAILED, OK, OK]
    assert "solver error (injected)" in run["arrays"]["reasons"][3]
    assert "fit needs 11 early points" in run["arrays"]["reasons"][1]
    assert metrics["n_failed"] == 1 and metrics["n_excluded"] == 1
    assert np.isnan(arrays["life_hybrid"][3]) and np.isfinite(arrays["life_hybrid"][0])
    assert {c["name"]: c["status"] for c in metrics["cells"]} == {test.names[1]: "excluded", test.names[3]: "failed"}


def test_fit_rejects_bad_series():
    m = EmpiricalModel()
    with pytest.raises(InputError, match="non-monotone"):
        fit_cell(m, np.array([0, 10, 5, 20.0]), np.array([100, 99, 98, 97.0]))
    with pytest.raises(InputError, match="NaN"):
        fit_cell(m, np.array([0, 10, 20, 30.0]), np.array([100, np.nan, 98, 97.0]))


def _user_cell(d, name, cycles, caps):
    rows = "\n".join(f"{c},{q}" for c, q in zip(cycles, caps))
    (d / f"{name}.capacity.csv").write_text(f"cycle,capacity_Ah\n{rows}\n")
    np.savez(d / f"{name}.qv.npz", voltage_V=np.linspace(3, 4, 5), capacity_Ah=np.ones((3, 5)))


@pytest.mark.parametrize("bad, message", [("order", "cycles must increase"), ("nan", "NaN/inf")])
def test_cli_bad_user_data_is_one_line_exit_2(tmp_path, cli, bad, message):
    d = tmp_path / "cells"
    d.mkdir()
    cycles = np.arange(0, 400, 1.0)
    caps = 1.1 - 1e-4 * cycles
    if bad == "order":
        cycles[50], cycles[51] = cycles[51], cycles[50]
    else:
        caps[10] = np.nan
    _user_cell(d, "c0", cycles, caps)
    code, err = cli("twin", "--train-user-dir", d, "--out", tmp_path / "t.zarr")
    assert code == EXIT_BAD_INPUT
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_cli_end_to_end_writes_store_and_json(tmp_path, cli):
    from batterytwin.store import open_group

    rng = np.random.default_rng(6)
    for name, n in (("train", 24), ("test", 8)):
        cs, _, _ = _truth(n, rng, extra=0.05)
        np.savez(tmp_path / f"{name}.npz", soh=cs.soh, valid_len=cs.valid_len.astype(np.int32), qmatrix=cs.qmatrix,
                 cycles_per_point=np.int64(CPP), aux=np.tile(np.r_[np.zeros(5), 30.0, np.ones(20)], (n, 1)))
    code, err = cli("twin", "--train", tmp_path / "train.npz", "--test", tmp_path / "test.npz", "--steps", 100,
                    "--config-json", '{"param_draws": 8}', "--out", tmp_path / "t.zarr", "--metrics", tmp_path / "t.json")
    assert code == EXIT_OK, err
    m = json.loads((tmp_path / "t.json").read_text())
    for key in ("physics", "hybrid", "diffusion", "variance_model", "random_forest"):
        assert set(m[key]) >= {"rul_rmse_cycles", "interval_coverage"}
    assert m["diffusion"]["rul_rmse_cycles"] is None and m["variance_model"]["interval_coverage"] is None
    g = open_group(tmp_path / "t.zarr", "twin store")
    assert g["soh_hybrid"].shape == (8, L) and g["params"].shape == (8, 3)
    assert len(g["series_window_cycles"][:]) >= 2
    # the stress factor of 30 C (Xu et al.) reached the fit: a * S equals the fade of the generating model
    assert physics.temperature_stress(30.0) == pytest.approx(np.exp(0.0693 * 5 * 298.15 / 303.15))
    # the report figure: its error table holds the JSON's numbers
    from batterytwin.report.twin import error_rows, plot_twin

    code, err = cli("report", "twin", tmp_path / "t.zarr", "--out", tmp_path / "t.png")
    assert code == EXIT_OK and (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG", err
    rows = {r[0]: r for r in error_rows(m)}
    assert rows["hybrid twin"][1] == f"{m['hybrid']['rul_rmse_cycles']:.0f}"
    assert rows["diffusion model"][1] == "-"
    fig = plot_twin(tmp_path / "t.zarr", 2)
    for i, d in fig.drawn.items():
        np.testing.assert_allclose(d["hybrid"], g["soh_hybrid"][i], rtol=0, atol=0)
    # too short a fit window for the fit: one line, exit 2
    code, err = cli("twin", "--train", tmp_path / "train.npz", "--fit-cycles", 20, "--out", tmp_path / "u.zarr")
    assert code == EXIT_BAD_INPUT and "min_fit_points" in err


def test_time_series_refits_warm_and_narrows():
    from batterytwin.twin.series import time_series

    rng = np.random.default_rng(7)
    train, _, _ = _truth(20, rng)
    test, clean, params = _truth(8, rng)
    fastest = int(np.argmax(params[:, 1]))  # a cell that reaches 80 % inside the record
    settings = TwinConfig(fit_cycles=100, correction={"steps": 100}, param_draws=32,
                          series={"windows": 4, "cell": fastest})
    run = forecast_split(Cells(train), Cells(test), settings)
    s = time_series(run, Cells(test), settings)
    width = s["series_physics_life_hi"] - s["series_physics_life_lo"]
    i = int(s["series_cell"][0])
    true_life = float(np.argmax(clean[i] <= 80.0) * CPP)
    err = np.abs(s["series_physics_life"] - true_life)
    # measured: physics life interval 559 -> 30 -> 0 -> 0 cycles, life 840 (true 840) at every window, the
    # hybrid 880 -> 840; 2-4 function evaluations per warm-started refit
    assert len(s["series_window_cycles"]) == 4 and np.all(np.diff(s["series_window_cycles"]) > 0)
    assert width[-1] < 0.5 * width[0], width
    assert err[-1] <= err[0] + CPP and err[-1] <= 2 * CPP, (err, true_life)
    # each refit started from the previous parameters: the last ones are the generating ones
    np.testing.assert_allclose(s["series_params"][-1][1:], params[i][1:], atol=0.1)


def test_correction_training_stops_on_a_signal_and_resumes_to_the_same_weights(tmp_path):
    import signal
    import threading

    import torch

    from batterytwin.twin.config import CorrectionSettings
    from batterytwin.twin.correction import train_correction

    rng = np.random.default_rng(8)
    x = rng.normal(size=(512, 5))
    x[:, 0] = np.abs(x[:, 0])
    y = x[:, 0] * (1.0 + x[:, 1])
    st = CorrectionSettings(steps=300, checkpoint_every=50, hidden=[16])
    reference = train_correction(x, y, st)
    ckpt = tmp_path / "c.pt"
    threading.Timer(0.03, lambda: signal.raise_signal(signal.SIGUSR1)).start()
    first = train_correction(x, y, st, ckpt)
    assert first.interrupted and 0 < first.steps < st.steps and ckpt.is_file()
    resumed = train_correction(x, y, st, ckpt)
    assert not resumed.interrupted
    for a, b in zip(reference.net.state_dict().values(), resumed.net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_failed_pybamm_run_drops_its_grid_point(monkeypatch):
    model = PybammModel(simulated_cycles=4, log10_k_range=(-16.0, -13.0), grid_points=4)
    curve = (np.arange(5) * 64.0, np.linspace(1.0, 0.99, 5))

    def simulate(lk):
        if lk > -13.5:
            raise RuntimeError("IDAKLU solver failed (injected)")
        return curve[0], curve[1] - 1e-3 * (lk + 16) * np.arange(5)

    monkeypatch.setattr(model, "simulate", simulate)
    model.build()
    assert len(model.log_k) == 3 and model.upper[1] == pytest.approx(-14.0)
    assert "injected" in next(iter(model.failed_runs.values()))
    fit = fit_cell(model, curve[0], 100 * (curve[1] - 1e-3 * 1.0 * np.arange(5)))
    assert fit.ok and fit.params[1] == pytest.approx(-15.0, abs=0.05)


@pytest.mark.parametrize("attrs, message", [({"eol_rule": "end_of_record", "threshold_percent": 80.0},
                                             "end-of-life rule 'end_of_record'"),
                                            ({"eol_rule": "threshold", "threshold_percent": 85.0},
                                             "threshold 85.0 %"),
                                            ({"threshold_percent": 80.0}, "end-of-life rule None")])
def test_cli_diffusion_store_of_another_rule_is_one_line_exit_2(tmp_path, cli, attrs, message):
    """The twin compares with a diffusion store only when the store read the lives by the same end-of-life
    rule and threshold, not only the same number of cells."""
    from batterytwin.cycling.store import write_store
    from batterytwin.distributed import World

    for name, seed in (("train", 3), ("test", 2)):  # distinct cells: a cell in both is refused
        cs, _, _ = _truth(8, np.random.default_rng(seed))
        np.savez(tmp_path / f"{name}.npz", soh=cs.soh, valid_len=cs.valid_len.astype(np.int32), qmatrix=cs.qmatrix,
                 cycles_per_point=np.int64(CPP))
    lives = {k: np.full(8, 500.0, np.float32) for k in ("life_pred", "life_lo", "life_hi")}
    write_store(tmp_path / "d.zarr", lives, attrs, World())
    code, err = cli("twin", "--train", tmp_path / "train.npz", "--test", tmp_path / "test.npz", "--diffusion",
                    tmp_path / "d.zarr", "--out", tmp_path / "t.zarr")
    assert code == EXIT_BAD_INPUT and message in err and str(tmp_path / "d.zarr") in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "t.zarr").exists()

"""Tests of the degradation stage: data loaders, samplers, masking, training, DDP, resume, metrics."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from batterytwin.contracts import SWEEP_SCHEMA  # noqa: E402
from batterytwin.cycling import curves, life, loaders  # noqa: E402
from batterytwin.cycling.curves import CurveSet  # noqa: E402
from batterytwin.degradation import data  # noqa: E402
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK, InputError  # noqa: E402

from .cycling_cells import CPP, L_TINY, synthetic_cells, write_user_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TINY = dict(steps=6, batch_size=8, lr=2e-3, warmup=2, p_uncond=0.2, ema_decay=0.9, seed=3, checkpoint_every=100,
            timesteps=100, widths=[16, 16], attention=[False, True], emb_dim=32, cond_dim=16, cond_layers=1,
            cond_heads=2, patch=2, rows_per_token=2)
TINY_UNET = {**TINY, "representation": "unet", "prediction": "eps", "variance_feature": False}


# ------------------------------------------------------------------ synthetic data
def write_sweep(path: Path, soh: np.ndarray, qv: np.ndarray, status: np.ndarray) -> None:
    """A cellsim-layout sweep.zarr (docs/interfaces.md) with the arrays the degradation stage reads."""
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=3,
                        attributes={"schema": SWEEP_SCHEMA, "producer": {"stage": "cellsim"}, "n_cycles": soh.shape[1],
                                    "voltage_grid_V": list(np.linspace(4.2, 3.0, qv.shape[2])),
                                    "input_names": ["c_rate"]})
    for name, a in {"soh": soh, "qv_capacity_Ah": qv, "status": status.astype(np.int8),
                    "capacity_Ah": soh * 0.05, "inputs": np.ones((len(soh), 1)),
                    "wall_time_s": np.ones(len(soh))}.items():
        arr = g.create_array(name, shape=a.shape, dtype=a.dtype, chunks=a.shape)
        arr[...] = a


@pytest.fixture(scope="module")
def process_group():
    from batterytwin.distributed import get_world, init_torch_distributed

    torch.set_num_threads(1)
    return get_world(), init_torch_distributed(get_world(), "cpu")


# ------------------------------------------------------------------ data and encoding
def test_encode_decode_and_loss_mask():
    cs = synthetic_cells(5, 0)
    x0, w = data.encode_curves(cs.soh, cs.valid_len, 90.0, 10.0)
    assert x0.shape == (5, 2, L_TINY) and w.shape == (5, 2, L_TINY)
    inside = np.arange(L_TINY)[None] < cs.valid_len[:, None]
    np.testing.assert_array_equal(w[:, 0], inside)       # SOH channel masked after the record
    np.testing.assert_array_equal(w[:, 1], 1.0)           # end-of-record channel always in the loss
    soh, length = data.decode_curves(x0, 90.0, 10.0)
    np.testing.assert_array_equal(length, cs.valid_len)
    np.testing.assert_allclose(soh[inside], cs.soh[inside], rtol=0, atol=1e-4)
    assert np.isnan(soh[~inside]).all()


def test_masked_loss_ignores_padding(process_group):
    """The loss is sum(weight * (eps_theta - eps)^2): an error only at masked points costs nothing."""
    from batterytwin.degradation.diffusion import Diffusion
    from batterytwin.degradation.train import ModelTrainSettings, build_net

    cs = synthetic_cells(4, 1)
    torch.manual_seed(0)
    net = build_net(ModelTrainSettings(**TINY_UNET), cs.condition_shape)
    x0, w = (torch.from_numpy(a) for a in data.encode_curves(cs.soh, cs.valid_len, 90.0, 10.0))
    diff = Diffusion(100)
    t = torch.tensor([5, 50, 80, 99])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    q, drop = torch.from_numpy(cs.qmatrix), torch.zeros(4, dtype=torch.bool)
    with torch.no_grad():
        eps = net(diff.q_sample(x0, t, noise), t, net.encode_condition(q, drop))
        ref = float((w * (eps - noise) ** 2).sum())
        got = float(diff.loss_sum(net, x0, w, q, t, noise, drop))
    assert math.isclose(got, ref, rel_tol=1e-5)
    # an error only where the weight is zero (SOH channel after the record) adds nothing
    assert (w[:, 0] == 0).any()
    err = (eps - noise) ** 2
    err_bumped = err.clone()
    err_bumped[:, 0][w[:, 0] == 0] += 123.0
    assert math.isclose(float((w * err_bumped).sum()), ref, rel_tol=1e-6)


def test_samplers_shapes_and_analytic_zero_net(process_group):
    """With eps_theta = 0 (a fresh net: zero-initialised output layer) deterministic DDIM maps x_T to
    x_T / sqrt(abar_{T-1}) exactly (the scale factors telescope); both samplers give [B, 2, L]."""
    from batterytwin.degradation.diffusion import Diffusion
    from batterytwin.degradation.train import ModelTrainSettings, build_net

    cs = synthetic_cells(3, 2)
    net = build_net(ModelTrainSettings(**TINY_UNET), cs.condition_shape).eval()
    diff = Diffusion(100)
    q = torch.from_numpy(cs.qmatrix)
    shape = (3, 2, L_TINY)
    x = diff.sample_ddim(net, q, shape, steps=10, guidance=2.0, generator=torch.Generator().manual_seed(5))
    x_t = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(x.numpy(), (x_t / math.sqrt(float(diff.abar[-1]))).numpy(), rtol=1e-5, atol=1e-5)
    anc = diff.sample_ancestral(net, q, shape, guidance=1.0, generator=torch.Generator().manual_seed(5))
    assert anc.shape == shape and torch.isfinite(anc).all()
    clipped = diff.sample_ddim(net, q, shape, steps=10, generator=torch.Generator().manual_seed(5),
                               clip=torch.tensor([[-0.5, 0.5], [-1.0, 1.0]]))
    assert float(clipped[:, 0].abs().max()) <= 0.5 + 1e-6 and float(clipped[:, 1].abs().max()) <= 1 + 1e-6
    again = diff.sample_ddim(net, q, shape, steps=10, guidance=2.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(x, again)  # seeded


class _GaussianOptimalNet(torch.nn.Module):
    """The exact minimiser of the denoising loss when x0 ~ N(mean, std^2) per coordinate:
    eps*(x_t, t) = sqrt(1 - abar) (x_t - sqrt(abar) mean) / (abar std^2 + 1 - abar)."""

    def __init__(self, abar: torch.Tensor, mean: float, std: float):
        super().__init__()
        self.abar, self.mean, self.std = abar.float(), mean, std

    def encode_condition(self, q, drop=None):
        return torch.zeros(len(q), 1)

    def null_condition(self, batch):
        return torch.zeros(batch, 1)

    def forward(self, x, t, c):
        a = self.abar[t].view(-1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mean) / (a * self.std ** 2 + 1 - a)


@pytest.mark.parametrize("sampler,steps,tol", [("ancestral", None, 0.01), ("ddim", 1000, 0.01), ("ddim", 50, 0.02)])
def test_samplers_reproduce_a_known_gaussian(sampler, steps, tol):
    """With the exact score of N(m, s^2) data, the samplers must return samples of mean m and std s
    (DDIM with few steps under-disperses slightly: 0.287 instead of 0.3 at 50 steps)."""
    from batterytwin.degradation.diffusion import Diffusion

    diff = Diffusion(1000)
    net = _GaussianOptimalNet(diff.abar, mean=0.7, std=0.3)
    q = torch.zeros(2000, 1, 1)
    x = diff.sample(net, q, (2000, 2, 8), sampler=sampler, steps=steps or 1000,
                    generator=torch.Generator().manual_seed(0))
    assert abs(float(x.mean()) - 0.7) < 0.01
    assert abs(float(x.std()) - 0.3) < tol


# ------------------------------------------------------------------ loaders and bad input
def test_loaders_sweep_npz_user(tmp_path):
    n, cycles, early, volts = 4, 300, 10, 12
    rng = np.random.default_rng(0)
    soh = 100 - np.outer(rng.uniform(0.05, 0.1, n), np.arange(cycles))
    soh[1, 150:] = np.nan                                      # stopped early
    qv = np.linspace(1.0, 0.0, volts)[None, None, :] - 1e-3 * np.arange(early)[None, :, None] * np.ones((n, 1, 1))
    status = np.array([1, 1, 2, 1])
    write_sweep(tmp_path / "sweep.zarr", soh, qv, status)
    cs = data.load_sweep(tmp_path / "sweep.zarr", curve_length=32, cycles_per_point=10)
    assert cs.names == ["cond0", "cond1", "cond3"]             # the failed condition is left out
    np.testing.assert_array_equal(cs.valid_len, [30, 15, 30])
    np.testing.assert_allclose(cs.soh[0, :30], soh[0, ::10][:30], atol=1e-4)
    np.testing.assert_allclose(cs.qmatrix[2], (qv[3] - qv[3, :1]), atol=1e-7)
    np.testing.assert_array_equal(data.sweep_indices(cs), [0, 1, 3])

    ref = synthetic_cells(3, 4)
    np.savez(tmp_path / "matr_x.npz", soh=ref.soh, valid_len=ref.valid_len.astype(np.int32), qmatrix=ref.qmatrix,
             cycles_per_point=np.int32(10))
    cs = loaders.load_npz_split(tmp_path / "matr_x.npz")
    assert cs.eol_rule == "end_of_record" and len(cs) == 3

    write_user_dir(ref, tmp_path / "user")
    cs = loaders.load_user_dir(tmp_path / "user", curve_length=L_TINY, cycles_per_point=CPP)
    np.testing.assert_array_equal(cs.valid_len, ref.valid_len)
    inside = np.arange(L_TINY)[None] < ref.valid_len[:, None]
    np.testing.assert_allclose(cs.soh[inside], ref.soh[inside], atol=1e-4)
    np.testing.assert_allclose(cs.qmatrix, ref.qmatrix - ref.qmatrix[:, :1], atol=1e-6)  # Q_k - Q_base


def test_bad_inputs(tmp_path):
    ref = synthetic_cells(3, 5)
    # curves of wrong length for the model
    with pytest.raises(InputError, match="wrong length"):
        ref.check_compatible(256, ref.condition_shape, 10)
    # capacity matrix shape mismatch between datasets
    other = synthetic_cells(3, 6, rows=8)
    with pytest.raises(InputError, match="capacity matrix shape mismatch"):
        curves.concat([ref, other])
    # empty datasets
    with pytest.raises(InputError, match="empty dataset"):
        curves.concat([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty dataset"):
        loaders.load_user_dir(tmp_path / "empty")
    with pytest.raises(InputError, match="empty dataset"):
        CurveSet(np.zeros((0, 8)), np.zeros(0), np.zeros((0, 2, 2)))
    soh = np.full((2, 50), 100.0)
    write_sweep(tmp_path / "failed.zarr", soh, np.zeros((2, 5, 4)), np.array([2, 3]))
    with pytest.raises(InputError, match="empty dataset"):
        data.load_sweep(tmp_path / "failed.zarr")
    # user data: missing Q(V), mismatched capacity-matrix shapes
    write_user_dir(ref, tmp_path / "u1")
    np.savez(tmp_path / "u1" / "c1.qv.npz", voltage_V=np.linspace(3.6, 2.0, 9), capacity_Ah=np.zeros((10, 9)))
    with pytest.raises(InputError, match="capacity matrix shape mismatch"):
        loaders.load_user_dir(tmp_path / "u1", curve_length=L_TINY)
    (tmp_path / "u1" / "c1.qv.npz").unlink()
    with pytest.raises(InputError, match="no matching c1.qv"):
        loaders.load_user_dir(tmp_path / "u1", curve_length=L_TINY)
    # a pickled object array is refused, not unpickled
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    os.replace(tmp_path / "obj.npy", tmp_path / "obj.npz")
    with pytest.raises(InputError):
        loaders.load_npz_split(tmp_path / "obj.npz")
    # NaN inside a record
    bad = ref.soh.copy()
    bad[0, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        CurveSet(bad, ref.valid_len, ref.qmatrix)


def test_cli_bad_input_exit_code(tmp_path):
    np.savez(tmp_path / "short.npz", soh=np.full((2, 100), 99.0, np.float32), valid_len=np.array([50, 60]),
             qmatrix=np.zeros((2, 10, 10), np.float32))
    env = {**os.environ, "BATTERYTWIN_NO_MPI": "1"}
    r = subprocess.run([sys.executable, "-m", "batterytwin.cli", "train-degradation", "--npz", str(tmp_path / "x.npz"),
                        "--out", str(tmp_path / "m.pt")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == EXIT_BAD_INPUT and "no such file" in r.stderr


# ------------------------------------------------------------------ training
def test_resume_equals_uninterrupted(process_group, tmp_path):
    """SIGUSR1 after 3 of 6 steps: checkpoint + stop; rerun resumes; final weights equal a 6-step run."""
    from batterytwin.degradation.train import ModelTrainSettings, train_model

    world, dev = process_group
    cs = synthetic_cells(12, 7)
    full = train_model(cs, ModelTrainSettings(**TINY), tmp_path / "a.pt", world, dev)

    def signal_at_3(done: int) -> None:
        if done == 3:
            os.kill(os.getpid(), signal.SIGUSR1)

    part = train_model(cs, ModelTrainSettings(**TINY), tmp_path / "b.pt", world, dev, on_step=signal_at_3)
    assert part.interrupted and part.step == 3 and part.payload is None
    state = torch.load(tmp_path / "b.pt", weights_only=True)
    assert state["step"] == 3
    rest = train_model(cs, ModelTrainSettings(**TINY), tmp_path / "b.pt", world, dev)
    assert not rest.interrupted and rest.step == 6
    a, b = full.payload["state_dict"], rest.payload["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7)
    # and the comparison is not vacuous: 3 more steps changed the weights
    assert any(not torch.equal(state["ema"][k], a[k]) for k in a)


@pytest.mark.slow
def test_tiny_model_beats_mean_curve(process_group):
    """A tiny model trained for CPU-seconds predicts held-out curves and lives better than the mean curve."""
    from batterytwin.degradation.config import SampleSettings
    from batterytwin.degradation.predict import evaluate as evaluate_set
    from batterytwin.degradation.train import ModelTrainSettings, net_from_payload, train_model

    world, dev = process_group
    train_cs, test_cs = synthetic_cells(64, 11, length=32), synthetic_cells(16, 12, length=32)
    cfg = ModelTrainSettings(**{**TINY, "steps": 600, "batch_size": 32, "lr": 3e-3, "warmup": 20, "p_uncond": 0.1,
                         "ema_decay": 0.99, "widths": [32, 32], "emb_dim": 64, "cond_dim": 32})
    res = train_model(train_cs, cfg, None, world, dev)
    net = net_from_payload(res.payload)
    st = SampleSettings(samples=8, ddim_steps=20, batch=256, life_model={"members": list(SMALL_STACK)})
    arrays, m = evaluate_set(net, res.payload, test_cs, st, world=world)
    print(json.dumps(m, indent=1))
    assert m["n_evaluated"] == 16
    # the diffusion model: the conformal interval (22 calibration cells held out of the 64) holds the median
    d = m["diffusion"]
    assert d["name"] == "diffusion" and m["interval"]["calibrated"] and m["interval"]["n_calibration_cells"] == 22
    assert np.all(arrays["life_lo"] <= arrays["life_pred"]) and np.all(arrays["life_pred"] <= arrays["life_hi"])
    # measured when written: curve 2.3 vs 4.3 %, RUL 13 vs 35 cycles
    assert d["soh_curve_rmse_percent"] < 0.75 * m["mean_curve"]["soh_curve_rmse_percent"]
    assert d["rul_rmse_cycles"] < 0.6 * m["mean_curve"]["rul_rmse_cycles"]
    # the default predictor: the stack fitted on the model file's 64 training cells, scored on the same cells
    check_stack_metrics(m, arrays)
    assert m["model"]["rul_rmse_cycles"] < 0.6 * m["mean_curve"]["rul_rmse_cycles"]


SMALL_STACK = ("variance", "ridge")  # fits in a fraction of a second (the default: test_life_model); has a baseline


def check_stack_metrics(m: dict, arrays: dict) -> None:
    """``model`` is the stack and says what it stacks; its figures are those of the ``life_stack`` arrays;
    ``best_point_predictor`` is the lowest RUL RMSE of the same JSON."""
    from batterytwin.cycling.scores import coverage, rmse
    from batterytwin.degradation.predict import POINT_PREDICTORS

    model = m["model"]
    assert model["name"] == "stack" and "reason" not in model and m["predictor"] == "stack"
    assert set(model["members"]) == set(SMALL_STACK)
    assert model["contains_baselines"] == model["life_model"]["contains_baselines"] and model["contains_baselines"]
    for member in model["members"].values():  # each member's test score beside its weight
        assert member["weight"] >= 0 and np.isfinite(member["rul_rmse_cycles"]) and member["cv_rul_rmse_cycles"] > 0
    keep = np.asarray(arrays["evaluated"], bool) & ~np.asarray(arrays["censored"], bool)
    assert model["rul_rmse_cycles"] == pytest.approx(rmse(arrays["life_stack"].astype(float), arrays["life_true"], keep),
                                                     rel=1e-5)
    assert model["interval_coverage"] == coverage(arrays["life_stack_lo"], arrays["life_stack_hi"], arrays["life_true"],
                                                  keep)
    assert np.all(arrays["life_stack_lo"] <= arrays["life_stack"]) and np.all(arrays["life_stack"] <= arrays["life_stack_hi"])
    assert model["rul_rmse_cycles"] != m["diffusion"]["rul_rmse_cycles"]
    rmses = {k: m[k]["rul_rmse_cycles"] for k in POINT_PREDICTORS}
    assert m["best_point_predictor"] == min(rmses, key=rmses.get)


def test_best_point_predictor_is_the_lowest_finite_rmse():
    from batterytwin.degradation.predict import best_point_predictor

    def metrics(**rmse):
        return {k: {"rul_rmse_cycles": v} for k, v in rmse.items()}

    assert best_point_predictor(metrics(model=90.0, diffusion=120.0, variance_model=80.0, random_forest=85.0,
                                        mean_curve=300.0)) == "variance_model"
    # the fallback (model == diffusion): the tie goes to "model"; NaN and null (nothing scored) never win
    assert best_point_predictor(metrics(model=70.0, diffusion=70.0, variance_model=float("nan"), random_forest=None,
                                        mean_curve=75.0)) == "model"
    assert best_point_predictor(metrics(model=float("nan"), diffusion=float("nan"), variance_model=float("nan"),
                                        random_forest=float("nan"), mean_curve=float("nan"))) is None


def test_default_predictor_falls_back_to_the_diffusion_model_with_a_reason(process_group, caplog):
    """Too few uncensored training cells, or a model file without train.qmatrix (an older batterytwin's): ``model``
    is the diffusion model's figures with ``name: diffusion`` and the reason, logged at WARNING; asked for
    (predictor: diffusion) it says so and warns of nothing. With enough cells the stack is the model."""
    import logging

    from batterytwin.degradation.config import SampleSettings
    from batterytwin.degradation.predict import evaluate as evaluate_set
    from batterytwin.degradation.train import ModelTrainSettings, net_from_payload, train_model

    world, dev = process_group
    cfg = ModelTrainSettings(**{**TINY, "steps": 2, "calibration_min_cells": 100})  # every cell trains: no calibration
    test_cs = synthetic_cells(4, 2)
    st = SampleSettings(samples=2, ddim_steps=2, life_model={"members": list(SMALL_STACK)})

    def run(payload, settings=st):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="batterytwin.degradation.predict"):
            arrays, m = evaluate_set(net_from_payload(payload), payload, test_cs, settings, world=world)
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "default RUL" in r.getMessage()]
        return arrays, m, warned

    def fell_back(arrays, m):
        assert m["model"] == {**m["diffusion"], "reason": m["model"]["reason"]} and m["model"]["name"] == "diffusion"
        assert "life_stack" not in arrays and m["best_point_predictor"] != "diffusion"  # the tie goes to "model"
        return m["model"]["reason"]

    few = train_model(synthetic_cells(5, 1), cfg, None, world, dev).payload
    arrays, m, warned = run(few)
    assert "5 uncensored training cell(s)" in fell_back(arrays, m) and len(warned) == 1 and "5 uncensored" in warned[0]

    enough = train_model(synthetic_cells(8, 1), cfg, None, world, dev).payload
    old = {**enough, "train": {k: v for k, v in enough["train"].items() if k != "qmatrix"}}
    arrays, m, warned = run(old)
    assert "without train.qmatrix" in fell_back(arrays, m) and len(warned) == 1

    arrays, m, warned = run(enough, st.model_copy(update={"predictor": "diffusion"}))
    assert "predictor: diffusion" in fell_back(arrays, m) and not warned and m["predictor"] == "diffusion"

    arrays, m, warned = run(enough)
    assert m["model"]["name"] == "stack" and not warned and m["model"]["life_model"]["n_train_cells"] == 8
    check_stack_metrics(m, arrays)


@pytest.mark.slow
@pytest.mark.mpi
def test_ddp_two_ranks_equal_one(tmp_path):
    """k steps with the same global batch: 2 ranks (gloo over mpiexec) == 1 rank, to 1e-5; the same
    calibration cells and training summaries in both model files."""
    cs = synthetic_cells(12, 9)
    write_user_dir(cs, tmp_path / "cells")
    mpiexec = Path(sys.executable).parent / "mpiexec"
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"model{n}.pt"
        cmd = [str(mpiexec), "-n", str(n), sys.executable, "-m", "batterytwin.cli", "-q", "train-degradation",
               "--user-dir", str(tmp_path / "cells"), "--curve-length", str(L_TINY), "--out", str(out),
               "--checkpoint", str(tmp_path / f"ck{n}.pt"), "--threads", "1", "--device", "cpu",
               "--steps", "4", "--batch-size", "8", "--seed", "5", "--config-json", json.dumps({"train": {
                   "timesteps": 100, "widths": [16, 16], "attention": [False, True], "emb_dim": 32, "cond_dim": 16,
                   "cond_layers": 1, "cond_heads": 2, "patch": 2, "rows_per_token": 2, "p_uncond": 0.3,
                   "calibration_min_cells": 1}})]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
        assert r.returncode == EXIT_OK, r.stderr[-3000:]
        outs[n] = torch.load(tmp_path / f"ck{n}.pt", weights_only=True)
    # the 2-rank model through predict-degradation (2 ranks share the cells): store + metrics JSON
    cmd = [str(mpiexec), "-n", "2", sys.executable, "-m", "batterytwin.cli", "-q", "predict-degradation",
           "--model", str(tmp_path / "model2.pt"), "--user-dir", str(tmp_path / "cells"), "--curve-length",
           str(L_TINY), "--out", str(tmp_path / "pred.zarr"), "--metrics", str(tmp_path / "pred.json"),
           "--samples", "3", "--ddim-steps", "4", "--batch", "6", "--synthetic", "2", "--threads", "1",
           "--device", "cpu", "--config-json", json.dumps({"sample": {"life_model": {"members": list(SMALL_STACK)}}})]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == EXIT_OK, r.stderr[-3000:]
    brief = json.loads(r.stdout.strip().splitlines()[-1])  # the console summary names the default predictor
    assert brief["predictor"] == "stack" and brief["best_point_predictor"]
    # the same on 1 rank: the same stack, intervals, diffusion lives and metrics
    one = list(cmd)
    one[2] = "1"  # mpiexec -n 1
    one[one.index("--out") + 1], one[one.index("--metrics") + 1] = str(tmp_path / "pred1.zarr"), str(tmp_path / "pred1.json")
    r = subprocess.run(one, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == EXIT_OK, r.stderr[-3000:]
    import zarr

    g = zarr.open_group(str(tmp_path / "pred.zarr"), mode="r")
    g1 = zarr.open_group(str(tmp_path / "pred1.zarr"), mode="r")
    for k in ("life_stack", "life_stack_lo", "life_stack_hi", "life_pred", "life_lo", "life_hi"):
        np.testing.assert_array_equal(g[k][...], g1[k][...], err_msg=k)
    m2, m1 = (json.loads((tmp_path / f).read_text()) for f in ("pred.json", "pred1.json"))
    for k in ("model", "diffusion", "best_point_predictor", "variance_model", "random_forest"):
        assert m2[k] == m1[k], k
    assert m2["model"]["name"] == "stack" and set(m2["model"]["members"]) == set(SMALL_STACK)
    assert g["soh_samples"].shape == (12, 3, L_TINY) and g["synthetic_soh"].shape == (2, L_TINY)
    order = [cs.names.index(n) for n in g.attrs["cell_names"]]  # the loader reads cells in file-name order
    np.testing.assert_array_equal(g["life_true"][...],
                                  life.cycle_life(cs.soh, cs.valid_len, "threshold", CPP)[0][order])
    metrics = json.loads((tmp_path / "pred.json").read_text())
    assert metrics["n_cells"] == 12 and metrics["sampling"]["curves"] == 36
    assert g.attrs["metrics"]["n_cells"] == 12
    assert outs[1]["step"] == outs[2]["step"] == 4
    # the calibration cells are a function of the seed alone: the same on 1 and 2 ranks, and the ones
    # cycling.split.calibration_split draws (round(0.35 * 12) = 4 of the cells, read in file-name order)
    from batterytwin.cycling.split import calibration_split

    files = [torch.load(tmp_path / f"model{n}.pt", weights_only=True) for n in (1, 2)]
    expected = [sorted(cs.names)[i] for i in np.flatnonzero(calibration_split(12, 0.35, 5, 1))]
    assert files[0]["calibration"]["names"] == files[1]["calibration"]["names"] == expected
    torch.testing.assert_close(files[0]["train"]["qmatrix"], files[1]["train"]["qmatrix"], rtol=0, atol=0)
    for part in ("net", "ema"):
        for k, v in outs[1][part].items():
            torch.testing.assert_close(outs[2][part][k], v, rtol=0, atol=1e-5)
    moved = max(float((outs[1]["net"][k] - outs[1]["ema"][k]).abs().max()) for k in outs[1]["net"])
    assert moved > 0  # the weights did change over the steps (EMA lags the raw weights)

"""The shared training harness (batterytwin.training): EMA, LR schedule, checkpoints, and SIGUSR1 ->
exit 75 -> resume through ``batterytwin train-degradation``."""

from __future__ import annotations

import json

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from batterytwin import training
from batterytwin.distributed import World
from batterytwin.errors import EXIT_OK, EXIT_PREEMPTED, InputError

from .cycling_cells import L_TINY, synthetic_cells, write_user_dir


# --------------------------------------------------------------------------- EMA
def test_ema_equals_the_formula_computed_by_hand():
    """AveragedModel + get_ema_multi_avg_fn == ema_0 = w_0, ema_s+1 = d_s ema_s + (1 - d_s) w_s+1 with
    d_s = min(decay, (1 + s) / (10 + s)), and == the former per-tensor lerp_ update to the bit."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Linear(6, 3))
    ema = training.ema_model(net)
    formula = [p.detach().double().clone() for p in net.parameters()]  # float64: the exact average
    lerped = [p.detach().clone() for p in net.parameters()]               # the former implementation
    g = torch.Generator().manual_seed(1)
    for step in range(40):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        d = training.ema_decay(step, 0.9)
        assert d == min(0.9, (1 + step) / (10 + step))
        training.update_ema(ema, net, d)
        for f, le, p in zip(formula, lerped, net.parameters()):
            f.mul_(d).add_((1 - d) * p.detach().double())
            le.lerp_(p.detach(), 1 - d)
    assert training.ema_decay(0, 0.9) == 0.1 and training.ema_decay(1000, 0.9) == 0.9
    for f, le, (name, e) in zip(formula, lerped, ema.module.named_parameters()):
        torch.testing.assert_close(e.double(), f, rtol=0, atol=1e-6, msg=name)
        assert torch.equal(e, le), name
    assert not torch.equal(ema.module[0].weight, net[0].weight)  # it does lag the weights


# --------------------------------------------------------------------------- learning rate
def test_warmup_cosine_schedule():
    """Linear warm-up to lr, cosine to min_ratio * lr at ``steps``; min_ratio 1: warm-up then constant."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.5)
    sched = training.warmup_cosine(opt, steps=12, warmup=4, min_ratio=0.1)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == [0.125, 0.25, 0.375, 0.5]
    assert math.isclose(lrs[8], 0.5 * (0.1 + 0.9 * 0.5), rel_tol=1e-12)  # half-way through the cosine
    assert math.isclose(lrs[12], 0.05, rel_tol=1e-12) and math.isclose(lrs[13], 0.05, rel_tol=1e-12)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    flat = [training.lr_factor(s, 10, 3, 1.0) for s in range(20)]
    assert flat[:3] == [1 / 3, 2 / 3, 1.0] and set(flat[3:]) == {1.0}  # independent of the total


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_run_identity(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    sched = training.warmup_cosine(opt, 10, 2, 0.0)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    path = tmp_path / "ck" / "state.pt"
    training.Checkpoint(path, "run-a", {"net": net, "opt": opt, "sched": sched}, World()).save(1, history=[[1, 0.5]])
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.pt"]  # no temporary left behind
    raw = torch.load(path, weights_only=True)
    assert raw["run_key"] == "run-a" and raw["step"] == 1 and raw["history"] == [[1, 0.5]]

    torch.manual_seed(1)
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-2)
    sched2 = training.warmup_cosine(opt2, 10, 2, 0.0)
    objs = {"net": net2, "opt": opt2, "sched": sched2}
    state = training.Checkpoint(path, "run-a", objs, World()).load()
    assert state["step"] == 1
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] and sched2.last_epoch == 1
    # another run's file: ignored (auto), refused (yes); none at all: refused (yes), ignored (auto)
    assert training.Checkpoint(path, "run-b", objs, World()).load() is None
    with pytest.raises(InputError, match="another run"):
        training.Checkpoint(path, "run-b", objs, World()).load(resume="yes")
    with pytest.raises(InputError, match="no checkpoint to resume from"):
        training.Checkpoint(tmp_path / "none.pt", "run-a", objs, World()).load(resume="yes")
    assert training.Checkpoint(tmp_path / "none.pt", "run-a", objs, World()).load() is None
    assert training.Checkpoint(path, "run-a", objs, World()).load(resume="no") is None


# --------------------------------------------------------------------------- SIGUSR1 through the CLI
STEPS = 24


def _train_args(cells: Path, out: Path, ckpt: Path) -> list[str]:
    return ["train-degradation", "--user-dir", str(cells), "--curve-length", str(L_TINY), "--out", str(out),
            "--checkpoint", str(ckpt), "--threads", "1", "--device", "cpu", "--steps", str(STEPS),
            "--batch-size", "8", "--seed", "5", "--config-json", json.dumps({"train": {
                "checkpoint_every": 1, "timesteps": 100, "widths": [16, 16], "attention": [False, True], "emb_dim": 32,
                "cond_dim": 16, "cond_layers": 1, "cond_heads": 2, "patch": 2, "rows_per_token": 2}})]


@pytest.mark.slow
def test_sigusr1_exits_75_and_the_rerun_ends_with_the_uninterrupted_weights(tmp_path, cli):
    """SIGUSR1 during ``batterytwin train-degradation`` (a process of its own): checkpoint + exit 75;
    rerunning the same command resumes and writes the model of an uninterrupted run. The uninterrupted
    run and the rerun go through the same CLI in-process (no second start-up of torch)."""
    write_user_dir(synthetic_cells(12, 9), tmp_path / "cells")
    code, err = cli(*_train_args(tmp_path / "cells", tmp_path / "ref.pt", tmp_path / "ref.ckpt"))
    assert code == EXIT_OK, err[-3000:]

    args = _train_args(tmp_path / "cells", tmp_path / "model.pt", tmp_path / "ckpt.pt")
    proc = subprocess.Popen([sys.executable, "-m", "batterytwin.cli", "-q", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "BATTERYTWIN_NO_MPI": "1"})
    deadline = time.time() + 240
    while not (tmp_path / "ckpt.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGUSR1)  # after the first step's checkpoint: mid-run
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_PREEMPTED, stdout + stderr[-3000:]
    assert "preempted at step" in stdout
    stopped = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert 0 < stopped["step"] < STEPS
    assert not (tmp_path / "model.pt").exists()

    code, err = cli(*args)
    assert code == EXIT_OK, err[-3000:]
    a = torch.load(tmp_path / "ref.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-7)
    assert any(not torch.equal(stopped["ema"][k], a[k]) for k in a)  # the rerun did train: not vacuous

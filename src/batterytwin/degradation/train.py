"""Training driver of the diffusion model: seeded global batches over DDP ranks.

The plumbing (DDP, LR warm-up, EMA, checkpoint/resume, Slurm signals) is the shared harness
:mod:`batterytwin.training`; the learning rate warms up linearly over ``warmup`` steps and then
stays at ``lr`` (it does not depend on ``steps``); the EMA decay at step ``s`` is
``min(ema_decay, (1 + s) / (10 + s))``, averaged from the initial weights.

Determinism across rank counts: the *global* batch of step ``s`` (cell indices, diffusion steps,
noise, condition dropout) is drawn from a generator seeded with ``(seed, s)``, identical on every
rank; rank ``r`` takes the ``r``-th contiguous slice. The loss is normalised by the weight total of
the global batch, so DDP's gradient average equals the one-process gradient of that batch: ``k``
steps on 2 ranks give the weights of ``k`` steps on 1 rank (to float rounding). The same per-step
seeding makes a resumed run equal to an uninterrupted one (the checkpoint holds weights, EMA,
optimiser state and step; no RNG state is needed).

SIGTERM / SIGUSR1 (Slurm's warning before the time limit): every rank finishes its current step,
rank 0 writes the checkpoint, and :func:`train_model` returns ``interrupted=True`` (the CLI then
exits with :data:`~batterytwin.training.EXIT_PREEMPTED`, 75).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..cycling.baselines import forest_features, variance_rows
from ..cycling.curves import CurveSet
from ..cycling.split import calibration_split
from ..distributed import World, get_world
from ..errors import InputError
from ..training import (Checkpoint, StopFlag, check_loss, ema_decay, ema_model, load_model_file, update_ema,
                        warmup_cosine, wrap_ddp)
from .config import ModelTrainSettings
from .basis import CurveBasis
from .data import encode_curves
from .diffusion import Diffusion
from .nets import DegradationNet

log = logging.getLogger(__name__)
FORMAT = "batterytwin.degradation/2"  # /2: representation, basis, calibration cells


def build_net(cfg: ModelTrainSettings, condition_shape: tuple[int, int], basis_dim: int = 0) -> DegradationNet:
    return DegradationNet(2, condition_shape, cfg.widths, cfg.attention, cfg.blocks, cfg.emb_dim, cfg.cond_dim,
                          cfg.cond_layers, cfg.cond_heads, cfg.patch, cfg.rows_per_token,
                          "mlp" if cfg.representation == "basis" else "unet", basis_dim, cfg.mlp_width, cfg.mlp_blocks,
                          cfg.variance_feature)


def encode_targets(cs: CurveSet, cfg: ModelTrainSettings) -> tuple[np.ndarray, np.ndarray, CurveBasis | None]:
    """Training targets x0 [n, C, L'] and loss weights of ``cs`` in the model's representation (+ basis)."""
    if cfg.representation == "basis":
        basis = CurveBasis.fit(cs.soh, cs.valid_len, cfg.basis_components, cfg.monotone)
        x0 = basis.encode(cs.soh, cs.valid_len)
        return x0, np.ones_like(x0), basis
    x0, w = encode_curves(cs.soh, cs.valid_len, cfg.soh_center, cfg.soh_scale)
    return x0, w, None


class _LossModule(nn.Module):
    """The whole training forward in one module call, so DDP sees (and synchronises) every parameter."""

    def __init__(self, net: DegradationNet, diffusion: Diffusion):
        super().__init__()
        self.net, self.diffusion = net, diffusion

    def forward(self, x0, weight, q, t, noise, drop):
        return self.diffusion.loss_sum(self.net, x0, weight, q, t, noise, drop)


@dataclass
class TrainResult:
    payload: dict | None   # the model file content (None when interrupted)
    interrupted: bool
    step: int
    history: list


def data_fingerprint(cs: CurveSet, cfg: ModelTrainSettings) -> str:
    h = hashlib.sha256()
    for a in (cs.soh, cs.valid_len, cs.qmatrix):
        h.update(np.ascontiguousarray(a).tobytes())
    cfg_d = cfg.model_dump()
    # neither changes the trajectory (the learning rate does not depend on the total): a run can be
    # extended by rerunning with more --steps, and resumes from its checkpoint
    cfg_d.pop("checkpoint_every")
    cfg_d.pop("steps")
    h.update(repr(sorted(cfg_d.items())).encode())
    return h.hexdigest()


def _batch(step: int, cfg: ModelTrainSettings, n: int, shape: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """The global batch of ``step``: (cell index, t, noise, drop), the same on every rank."""
    g = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + int(step))
    idx = torch.randint(n, (cfg.batch_size,), generator=g)
    t = torch.randint(cfg.timesteps, (cfg.batch_size,), generator=g)
    noise = torch.randn((cfg.batch_size, *shape), generator=g)
    drop = torch.rand(cfg.batch_size, generator=g) < cfg.p_uncond
    return idx, t, noise, drop


def train_model(cs: CurveSet, cfg: ModelTrainSettings, checkpoint: Path | None = None, world: World | None = None,
                device: torch.device | None = None,
                on_step: Callable[[int], None] | None = None, log_every: int = 100) -> TrainResult:
    """Train the diffusion model on ``cs`` (every rank holds the whole, small, dataset).

    Args:
        cs: training curves; cfg: hyper-parameters; checkpoint: file to resume from / save to
            (None: no checkpointing); world/device: from :func:`~batterytwin.distributed.init_torch_distributed`
            (a process group must be initialised; world size 1 is fine); on_step: called after every
            step with the number of steps done (tests use it to send signals).
    Returns:
        TrainResult; ``payload`` is the model file (EMA weights + everything predict needs).
    """
    world = world or get_world()
    device = device or torch.device("cpu")
    cfg.check(world.size)
    if not dist.is_initialized():
        raise RuntimeError("train_model needs torch.distributed: call init_torch_distributed first")
    all_cells = cs
    calib = calibration_split(len(cs), cfg.calibration_fraction, cfg.seed, cfg.calibration_min_cells)
    cs = all_cells.subset(np.flatnonzero(~calib))
    x0_np, w_np, basis = encode_targets(cs, cfg)
    q_scale = float(np.std(cs.qmatrix)) or 1.0
    x0 = torch.from_numpy(x0_np).to(device)
    w = torch.from_numpy(w_np).to(device)
    q = torch.from_numpy(cs.qmatrix / q_scale).to(device)
    n, shape = len(cs), tuple(x0.shape[1:])
    factor = cfg.patch * 2 ** (len(cfg.widths) - 1)
    if cfg.representation == "unet" and shape[-1] % factor:
        raise InputError(f"curve length {shape[-1]} must be divisible by {factor} "
                         f"(patch {cfg.patch}, U-Net with {len(cfg.widths)} levels)")

    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    net = build_net(cfg, cs.condition_shape, basis.dim if basis else 0).to(device)
    net.cond.set_feature_scaling(q)  # a function of the training data: the same on every rank
    ema = ema_model(net)
    model = wrap_ddp(_LossModule(net, Diffusion(cfg.timesteps, cfg.schedule, cfg.prediction)), device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.steps, cfg.warmup, 1.0)  # min_ratio 1: warm-up, then constant
    ckpt = Checkpoint(checkpoint, data_fingerprint(cs, cfg),
                      {"net": net, "ema": ema.module, "opt": opt, "sched": sched}, world)
    state = ckpt.load(device, steps=cfg.steps) or {"step": 0, "history": []}
    start, history = int(state["step"]), list(state["history"])

    lo, hi = world.rank * cfg.batch_size // world.size, (world.rank + 1) * cfg.batch_size // world.size
    interrupted, step, t0, running, counted = False, start, time.perf_counter(), 0.0, 0
    with StopFlag() as stop:
        for step in range(start, cfg.steps):
            idx, t, noise, drop = _batch(step, cfg, n, shape)
            norm = w[idx].sum()
            sl = slice(lo, hi)
            loss = model(x0[idx[sl]], w[idx[sl]], q[idx[sl]], t[sl].to(device), noise[sl].to(device),
                         drop[sl].to(device)) / norm * world.size
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            update_ema(ema, net, ema_decay(step, cfg.ema_decay))
            running, counted = running + float(loss.detach()) / world.size, counted + 1
            done = step + 1
            if done % log_every == 0 or done == cfg.steps:
                mean_loss = world.allreduce_sum(running) / counted
                history.append([done, mean_loss])
                log.info("step %d/%d loss %.4f (%.1f steps/s)", done, cfg.steps, mean_loss,
                         (done - start) / (time.perf_counter() - t0))
                running, counted = 0.0, 0
            if on_step is not None:
                on_step(done)
            stopped, (loss_sum,) = stop.agreed(device, float(loss.detach()))  # one all-reduce: flag + loss
            check_loss(float(loss_sum), done, "train-degradation")  # NaN/inf: every rank stops, no model
            if stopped:  # every rank stops at the same step
                ckpt.save(done, history=history)
                interrupted, step = True, done
                break
            if done % cfg.checkpoint_every == 0 and done < cfg.steps:
                ckpt.save(done, history=history)
        else:
            step = cfg.steps
    if interrupted:
        return TrainResult(None, True, step, history)
    ckpt.save(step, history=history)
    payload = model_payload(all_cells, calib, cfg, ema.module, q_scale, history, x0_np, w_np, basis)
    return TrainResult(payload, False, step, history)


def x0_range(x0: np.ndarray, weight: np.ndarray, margin: float = 0.25) -> list[list[float]]:
    """Per-channel sampling bounds [C, 2] for predicted x0: the training range widened by ``margin`` x span."""
    out = []
    for ch in range(x0.shape[1]):
        v = x0[:, ch][weight[:, ch] > 0]
        lo, hi = float(v.min()), float(v.max())
        span = max(hi - lo, 1e-3)
        out.append([lo - margin * span, hi + margin * span] if ch == 0 else [-1.0, 1.0])
    return out


def model_payload(cs: CurveSet, calib: np.ndarray, cfg: ModelTrainSettings, ema: nn.Module, q_scale: float,
                  history: list, x0: np.ndarray, weight: np.ndarray, basis: CurveBasis | None = None) -> dict:
    """The model file: EMA weights, settings, the end-of-life rule, the curve basis, the calibration cells
    (``calib`` flags over ``cs``: held out of training, scored at prediction time for the conformal interval)
    and the training data summaries the baselines need (every cell of ``cs``)."""
    lo, hi = variance_rows(cs.qmatrix.shape[1])
    cal = np.flatnonzero(calib)
    return {
        "format": FORMAT,
        "config": cfg.model_dump(),
        "state_dict": {k: v.detach().cpu() for k, v in ema.state_dict().items()},
        "curve_length": cs.curve_length,
        "condition_shape": list(cs.condition_shape),
        "cycles_per_point": int(cs.cycles_per_point),
        "eol_rule": cs.eol_rule,
        "q_scale": q_scale,
        "x0_range": x0_range(x0, weight),  # channel 0: SOH; channel 1: end-of-record indicator in [-1, 1]
        "history": history,
        "source": cs.source,
        "n_train": int(len(cs) - len(cal)),
        "basis": basis.to_payload() if basis is not None else None,
        "calibration": {
            "soh": torch.from_numpy(cs.soh[cal].copy()),
            "valid_len": torch.from_numpy(cs.valid_len[cal].copy()),
            "qmatrix": torch.from_numpy(cs.qmatrix[cal].copy()),
            "names": [cs.names[i] for i in cal],
        },
        # Baselines (and any life predictor) are refitted at prediction time through their .fit from
        # these (no pickled estimators in files): the full capacity matrices of every cell of ``cs``;
        # q_variance_rows and forest_x are kept so that older readers still find them.
        "train": {
            "soh": torch.from_numpy(cs.soh.copy()),
            "valid_len": torch.from_numpy(cs.valid_len.copy()),
            "qmatrix": torch.from_numpy(np.ascontiguousarray(cs.qmatrix, np.float32).copy()),
            "q_variance_rows": torch.from_numpy(cs.qmatrix[:, [lo, hi], :].copy()),
            "forest_x": torch.from_numpy(forest_features(cs.qmatrix).astype(np.float32)),
        },
    }


def load_model(path: os.PathLike | str, device: torch.device | None = None) -> tuple[DegradationNet, dict]:
    """Read a model file written by ``train-degradation`` (``weights_only=True``): (EMA net in eval mode, payload)."""
    payload = load_model_file(path, FORMAT, "degradation model")
    return net_from_payload(payload).to(device or torch.device("cpu")), payload


def net_from_payload(payload: dict) -> DegradationNet:
    """The EMA network of a model file's content (eval mode, on the CPU)."""
    cfg = ModelTrainSettings.from_dict(payload["config"])
    basis = payload.get("basis")
    net = build_net(cfg, tuple(payload["condition_shape"]), len(basis["components"]) + 1 if basis else 0)
    net.load_state_dict(payload["state_dict"])
    return net.eval()

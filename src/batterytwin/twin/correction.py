"""The learned correction: a small MLP on the residual ``measured SOH - physics SOH``.

Trained ACROSS the training cells (never per cell) on their future points (after the fit window),
with inputs that describe the situation, not the cell's identity:

- the physics prediction at the cycle (SOH percent, scaled), the cycle number (/1000);
- the cell's early-cycle features: the Severson variance feature ``log10 var(Q100 - Q10)`` of the
  capacity matrix (:func:`batterytwin.cycling.baselines.variance_feature`), the mean and the
  minimum of ``Q_hi - Q_lo``, and the fitted physics parameters.

Inputs are standardised with the training means/SDs (kept with the weights). Training goes through
the shared harness (:mod:`batterytwin.training`): thread policy, warm-up/cosine LR, EMA weights,
SIGTERM/SIGUSR1 -> checkpoint + exit 75, resumable checkpoint. Batches depend on the step alone
(seeded), so a resumed run ends with the weights of an uninterrupted one. The loss is Huber (quadratic
up to 5 % SOH): a cell whose physics extrapolation runs away must not dominate the fit.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..cycling.baselines import variance_feature, variance_rows

log = logging.getLogger(__name__)

SOH_CENTER, SOH_SCALE, RES_SCALE = 90.0, 10.0, 5.0


def cell_features(qmatrix: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Per-cell features [n, 3 + P]: variance feature, mean and min of Q_hi - Q_lo (x100), fitted params."""
    q = np.asarray(qmatrix, np.float64)
    lo, hi = variance_rows(q.shape[1])
    dq = q[:, hi, :] - q[:, lo, :]
    return np.column_stack([variance_feature(q), 100 * dq.mean(axis=1), 100 * dq.min(axis=1),
                            np.nan_to_num(np.asarray(params, np.float64))])


def point_inputs(physics_soh: np.ndarray, cycles: np.ndarray, features: np.ndarray, fit_end: float) -> np.ndarray:
    """Network inputs [..., M, 3 + F] from physics SOH [..., M], cycles [M], one cell's features [F].

    Column 0 is the gate ``(N - fit_end) / 1000`` (cycles since the end of the fit window): the
    residual is the network output times the gate, so the correction starts at zero where the
    physics was fitted. The physics SOH is clipped to [40, 110] % (far extrapolations of a fit are
    not inputs the network has seen).
    """
    phys = (np.clip(np.asarray(physics_soh, np.float64), 40.0, 110.0) - SOH_CENTER) / SOH_SCALE
    cyc = np.broadcast_to(np.asarray(cycles, np.float64) / 1000.0, phys.shape)
    gate = np.maximum(cyc - fit_end / 1000.0, 0.0)
    feat = np.broadcast_to(features, (*phys.shape, len(features)))
    return np.concatenate([gate[..., None], phys[..., None], cyc[..., None], feat], axis=-1)


class MLP(torch.nn.Module):
    """``gate * f(inputs)``: column 0 of the (standardised) inputs is the gate, kept unstandardised."""

    def __init__(self, n_in: int, hidden: list[int]) -> None:
        super().__init__()
        layers, w = [], n_in
        for h in hidden:
            layers += [torch.nn.Linear(w, h), torch.nn.SiLU()]
            w = h
        layers.append(torch.nn.Linear(w, 1))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 0] * self.net(x).squeeze(-1)


@dataclass
class Correction:
    """A trained correction: ``residual(inputs)`` in SOH percent."""

    net: torch.nn.Module
    mean: np.ndarray
    sd: np.ndarray
    steps: int = 0
    final_loss: float = float("nan")
    interrupted: bool = False

    def residual(self, inputs: np.ndarray, batch: int = 65536) -> np.ndarray:
        shape = inputs.shape[:-1]
        x = standardise(inputs.reshape(-1, inputs.shape[-1]), self.mean, self.sd).astype(np.float32)
        out = np.empty(len(x), np.float64)
        with torch.no_grad():
            for i in range(0, len(x), batch):
                out[i:i + batch] = self.net(torch.from_numpy(x[i:i + batch])).double().numpy() * RES_SCALE
        return out.reshape(shape)


def standardise(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Inputs standardised and clipped to +-3 SD (the gate, column 0, passes unchanged)."""
    z = np.clip((np.asarray(x, np.float64) - mean) / sd, -3.0, 3.0)
    z[:, 0] = x[:, 0]
    return z


def train_correction(inputs: np.ndarray, residuals: np.ndarray, settings, checkpoint=None) -> Correction:
    """Fit the MLP to ``residuals`` [N] (percent) from ``inputs`` [N, D] through the training harness.

    Args:
        settings: :class:`~.config.CorrectionSettings`.
        checkpoint: file to checkpoint to / resume from (None: no checkpoint).
    Returns:
        Correction with the EMA weights (``interrupted=True`` after a signal: checkpoint saved).
    """
    import torch.distributed as dist

    from ..distributed import get_world
    from ..training import (Checkpoint, StopFlag, check_loss, ema_decay, ema_model, set_threads, update_ema,
                            warmup_cosine)

    world = get_world()
    set_threads(world, settings.threads)
    x = np.asarray(inputs, np.float64)
    mean, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 1e-9, sd, 1.0)
    xt = torch.from_numpy(standardise(x, mean, sd).astype(np.float32))
    yt = torch.from_numpy((np.asarray(residuals, np.float64) / RES_SCALE).astype(np.float32))
    torch.manual_seed(settings.seed)
    net = MLP(x.shape[1], list(settings.hidden))
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = warmup_cosine(opt, settings.steps, settings.warmup, 0.05)
    ema = ema_model(net)
    key = hashlib.sha256(json.dumps({"s": settings.model_dump(), "n": list(x.shape),
                                     "x": float(x.sum()), "y": float(np.sum(residuals))}).encode()).hexdigest()
    ckpt = Checkpoint(checkpoint, key, {"net": net, "opt": opt, "sched": sched, "ema": ema}, world)
    start = (ckpt.load("cpu", steps=settings.steps) or {"step": 0})["step"]
    n, bs = len(xt), min(settings.batch_size, len(xt))
    loss = torch.tensor(float("nan"))
    with StopFlag() as stop:
        for step in range(start, settings.steps):
            stopped = stop.agreed(torch.device("cpu"))[0] if dist.is_initialized() else stop.signum != 0
            if stopped:
                ckpt.save(step)
                return Correction(ema.module, mean, sd, step, float(loss.detach()), interrupted=True)
            g = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
            idx = torch.randint(0, n, (bs,), generator=g)
            loss = torch.nn.functional.smooth_l1_loss(net(xt[idx]), yt[idx], beta=1.0)  # Huber: 5 % SOH
            check_loss(float(loss.detach()), step + 1, "twin")  # NaN/inf: stop, no model
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            update_ema(ema, net, ema_decay(step, settings.ema_decay))
            if checkpoint is not None and (step + 1) % settings.checkpoint_every == 0:
                ckpt.save(step + 1)
    ema.module.eval()
    with torch.no_grad():
        final = float(torch.nn.functional.mse_loss(ema.module(xt), yt)) * RES_SCALE ** 2
    log.info("correction: %d points, %d steps, training MSE %.3f %%^2", n, settings.steps, final)
    return Correction(ema.module, mean, sd, settings.steps, final)

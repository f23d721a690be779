"""Gaussian diffusion over curves: schedule, masked loss, ancestral (DDPM) and DDIM samplers.

References: Ho et al. 2020 (DDPM, epsilon prediction, ancestral sampler with the posterior
variance), Song et al. 2021 (DDIM, deterministic for ``eta = 0``), Nichol & Dhariwal 2021 (cosine
schedule), Ho & Salimans 2022 (classifier-free guidance: ``eps = eps_u + w (eps_c - eps_u)``,
``w = 1`` is the plain conditional model).

Example::

    diff = Diffusion(1000)
    loss = diff.loss(net, x0, weight, q, t, noise, drop, norm)        # training
    x = diff.sample_ddim(net, q, (B, 2, 256), steps=50, guidance=1.0, generator=g)
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .nets import DegradationNet

PREDICTIONS = ("eps", "x0", "v")


def make_betas(timesteps: int, schedule: str = "cosine") -> np.ndarray:
    """Noise schedule beta_1..beta_T (float64 [T]): ``"cosine"`` or ``"linear"`` (1e-4 .. 0.02)."""
    if schedule == "linear":
        scale = 1000.0 / timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)
    if schedule == "cosine":
        s = 0.008
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        return np.array([min(1 - f((i + 1) / timesteps) / f(i / timesteps), 0.999) for i in range(timesteps)])
    raise ValueError(f"unknown schedule {schedule!r} (cosine or linear)")


class Diffusion:
    """Forward process q(x_t | x_0) and the two reverse samplers.

    Args:
        timesteps: T (1000 as in DDPM/DiffBatt).
        schedule: ``"cosine"`` or ``"linear"``.
        prediction: what the network outputs: ``"eps"`` (the noise, Ho et al. 2020), ``"x0"`` (the clean
            curve) or ``"v"`` (``sqrt(abar) eps - sqrt(1 - abar) x0``, Salimans & Ho 2022); the loss is the
            masked squared error of that target, and the samplers convert it to (x0, eps).
    """

    def __init__(self, timesteps: int = 1000, schedule: str = "cosine", prediction: str = "eps"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r} (one of {PREDICTIONS})")
        self.T = int(timesteps)
        self.prediction = prediction
        betas = make_betas(self.T, schedule)
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        self.betas = torch.tensor(betas, dtype=torch.float64)
        self.abar = torch.tensor(abar, dtype=torch.float64)
        self.abar_prev = torch.tensor(abar_prev, dtype=torch.float64)
        self.posterior_var = self.betas * (1 - self.abar_prev) / (1 - self.abar)

    def _at(self, values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return values.to(x.device)[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0, noise [B, C, L], t [B] (0-based)."""
        return self._at(self.abar.sqrt(), t, x0) * x0 + self._at((1 - self.abar).sqrt(), t, x0) * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The training target of the network output for ``prediction``."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self._at(self.abar.sqrt(), t, x0) * noise - self._at((1 - self.abar).sqrt(), t, x0) * x0

    def loss_sum(self, net: DegradationNet, x0: torch.Tensor, weight: torch.Tensor, q: torch.Tensor,
                 t: torch.Tensor, noise: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Sum over the batch of ``weight * (output - target)^2`` (divide by the global weight sum).

        The caller normalises by the weight total of the *global* batch, so that DDP's gradient
        average over ranks equals the single-process gradient of the same global batch.
        """
        c = net.encode_condition(q, drop)
        out = net(self.q_sample(x0, t, noise), t, c)
        return (weight * (out - self.target(x0, t, noise)) ** 2).sum()

    def _out(self, net: DegradationNet, x: torch.Tensor, t: int, c: torch.Tensor, c_null: torch.Tensor,
             guidance: float) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        if guidance == 1.0:
            return net(x, tt, c)
        if guidance == 0.0:
            return net(x, tt, c_null)
        both = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([c, c_null]))
        out_c, out_u = both.chunk(2)  # every parametrisation is affine in eps at fixed x_t: same guidance
        return out_u + guidance * (out_c - out_u)

    def _x0(self, x: torch.Tensor, out: torch.Tensor, t: int, clip: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) from (x_t, network output), x0 clipped per channel to ``clip`` [C, 2] (lo, hi); eps made
        consistent with the clipped x0.

        Why clip: near t = T, sqrt(abar_t) is ~1e-3 and x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        amplifies any error in eps; the data range bounds it (Ho et al. 2020 clip to [-1, 1]).
        """
        abar = float(self.abar[t])
        a, b = math.sqrt(abar), math.sqrt(1 - abar)
        if self.prediction == "eps":
            eps = out
            x0 = (x - b * eps) / a
        elif self.prediction == "x0":
            x0 = out
            eps = (x - a * x0) / b
        else:  # v
            x0, eps = a * x - b * out, b * x + a * out
        if clip is None:
            return x0, eps
        lo, hi = clip[:, 0].view(1, -1, 1).to(x), clip[:, 1].view(1, -1, 1).to(x)
        x0 = torch.maximum(torch.minimum(x0, hi), lo)
        return x0, (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)

    @torch.no_grad()
    def sample_ancestral(self, net: DegradationNet, q: torch.Tensor, shape: tuple[int, ...], guidance: float = 1.0,
                         generator: torch.Generator | None = None, clip: torch.Tensor | None = None) -> torch.Tensor:
        """DDPM ancestral sampling over all T steps: q [B, R, V] -> x0 samples ``shape`` = [B, C, L].

        Each step draws from the Gaussian posterior q(x_{t-1} | x_t, x0_hat) with the predicted (clipped)
        x0_hat: mean ``c1 x0_hat + c2 x_t``, variance ``beta_t (1 - abar_{t-1}) / (1 - abar_t)``.
        """
        dev = q.device
        c, c_null = net.encode_condition(q), net.null_condition(q.shape[0])
        x = torch.randn(shape, generator=generator, device=dev)
        for t in range(self.T - 1, -1, -1):
            x0, _ = self._x0(x, self._out(net, x, t, c, c_null, guidance), t, clip)
            beta, abar, abar_prev = float(self.betas[t]), float(self.abar[t]), float(self.abar_prev[t])
            c1 = beta * math.sqrt(abar_prev) / (1 - abar)
            c2 = (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar)
            x = c1 * x0 + c2 * x
            if t > 0:
                x = x + math.sqrt(float(self.posterior_var[t])) * torch.randn(shape, generator=generator, device=dev)
        return x

    @torch.no_grad()
    def sample_ddim(self, net: DegradationNet, q: torch.Tensor, shape: tuple[int, ...], steps: int = 50,
                    guidance: float = 1.0, generator: torch.Generator | None = None, eta: float = 0.0,
                    clip: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM sampling on ``steps`` evenly spaced steps: q [B, R, V] -> x0 samples [B, C, L].

        ``eta = 0``: deterministic given the initial noise; ``eta = 1``: DDPM-like variance.
        """
        dev = q.device
        c, c_null = net.encode_condition(q), net.null_condition(q.shape[0])
        ts = np.unique(np.linspace(0, self.T - 1, max(1, min(int(steps), self.T))).round().astype(int))[::-1]
        x = torch.randn(shape, generator=generator, device=dev)
        for i, t in enumerate(ts):
            x0, eps = self._x0(x, self._out(net, x, int(t), c, c_null, guidance), int(t), clip)
            abar = float(self.abar[t])
            abar_prev = float(self.abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
            x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * eps
            if sigma > 0 and i + 1 < len(ts):
                x = x + sigma * torch.randn(shape, generator=generator, device=dev)
        return x

    def sample(self, net: DegradationNet, q: torch.Tensor, shape: tuple[int, ...], sampler: str = "ddim",
               steps: int = 50, guidance: float = 1.0, generator: torch.Generator | None = None,
               clip: torch.Tensor | None = None) -> torch.Tensor:
        """Dispatch on ``sampler`` (``"ddim"`` or ``"ancestral"``)."""
        if sampler == "ancestral":
            return self.sample_ancestral(net, q, shape, guidance, generator, clip)
        if sampler == "ddim":
            return self.sample_ddim(net, q, shape, steps, guidance, generator, clip=clip)
        raise ValueError(f"unknown sampler {sampler!r} (ddim or ancestral)")

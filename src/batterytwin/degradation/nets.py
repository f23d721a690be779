"""Networks of the degradation diffusion model (DiffBatt architecture, in PyTorch).

- :class:`ConditionEncoder`: transformer encoder over the rows (early cycles) of the capacity
  matrix -> one condition vector (DiffBatt's ``TransformerEncoder``: dense, attention, global
  average pooling, dense).
- :class:`UNet1d`: 1-D residual U-Net with self-attention at the coarse levels; each residual block
  is modulated (scale and shift) by the sum of the sinusoidal time embedding and the condition.
- :class:`DegradationNet`: both, with a learned "no condition" vector for classifier-free guidance.

Example::

    net = DegradationNet(curve_channels=2, condition_shape=(100, 100))
    c = net.encode_condition(q)             # q [B, 100, 100] -> [B, emb_dim]
    eps = net(x_t, t, c)                     # x_t [B, 2, 256], t [B] -> [B, 2, 256]
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of diffusion steps: t [B] -> [B, dim] (Vaswani et al. / Ho et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _groups(channels: int, wanted: int = 8) -> int:
    g = min(wanted, channels)
    while channels % g:
        g -= 1
    return g


class ResBlock1d(nn.Module):
    """GroupNorm-SiLU-Conv, FiLM by the embedding, GroupNorm-SiLU-Conv, plus a 1x1 shortcut.

    x [B, cin, L], emb [B, emb_dim] -> [B, cout, L].
    """

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv1d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb)).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale[..., None]) + shift[..., None]
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class Attention1d(nn.Module):
    """Multi-head self-attention along the curve, pre-norm, residual: x [B, C, L] -> [B, C, L]."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.attn = nn.MultiheadAttention(channels, heads if channels % heads == 0 else 1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).transpose(1, 2)
        h, _ = self.attn(h, h, h, need_weights=False)
        return x + h.transpose(1, 2)


class ConditionEncoder(nn.Module):
    """Capacity matrix [B, R, V] -> condition vector [B, out_dim].

    Each group of ``rows_per_token`` consecutive rows (early cycles' Q(V) differences) is a token
    (1 = DiffBatt's row tokens; 5 makes the encoder 5x cheaper): linear embedding + learned position,
    ``layers`` transformer encoder layers (pre-norm, no dropout: training stays deterministic
    across rank counts), mean over tokens, a final dense layer.
    """

    def __init__(self, rows: int, voltages: int, dim: int = 64, layers: int = 2, heads: int = 4,
                 out_dim: int = 128, rows_per_token: int = 5, variance_feature: bool = False):
        super().__init__()
        # Optional second path: Severson's log-variance feature of two rows (baselines.variance_rows),
        # standardised by training-set statistics (buffers, set by set_feature_scaling), through a dense layer.
        self.var_rows = None
        if variance_feature:
            from ..cycling.baselines import variance_rows

            self.var_rows = variance_rows(rows)
            self.var_embed = nn.Sequential(nn.Linear(1, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
            self.register_buffer("var_stats", torch.tensor([0.0, 1.0]))
        self.rpt = max(1, int(rows_per_token))
        self.tokens = -(-rows // self.rpt)
        self.embed = nn.Linear(voltages * self.rpt, dim)
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_dim))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        b, r, v = q.shape
        pad = self.tokens * self.rpt - r
        if pad:  # repeat the last early cycle to fill the last token
            q = torch.cat([q, q[:, -1:].expand(b, pad, v)], dim=1)
        h = self.encoder(self.embed(q.reshape(b, self.tokens, self.rpt * v)) + self.pos)
        out = self.out(h.mean(dim=1))
        if self.var_rows is not None:
            out = out + self.var_embed(((self.log_variance(q) - self.var_stats[0]) / self.var_stats[1])[:, None])
        return out

    def log_variance(self, q: torch.Tensor) -> torch.Tensor:
        """log10 var_V(q[:, hi] - q[:, lo]) [B] (the variance baseline's feature, in the scaled units of q)."""
        lo, hi = self.var_rows
        return torch.log10(torch.var(q[:, hi] - q[:, lo], dim=1, unbiased=False).clamp_min(1e-30))

    @torch.no_grad()
    def set_feature_scaling(self, q: torch.Tensor) -> None:
        """Standardise the variance feature by its mean and std over the training matrices q [n, R, V]."""
        if self.var_rows is not None:
            f = self.log_variance(q)
            self.var_stats.copy_(torch.stack([f.mean(), f.std().clamp_min(1e-3)]))


class UNet1d(nn.Module):
    """1-D residual U-Net predicting the noise of a curve: x [B, C, L], emb [B, E] -> [B, C, L].

    The curve is cut into patches of ``patch`` points; ``widths[i]`` channels at resolution
    ``L / (patch * 2**i)`` (L must be divisible by ``patch * 2**(len(widths)-1)``), ``blocks`` residual
    blocks per level, self-attention where ``attention[i]`` and in the middle.
    """

    def __init__(self, channels: int = 2, widths: Sequence[int] = (32, 64, 64),
                 attention: Sequence[bool] = (False, True, True), blocks: int = 1, emb_dim: int = 128,
                 patch: int = 4):
        super().__init__()
        widths, attention = list(widths), list(attention)
        if len(attention) != len(widths):
            raise ValueError("attention needs one flag per level (widths)")
        # Patches of `patch` points in, a learned transposed convolution out: the curves are smooth at
        # 10 cycles a point, and this cuts the cost of every layer by `patch` (CPU training in minutes).
        self.inp = nn.Conv1d(channels, widths[0], patch, stride=patch)
        self.down = nn.ModuleList()
        skips = [widths[0]]
        cin = widths[0]
        for i, w in enumerate(widths):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock1d(cin, w, emb_dim))
                level.append(Attention1d(w) if attention[i] else nn.Identity())
                cin = w
                skips.append(w)
            if i < len(widths) - 1:
                level.append(nn.Conv1d(w, w, 3, stride=2, padding=1))
                skips.append(w)
            self.down.append(level)
        self.mid1 = ResBlock1d(cin, cin, emb_dim)
        self.mid_attn = Attention1d(cin)
        self.mid2 = ResBlock1d(cin, cin, emb_dim)
        self.up = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            level = nn.ModuleList()
            for _ in range(blocks + 1):
                level.append(ResBlock1d(cin + skips.pop(), w, emb_dim))
                level.append(Attention1d(w) if attention[i] else nn.Identity())
                cin = w
            if i > 0:
                level.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv1d(w, w, 3, padding=1)))
            self.up.append(level)
        self.out = nn.Sequential(nn.GroupNorm(_groups(cin), cin), nn.SiLU(),
                                 nn.ConvTranspose1d(cin, channels, patch, stride=patch))
        nn.init.zeros_(self.out[-1].weight)  # start as "predict zero noise": stable first steps
        nn.init.zeros_(self.out[-1].bias)
        self.factor = patch * 2 ** (len(widths) - 1)  # the curve length must be a multiple of this

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        hs = [h]
        for level in self.down:
            items = list(level)
            for j in range(0, len(items) - (len(items) % 2), 2):
                h = items[j + 1](items[j](h, emb))
                hs.append(h)
            if len(items) % 2:
                h = items[-1](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level in self.up:
            items = list(level)
            for j in range(0, len(items) - (len(items) % 2), 2):
                h = items[j + 1](items[j](torch.cat([h, hs.pop()], dim=1), emb))
            if len(items) % 2:
                h = items[-1](h)
        return self.out(h)


class CoefMLP(nn.Module):
    """Residual MLP over the basis coefficients of a curve: x [B, 1, D], emb [B, E] -> [B, 1, D].

    ``blocks`` pre-norm residual blocks (LayerNorm, FiLM by the embedding, SiLU, Linear); the output
    layer starts at zero, like the U-Net's.
    """

    def __init__(self, dim: int, width: int = 256, blocks: int = 3, emb_dim: int = 128):
        super().__init__()
        self.inp = nn.Linear(dim, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(blocks))
        self.films = nn.ModuleList(nn.Linear(emb_dim, 2 * width) for _ in range(blocks))
        self.lins = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.inp(x[:, 0])
        e = F.silu(emb)
        for norm, film, lin in zip(self.norms, self.films, self.lins):
            scale, shift = film(e).chunk(2, dim=1)
            h = h + lin(F.silu(norm(h) * (1 + scale) + shift))
        return self.out(h)[:, None, :]


class DegradationNet(nn.Module):
    """Conditional denoiser: a backbone + ConditionEncoder + time MLP + a null condition for CFG.

    Backbones: ``"unet"`` (:class:`UNet1d` over the curve points, ``curve_channels`` = 2: SOH and
    end-of-record indicator) or ``"mlp"`` (:class:`CoefMLP` over ``basis_dim`` basis coefficients,
    see :mod:`.basis`).

    Args:
        condition_shape: (rows, voltages) of the capacity matrix.
    """

    def __init__(self, curve_channels: int = 2, condition_shape: Sequence[int] = (100, 100),
                 widths: Sequence[int] = (32, 64, 64), attention: Sequence[bool] = (False, True, True),
                 blocks: int = 1, emb_dim: int = 128, cond_dim: int = 64, cond_layers: int = 2, cond_heads: int = 4,
                 patch: int = 4, rows_per_token: int = 5, backbone: str = "unet", basis_dim: int = 0,
                 mlp_width: int = 256, mlp_blocks: int = 3, variance_feature: bool = False):
        super().__init__()
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond = ConditionEncoder(int(condition_shape[0]), int(condition_shape[1]), cond_dim, cond_layers,
                                     cond_heads, emb_dim, rows_per_token, variance_feature)
        self.null_cond = nn.Parameter(torch.zeros(1, emb_dim))
        if backbone == "mlp":
            self.unet = CoefMLP(int(basis_dim), mlp_width, mlp_blocks, emb_dim)
        elif backbone == "unet":
            self.unet = UNet1d(curve_channels, widths, attention, blocks, emb_dim, patch)
        else:
            raise ValueError(f"unknown backbone {backbone!r} (unet or mlp)")

    def encode_condition(self, q: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """q [B, R, V] -> [B, emb_dim]; rows where ``drop`` [B] is True get the null condition."""
        c = self.cond(q)
        if drop is not None:
            c = torch.where(drop[:, None], self.null_cond.expand_as(c), c)
        return c

    def null_condition(self, batch: int) -> torch.Tensor:
        return self.null_cond.expand(batch, -1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x [B, C, L] noisy curves (or [B, 1, D] coefficients), t [B] steps, c [B, emb_dim] -> model output
        (noise, x0 or v estimate, see :class:`~.diffusion.Diffusion`), same shape as x."""
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim)) + c
        return self.unet(x, emb)

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
                 out_dim: int = 128, rows_per_token: int = 5):
        super().__init__()
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
        return self.out(h.mean(dim=1))


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


class DegradationNet(nn.Module):
    """Conditional noise predictor: UNet1d + ConditionEncoder + time MLP + a null condition for CFG.

    Args:
        curve_channels: channels of a curve (2: SOH and end-of-record indicator).
        condition_shape: (rows, voltages) of the capacity matrix.
    """

    def __init__(self, curve_channels: int = 2, condition_shape: Sequence[int] = (100, 100),
                 widths: Sequence[int] = (32, 64, 64), attention: Sequence[bool] = (False, True, True),
                 blocks: int = 1, emb_dim: int = 128, cond_dim: int = 64, cond_layers: int = 2, cond_heads: int = 4,
                 patch: int = 4, rows_per_token: int = 5):
        super().__init__()
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond = ConditionEncoder(int(condition_shape[0]), int(condition_shape[1]), cond_dim, cond_layers,
                                     cond_heads, emb_dim, rows_per_token)
        self.null_cond = nn.Parameter(torch.zeros(1, emb_dim))
        self.unet = UNet1d(curve_channels, widths, attention, blocks, emb_dim, patch)

    def encode_condition(self, q: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """q [B, R, V] -> [B, emb_dim]; rows where ``drop`` [B] is True get the null condition."""
        c = self.cond(q)
        if drop is not None:
            c = torch.where(drop[:, None], self.null_cond.expand_as(c), c)
        return c

    def null_condition(self, batch: int) -> torch.Tensor:
        return self.null_cond.expand(batch, -1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x [B, C, L] noisy curves, t [B] steps, c [B, emb_dim] condition -> noise estimate [B, C, L]."""
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim)) + c
        return self.unet(x, emb)

"""Network factory: batteryNET's residual 3-D U-Net (MONAI ``UNet``), ``SegResNet`` or ``SwinUNETR``.

batteryNET (Quenum et al., npj Comput. Mater. 2023) is a MONAI ``UNet`` with residual units; we
use it in 3-D. Every network maps ``[B, 1, Z, Y, X]`` float32 to ``[B, n_classes, Z, Y, X]``
logits; patch sizes must be multiples of :func:`size_multiple`.

Normalisation layers are per sample (instance/group/layer norm), never batch norm: the result of
a step then does not depend on how the global batch is split over ranks.

Example::

    net = build_model({"arch": "unet", "channels": [16, 32, 64], "strides": [2, 2],
                       "num_res_units": 2}, n_classes=6)
    net(torch.zeros(2, 1, 32, 32, 32)).shape                 # torch.Size([2, 6, 32, 32, 32])
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..config import as_settings
from ..errors import InputError
from .config import ModelSettings


def model_settings(model: ModelSettings | Mapping[str, Any]) -> ModelSettings:
    """The ``segment.model`` section as :class:`~batterytwin.segment.config.ModelSettings` (a mapping, as a
    model file saves it, is validated; missing keys take their defaults)."""
    return as_settings(ModelSettings, model, "segment.model")


def build_model(model: ModelSettings | Mapping[str, Any], n_classes: int) -> nn.Module:
    """The network described by ``model`` (the ``segment.model`` section) with ``n_classes`` outputs."""
    m = model_settings(model)
    arch = m.arch
    if arch == "unet":
        from monai.networks.nets import UNet

        net = UNet(spatial_dims=3, in_channels=1, out_channels=n_classes,
                   channels=tuple(m.channels), strides=tuple(m.strides),
                   num_res_units=m.num_res_units, norm="INSTANCE", dropout=m.dropout)
        return drop_biases_before_norm(net)
    if arch == "segresnet":
        from monai.networks.nets import SegResNet

        return SegResNet(spatial_dims=3, in_channels=1, out_channels=n_classes,
                         init_filters=m.init_filters, dropout_prob=m.dropout or None)
    if arch == "swinunetr":
        import importlib.util

        from monai.networks.nets import SwinUNETR

        if importlib.util.find_spec("einops") is None:
            raise InputError("segment.model.arch: swinunetr needs the 'einops' package, which is not installed "
                             "(pip install einops), or choose unet/segresnet")

        return SwinUNETR(in_channels=1, out_channels=n_classes, spatial_dims=3,
                         feature_size=m.feature_size, drop_rate=m.dropout)
    raise InputError(f"segment.model.arch: unknown architecture {arch!r}")


def drop_biases_before_norm(net: nn.Module) -> nn.Module:
    """Remove the bias of every convolution followed by a normalisation layer.

    Instance norm subtracts the per-channel mean, so such a bias has no effect on the output and
    its true gradient is zero; its computed gradient is rounding noise, which Adam rescales into
    full-size random steps (and which then differs between 1 and N ranks). The output convolution
    and the residual projections keep their biases.
    """
    from monai.networks.blocks import Convolution

    for m in net.modules():
        if isinstance(m, Convolution) and hasattr(m, "adn") and hasattr(m.adn, "N") and m.conv.bias is not None:
            m.conv.bias = None
    return net


def size_multiple(model: ModelSettings | Mapping[str, Any]) -> int:
    """Patch sizes must be multiples of this (the total down-sampling of the network)."""
    m = model_settings(model)
    arch = m.arch
    if arch == "unet":
        return int(math.prod(m.strides))
    if arch == "segresnet":
        return 8  # blocks_down (1, 2, 2, 4): three stride-2 stages
    return 32  # SwinUNETR: patch embedding 2 x four merging stages


def check_patch(patch: Sequence[int], model: ModelSettings | Mapping[str, Any], where: str) -> None:
    """Raise :class:`InputError` when ``patch`` does not fit the network's down-sampling."""
    arch = model_settings(model).arch
    m = size_multiple(model)
    if any(int(p) % m for p in patch):
        raise InputError(f"{where}: patch size {list(patch)} must be a multiple of {m} for "
                         f"model.arch={arch} (its total down-sampling)")
    if arch == "swinunetr" and min(int(p) for p in patch) < 2 * m:
        # its bottleneck is patch/32 wide and instance norm needs more than one voxel there
        raise InputError(f"{where}: patch size {list(patch)} is too small for model.arch=swinunetr "
                         f"(at least {2 * m} per axis)")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def to_channels_last(net: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """Channels-last-3d layout (faster convolutions on GPU tensor cores)."""
    return net.to(memory_format=torch.channels_last_3d), x.contiguous(memory_format=torch.channels_last_3d)


def enable_dropout(net: nn.Module) -> int:
    """Put the network in eval mode with its dropout layers active (MC dropout); returns how many
    dropout layers with a non-zero rate it has (0: MC dropout would be one deterministic pass)."""
    net.eval()
    active = 0
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and float(m.p) > 0:
            m.train()
            active += 1
    return active

"""The ``segment`` config section: defaults, merging and validation.

The same keys live in ``config.yaml`` (section ``segment``), in
``workflow/schemas/segment.schema.yaml`` and in the ``--config``/``--config-json`` options of
``batterytwin train-seg`` and ``batterytwin segment``. Unknown keys are an error (a typo must not
silently fall back to a default).

Example::

    cfg = merge_config({"train": {"steps": 50}})
    cfg["model"]["arch"], cfg["train"]["steps"]          # ('unet', 50)
"""

from __future__ import annotations

import copy
from typing import Any

from ..config_io import section_from_file, section_from_json
from ..errors import InputError

DEFAULTS: dict[str, Any] = {
    # pipeline wiring (read by workflow/rules/segment.smk only)
    "input": "denoised",          # denoised | volume: which store of each sample is segmented
    "train_samples": [],          # [] = every synthetic sample of the run
    "label_stores": {},           # sample -> label store (hand labels; 255 = unlabelled)
    "val_samples": [],            # held-out samples for validation; [] = split by region
    "uncertainty": True,          # also write uncertainty.zarr (softmax entropy, float16)
    # network (batteryNET: MONAI UNet with residual units)
    "model": {
        "arch": "unet",           # unet | segresnet | swinunetr
        "channels": [16, 32, 64, 128],
        "strides": [2, 2, 2],
        "num_res_units": 2,
        "dropout": 0.0,
        "init_filters": 16,       # segresnet
        "feature_size": 24,       # swinunetr (multiple of 12)
    },
    "train": {
        "steps": 300,             # optimiser steps (global)
        "batch_size": 4,          # global batch: split evenly over ranks
        "patch_size": [32, 32, 32],
        "lr": 3.0e-3,
        "weight_decay": 1.0e-5,
        "warmup_steps": 20,       # linear warm-up, then cosine decay to lr * min_lr_ratio
        "min_lr_ratio": 0.02,
        "dice_weight": 1.0,
        "ce_weight": 1.0,
        "class_weights": None,    # per-class cross-entropy weights, or null
        "class_balance": 1.0,     # share of patches centred on a voxel of a uniformly drawn class
        "augment": {"flip": True, "rot90": True, "intensity_scale": 0.1, "intensity_shift": 0.1,
                    "noise_std": 0.03},
        "val_axis": "x",          # region split: labels of a slab along this axis are held out
        "val_fraction": 0.2,
        "val_every": 100,
        "checkpoint_every": 50,
        "checkpoint_dir": "work/models/segment",
        "seed": 0,
        "num_workers": 0,         # DataLoader workers per rank (patch reading)
        "device": "auto",         # auto | cpu | cuda
        "amp": True,              # bf16 autocast on GPU (never on CPU)
        "threads": 0,             # torch CPU threads per rank; 0 = torch default
    },
    "infer": {
        "patch_size": None,       # null = the training patch size
        "overlap": 0.25,
        "sw_batch_size": 4,
        "sigma_scale": 0.125,     # Gaussian blending weight, in units of the window size
        "device": "auto",
        "threads": 0,             # torch CPU threads per rank; 0 = OMP_NUM_THREADS or cores / ranks
        "amp": True,
        "chunk": None,            # null = store.chunk of the run (or 64)
        "shard": None,            # null = store.shard of the run (or 256)
    },
}

ARCHS = ("unet", "segresnet", "swinunetr")
AXIS_NAMES = {"z": 0, "y": 1, "x": 2}


def _merge(base: dict, new: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in (new or {}).items():
        if key not in base:
            raise InputError(f"{where}: unknown key '{key}'; known: {', '.join(sorted(base))}")
        if isinstance(base[key], dict) and key not in ("label_stores",):
            if not isinstance(value, dict):
                raise InputError(f"{where}.{key}: expected a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _triple(value: Any, where: str) -> list[int]:
    vals = [value] * 3 if isinstance(value, int) else list(value)
    if len(vals) != 3 or not all(isinstance(v, int) and v >= 8 for v in vals):
        raise InputError(f"{where}: expected one or three integers >= 8, got {value!r}")
    return vals


def merge_config(user: dict | None = None, where: str = "segment") -> dict:
    """Defaults updated by ``user`` (the ``segment`` section), validated.

    Raises:
        InputError: unknown key, wrong type or value out of range.
    """
    cfg = _merge(DEFAULTS, user or {}, where)
    m, t, i = cfg["model"], cfg["train"], cfg["infer"]
    if cfg["input"] not in ("denoised", "volume"):
        raise InputError(f"{where}.input: must be 'denoised' or 'volume', got {cfg['input']!r}")
    if m["arch"] not in ARCHS:
        raise InputError(f"{where}.model.arch: must be one of {', '.join(ARCHS)}, got {m['arch']!r}")
    if m["arch"] == "unet" and len(m["channels"]) != len(m["strides"]) + 1:
        raise InputError(f"{where}.model: needs len(channels) == len(strides) + 1, got "
                         f"{len(m['channels'])} channels and {len(m['strides'])} strides")
    t["patch_size"] = _triple(t["patch_size"], f"{where}.train.patch_size")
    if i["patch_size"] is not None:
        i["patch_size"] = _triple(i["patch_size"], f"{where}.infer.patch_size")
    for key in ("steps", "batch_size", "val_every", "checkpoint_every"):
        if not isinstance(t[key], int) or t[key] < 1:
            raise InputError(f"{where}.train.{key}: must be an integer >= 1, got {t[key]!r}")
    if t["val_axis"] not in AXIS_NAMES:
        raise InputError(f"{where}.train.val_axis: must be z, y or x, got {t['val_axis']!r}")
    if not 0.0 <= float(t["val_fraction"]) < 0.9:
        raise InputError(f"{where}.train.val_fraction: must be in [0, 0.9), got {t['val_fraction']!r}")
    if not 0.0 <= float(i["overlap"]) < 1.0:
        raise InputError(f"{where}.infer.overlap: must be in [0, 1), got {i['overlap']!r}")
    if not 0.0 <= float(t["class_balance"]) <= 1.0:
        raise InputError(f"{where}.train.class_balance: must be in [0, 1], got {t['class_balance']!r}")
    return cfg


def load_config(path: str | None = None, text: str | None = None) -> dict:
    """The ``segment`` section from a YAML/JSON file and/or a JSON string (the string wins).

    A file may hold the section itself or a whole ``config.yaml`` with a ``segment`` key.
    """
    user = section_from_file(path, "segment") if path else {}
    if text:
        user = _merge(merge_config(user), section_from_json(text, "segment"), "segment")
    return merge_config(user)

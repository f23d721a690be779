"""Checkpoints of walker batches: each batch's moment records and walker state in one ``.npz``.

A walk's checkpoints live in ``<checkpoint_dir>/<key>/batch_<b>.npz``; the key hashes the mask and
the settings that define the walkers' paths (seed, model, boundary, step length, walkers per batch,
record spacing, voxel size), so a rerun with grown budgets finds and continues the same batches, and
a walk that would take other paths never reads them. Files are written to a temporary name and
renamed: a checkpoint is complete or absent.

Example::

    ck = WalkCheckpoint(tmp_dir, mask, params, (1.0, 1.0, 1.0))
    ck.save(0, sums, state)             # after walking batch 0
    sums = ck.load(0, fresh_state)      # on rerun: the records, and the walkers moved to where they were
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .config import WalkSettings
from .walk import WalkState

# settings that change neither the walkers' paths nor the records: not part of the checkpoint key
_NOT_IN_KEY = ("device", "backend", "n_bootstrap", "linear_tolerance", "fit_start", "max_box_traversals",
               "n_walkers", "n_batches", "n_steps", "n_records", "max_steps", "max_walkers", "target_rel_std",
               "drift_sigma", "drift_floor", "min_travel")


def checkpoint_key(mask: np.ndarray, params: WalkSettings, voxel_size_um) -> str:
    """20 hex digits of the mask and the path-defining settings."""
    h = hashlib.sha256(memoryview(np.ascontiguousarray(mask, dtype=bool).view(np.uint8)).cast("B"))  # no copy
    p = {k: v for k, v in params.model_dump().items() if k not in _NOT_IN_KEY}
    p["per_batch"] = params.per_batch  # walker ids of a batch
    p["record_spacing"] = params.n_steps / params.n_records
    h.update(repr((sorted(p.items()), [float(v) for v in voxel_size_um])).encode())
    return h.hexdigest()[:20]


class WalkCheckpoint:
    """The saved batches of one walk (folder ``<checkpoint_dir>/<key>``, created here)."""

    def __init__(self, checkpoint_dir: str | Path, mask: np.ndarray, params: WalkSettings, voxel_size_um):
        self.folder = Path(checkpoint_dir) / checkpoint_key(mask, params, voxel_size_um)
        self.folder.mkdir(parents=True, exist_ok=True)

    def file(self, batch: int) -> Path:
        return self.folder / f"batch_{batch:05d}.npz"

    def load(self, batch: int, state: WalkState) -> np.ndarray | None:
        """The saved moment sums of ``batch`` (None without a checkpoint); ``state``'s walkers are
        moved to their saved positions (their ids and keys are those of a fresh batch)."""
        f = self.file(batch)
        if not f.exists():
            return None
        with np.load(f, allow_pickle=False) as z:
            state.voxel = torch.from_numpy(z["voxel"]).to(state.voxel.device).contiguous()
            state.frac = torch.from_numpy(z["frac"]).to(state.frac.device).contiguous()
            return z["sums"]

    def save(self, batch: int, sums: np.ndarray, state: WalkState) -> None:
        """Write ``batch``'s moment sums and walker positions (temporary file, then rename)."""
        f = self.file(batch)
        tmp = f.with_name(f.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, sums=sums, voxel=state.voxel.cpu().numpy(), frac=state.frac.cpu().numpy())
        tmp.replace(f)

"""Walker batches of one phase: started, walked on demand, spread over MPI ranks, checkpointed.

Walkers are split into fixed batches of ``per_batch`` walkers (batch b holds walker ids
``b * per_batch ..``). A walker's path depends only on (seed, walker id, step), so a batch walked to
record 2R in one go, or to R and later on to 2R (also after a checkpoint round trip), and on 1 or N
ranks, gives the same numbers. Each batch yields the sums over its walkers of the second moments
:data:`~.walk_records.PAIRS` of their displacement at every record.

Example::

    walker = BatchWalker(mask, start_mask, params, (1.0, 1.0, 1.0))
    sums = walker.moments(16, 40)       # float64 [16, 41, 6], the same on every rank
    sums = walker.moments(32, 80)       # more batches and steps: the first ones are walked on, not again
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..distributed import World, get_world, select_device
from . import ckernel
from . import walk as W
from .config import WalkSettings
from .starts import StartVoxels
from .walk_checkpoint import WalkCheckpoint
from .walk_records import PAIRS, record_times, step_voxels

log = logging.getLogger(__name__)


def start_indices(start_flat: "StartVoxels | torch.Tensor", walker_id: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform choice of start voxels (flat indices, sorted int64 [M]) for walkers (int64 [N])."""
    k1 = W.walker_key(seed ^ 0x5EED, walker_id) >> 1  # 31 bits
    k2 = W.walker_key(seed ^ 0xA11CE, walker_id)      # 32 bits
    return start_flat[((k1 << 32) | k2) % len(start_flat)]


def _backend(params: WalkSettings, device: torch.device) -> str:
    if params.backend != "auto":
        return params.backend
    if device.type == "cpu":
        return "c" if ckernel.load() is not None else "torch"
    if params.model == "lattice":
        try:
            from . import walk_triton
        except ImportError:
            return "torch"
        return "triton" if walk_triton.available() else "torch"
    return "torch"


@dataclass
class _Batch:
    """One walker batch in progress: its walkers and the moment sums recorded so far ([r + 1, 6])."""

    state: W.WalkState
    sums: np.ndarray


def _new_batch(shape, start_flat: "StartVoxels | torch.Tensor", batch: int, params: WalkSettings) -> _Batch:
    n = params.per_batch
    ids = torch.arange(batch * n, (batch + 1) * n, dtype=torch.int64, device=start_flat.device)
    state = W.walk_start(shape, start_indices(start_flat, ids, params.seed), ids, params.seed,
                         params.model == "offlattice")
    state.voxel, state.frac, state.key = state.voxel.contiguous(), state.frac.contiguous(), state.key.contiguous()
    return _Batch(state, np.zeros((1, 6)))


def advance_batch(mask: torch.Tensor, bt: _Batch, n_records: int, params: WalkSettings, voxel_size_um,
                  backend: str) -> None:
    """Walk a batch on from its last record to record ``n_records`` (in place).

    Args:
        mask: bool [Z, Y, X] on the walk's device.
        bt: the batch; ``bt.sums`` gains rows: sums over walkers of d_z^2, d_y^2, d_x^2, d_z d_y,
            d_z d_x, d_y d_x (voxel^2) at every new record.
    """
    offl = params.model == "offlattice"
    state = bt.state
    sv = tuple(float(v) for v in step_voxels(params, voxel_size_um))
    times = record_times(params, n_records)
    mask_u8 = mask.contiguous().view(torch.uint8) if backend in ("c", "triton") else None  # no copy
    rows = [bt.sums]
    truncated = 0
    for r in range(len(bt.sums), n_records + 1):
        t0, k = int(times[r - 1]), int(times[r] - times[r - 1])
        if backend == "c":
            if offl:
                truncated += ckernel.offlattice_advance(mask_u8, state.voxel, state.frac, state.key, t0, k,
                                                        params.boundary, sv)
            else:
                ckernel.lattice_advance(mask_u8, state.voxel, state.key, t0, k, params.boundary)
        elif backend == "triton" and not offl:
            from . import walk_triton

            walk_triton.lattice_advance(mask_u8, state, t0, k, params.boundary)
        elif offl:
            truncated += W.offlattice_advance(mask, state, t0, k, params.boundary, sv)
        else:
            W.lattice_advance(mask, state, t0, k, params.boundary)
        d = state.displacement()
        rows.append(torch.stack([(d[:, i] * d[:, j]).sum() for i, j in PAIRS]).cpu().numpy()[None])
    bt.sums = np.vstack(rows)
    if truncated:
        log.warning("off-lattice walk: %d walker-steps cut short after 8 face events", truncated)


class BatchWalker:
    """The walker batches of one phase, walked on demand (:meth:`moments`) and kept between calls.

    Batches are spread round-robin over MPI ranks (batch b on rank ``b % size`` whatever the
    number of batches, so an extension continues each batch where it lives); the moment sums are
    gathered in batch order, so every rank holds the same array and takes the same decisions.
    With ``checkpoint_dir`` each batch's records and walker state are saved
    (:class:`~.walk_checkpoint.WalkCheckpoint`) after every advance and reused on rerun: finished
    work is never walked twice, and an extension resumes from the saved state.
    """

    def __init__(self, mask: np.ndarray, start_mask: np.ndarray, params: WalkSettings, voxel_size_um,
                 world: World | None = None, checkpoint_dir: str | Path | None = None):
        self.params, self.voxel_size_um = params, voxel_size_um
        self.world = world or get_world()
        dev = select_device(self.world, params.device)  # one GPU per node-local rank when CUDA is used
        self.backend = _backend(params, dev)
        self.mask = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)).to(dev)
        self.start_flat = (start_mask.to(dev) if isinstance(start_mask, StartVoxels)
                           else StartVoxels(start_mask, dev))
        self.ck = None if checkpoint_dir is None else WalkCheckpoint(checkpoint_dir, mask, params, voxel_size_um)
        self.batches: dict[int, _Batch] = {}

    def _load(self, b: int) -> _Batch:
        bt = _new_batch(tuple(self.mask.shape), self.start_flat, b, self.params)
        sums = self.ck.load(b, bt.state) if self.ck is not None else None
        if sums is not None:
            bt.sums = sums
        return bt

    def moments(self, n_batches: int, n_records: int) -> np.ndarray:
        """Moment sums of batches ``0..n_batches-1`` up to record ``n_records``: float64
        [n_batches, n_records + 1, 6], the same on every rank."""
        mine = {}
        for b in self.world.my_items(n_batches):
            bt = self.batches.get(b)
            if bt is None:
                bt = self.batches[b] = self._load(b)
            if len(bt.sums) < n_records + 1:
                advance_batch(self.mask, bt, n_records, self.params, self.voxel_size_um, self.backend)
                if self.ck is not None:
                    self.ck.save(b, bt.sums, bt.state)
            mine[b] = bt.sums[: n_records + 1]
        merged = {}
        for part in self.world.allgather(mine):
            merged.update(part)
        return np.stack([merged[b] for b in range(n_batches)])


def walk_moments(mask: np.ndarray, start_mask: np.ndarray, params: WalkSettings, voxel_size_um,
                 world: World | None = None, checkpoint_dir: str | Path | None = None) -> np.ndarray:
    """Moment sums of a fixed walk (``n_batches`` batches, ``n_steps`` steps): float64
    [n_batches, n_records + 1, 6], same on every rank (see :class:`BatchWalker`)."""
    walker = BatchWalker(mask, start_mask, params, voxel_size_um, world, checkpoint_dir)
    return walker.moments(params.n_batches, params.n_records)

"""Denoise a volume store shard by shard: exact halos, MPI ranks, resume, metrics.

Data flow (one rank; every rank runs the same code on its own shards)::

    volume.zarr --(halo read, reflect at true borders only)--> padded block (float32)
        --NLM (torch or Triton)--> shard of denoised.zarr (float32)
        --(+ clean.zarr)--> PSNR / SSIM partial sums

* Halo = patch radius + search radius; neighbours' voxels are read from the store and reflection
  happens only at the volume's own borders, so the chunked result equals the whole-volume result.
* Each output shard is written by exactly one rank (round robin over shards).
* ``sigma`` is estimated once from the whole volume (bounded subsample, see :mod:`.sigma`) by
  rank 0 and broadcast; ``h = h_factor * sigma`` unless ``h`` is given.
* With ``work_dir`` the partial store and one marker per finished shard live there: a restarted
  job with the same inputs and parameters skips the finished shards. The store is renamed into
  place only when complete.
* The NLM runs on the data as float32 in its own units (no rescaling): ``h`` and ``sigma`` are in
  data units. skimage's ``fast_mode`` is reproduced by ``compat="skimage"`` on the same float data.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import store
from ..distributed import World, get_world, select_device
from ..errors import InputError
from ..kinds import require_kind
from ..progress import progress
from ..sanity import check_contrast, check_finite_result
from .config import DenoiseConfig
from .metrics import SSIM_HALO, MetricSums, block_sums
from .nlm import NLMParams, cpu_threads, reflect_index, run_padded
from .sigma import estimate_sigma

log = logging.getLogger(__name__)
STAGE = "denoise"
NOISE_FLOOR = 1e-6  # sigma at most this fraction of the data range: no noise to estimate h from


def keep_freed_memory() -> None:
    """Ask glibc to reuse freed large blocks instead of returning them to the OS.

    The CPU path allocates and frees several volume-sized temporaries per search offset; with
    glibc's default mmap threshold each one is a fresh mmap and a page fault per 4 KiB, which
    roughly halves the speed. Harmless elsewhere; a no-op where glibc is absent.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


# glibc's thresholds while the store is read and written (between two NLM runs): large buffers
# mmapped and unmapped when freed, the heap trimmed (the defaults' upper values)
IO_MMAP_THRESHOLD = 32 << 20
IO_TRIM_THRESHOLD = 128 << 10


@contextlib.contextmanager
def freed_memory_kept(enabled: bool = True):
    """:func:`keep_freed_memory` for the block only (the NLM of one shard), then large buffers are
    mmapped again and the heap trimmed (``malloc_trim``); a no-op where glibc is absent.

    Kept for the whole run, nothing was ever returned and the free space left between shards
    accumulated: peak RSS grew from 0.68 to 1.2 GB between a 256^3 and a 512^3 volume of 256^3
    shards (bench/chain.py, search radius 1). Per shard, the per-offset reuse stays and the
    memory is that of one shard whatever the volume.
    """
    if not enabled:
        yield
        return
    keep_freed_memory()
    try:
        yield
    finally:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, IO_MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
            libc.mallopt(-1, IO_TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
            libc.malloc_trim(0)
        except (OSError, AttributeError):
            pass


def read_with_halo(array: Any, region: tuple[slice, ...], halo: int) -> np.ndarray:
    """A region of a (Z, Y, X) array with ``halo`` voxels each side, reflected only past the array's ends.

    Reads one bounding box from the store and picks the reflected positions from it, so the result
    is identical to ``np.pad(whole_volume, halo, "reflect")[region grown by halo]``.
    """
    idx = [reflect_index(np.arange(s.start - halo, s.stop + halo), n) for s, n in zip(region, array.shape)]
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    data = np.asarray(array[box])
    return data[np.ix_(*(i - b.start for i, b in zip(idx, box)))]


def _grow(region: tuple[slice, ...], by: int, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Region grown by ``by`` (clipped to the volume) and the slices of the original inside it."""
    big = tuple(slice(max(0, s.start - by), min(n, s.stop + by)) for s, n in zip(region, shape))
    inner = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(region, big))
    return big, inner


def _check_input(vol: store.Volume) -> None:
    arr = vol.array
    if arr.ndim != 3:
        raise InputError(f"{vol.path}: denoise needs a 3-D volume (z, y, x), got shape {arr.shape}")
    if np.dtype(arr.dtype).kind not in "biuf":
        raise InputError(f"{vol.path}: dtype {arr.dtype} is not a real number type")


def check_search_radius(cfg: DenoiseConfig, shape: tuple[int, ...], where: Any) -> None:
    """Refuse a search window (2 d + 1 voxels per axis) larger than the volume's smallest edge: its
    offsets would reach past the volume into reflections of reflections, at a cost of (2 d + 1)^3."""
    edge = min(shape)
    if 2 * cfg.search_radius + 1 > edge:
        raise InputError(f"{where}: denoise.search_radius {cfg.search_radius} gives a search window of "
                         f"{2 * cfg.search_radius + 1} voxels, larger than the volume's smallest edge ({edge} of "
                         f"{tuple(shape)}); use at most {(edge - 1) // 2}")


def _noise_level(src: store.Volume, cfg: DenoiseConfig) -> float | InputError:
    """The noise sigma of the volume, or the refusal of a volume without contrast or without noise."""
    try:
        lo, hi = check_contrast(src.array, str(src.path), "denoise", cfg.sigma_max_voxels)
        sigma = estimate_sigma(src.array, cfg.sigma_max_voxels)
        if not math.isfinite(sigma):
            raise InputError(f"{src.path}: the volume contains NaN or infinite values")
        if cfg.h is None and not sigma > NOISE_FLOOR * (hi - lo):
            raise InputError(f"{src.path}: the estimated noise sigma ({sigma:.3g}) is ~0 next to the data range "
                             f"({lo:.6g}..{hi:.6g}): the volume looks noise-free, h = h_factor * sigma would be "
                             "meaningless; give denoise.h directly or skip denoising")
        return sigma
    except InputError as exc:
        return exc


def _data_range(ref: Any, regions: list[tuple[slice, ...]], world: World) -> float:
    """max - min of the reference volume (the PSNR/SSIM data range), shards split over ranks."""
    lo, hi = math.inf, -math.inf
    for i in world.my_items(len(regions)):
        block = np.asarray(ref[regions[i]])
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    parts = world.allgather((lo, hi))
    return max(p[1] for p in parts) - min(p[0] for p in parts)


def _source_info(path: Path) -> dict[str, Any]:
    """Identity of the input store: path, hash of its metadata documents, and its creation stamp."""
    meta = [p for p in (path / "zarr.json", path / store.ARRAY_NAME / "zarr.json") if p.exists()]
    return {"path": str(path), "sha256": store.sha256_files(meta)}


def _partial_matches(partial: Path, fingerprint: str) -> bool:
    try:
        import zarr

        return zarr.open_group(str(partial), mode="r").attrs.get("denoise_fingerprint") == fingerprint
    except Exception:  # unreadable leftover: start again
        return False


def denoise_store(input_path: os.PathLike | str, output_path: os.PathLike | str, cfg: DenoiseConfig, *,
                  reference: os.PathLike | str | None = None, metrics_path: os.PathLike | str | None = None,
                  work_dir: os.PathLike | str | None = None, world: World | None = None) -> dict[str, Any]:
    """Denoise ``input_path`` into ``output_path`` (float32 volume store); call on every rank.

    Args:
        input_path: volume store (any real dtype, with ``voxel_size_um``).
        output_path: the ``denoised.zarr`` to write (replaced atomically when complete).
        cfg: parameters (:class:`DenoiseConfig`).
        reference: optional clean store of the same shape: PSNR/SSIM are computed against it.
        metrics_path: JSON summary (default: ``denoise.json`` beside the output).
        work_dir: where the partial store and shard markers live for resuming (optional).

    Returns:
        The summary written to ``metrics_path`` (same on every rank).

    Raises:
        InputError: bad parameters, missing/invalid stores, NaN in the input, shape mismatch.
    """
    world = world or get_world()
    t_start = time.perf_counter()
    src = store.open_volume(input_path)
    require_kind(src, "ct", "denoise input")
    _check_input(src)
    store.check_finite(src, world)
    shape = src.shape
    if min(shape) < max(cfg.patch_size, 2):
        raise InputError(f"{src.path}: volume {shape} is smaller than the patch ({cfg.patch_size})")
    check_search_radius(cfg, shape, src.path)
    ref = None
    if reference is not None:
        ref = store.open_volume(reference, require=())
        require_kind(ref, "ct", "denoise --reference")
        if ref.shape != shape:
            raise InputError(f"{ref.path}: reference shape {ref.shape} differs from the input's {shape}")
        store.check_finite(ref, world)

    # one noise estimate for the whole volume, on rank 0, shared (a refusal too: every rank raises it)
    found = world.bcast(_noise_level(src, cfg) if world.is_root else None)
    if isinstance(found, InputError):
        raise found
    sigma = found
    h = cfg.h if cfg.h is not None else cfg.h_factor * sigma
    if not h > 0:
        raise InputError(f"{src.path}: estimated noise sigma is {sigma}, so h = h_factor * sigma is not > 0; "
                         "give denoise.h directly")
    params = NLMParams(cfg.patch_size, cfg.search_radius, float(h), float(sigma) if cfg.subtract_sigma else 0.0,
                       cfg.compat)

    device = select_device(world, cfg.device)
    backend = cfg.backend if cfg.backend != "auto" else ("triton" if device.type == "cuda" else "torch")
    workers = 1
    if device.type == "cpu":
        workers = cpu_threads(cfg.threads, world.local_size)

    in_chunks = tuple(src.array.chunks)
    chunk = cfg.chunk or in_chunks
    shard = cfg.shard or src.shards
    chunks, shards = store.block_shapes(shape, chunk, shard, where="denoise")
    regions = store.shard_regions(shape, shards)
    record = {**{k: v for k, v in vars(cfg).items()}, "h": params.h, "noise_sigma": sigma}
    nlm_attrs = {"algorithm": "blockwise fast non-local means (Darbon et al. 2008)", **params.as_dict(),
                 "h_factor": cfg.h_factor if cfg.h is None else None, "noise_sigma": sigma,
                 "noise_sigma_estimator": "db2 ddd median / 0.6745 (skimage.restoration.estimate_sigma)",
                 "subtract_sigma": cfg.subtract_sigma, "halo": params.halo, "dtype_in": str(src.array.dtype)}
    source = _source_info(src.path)
    fingerprint = store.params_sha256({"params": params.as_dict(), "source": source, "shape": shape,
                                       "chunks": chunks, "shards": shards})
    attrs = store.volume_attrs(STAGE, src.voxel_size_um, record, source, nlm=nlm_attrs, noise_sigma=sigma,
                               denoise_fingerprint=fingerprint)

    final = Path(output_path)
    summary = {"noise_sigma": sigma, "h": params.h, "params": nlm_attrs, "backend": backend,
               "device": str(device), "cpu_workers": workers, "ranks": world.size, "shape": list(shape), "shards": len(regions)}
    if work_dir is None:
        with store.atomic_output(final, world) as tmp:
            if world.is_root:
                store.create_volume(tmp, shape, "float32", attrs, chunk=chunks, shard=shards)
            world.barrier()
            summary.update(_fill(src, ref, tmp, None, regions, params, backend, device, workers, world, t_start))
    else:
        work = Path(work_dir)
        partial, markers = work / "denoised.partial.zarr", work / "shards"
        with store.exclusive_lock(work, world, "denoise --work-dir"):  # one run per work folder
            if world.is_root:
                if partial.exists() and not _partial_matches(partial, fingerprint):
                    log.info("discarding %s: written from other inputs or with other parameters", partial)
                    shutil.rmtree(partial)
                if not partial.exists():
                    shutil.rmtree(markers, ignore_errors=True)
                    store.create_volume(partial, shape, "float32", attrs, chunk=chunks, shard=shards)
                markers.mkdir(parents=True, exist_ok=True)
            world.barrier()
            summary.update(_fill(src, ref, partial, markers, regions, params, backend, device, workers, world, t_start))
            with store.atomic_output(final, world) as tmp:
                if world.is_root:
                    os.rename(partial, tmp)
                    shutil.rmtree(markers, ignore_errors=True)
    if world.is_root:
        store.write_json(Path(metrics_path) if metrics_path else final.parent / "denoise.json",
                         {"store": str(final), **summary})
    return summary


def _fill(src: store.Volume, ref: store.Volume | None, out_path: Path, markers: Path | None,
          regions: list[tuple[slice, ...]], params: NLMParams, backend: str, device: torch.device,
          workers: int, world: World, t_start: float) -> dict[str, Any]:
    """Denoise this rank's shards into ``out_path``, then measure; returns summary entries (all ranks)."""
    out = store.open_volume(out_path, mode="r+", validate=False).array
    mine = list(world.my_items(len(regions)))
    # skimage mode on the torch path runs in float64: in float32, a distance within rounding of the
    # cut-off (5) can drop or keep a weight of fast_exp(-5) = 0.0066 and move a voxel by ~1e-4
    dtype = np.float64 if params.compat == "skimage" and backend == "torch" else np.float32
    n_done = 0
    t0 = time.perf_counter()
    for i in progress(mine, desc="denoise shards", total=len(mine)):
        region = regions[i]
        marker = markers / f"{i}.done" if markers is not None else None
        if marker is not None and marker.exists():
            continue  # finished by an earlier run of this job
        block = read_with_halo(src.array, region, params.halo)
        if not np.isfinite(block).all():
            raise InputError(f"{src.path}: NaN or infinite values in the volume near "
                             f"{[(s.start, s.stop) for s in region]}")
        xp = torch.from_numpy(np.ascontiguousarray(block, dtype=dtype)).to(device)
        del block
        with freed_memory_kept(device.type == "cpu"):
            result = run_padded(xp, params, backend, workers).cpu().numpy()
            del xp
        check_finite_result(result, "denoise", out_path, region,
                            hint=f"h {params.h:.3g} is too small for float32 weights; give a larger denoise.h")
        out[region] = result
        del result
        n_done += 1
        if marker is not None:
            marker.touch()
    t_nlm = time.perf_counter() - t0
    voxels_done = world.allreduce_sum(sum(math.prod(s.stop - s.start for s in regions[i]) for i in mine))
    entry: dict[str, Any] = {"shards_computed": int(world.allreduce_sum(n_done)),
                             "nlm_wall_s_max_rank": max(world.allgather(t_nlm)),
                             "voxels": int(voxels_done)}
    world.barrier()  # every shard is written: the SSIM windows may now read neighbours
    if ref is not None:
        entry["metrics"] = _metrics(out, ref, regions, world)
        if world.is_root:
            import zarr

            zarr.open_group(str(out_path), mode="r+").attrs["metrics"] = entry["metrics"]
    entry["wall_s"] = time.perf_counter() - t_start
    return entry


def _metrics(out: Any, ref: store.Volume, regions: list[tuple[slice, ...]], world: World) -> dict[str, Any]:
    """PSNR/SSIM of the written volume against the reference (exact, shard by shard, over ranks)."""
    shape = tuple(out.shape)
    data_range = _data_range(ref.array, regions, world)
    sums = MetricSums()
    for i in world.my_items(len(regions)):
        big, inner = _grow(regions[i], SSIM_HALO, shape)
        sums = sums + block_sums(np.asarray(out[big]), np.asarray(ref.array[big]), inner,
                                 tuple(s.start for s in big), shape, data_range)
    total = MetricSums()
    for part in world.allgather(sums.as_dict()):
        total = total + MetricSums(**part)
    return {**total.result(data_range), "reference": str(ref.path)}

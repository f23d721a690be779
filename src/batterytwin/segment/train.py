"""``batterytwin train-seg``: DDP training of the segmentation network on patches from stores.

Launch with ``srun``/``mpiexec -n N`` (or plainly: world size 1, the same code path). Ranks form
a ``torch.distributed`` group through :func:`batterytwin.distributed.init_torch_distributed`
(NCCL on GPU, gloo on CPU); the model is wrapped in ``DistributedDataParallel``; every rank
reads its share of each global batch (:class:`~batterytwin.segment.data.StepSampler`).

Checkpoints go to ``train.checkpoint_dir`` (default ``work/models/segment``, outside the rule's
outputs) every ``checkpoint_every`` steps. SIGUSR1 or SIGTERM (Slurm before the time limit or
on preemption) makes every rank stop at the next step boundary, after rank 0 wrote a checkpoint;
the process then exits with :data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``) and a ``preempted``
message. Rerunning the same command resumes from the checkpoint and ends with the weights an
uninterrupted run would have (patches, augmentation and LR depend on the step only).

Outputs (rank 0, atomic): ``model.pt`` -- ``{"format", "state_dict", "model", "classes",
"n_classes", "patch_size", "normalisation", "train", "step"}``, loadable with
``torch.load(path, weights_only=True)`` -- and ``metrics.json`` (loss curve, per-class
validation Dice, throughput).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import store
from ..contracts import IGNORE_LABEL, SEGMENT_METRICS_SCHEMA
from ..distributed import World, get_world, init_torch_distributed
from ..errors import InputError
from . import data as D
from .config import AXIS_NAMES
from .loss import dice_ce_loss, hard_dice_counts, labelled_weight
from .model import build_model, check_patch, count_parameters
from .window import gaussian_weight, predict_region

log = logging.getLogger(__name__)

FORMAT = "batterytwin.segment/1"
EXIT_PREEMPTED = 75  # sysexits EX_TEMPFAIL: not finished, checkpoint saved, rerun to resume
CHECKPOINT_NAME = "checkpoint.pt"
# keys that do not change the trained weights: a run may resume with different values
_RUNTIME_KEYS = ("num_workers", "device", "threads", "checkpoint_every", "checkpoint_dir", "val_every")


@dataclass
class TrainInput:
    """One training volume and its label store (``labels`` may hold 255 = unlabelled)."""

    volume: str
    labels: str


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``steps``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class _StopFlag:
    """Set by SIGUSR1/SIGTERM; checked (and agreed over ranks) at each step boundary."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _classes_of(label_paths: Sequence[str]) -> dict[int, str]:
    classes = None
    for p in label_paths:
        vol = store.open_volume(p, require=("voxel_size_um",))
        c = vol.classes
        if not c:
            raise InputError(f"{p}: label store has no 'classes' attribute ({{\"0\": \"pore\", ...}})")
        if sorted(c) != list(range(len(c))):
            raise InputError(f"{p}: classes must be numbered 0..n-1, got ids {sorted(c)}")
        if classes is not None and c != classes:
            raise InputError(f"{p}: classes {c} differ from those of {label_paths[0]} ({classes})")
        classes = c
    return classes


def _holdout(shape: Sequence[int], axis: str, fraction: float) -> tuple[slice, ...] | None:
    if fraction <= 0:
        return None
    ax = AXIS_NAMES[axis]
    n = shape[ax]
    start = n - max(1, int(round(n * fraction)))
    region = [slice(0, s) for s in shape]
    region[ax] = slice(start, n)
    return tuple(region)


def _run_key(cfg: dict, inputs: Sequence[TrainInput], val: Sequence[TrainInput], world_size: int) -> str:
    """Identity of a training run: what determines its weights (resume only into the same run)."""
    train = {k: v for k, v in cfg["train"].items() if k not in _RUNTIME_KEYS}
    ident = {"model": cfg["model"], "train": train, "world_batch": cfg["train"]["batch_size"],
             "inputs": [[os.path.abspath(i.volume), os.path.abspath(i.labels)] for i in inputs],
             "val": [[os.path.abspath(i.volume), os.path.abspath(i.labels)] for i in val]}
    return store.params_sha256(ident)


def _save_checkpoint(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f"{store.TMP_MARKER}{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _set_threads(world: World, threads: int) -> None:
    """Torch CPU threads of this rank: ``threads``, else what the launcher granted.

    ``OMP_NUM_THREADS`` (Snakemake sets it to the job's threads) is honoured by torch itself;
    otherwise ``SLURM_CPUS_PER_TASK``, otherwise the cores of this node shared by its ranks.
    Oversubscribing matters: OpenMP threads spin-wait, so two threads on a busy core can be several
    times slower than one.
    """
    if threads <= 0:
        if os.environ.get("OMP_NUM_THREADS"):
            return
        if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
            threads = int(os.environ["SLURM_CPUS_PER_TASK"])
        else:
            try:
                cores = len(os.sched_getaffinity(0))
            except AttributeError:
                cores = os.cpu_count() or 1
            threads = max(1, cores // max(1, world.local_size))  # ranks on a node share its cores
    torch.set_num_threads(threads)


def validate(net: torch.nn.Module, sources: Sequence[tuple[Any, Any, tuple[slice, ...], D.PatchSource]],
             n_classes: int, roi: Sequence[int], device, amp: bool, region_size: int = 128) -> np.ndarray:
    """Per-class hard Dice over the validation regions (labelled voxels only), NaN for absent classes.

    Args:
        sources: ``(image, labels, region, source)``: ``region`` of the volume is predicted in
            blocks of ``region_size`` with the global sliding-window grid.
    """
    num = np.zeros(n_classes)
    den = np.zeros(n_classes)
    was_training = net.training
    net.eval()
    weight = gaussian_weight(roi, 0.125, device)
    for image, labels, region, src in sources:
        sub = [range(r.start, r.stop, region_size) for r in region]
        for org in itertools.product(*sub):
            block = tuple(slice(o, min(o + region_size, r.stop)) for o, r in zip(org, region))
            probs = predict_region(net, image, block, roi, n_classes, src.normalise, device=device, amp=amp,
                                   weight=weight)
            pred = probs.argmax(0).cpu().numpy()
            n, d = hard_dice_counts(pred, np.asarray(labels[block]), n_classes)
            num += n
            den += d
    net.train(was_training)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1e-12), np.nan)


def train(cfg: dict, inputs: Sequence[TrainInput], model_out: str, metrics_out: str, *,
          val_inputs: Sequence[TrainInput] = (), resume: str = "auto", world: World | None = None) -> int:
    """Train, write ``model_out`` and ``metrics_out``; return 0, or :data:`EXIT_PREEMPTED`.

    Args:
        cfg: merged ``segment`` config (:func:`~batterytwin.segment.config.merge_config`).
        inputs: training volumes with their label stores.
        val_inputs: held-out volumes for validation; without them a slab along
            ``train.val_axis`` of each training volume is held out (``train.val_fraction``).
        resume: ``auto`` (resume when a checkpoint of this run exists), ``yes`` (the checkpoint
            must exist) or ``no`` (start afresh).
    """
    world = world or get_world()
    t_cfg, m_cfg = cfg["train"], cfg["model"]
    if not inputs:
        raise InputError("segment.train_samples: no training volume given")
    if resume not in ("auto", "yes", "no"):
        raise InputError(f"--resume: must be auto, yes or no, got {resume!r}")
    ckpt_path = Path(t_cfg["checkpoint_dir"]) / CHECKPOINT_NAME
    if resume == "yes" and not ckpt_path.exists():
        raise InputError(f"{ckpt_path}: no checkpoint to resume from (--resume yes)")
    patch = t_cfg["patch_size"]
    check_patch(patch, m_cfg, "segment.train.patch_size")
    _set_threads(world, int(t_cfg["threads"]))
    torch.manual_seed(int(t_cfg["seed"]))

    classes = _classes_of([i.labels for i in inputs] + [i.labels for i in val_inputs])
    n_classes = len(classes)
    sources, val_sources = [], []
    for inp in inputs:
        vol = store.open_volume(inp.volume)
        lab = store.open_volume(inp.labels, require=("voxel_size_um",))
        hold = None if val_inputs else _holdout(vol.shape, t_cfg["val_axis"], float(t_cfg["val_fraction"]))
        src = D.PatchSource.open(vol.array, lab.array, n_classes, hold, name=str(inp.labels), world=world,
                                 seed=int(t_cfg["seed"]))
        sources.append(src)
        if hold is not None:
            val_sources.append((vol.array, lab.array, hold, src))
    for inp in val_inputs:
        vol = store.open_volume(inp.volume)
        lab = store.open_volume(inp.labels, require=("voxel_size_um",))
        if vol.shape != lab.shape:
            raise InputError(f"{inp.labels}: label store shape {lab.shape} differs from the volume shape {vol.shape}")
        src = D.PatchSource(vol.array, lab.array, n_classes, None, *D.intensity_range(vol.array, int(t_cfg["seed"])),
                            name=str(inp.labels))
        val_sources.append((vol.array, lab.array, tuple(slice(0, n) for n in vol.shape), src))
    dataset = D.PatchDataset(sources, patch, seed=int(t_cfg["seed"]), class_balance=float(t_cfg["class_balance"]),
                             augment_cfg=t_cfg["augment"])

    device = init_torch_distributed(world, t_cfg["device"])
    amp = bool(t_cfg["amp"]) and device.type == "cuda"
    net = build_model(m_cfg, n_classes).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last_3d)
    ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(net.parameters(), lr=float(t_cfg["lr"]), weight_decay=float(t_cfg["weight_decay"]))
    steps, warmup = int(t_cfg["steps"]), int(t_cfg["warmup_steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, steps, warmup, float(t_cfg["min_lr_ratio"])))
    run_key = _run_key(cfg, inputs, val_inputs, world.size)

    start, curve, val_hist, elapsed = 0, [], [], 0.0
    if resume != "no" and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ck.get("run_key") != run_key:
            if resume == "yes":
                raise InputError(f"{ckpt_path}: checkpoint belongs to another run (config or inputs differ); "
                                 "use --resume no or another train.checkpoint_dir")
            log.warning("%s: checkpoint of another run (config or inputs differ): starting afresh", ckpt_path)
        else:
            net.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            start, curve, val_hist = int(ck["step"]), list(ck["loss_curve"]), list(ck["validation"])
            elapsed = float(ck.get("elapsed_s", 0.0))
            log.info("resuming from %s at step %d of %d", ckpt_path, start, steps)
    world.barrier()

    B = int(t_cfg["batch_size"])
    sampler = D.StepSampler(B, world.rank, world.size, start, steps)
    loader = torch.utils.data.DataLoader(dataset, batch_size=B // world.size, sampler=sampler,
                                         num_workers=int(t_cfg["num_workers"]),
                                         pin_memory=device.type == "cuda", persistent_workers=False)
    cw = t_cfg["class_weights"]
    if cw is not None and len(cw) != n_classes:
        raise InputError(f"segment.train.class_weights: needs {n_classes} values, got {len(cw)}")
    log.info("training %s (%d parameters) on %d volume(s), %d classes, %d ranks x batch %d, steps %d..%d, %s",
             m_cfg["arch"], count_parameters(net), len(sources), n_classes, world.size, B // world.size,
             start, steps, device)

    def checkpoint(step: int) -> None:
        if world.is_root:
            _save_checkpoint(ckpt_path, {"format": FORMAT, "run_key": run_key, "step": step,
                                         "model": net.state_dict(), "optimizer": opt.state_dict(),
                                         "scheduler": sched.state_dict(), "loss_curve": curve,
                                         "validation": val_hist, "elapsed_s": elapsed + time.time() - t0})
        world.barrier()

    def run_validation(step: int) -> None:
        if val_sources and world.is_root:
            dice = validate(net, val_sources, n_classes, patch, device, amp)
            val_hist.append({"step": step, "dice": [None if np.isnan(d) else float(d) for d in dice],
                             "mean_dice": float(np.nanmean(dice))})
            log.info("step %d: validation mean Dice %.4f (%s)", step, val_hist[-1]["mean_dice"],
                     ", ".join(f"{classes[c]} {d:.3f}" for c, d in enumerate(dice)))
        world.barrier()

    t0 = time.time()
    step = start
    preempted = 0
    voxels = 0
    t_loop = time.time()
    with _StopFlag() as stop:
        it = iter(loader)
        while step < steps:
            image, target = next(it)
            image, target = image.to(device, non_blocking=True), target.to(device, non_blocking=True)
            if device.type == "cuda":
                image = image.contiguous(memory_format=torch.channels_last_3d)
            # one all-reduce: the global loss normaliser and "has any rank been signalled?"
            shared = torch.tensor([float(labelled_weight(target, n_classes, cw)), float(stop.signum != 0)],
                                  dtype=torch.float64, device=device)
            torch.distributed.all_reduce(shared)
            if shared[1] > 0:
                preempted = 1
                break
            with torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
                logits = ddp(image)
            loss = dice_ce_loss(logits, target, n_classes, weight_total=shared[0], global_batch=B,
                                world_size=world.size, dice_weight=float(t_cfg["dice_weight"]),
                                ce_weight=float(t_cfg["ce_weight"]), class_weights=cw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            step += 1
            voxels += image.numel()
            total = torch.tensor([loss.detach().double() / world.size], device=device)
            torch.distributed.all_reduce(total)
            curve.append({"step": step, "loss": float(total), "lr": lr})
            if step % 10 == 0 or step == steps:
                log.info("step %d/%d loss %.4f lr %.2e", step, steps, float(total), lr)
            if step % int(t_cfg["val_every"]) == 0 and step < steps:
                run_validation(step)
            if step % int(t_cfg["checkpoint_every"]) == 0 or step == steps:
                checkpoint(step)
    loop_s = time.time() - t_loop
    if preempted:
        checkpoint(step)
        msg = (f"batterytwin train-seg: preempted at step {step}/{steps}: checkpoint saved to {ckpt_path}; "
               f"rerun the same command to resume (exit code {EXIT_PREEMPTED})")
        if world.is_root:
            print(msg, flush=True)
            log.warning(msg)
        return EXIT_PREEMPTED

    if not val_hist or val_hist[-1]["step"] != steps:
        run_validation(steps)
    if world.is_root:
        vox_s = world.size * voxels / max(loop_s, 1e-9)
        payload = {"format": FORMAT, "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                   "model": m_cfg, "classes": {str(k): v for k, v in classes.items()}, "n_classes": n_classes,
                   "patch_size": list(patch), "normalisation": "percentile_1_99", "train": json.loads(
                       json.dumps({k: v for k, v in t_cfg.items()})), "step": steps,
                   "ignore_label": IGNORE_LABEL}
        with store.atomic_output(model_out, World()) as tmp:
            torch.save(payload, tmp)
        final = val_hist[-1] if val_hist else None
        metrics = {
            "schema": SEGMENT_METRICS_SCHEMA,
            "classes": {str(k): v for k, v in classes.items()},
            "arch": m_cfg["arch"], "parameters": count_parameters(net),
            "world_size": world.size, "device": str(device), "global_batch": B, "steps": steps,
            "patch_size": list(patch),
            "loss_curve": curve,
            "validation": val_hist,
            "final_dice": None if final is None else {classes[c]: d for c, d in enumerate(final["dice"])},
            "final_mean_dice": None if final is None else final["mean_dice"],
            "validation_split": "held-out volumes" if val_inputs else
            f"slab of {t_cfg['val_fraction']} along {t_cfg['val_axis']} (labels hidden from training)",
            "train_voxels_per_s": vox_s if step > start else None,
            "wall_s": elapsed + time.time() - t0,
            **store.provenance("segment.train", cfg),
        }
        store.write_json(metrics_out, metrics)
        log.info("wrote %s and %s", model_out, metrics_out)
    world.barrier()
    return 0


def load_model(path: str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Network and metadata from a ``model.pt`` written by :func:`train` (``weights_only`` load).

    Raises:
        InputError: the file is missing, is not a batterytwin segmentation model, or does not
            match its own architecture description.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such model file")
    try:
        meta = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{p}: cannot load as a weights-only torch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{p}: not a batterytwin segmentation model (format {FORMAT!r} expected)")
    net = build_model(meta["model"], int(meta["n_classes"]))
    try:
        net.load_state_dict(meta["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"{p}: weights do not match the model description ({exc})") from None
    return net.to(device).eval(), meta

"""``batterytwin train-seg``: DDP training of the segmentation network on patches from stores.

Launch with ``srun``/``mpiexec -n N`` (or plainly: world size 1, the same code path). Ranks form
a ``torch.distributed`` group through :func:`batterytwin.distributed.init_torch_distributed`
(NCCL on GPU, gloo on CPU); the model is wrapped in ``DistributedDataParallel``; every rank
reads its share of each global batch (:class:`~batterytwin.segment.data.StepSampler`).

Checkpoints go to ``train.checkpoint_dir`` (default ``work/models/segment``, outside the rule's
outputs) every ``checkpoint_every`` steps. SIGUSR1 or SIGTERM (Slurm before the time limit or
on preemption) makes every rank stop at the next step boundary, after rank 0 wrote a checkpoint;
the process then exits with :data:`~batterytwin.training.EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``) and
a ``preempted`` message. Rerunning the same command resumes from the checkpoint and ends with the
weights an uninterrupted run would have (patches, augmentation and LR depend on the step only).
Signals, checkpoints, LR schedule, threads and DDP come from :mod:`batterytwin.training`.

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
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import store
from ..contracts import CLASSES, IGNORE_LABEL, SEGMENT_METRICS_SCHEMA
from ..distributed import World, get_world, init_torch_distributed
from ..errors import InputError
from ..kinds import require_kind
from ..sanity import contrast_refusal
from ..training import (EXIT_PREEMPTED, Checkpoint, StopFlag, check_loss, load_model_file, preempted, save_atomic,
                        warmup_cosine, wrap_ddp)
from ..training import set_threads
from . import data as D
from .config import AXIS_NAMES
from .loss import dice_ce_loss, hard_dice_counts, labelled_weight
from .metrics import SegmentationScores, final_scores
from .model import build_model, check_patch, count_parameters
from .randomise import MixedPatches, RandomisedPatches
from .window import gaussian_weight, predict_region

log = logging.getLogger(__name__)

FORMAT = "batterytwin.segment/1"
__all__ = ["EXIT_PREEMPTED", "FORMAT", "TrainInput", "init_weights", "load_model", "train", "validate"]
CHECKPOINT_NAME = "checkpoint.pt"
# keys that do not change the trained weights: a run may resume with different values
_RUNTIME_KEYS = ("num_workers", "device", "threads", "checkpoint_every", "checkpoint_dir", "val_every")


@dataclass
class TrainInput:
    """One training volume and its label store (``labels`` may hold 255 = unlabelled)."""

    volume: str
    labels: str


def _open_pair(inp: TrainInput, n_classes: int, world) -> tuple[store.Volume, store.Volume]:
    """The volume (finite values only) and label store (ids 0..n-1 and 255) of one input: the shared checks."""
    vol = store.open_volume(inp.volume)
    require_kind(vol, "ct", "train-seg --volume")
    store.check_finite(vol, world)
    problem = contrast_refusal(vol.array, str(vol.path), "train-seg")
    if problem is not None:
        raise problem
    lab = store.open_volume(inp.labels, require=("voxel_size_um",))
    store.check_labels(lab, range(n_classes))
    return vol, lab


def _classes_of(label_paths: Sequence[str]) -> dict[int, str]:
    classes = None
    for p in label_paths:
        vol = store.open_volume(p, require=("voxel_size_um",))
        require_kind(vol, "labels", "train-seg --labels")
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
    if cfg["train"].get("init_from"):  # another starting model under the same name is another run
        from .pretrained import resolve_model

        ident["init_from_sha256"] = store.sha256_files([resolve_model(cfg["train"]["init_from"])])
    return store.params_sha256(ident)


def validate(net: torch.nn.Module, sources: Sequence[tuple[Any, Any, tuple[slice, ...], D.PatchSource]],
             n_classes: int, roi: Sequence[int], device, amp: bool, region_size: int = 128,
             scores: SegmentationScores | None = None) -> np.ndarray:
    """Per-class hard Dice over the validation regions (labelled voxels only), NaN for absent classes.

    Args:
        sources: ``(image, labels, region, source)``: ``region`` of the volume is predicted in
            blocks of ``region_size`` with the global sliding-window grid.
        scores: when given, also accumulates precision, recall and calibration (ECE) of the blocks.
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
            truth = np.asarray(labels[block])
            if scores is not None:
                scores.update(probs, truth)
            n, d = hard_dice_counts(pred, truth, n_classes)
            num += n
            den += d
    net.train(was_training)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1e-12), np.nan)


def _check_every_class_labelled(sources: Sequence[Any], classes: dict[int, str], where: Sequence[str]) -> None:
    """Refuse training on a class map in which a class has no labelled training voxel: the network
    would learn nothing of it and still predict it (without a randomised-phantom share to show it)."""
    total = np.sum([src.block_counts.sum(0) for src in sources], axis=0)
    empty = [classes[c] for c in range(len(classes)) if total[c] == 0]
    if empty:
        raise InputError(f"{', '.join(where)}: class(es) {', '.join(repr(n) for n in empty)} of the label stores have "
                         "no labelled training voxel: label some, drop the class from the class map, or train with "
                         "segment.train.randomise.fraction > 0")


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
    r_cfg = t_cfg["randomise"]
    fraction = float(r_cfg["fraction"])
    if not inputs and fraction < 1:
        raise InputError("segment.train_samples: no training volume given (and train.randomise.fraction < 1)")
    if resume not in ("auto", "yes", "no"):
        raise InputError(f"--resume: must be auto, yes or no, got {resume!r}")
    ckpt_path = Path(t_cfg["checkpoint_dir"]) / CHECKPOINT_NAME
    if resume == "yes" and not ckpt_path.exists():
        raise InputError(f"{ckpt_path}: no checkpoint to resume from (--resume yes)")
    patch = t_cfg["patch_size"]
    check_patch(patch, m_cfg, "segment.train.patch_size")
    set_threads(world, int(t_cfg["threads"]))
    torch.manual_seed(int(t_cfg["seed"]))

    label_paths = [i.labels for i in inputs] + [i.labels for i in val_inputs]
    classes = _classes_of(label_paths) if label_paths else dict(CLASSES)
    n_classes = len(classes)
    sources, val_sources = [], []
    val_voxels = 0

    def add_validation(image, labels, region, src, where: str, required: bool) -> None:
        # validation predicts only the labelled parts (sparse hand labels: a few slices of a large scan);
        # the Dice itself counts labelled voxels only (hard_dice_counts)
        nonlocal val_voxels
        parts = D.labelled_regions(labels, region)
        if not parts:
            if required:
                raise InputError(f"{where}: validation label store holds no labelled voxel (all {IGNORE_LABEL})")
            log.warning("%s: the held-out region holds no labelled voxel; it is not validated", where)
        for part, n in parts:
            val_sources.append((image, labels, part, src))
            val_voxels += n

    for inp in inputs:
        vol, lab = _open_pair(inp, n_classes, world)
        hold = None if val_inputs else _holdout(vol.shape, t_cfg["val_axis"], float(t_cfg["val_fraction"]))
        src = D.PatchSource.open(vol.array, lab.array, n_classes, hold, name=str(inp.labels), world=world)
        sources.append(src)
        if hold is not None:
            add_validation(vol.array, lab.array, hold, src, str(inp.labels), required=False)
    for inp in val_inputs:
        vol, lab = _open_pair(inp, n_classes, world)
        if vol.shape != lab.shape:
            raise InputError(f"{inp.labels}: label store shape {lab.shape} differs from the volume shape {vol.shape}")
        src = D.PatchSource(vol.array, lab.array, n_classes, None, *D.intensity_range(vol.array),
                            name=str(inp.labels))
        add_validation(vol.array, lab.array, None, src, str(inp.labels), required=True)
    if sources and fraction == 0:
        _check_every_class_labelled(sources, classes, [str(i.labels) for i in inputs])
    seed, balance = int(t_cfg["seed"]), float(t_cfg["class_balance"])
    dataset = D.PatchDataset(sources, patch, seed=seed, class_balance=balance,
                             augment_cfg=t_cfg["augment"]) if sources else None
    if fraction > 0:  # domain-randomised cells, alone or mixed with the stores (per patch, from (seed, i))
        generated = RandomisedPatches(r_cfg, patch, seed, class_ids={v: k for k, v in classes.items()},
                                      class_balance=balance, augment_cfg=t_cfg["augment"])
        dataset = MixedPatches(dataset, generated, fraction, seed)

    device = init_torch_distributed(world, t_cfg["device"])
    amp = bool(t_cfg["amp"]) and device.type == "cuda"
    net = build_model(m_cfg, n_classes)
    init = init_weights(net, t_cfg["init_from"], classes, m_cfg, bool(t_cfg["new_head"])) \
        if t_cfg.get("init_from") else None
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last_3d)
    ddp = wrap_ddp(net, device)
    opt = torch.optim.AdamW(net.parameters(), lr=float(t_cfg["lr"]), weight_decay=float(t_cfg["weight_decay"]))
    steps = int(t_cfg["steps"])
    sched = warmup_cosine(opt, steps, int(t_cfg["warmup_steps"]), float(t_cfg["min_lr_ratio"]))
    ckpt = Checkpoint(ckpt_path, _run_key(cfg, inputs, val_inputs, world.size),
                      {"model": net, "optimizer": opt, "scheduler": sched}, world)
    ck = ckpt.load(device, resume, steps) or {"step": 0, "loss_curve": [], "validation": []}
    start, curve, val_hist = int(ck["step"]), list(ck["loss_curve"]), list(ck["validation"])
    elapsed = float(ck.get("elapsed_s", 0.0))
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
        ckpt.save(step, format=FORMAT, loss_curve=curve, validation=val_hist, elapsed_s=elapsed + time.time() - t0)

    def run_validation(step: int) -> None:
        if val_sources and world.is_root:
            scores = SegmentationScores(n_classes)
            dice = validate(net, val_sources, n_classes, patch, device, amp, scores=scores)
            extra = scores.result()
            val_hist.append({"step": step, "dice": [None if np.isnan(d) else float(d) for d in dice],
                             "mean_dice": float(np.nanmean(dice)), "precision": extra["precision"],
                             "recall": extra["recall"], "ece": extra["ece"], "reliability": extra["reliability"]})
            log.info("step %d: validation mean Dice %.4f (%s)", step, val_hist[-1]["mean_dice"],
                     ", ".join(f"{classes[c]} {d:.3f}" for c, d in enumerate(dice)))
        world.barrier()

    t0 = time.time()
    step = start
    stopped = False
    voxels = 0
    t_loop = time.time()
    with StopFlag() as stop:
        it = iter(loader)
        while step < steps:
            image, target = next(it)
            image, target = image.to(device, non_blocking=True), target.to(device, non_blocking=True)
            if device.type == "cuda":
                image = image.contiguous(memory_format=torch.channels_last_3d)
            # one all-reduce: "has any rank been signalled?" and the global loss normaliser
            stopped, (weight_total,) = stop.agreed(device, labelled_weight(target, n_classes, cw))
            if stopped:
                break
            with torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
                logits = ddp(image)
            loss = dice_ce_loss(logits, target, n_classes, weight_total=weight_total, global_batch=B,
                                world_size=world.size, dice_weight=float(t_cfg["dice_weight"]),
                                ce_weight=float(t_cfg["ce_weight"]), class_weights=cw,
                                tversky_weight=float(t_cfg["tversky_weight"]), tversky_alpha=float(t_cfg["tversky_alpha"]),
                                tversky_beta=float(t_cfg["tversky_beta"]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            step += 1
            voxels += image.numel()
            total = torch.tensor([loss.detach().double() / world.size], device=device)
            torch.distributed.all_reduce(total)
            check_loss(float(total), step, "train-seg")  # the same value on every rank: all stop, no model
            curve.append({"step": step, "loss": float(total), "lr": lr})
            if step % 10 == 0 or step == steps:
                log.info("step %d/%d loss %.4f lr %.2e", step, steps, float(total), lr)
            if step % int(t_cfg["val_every"]) == 0 and step < steps:
                run_validation(step)
            if step % int(t_cfg["checkpoint_every"]) == 0 or step == steps:
                checkpoint(step)
    loop_s = time.time() - t_loop
    if stopped:
        checkpoint(step)
        return preempted("train-seg", step, steps, ckpt_path, world)

    if not val_hist or val_hist[-1]["step"] != steps:
        run_validation(steps)
    if world.is_root:
        vox_s = world.size * voxels / max(loop_s, 1e-9)
        payload = {"format": FORMAT, "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                   "model": m_cfg, "classes": {str(k): v for k, v in classes.items()}, "n_classes": n_classes,
                   "patch_size": list(patch), "normalisation": "percentile_1_99", "train": json.loads(
                       json.dumps({k: v for k, v in t_cfg.items()})), "step": steps,
                   "ignore_label": IGNORE_LABEL, "init": init}
        save_atomic(payload, model_out)
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
            **final_scores(final, classes),
            "randomised_fraction": fraction,
            "validation_split": "held-out label stores" if val_inputs else
            f"slab of {t_cfg['val_fraction']} along {t_cfg['val_axis']} (labels hidden from training)",
            "validation_labelled_voxels": val_voxels,
            "train_voxels_per_s": vox_s if step > start else None,
            "wall_s": elapsed + time.time() - t0,
            **store.provenance("segment.train", cfg),
        }
        store.write_json(metrics_out, metrics)
        log.info("wrote %s and %s", model_out, metrics_out)
    world.barrier()
    return 0


ARCH_KEYS = ("arch", "channels", "strides", "num_res_units", "init_filters", "feature_size")


def head_keys(model_cfg: dict[str, Any], n_classes: int) -> set[str]:
    """Names of the weights that depend on the number of classes (the output head of the network)."""
    a = build_model(model_cfg, n_classes).state_dict()
    b = build_model(model_cfg, n_classes + 1).state_dict()
    return {k for k in a if a[k].shape != b[k].shape}


def init_weights(net: torch.nn.Module, path: str, classes: dict[int, str], model_cfg: dict[str, Any],
                 new_head: bool = True) -> dict[str, Any]:
    """Start ``net`` from the weights of the model file ``path`` (``segment.train.init_from``: fine-tuning).

    ``path`` may be the name ``pretrained`` (the shipped batteryNET, digest checked). When the
    training classes equal the model's (ids and names), every weight is loaded. Otherwise, with
    ``new_head``, the encoder and the decoder body are loaded and the output head (the weights whose
    shape depends on the number of classes) keeps its fresh initialisation.

    Returns:
        what the model file records of its start: ``{"from", "sha256", "step", "head": "kept" | "new",
        "base_classes"}``.
    Raises:
        InputError: the file is not a segmentation model, its architecture differs from
            ``model_cfg``, or its classes differ from the training labels' without ``new_head``.
    """
    from .pretrained import file_sha256, resolve_model

    where = f"segment.train.init_from: {path}"
    file = resolve_model(path)
    meta = load_model_file(file, FORMAT, "segmentation model")
    theirs_cfg = {k: meta["model"].get(k) for k in ARCH_KEYS if k in meta["model"]}
    ours_cfg = {k: model_cfg.get(k) for k in theirs_cfg}
    if theirs_cfg != ours_cfg:
        raise InputError(f"{where}: the model is {theirs_cfg}, segment.model is {ours_cfg}: set segment.model to "
                         "the model's architecture, or init_from: null to train from random weights")
    theirs = {int(k): v for k, v in meta["classes"].items()}
    same = theirs == dict(classes)
    if not same and not new_head:
        raise InputError(f"{where}: the model's classes {theirs} differ from those of the training labels "
                         f"{dict(classes)} (set segment.train.new_head: true to keep its encoder and start a new "
                         "output head)")
    state = meta["state_dict"]
    if not same:
        head = head_keys(meta["model"], int(meta["n_classes"]))
        own = net.state_dict()
        state = {k: v for k, v in state.items() if k not in head}
        state.update({k: own[k] for k in head if k in own})
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        text = " ".join(str(exc).split())[:200]
        raise InputError(f"{where}: its weights do not fit segment.model (same arch, channels, strides and "
                         f"num_res_units needed): {text}") from None
    log.info("starting from the weights of %s (trained %s steps; %s)", file, meta.get("step"),
             "all weights" if same else f"new output head for the classes {dict(classes)}")
    return {"from": str(path), "sha256": file_sha256(file), "step": meta.get("step"),
            "head": "kept" if same else "new", "base_classes": {str(k): v for k, v in theirs.items()}}


def load_model(path: str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Network and metadata from a ``model.pt`` written by :func:`train` (``weights_only`` load).

    Raises:
        InputError: the file is missing, is not a batterytwin segmentation model, or does not
            match its own architecture description.
    """
    from .pretrained import resolve_model

    path = resolve_model(path)  # the name "pretrained": the shipped file, digest checked
    meta = load_model_file(path, FORMAT, "segmentation model")
    net = build_model(meta["model"], int(meta["n_classes"]))
    try:
        net.load_state_dict(meta["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not match the model description ({exc})") from None
    return net.to(device).eval(), meta

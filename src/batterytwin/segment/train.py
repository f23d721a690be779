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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .. import store
from ..config import as_settings
from ..contracts import CLASSES, IGNORE_LABEL, SEGMENT_METRICS_SCHEMA
from ..distributed import World, get_world, init_torch_distributed
from ..errors import InputError
from ..kinds import require_kind
from ..sanity import contrast_refusal
from ..training import (EXIT_PREEMPTED, Checkpoint, StopFlag, check_loss, load_model_file, preempted, save_atomic,
                        warmup_cosine, wrap_ddp)
from ..training import set_threads
from . import data as D
from .config import AXIS_NAMES, ModelSettings, SegmentConfig, TrainSettings
from .loss import dice_ce_loss, hard_dice_counts, labelled_weight
from .metrics import SegmentationScores, final_scores
from .model import build_model, check_patch, count_parameters, model_settings
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


def _run_key(cfg: SegmentConfig, inputs: Sequence[TrainInput], val: Sequence[TrainInput], world_size: int) -> str:
    """Identity of a training run: what determines its weights (resume only into the same run)."""
    ident = {"model": cfg.model.model_dump(), "train": cfg.train.model_dump(exclude=set(_RUNTIME_KEYS)),
             "world_batch": cfg.train.batch_size,
             "inputs": [[os.path.abspath(i.volume), os.path.abspath(i.labels)] for i in inputs],
             "val": [[os.path.abspath(i.volume), os.path.abspath(i.labels)] for i in val]}
    if cfg.train.init_from:  # another starting model under the same name is another run
        from .pretrained import resolve_model

        ident["init_from_sha256"] = store.sha256_files([resolve_model(cfg.train.init_from)])
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


def _checked_request(cfg: SegmentConfig, inputs: Sequence[TrainInput], resume: str) -> Path:
    """Refuse a request that cannot train (no inputs, unknown ``resume``, a missing checkpoint to resume, a
    patch the network cannot take); returns the checkpoint path of the run."""
    t = cfg.train
    if not inputs and t.randomise.fraction < 1:
        raise InputError("segment.train_samples: no training volume given (and train.randomise.fraction < 1)")
    if resume not in ("auto", "yes", "no"):
        raise InputError(f"--resume: must be auto, yes or no, got {resume!r}")
    ckpt_path = Path(t.checkpoint_dir) / CHECKPOINT_NAME
    if resume == "yes" and not ckpt_path.exists():
        raise InputError(f"{ckpt_path}: no checkpoint to resume from (--resume yes)")
    check_patch(t.patch_size, cfg.model, "segment.train.patch_size")
    return ckpt_path


@dataclass
class TrainingData:
    """What a run trains and validates on."""

    classes: dict[int, str]
    sources: list[D.PatchSource] = field(default_factory=list)  # the training label stores
    val_sources: list[tuple] = field(default_factory=list)  # (image, labels, region, source) to validate
    val_voxels: int = 0  # labelled voxels validated
    dataset: torch.utils.data.Dataset | None = None  # the global patch stream

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def add_validation(self, image, labels, region, src, where: str, required: bool) -> None:
        """Validate on the labelled parts of ``region`` (sparse hand labels: a few slices of a large scan);
        the Dice itself counts labelled voxels only (:func:`~batterytwin.segment.loss.hard_dice_counts`)."""
        parts = D.labelled_regions(labels, region)
        if not parts:
            if required:
                raise InputError(f"{where}: validation label store holds no labelled voxel (all {IGNORE_LABEL})")
            log.warning("%s: the held-out region holds no labelled voxel; it is not validated", where)
        for part, n in parts:
            self.val_sources.append((image, labels, part, src))
            self.val_voxels += n


def training_data(t: TrainSettings, inputs: Sequence[TrainInput], val_inputs: Sequence[TrainInput],
                  world: World) -> TrainingData:
    """The class map, the training and validation sources and the patch stream (stores and/or
    domain-randomised cells, per patch from ``(seed, i)``) of a run."""
    label_paths = [i.labels for i in inputs] + [i.labels for i in val_inputs]
    data = TrainingData(_classes_of(label_paths) if label_paths else dict(CLASSES))
    n_classes = data.n_classes
    for inp in inputs:
        vol, lab = _open_pair(inp, n_classes, world)
        hold = None if val_inputs else _holdout(vol.shape, t.val_axis, t.val_fraction)
        src = D.PatchSource.open(vol.array, lab.array, n_classes, hold, name=str(inp.labels), world=world)
        data.sources.append(src)
        if hold is not None:
            data.add_validation(vol.array, lab.array, hold, src, str(inp.labels), required=False)
    for inp in val_inputs:
        vol, lab = _open_pair(inp, n_classes, world)
        if vol.shape != lab.shape:
            raise InputError(f"{inp.labels}: label store shape {lab.shape} differs from the volume shape {vol.shape}")
        src = D.PatchSource(vol.array, lab.array, n_classes, None, *D.intensity_range(vol.array),
                            name=str(inp.labels))
        data.add_validation(vol.array, lab.array, None, src, str(inp.labels), required=True)
    fraction = t.randomise.fraction
    if data.sources and fraction == 0:
        _check_every_class_labelled(data.sources, data.classes, [str(i.labels) for i in inputs])
    if data.sources:
        data.dataset = D.PatchDataset(data.sources, t.patch_size, seed=t.seed, class_balance=t.class_balance,
                                      augment_cfg=t.augment)
    if fraction > 0:
        generated = RandomisedPatches(t.randomise, t.patch_size, t.seed,
                                      class_ids={v: k for k, v in data.classes.items()},
                                      class_balance=t.class_balance, augment_cfg=t.augment)
        data.dataset = MixedPatches(data.dataset, generated, fraction, t.seed)
    return data


class TrainingRun:
    """The network, optimiser, schedule, checkpoint and history of one training run (resumed from its
    checkpoint when there is one), and its steps."""

    def __init__(self, cfg: SegmentConfig, data: TrainingData, ckpt_path: Path, run_key: str, resume: str,
                 world: World):
        t = cfg.train
        self.cfg, self.data, self.world = cfg, data, world
        self.device = init_torch_distributed(world, t.device)
        self.amp = t.amp and self.device.type == "cuda"
        net = build_model(cfg.model, data.n_classes)
        self.init = init_weights(net, t.init_from, data.classes, cfg.model, t.new_head) if t.init_from else None
        net = net.to(self.device)
        if self.device.type == "cuda":
            net = net.to(memory_format=torch.channels_last_3d)
        self.net, self.ddp = net, wrap_ddp(net, self.device)
        self.opt = torch.optim.AdamW(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.sched = warmup_cosine(self.opt, t.steps, t.warmup_steps, t.min_lr_ratio)
        self.ckpt = Checkpoint(ckpt_path, run_key, {"model": net, "optimizer": self.opt, "scheduler": self.sched},
                               world)
        ck = self.ckpt.load(self.device, resume, t.steps) or {"step": 0, "loss_curve": [], "validation": []}
        self.start, self.curve, self.val_hist = int(ck["step"]), list(ck["loss_curve"]), list(ck["validation"])
        self.step, self.elapsed, self.voxels, self.loop_s = self.start, float(ck.get("elapsed_s", 0.0)), 0, 0.0
        self.t0 = time.time()  # start of this attempt's steps (set again by fit)
        world.barrier()

    def loader(self) -> torch.utils.data.DataLoader:
        """This rank's share of the global batches of the remaining steps."""
        t, world = self.cfg.train, self.world
        sampler = D.StepSampler(t.batch_size, world.rank, world.size, self.start, t.steps)
        return torch.utils.data.DataLoader(self.data.dataset, batch_size=t.batch_size // world.size, sampler=sampler,
                                           num_workers=t.num_workers, pin_memory=self.device.type == "cuda",
                                           persistent_workers=False)

    def fit(self, loader: torch.utils.data.DataLoader) -> bool:
        """Step until ``train.steps`` or a stop signal; returns whether a signal stopped it."""
        t = self.cfg.train
        self.t0 = time.time()
        stopped = False
        t_loop = time.time()
        with StopFlag() as stop:
            it = iter(loader)
            while self.step < t.steps:
                image, target = self._batch(it)
                # one all-reduce: "has any rank been signalled?" and the global loss normaliser
                stopped, (weight_total,) = stop.agreed(self.device, labelled_weight(target, self.data.n_classes,
                                                                                    t.class_weights))
                if stopped:
                    break
                loss, lr = self.optimise(image, target, weight_total)
                self.step += 1
                self.voxels += image.numel()
                self.record(loss, lr)
                if self.step % t.val_every == 0 and self.step < t.steps:
                    self.validate(self.step)
                if self.step % t.checkpoint_every == 0 or self.step == t.steps:
                    self.checkpoint()
        self.loop_s = time.time() - t_loop
        return stopped

    def _batch(self, it) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = next(it)
        image, target = image.to(self.device, non_blocking=True), target.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            image = image.contiguous(memory_format=torch.channels_last_3d)
        return image, target

    def optimise(self, image: torch.Tensor, target: torch.Tensor, weight_total: torch.Tensor) -> tuple[float, float]:
        """One optimiser step on this rank's share of a global batch: ``(loss averaged over the ranks, lr)``."""
        t, world = self.cfg.train, self.world
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext():
            logits = self.ddp(image)
        loss = dice_ce_loss(logits, target, self.data.n_classes, weight_total=weight_total, global_batch=t.batch_size,
                            world_size=world.size, dice_weight=t.dice_weight, ce_weight=t.ce_weight,
                            class_weights=t.class_weights, tversky_weight=t.tversky_weight,
                            tversky_alpha=t.tversky_alpha, tversky_beta=t.tversky_beta)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        lr = self.opt.param_groups[0]["lr"]
        self.sched.step()
        total = torch.tensor([loss.detach().double() / world.size], device=self.device)
        torch.distributed.all_reduce(total)
        return float(total), lr

    def record(self, loss: float, lr: float) -> None:
        """Stop on a non-finite loss (the same value on every rank: all stop, no model), else log it."""
        steps = self.cfg.train.steps
        check_loss(loss, self.step, "train-seg")
        self.curve.append({"step": self.step, "loss": loss, "lr": lr})
        if self.step % 10 == 0 or self.step == steps:
            log.info("step %d/%d loss %.4f lr %.2e", self.step, steps, loss, lr)

    def validate(self, step: int) -> None:
        """Score the network on the validation regions (rank 0) and add it to the history as ``step``."""
        data = self.data
        if data.val_sources and self.world.is_root:
            scores = SegmentationScores(data.n_classes)
            dice = validate(self.net, data.val_sources, data.n_classes, self.cfg.train.patch_size, self.device,
                            self.amp, scores=scores)
            extra = scores.result()
            self.val_hist.append({"step": step, "dice": [None if np.isnan(d) else float(d) for d in dice],
                                  "mean_dice": float(np.nanmean(dice)), "precision": extra["precision"],
                                  "recall": extra["recall"], "ece": extra["ece"], "reliability": extra["reliability"]})
            log.info("step %d: validation mean Dice %.4f (%s)", step, self.val_hist[-1]["mean_dice"],
                     ", ".join(f"{data.classes[c]} {d:.3f}" for c, d in enumerate(dice)))
        self.world.barrier()

    def checkpoint(self) -> None:
        self.ckpt.save(self.step, format=FORMAT, loss_curve=self.curve, validation=self.val_hist,
                       elapsed_s=self.wall_s())

    def wall_s(self) -> float:
        """Seconds of training, over every attempt of the run."""
        return self.elapsed + time.time() - self.t0

    def model_payload(self) -> dict[str, Any]:
        """The model file: weights, architecture, classes and training settings (:func:`load_model`)."""
        classes = self.data.classes
        return {"format": FORMAT, "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                "model": self.cfg.model.model_dump(), "classes": {str(k): v for k, v in classes.items()},
                "n_classes": self.data.n_classes, "patch_size": list(self.cfg.train.patch_size),
                "normalisation": "percentile_1_99", "train": json.loads(json.dumps(self.cfg.train.model_dump())),
                "step": self.cfg.train.steps, "ignore_label": IGNORE_LABEL, "init": self.init}

    def metrics(self, held_out: bool) -> dict[str, Any]:
        """The metrics file: loss curve, validation history, final scores, throughput (``held_out``: validated
        on held-out label stores, not on a slab of the training volumes)."""
        t, world, classes = self.cfg.train, self.world, self.data.classes
        final = self.val_hist[-1] if self.val_hist else None
        vox_s = world.size * self.voxels / max(self.loop_s, 1e-9)
        return {
            "schema": SEGMENT_METRICS_SCHEMA,
            "classes": {str(k): v for k, v in classes.items()},
            "arch": self.cfg.model.arch, "parameters": count_parameters(self.net),
            "world_size": world.size, "device": str(self.device), "global_batch": t.batch_size, "steps": t.steps,
            "patch_size": list(t.patch_size),
            "loss_curve": self.curve,
            "validation": self.val_hist,
            "final_dice": None if final is None else {classes[c]: d for c, d in enumerate(final["dice"])},
            "final_mean_dice": None if final is None else final["mean_dice"],
            **final_scores(final, classes),
            "randomised_fraction": t.randomise.fraction,
            "validation_split": "held-out label stores" if held_out else
            f"slab of {t.val_fraction} along {t.val_axis} (labels hidden from training)",
            "validation_labelled_voxels": self.data.val_voxels,
            "train_voxels_per_s": vox_s if self.step > self.start else None,
            "wall_s": self.wall_s(),
            **store.provenance("segment.train", self.cfg.model_dump()),
        }


def train(cfg: SegmentConfig | Mapping[str, Any], inputs: Sequence[TrainInput], model_out: str, metrics_out: str, *,
          val_inputs: Sequence[TrainInput] = (), resume: str = "auto", world: World | None = None) -> int:
    """Train, write ``model_out`` and ``metrics_out``; return 0, or :data:`EXIT_PREEMPTED`.

    Args:
        cfg: the ``segment`` section (:class:`~batterytwin.segment.config.SegmentConfig`; a mapping is validated).
        inputs: training volumes with their label stores.
        val_inputs: held-out volumes for validation; without them a slab along
            ``train.val_axis`` of each training volume is held out (``train.val_fraction``).
        resume: ``auto`` (resume when a checkpoint of this run exists), ``yes`` (the checkpoint
            must exist) or ``no`` (start afresh).
    """
    world = world or get_world()
    cfg = as_settings(SegmentConfig, cfg, "segment")
    t = cfg.train
    ckpt_path = _checked_request(cfg, inputs, resume)
    set_threads(world, t.threads)
    torch.manual_seed(t.seed)
    data = training_data(t, inputs, val_inputs, world)
    run = TrainingRun(cfg, data, ckpt_path, _run_key(cfg, inputs, val_inputs, world.size), resume, world)
    loader = run.loader()
    if t.class_weights is not None and len(t.class_weights) != data.n_classes:
        raise InputError(f"segment.train.class_weights: needs {data.n_classes} values, got {len(t.class_weights)}")
    log.info("training %s (%d parameters) on %d volume(s), %d classes, %d ranks x batch %d, steps %d..%d, %s",
             cfg.model.arch, count_parameters(run.net), len(data.sources), data.n_classes, world.size,
             t.batch_size // world.size, run.start, t.steps, run.device)
    if run.fit(loader):
        run.checkpoint()
        return preempted("train-seg", run.step, t.steps, ckpt_path, world)
    if not run.val_hist or run.val_hist[-1]["step"] != t.steps:
        run.validate(t.steps)
    if world.is_root:
        save_atomic(run.model_payload(), model_out)
        store.write_json(metrics_out, run.metrics(held_out=bool(val_inputs)))
        log.info("wrote %s and %s", model_out, metrics_out)
    world.barrier()
    return 0


ARCH_KEYS = ("arch", "channels", "strides", "num_res_units", "init_filters", "feature_size")


def head_keys(model: ModelSettings | Mapping[str, Any], n_classes: int) -> set[str]:
    """Names of the weights that depend on the number of classes (the output head of the network)."""
    a = build_model(model, n_classes).state_dict()
    b = build_model(model, n_classes + 1).state_dict()
    return {k for k in a if a[k].shape != b[k].shape}


def init_weights(net: torch.nn.Module, path: str, classes: dict[int, str], model: ModelSettings | Mapping[str, Any],
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
            ``model``, or its classes differ from the training labels' without ``new_head``.
    """
    from .pretrained import file_sha256, resolve_model

    where = f"segment.train.init_from: {path}"
    file = resolve_model(path)
    meta = load_model_file(file, FORMAT, "segmentation model")
    theirs_cfg = {k: meta["model"].get(k) for k in ARCH_KEYS if k in meta["model"]}
    ours = model_settings(model)
    ours_cfg = {k: getattr(ours, k) for k in theirs_cfg}
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

"""Sub-commands ``batterytwin train-seg`` and ``batterytwin segment``."""

from __future__ import annotations

import argparse

from ..cliargs import InputsOutputs, add_settings, arrange
from ..config import settings_from_args
from ..errors import InputError
from .config import SegmentConfig



def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-seg",
        help="train the 3-D segmentation network (batteryNET residual U-Net) with DDP",
        description=(
            "Train the segmentation network on random 3-D patches of volume stores with their label "
            "stores (uint8, 'classes' attribute; 255 = unlabelled, ignored by the loss). Run under "
            "srun/mpiexec -n N for data-parallel training (NCCL on GPU, gloo on CPU); the global batch "
            "is split over the ranks. Checkpoints go to train.checkpoint_dir; on SIGUSR1/SIGTERM the "
            "job checkpoints and exits with code 75 ('preempted'); rerunning resumes the same run."),
)
    io = InputsOutputs(p)
    io.add("--volume", action="append", required=True, metavar="ZARR",
           help="training volume store (repeat for several volumes, in the order of --labels)")
    io.add("--labels", action="append", required=True, metavar="ZARR",
           help="label store matching each --volume (same shape)")
    io.add("--val-volume", action="append", default=[], metavar="ZARR",
           help="held-out validation volume (repeat); without it a slab of each training volume "
                "(train.val_axis, train.val_fraction) is held out")
    io.add("--val-labels", action="append", default=[], metavar="ZARR", help="label store matching each --val-volume")
    io.output("model_out", metavar="PT", old=("--model-out",), help="output model file (model.pt)")
    io.path(("--metrics",), "metrics_out", metavar="JSON", old=("--metrics-out",),
            help="output metrics (loss curve, Dice)")
    add_settings(p, SegmentConfig, "segment", listed=("model", "train"), flags={
        "--checkpoint-dir": "train.checkpoint_dir", "--steps": "train.steps", "--device": "train.device"})
    p.add_argument("--resume", choices=("auto", "yes", "no"), default="auto",
                   help="auto: resume when a checkpoint of this same run exists; yes: it must exist; no: start afresh")
    arrange(p, common=("--steps", "--device", "--checkpoint-dir", "--resume"))
    p.set_defaults(func=run_train)

    q = subparsers.add_parser(
        "segment",
        help="segment a volume store: with a trained model (distributed sliding window) or label-free (GMM)",
        description=(
            "--method network (default) or pretrained: sliding-window inference with Gaussian blending on "
            "a window grid fixed to the volume; --method gmm (no --model): a Gaussian mixture fitted to a "
            "voxel sample, speckles removed by a per-class opening and closing. Ranks (srun/mpiexec -n N) "
            "own disjoint output shards; the result does not depend on their number. Writes a uint8 label "
            "store ('classes', 'ignore_label', 'method' attributes) and, with --uncertainty, the softmax "
            "(network) or class-posterior (gmm) entropy."),
    )
    io = InputsOutputs(q)
    io.input(metavar="ZARR", help="volume store to segment (denoised.zarr or volume.zarr)")
    io.add("--model", metavar="PT", help="model.pt from train-seg, or 'pretrained' (the shipped batteryNET, "
           "docs/models.md; implied by --method pretrained); none with --method gmm")
    io.output(metavar="ZARR", help="output label store (labels.zarr)")
    io.add("--uncertainty", metavar="ZARR", help="also write the entropy here (float16 store, nats)")
    add_settings(q, SegmentConfig, "segment", listed=(), flags={
        "--method": "method", "--device": "infer.device", "--overlap": "infer.overlap",
        "--sw-batch-size": "infer.sw_batch_size", "--clean-radius": "gmm.clean_radius",
        "--uncertainty-method": "infer.uncertainty_method"})
    arrange(q, common=("--method", "--device"))
    q.set_defaults(func=run_segment)


def run_train(args: argparse.Namespace) -> int:
    from .train import TrainInput, train

    cfg = settings_from_args(args, SegmentConfig, "segment")
    if len(args.volume) != len(args.labels):
        raise InputError(f"--volume/--labels: {len(args.volume)} volumes but {len(args.labels)} label stores")
    if len(args.val_volume) != len(args.val_labels):
        raise InputError(f"--val-volume/--val-labels: {len(args.val_volume)} volumes but "
                         f"{len(args.val_labels)} label stores")
    inputs = [TrainInput(v, l) for v, l in zip(args.volume, args.labels)]
    val = [TrainInput(v, l) for v, l in zip(args.val_volume, args.val_labels)]
    return train(cfg, inputs, args.model_out, args.metrics_out, val_inputs=val, resume=args.resume)


def run_segment(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, SegmentConfig, "segment")
    if settings.method == "gmm":
        from .gmm_run import segment_gmm

        if args.model:
            raise InputError("--model: segment.method is gmm, which uses no model (drop --model or use "
                             "--method network)")
        segment_gmm(args.input, args.output, args.uncertainty, settings)
        return 0
    from .infer import segment_volume

    model = args.model or ("pretrained" if settings.method == "pretrained" else None)
    if not model:
        raise InputError("--model: required with segment.method network (a model.pt, or 'pretrained' for the shipped "
                         "batteryNET; or give --method gmm)")
    segment_volume(args.input, model, args.output, args.uncertainty, settings.infer)
    return 0

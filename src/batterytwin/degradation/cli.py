"""``batterytwin train-degradation`` and ``batterytwin predict-degradation``."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ..cliargs import InputsOutputs, add_settings, arrange
from ..config import settings_from_args
from .config import DegradationConfig

log = logging.getLogger(__name__)


def _data_args(p: argparse.ArgumentParser) -> InputsOutputs:
    """The data sources (give at least one) in the 'inputs and outputs' help group."""
    g = InputsOutputs(p)
    g.add("--sweep", nargs="+", default=[], metavar="ZARR",
          help="cellsim sweep.zarr store(s): SOH curves and qv_capacity_Ah of the conditions")
    g.add("--npz", nargs="+", default=[], metavar="NPZ",
          help="DiffBatt benchmark split(s) (soh, valid_len, qmatrix, cycles_per_point)")
    g.add("--user-dir", nargs="+", default=[], metavar="DIR",
          help="directory(ies) in the generic format: <cell>.capacity.csv + <cell>.qv.npz|.qv.csv "
               "(see docs/degradation.md); give at least one of --sweep, --npz, --user-dir")
    return g


DATA_FLAGS = {"--curve-length": "curve_length", "--cycles-per-point": "cycles_per_point", "--base-row": "base_row",
              "--n-early": "n_early", "--eol-rule": "eol_rule", "--test-fraction": "test_fraction",
              "--split-seed": "split_seed"}


def _load(args, cfg: DegradationConfig, for_training: bool):
    import numpy as np

    from ..errors import InputError
    from ..cycling.curves import concat
    from ..cycling.loaders import load_npz_split, load_user_dir
    from .data import held_out, load_sweep

    sets, flags = [], []
    for path in args.sweep:
        cs = load_sweep(path, cfg.curve_length, cfg.cycles_per_point, cfg.base_row)
        if cfg.eol_rule:
            cs.eol_rule = cfg.eol_rule
        sets.append(cs)
        flags.append(held_out(cs, cfg.test_fraction, cfg.split_seed))
    for path in args.npz:
        cs = load_npz_split(path, cfg.eol_rule)
        sets.append(cs)
        flags.append(np.full(len(cs), not for_training))
    for path in args.user_dir:
        cs = load_user_dir(path, cfg.curve_length, cfg.cycles_per_point, cfg.n_early, cfg.base_row,
                           cfg.eol_rule or "threshold")
        sets.append(cs)
        flags.append(np.full(len(cs), not for_training))
    if not sets:
        raise InputError("no data: give --sweep, --npz or --user-dir (empty dataset)")
    cs = concat(sets) if len(sets) > 1 else sets[0]
    flags = np.concatenate(flags)
    if for_training:
        keep = np.flatnonzero(~flags)
        if len(keep) == 0:
            raise InputError(f"{cs.source}: every cell is held out (test_fraction {cfg.test_fraction}): empty dataset")
        return cs.subset(keep), flags
    return cs, flags


def _start(args, cfg: DegradationConfig, threads: int, for_training: bool):
    """(this rank's world, with its threads set by the shared policy, curves, held-out flags)."""
    from ..distributed import get_world
    from ..training import set_threads

    world = get_world()
    set_threads(world, threads)
    return (world, *_load(args, cfg, for_training))


def run_train(args) -> int:
    from ..distributed import init_torch_distributed, shutdown_torch_distributed
    from ..store import write_json
    from ..training import preempted, save_atomic
    from .config import ModelTrainSettings
    from .train import train_model

    settings = settings_from_args(args, DegradationConfig, "degradation")
    world, cs, _ = _start(args, settings, settings.train.threads, for_training=True)
    cfg = ModelTrainSettings.from_dict(settings.train.model_dump(exclude={"threads", "device"}))  # saved with the model
    cfg.check(world.size)
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else Path("work/models/degradation") / f"{out.stem}.ckpt.pt"
    log.info("training on %d cells (%s), curves %d points, capacity matrix %s, %d rank(s)", len(cs), cs.source,
             cs.curve_length, cs.condition_shape, world.size)
    device = init_torch_distributed(world, settings.train.device)
    t0 = time.perf_counter()
    try:
        res = train_model(cs, cfg, ckpt, world, device)
    finally:
        shutdown_torch_distributed()
    if res.interrupted:
        return preempted("train-degradation", res.step, cfg.steps, ckpt, world)
    if world.is_root:
        save_atomic(res.payload, out)
        if args.metrics:
            write_json(args.metrics, {"steps": res.step, "ranks": world.size, "train_cells": len(cs),
                                      "wall_s": time.perf_counter() - t0, "loss_history": res.history,
                                      "config": res.payload["config"], "source": cs.source,
                                      "eol_rule": cs.eol_rule, "checkpoint": str(ckpt)})
    world.barrier()
    return 0


def run_predict(args) -> int:
    import numpy as np

    from ..distributed import select_device
    from .predict import life_model_settings, run_prediction

    settings = settings_from_args(args, DegradationConfig, "degradation")
    sample = settings.sample
    if sample.predictor == "stack":
        life_model_settings(sample)  # an unknown member: one line before any work
    world, cs, flags = _start(args, settings, sample.threads, for_training=False)
    if args.sweep and not flags.any():
        flags = np.ones(len(cs), bool)  # nothing held out: score every condition
    device = select_device(world, sample.device)
    params = {**{k: v for k, v in vars(args).items() if k in ("sweep", "npz", "user_dir", "model")},
              **settings.model_dump(exclude={"train", "real_data"})}
    metrics = run_prediction(Path(args.model), cs, Path(args.out), Path(args.metrics) if args.metrics else None, sample,
                             flags, sample.synthetic, params, device, world)
    if world.is_root:
        m = metrics
        log.info("RUL RMSE (cycles): model (%s) %.1f, diffusion %.1f, variance model %.1f, random forest %.1f, "
                 "mean curve %.1f; best point predictor %s; %d%% interval coverage: model %.2f, diffusion %.2f "
                 "(%d cells, %d censored)", m["model"]["name"], m["model"]["rul_rmse_cycles"],
                 m["diffusion"]["rul_rmse_cycles"], m["variance_model"]["rul_rmse_cycles"],
                 m["random_forest"]["rul_rmse_cycles"], m["mean_curve"]["rul_rmse_cycles"], m["best_point_predictor"],
                 round(100 * sample.level), m["model"]["interval_coverage"], m["diffusion"]["interval_coverage"],
                 m["n_evaluated"], m["n_censored"])
        brief = {"predictor": m["model"]["name"], "rul_rmse_cycles": m["model"]["rul_rmse_cycles"],
                 "interval_coverage": m["model"]["interval_coverage"],
                 "diffusion_rul_rmse_cycles": m["diffusion"]["rul_rmse_cycles"],
                 "best_point_predictor": m["best_point_predictor"]}
        print(json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in brief.items()}))  # NaN -> null
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-degradation",
        help="train the conditional diffusion model of capacity fade (DDP over MPI ranks)",
        description="Train a DiffBatt-style denoising diffusion model of SOH curves conditioned on the "
                    "early-cycle capacity matrix (transformer encoder, classifier-free guidance, EMA). "
                    "Runs data-parallel over the MPI ranks (mpiexec/srun; gloo on CPU, NCCL on GPU); "
                    "checkpoints to --checkpoint and resumes from it; SIGTERM/SIGUSR1 checkpoint and exit "
                    "with status 75 (run again to resume).")
    io = _data_args(p)
    io.output("out", metavar="PT", old=("--out",), help="model file to write (.pt, EMA weights + settings)")
    io.add("--metrics", default=None, metavar="JSON", help="training summary JSON (loss history, wall time)")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint file (resumed when present); default work/models/degradation/<output>.ckpt.pt")
    add_settings(p, DegradationConfig, "degradation", listed=("", "train"), flags={
        **DATA_FLAGS, "--steps": "train.steps", "--batch-size": "train.batch_size", "--lr": "train.lr",
        "--seed": "train.seed", "--device": "train.device", "--threads": "train.threads"})
    arrange(p, common=("--steps", "--device", "--threads", "--checkpoint"))
    p.set_defaults(func=run_train)

    q = subparsers.add_parser(
        "predict-degradation",
        help="sample SOH curves, cycle-life intervals and metrics (with baselines) from a trained model",
        description="Sample many SOH curves per cell from a trained degradation model, derive cycle life "
                    "(see docs/degradation.md for the end-of-life rule), its median and central interval, "
                    "and score them (RUL RMSE, SOH-curve RMSE, interval coverage) next to the default RUL "
                    "predictor (degradation.sample.predictor: a cross-validated stack of regressors fitted on the "
                    "model file's training cells), the Severson variance model, a random forest and the "
                    "mean-curve predictor fitted in the same run. "
                    "Writes a zarr store and a metrics JSON. Cells are shared out over MPI ranks.",
)
    io = _data_args(q)
    io.add("--model", required=True, metavar="PT", help="model file from train-degradation")
    io.output("out", metavar="ZARR", old=("--out",), help="output store (degradation.zarr)")
    io.add("--metrics", default=None, metavar="JSON", help="metrics JSON")
    add_settings(q, DegradationConfig, "degradation", listed=("", "sample"), flags={
        **DATA_FLAGS, "--samples": "sample.samples", "--sampler": "sample.sampler",
        "--ddim-steps": "sample.ddim_steps", "--guidance": "sample.guidance", "--seed": "sample.seed",
        "--batch": "sample.batch", "--level": "sample.level", "--threshold": "sample.threshold",
        "--synthetic": "sample.synthetic", "--device": "sample.device", "--threads": "sample.threads",
        "--predictor": "sample.predictor"})
    arrange(q, common=("--samples", "--seed", "--device", "--threads", "--predictor"))
    q.set_defaults(func=run_predict)

"""``batterytwin train-degradation`` and ``batterytwin predict-degradation``."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (give at least one source)")
    g.add_argument("--sweep", nargs="+", default=[], metavar="ZARR",
                   help="cellsim sweep.zarr store(s): SOH curves and qv_capacity_Ah of the conditions")
    g.add_argument("--npz", nargs="+", default=[], metavar="NPZ",
                   help="DiffBatt benchmark split(s) (soh, valid_len, qmatrix, cycles_per_point)")
    g.add_argument("--user-dir", nargs="+", default=[], metavar="DIR",
                   help="directory(ies) in the generic format: <cell>.capacity.csv + <cell>.qv.npz|.qv.csv "
                        "(see docs/degradation.md)")
    g.add_argument("--curve-length", type=int, default=256, help="points per curve (sweeps, user data) [256]")
    g.add_argument("--cycles-per-point", type=int, default=10, help="cycles between curve points [10]")
    g.add_argument("--base-row", type=int, default=0,
                   help="0-based early cycle subtracted to form the capacity matrix (sweeps, user data) [0]")
    g.add_argument("--n-early", type=int, default=None,
                   help="user data: early cycles (rows) of the capacity matrix [all Q(V) cycles in the file]")
    g.add_argument("--eol-rule", choices=("end_of_record", "threshold"), default=None,
                   help="end-of-life rule; default: end_of_record for MATR splits, threshold otherwise")
    g.add_argument("--test-fraction", type=float, default=0.25,
                   help="sweeps only: fraction of conditions held out of training and scored by predict [0.25]")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the sweep held-out split [0]")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device [auto]")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per rank (0: OMP_NUM_THREADS, else SLURM_CPUS_PER_TASK, else the "
                        "node's cores shared by its ranks)")


def _load(args, for_training: bool):
    import numpy as np

    from ..errors import InputError
    from .data import concat, held_out, load_npz_split, load_sweep, load_user_dir

    sets, flags = [], []
    for path in args.sweep:
        cs = load_sweep(path, args.curve_length, args.cycles_per_point, args.base_row)
        if args.eol_rule:
            cs.eol_rule = args.eol_rule
        sets.append(cs)
        flags.append(held_out(cs, args.test_fraction, args.split_seed))
    for path in args.npz:
        cs = load_npz_split(path, args.eol_rule)
        sets.append(cs)
        flags.append(np.full(len(cs), not for_training))
    for path in args.user_dir:
        cs = load_user_dir(path, args.curve_length, args.cycles_per_point, args.n_early, args.base_row,
                           args.eol_rule or "threshold")
        sets.append(cs)
        flags.append(np.full(len(cs), not for_training))
    if not sets:
        raise InputError("no data: give --sweep, --npz or --user-dir (empty dataset)")
    cs = concat(sets) if len(sets) > 1 else sets[0]
    flags = np.concatenate(flags)
    if for_training:
        keep = np.flatnonzero(~flags)
        if len(keep) == 0:
            raise InputError(f"{cs.source}: every cell is held out (test_fraction {args.test_fraction}): empty dataset")
        return cs.subset(keep), flags
    return cs, flags


def _start(args, for_training: bool):
    """(this rank's world, with its threads set by the shared policy, curves, held-out flags)."""
    from ..distributed import get_world
    from ..training import set_threads

    world = get_world()
    set_threads(world, args.threads)
    return (world, *_load(args, for_training))


def run_train(args) -> int:
    from ..distributed import init_torch_distributed, shutdown_torch_distributed
    from ..store import write_json
    from ..training import preempted, save_atomic
    from .train import TrainConfig, train_model

    world, cs, _ = _start(args, for_training=True)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                      p_uncond=args.p_uncond, ema_decay=args.ema_decay, seed=args.seed,
                      checkpoint_every=args.checkpoint_every, timesteps=args.timesteps, schedule=args.schedule,
                      soh_center=args.soh_center, soh_scale=args.soh_scale,
                      widths=[int(w) for w in args.widths.split(",")],
                      attention=[w.strip() in ("1", "true", "yes") for w in args.attention.split(",")],
                      blocks=args.blocks, emb_dim=args.emb_dim, cond_dim=args.cond_dim,
                      cond_layers=args.cond_layers, cond_heads=args.cond_heads, patch=args.patch,
                      rows_per_token=args.rows_per_token)
    cfg.check(world.size)
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else Path("work/models/degradation") / f"{out.stem}.ckpt.pt"
    log.info("training on %d cells (%s), curves %d points, capacity matrix %s, %d rank(s)", len(cs), cs.source,
             cs.curve_length, cs.condition_shape, world.size)
    device = init_torch_distributed(world, args.device)
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
    from .predict import SampleSettings, run_prediction

    world, cs, flags = _start(args, for_training=False)
    if args.sweep and not flags.any():
        flags = np.ones(len(cs), bool)  # nothing held out: score every condition
    st = SampleSettings(samples=args.samples, sampler=args.sampler, steps=args.ddim_steps, guidance=args.guidance,
                        seed=args.seed, batch=args.batch, level=args.level, threshold=args.threshold)
    device = select_device(world, args.device)
    params = {k: v for k, v in vars(args).items() if k != "func"}
    metrics = run_prediction(Path(args.model), cs, Path(args.out), Path(args.metrics) if args.metrics else None, st,
                             flags, args.synthetic, params, device, world)
    if world.is_root:
        m = metrics
        log.info("RUL RMSE (cycles): model %.1f, variance model %.1f, random forest %.1f, mean curve %.1f; "
                 "%d%% interval coverage %.2f (%d cells, %d censored)", m["model"]["rul_rmse_cycles"],
                 m["variance_model"]["rul_rmse_cycles"], m["random_forest"]["rul_rmse_cycles"],
                 m["mean_curve"]["rul_rmse_cycles"], round(100 * st.level), m["model"]["interval_coverage"],
                 m["n_evaluated"], m["n_censored"])
        brief = {"rul_rmse_cycles": m["model"]["rul_rmse_cycles"], "interval_coverage": m["model"]["interval_coverage"]}
        print(json.dumps({k: (v if v == v else None) for k, v in brief.items()}))  # NaN -> null
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-degradation",
        help="train the conditional diffusion model of capacity fade (DDP over MPI ranks)",
        description="Train a DiffBatt-style denoising diffusion model of SOH curves conditioned on the "
                    "early-cycle capacity matrix (transformer encoder, classifier-free guidance, EMA). "
                    "Runs data-parallel over the MPI ranks (mpiexec/srun; gloo on CPU, NCCL on GPU); "
                    "checkpoints to --checkpoint and resumes from it; SIGTERM/SIGUSR1 checkpoint and exit "
                    "with status 75 (run again to resume).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _data_args(p)
    p.add_argument("--out", required=True, help="model file to write (.pt, EMA weights + settings)")
    p.add_argument("--metrics", default=None, help="training summary JSON (loss history, wall time)")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint file (resumed when present); default work/models/degradation/<out>.ckpt.pt")
    h = p.add_argument_group("model and training")
    h.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    h.add_argument("--batch-size", type=int, default=32, help="global batch (split evenly over ranks)")
    h.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    h.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    h.add_argument("--p-uncond", type=float, default=0.1, help="condition dropout probability (guidance)")
    h.add_argument("--ema-decay", type=float, default=0.995, help="EMA decay of the saved weights")
    h.add_argument("--seed", type=int, default=0, help="seed of weights, batches and noise")
    h.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints")
    h.add_argument("--timesteps", type=int, default=1000, help="diffusion steps T")
    h.add_argument("--schedule", choices=("cosine", "linear"), default="cosine", help="noise schedule")
    h.add_argument("--soh-center", type=float, default=90.0, help="curve scaling: (SOH - center) / scale")
    h.add_argument("--soh-scale", type=float, default=10.0, help="curve scaling: (SOH - center) / scale")
    h.add_argument("--widths", default="32,64,64", help="U-Net channels per level (comma separated)")
    h.add_argument("--attention", default="0,1,1", help="self-attention per U-Net level (comma separated 0/1)")
    h.add_argument("--blocks", type=int, default=1, help="residual blocks per U-Net level")
    h.add_argument("--emb-dim", type=int, default=128, help="time/condition embedding width")
    h.add_argument("--cond-dim", type=int, default=64, help="transformer width of the condition encoder")
    h.add_argument("--cond-layers", type=int, default=2, help="transformer layers of the condition encoder")
    h.add_argument("--cond-heads", type=int, default=4, help="attention heads of the condition encoder")
    h.add_argument("--patch", type=int, default=4, help="curve points per U-Net input patch")
    h.add_argument("--rows-per-token", type=int, default=5, help="capacity-matrix rows per transformer token")
    p.set_defaults(func=run_train)

    q = subparsers.add_parser(
        "predict-degradation",
        help="sample SOH curves, cycle-life intervals and metrics (with baselines) from a trained model",
        description="Sample many SOH curves per cell from a trained degradation model, derive cycle life "
                    "(see docs/degradation.md for the end-of-life rule), its median and central interval, "
                    "and score them (RUL RMSE, SOH-curve RMSE, interval coverage) next to the Severson "
                    "variance model, a random forest and the mean-curve predictor fitted in the same run. "
                    "Writes a zarr store and a metrics JSON. Cells are shared out over MPI ranks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _data_args(q)
    q.add_argument("--model", required=True, help="model file from train-degradation")
    q.add_argument("--out", required=True, help="output store (degradation.zarr)")
    q.add_argument("--metrics", default=None, help="metrics JSON")
    s = q.add_argument_group("sampling")
    s.add_argument("--samples", type=int, default=32, help="sampled curves per cell")
    s.add_argument("--sampler", choices=("ddim", "ancestral"), default="ddim", help="ddim (few steps) or ancestral (T)")
    s.add_argument("--ddim-steps", type=int, default=50, help="DDIM steps")
    s.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight (1: conditional)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed")
    s.add_argument("--batch", type=int, default=512, help="curves per network call")
    s.add_argument("--level", type=float, default=0.9, help="central prediction interval")
    s.add_argument("--threshold", type=float, default=80.0, help="SOH percent of the threshold end-of-life rule")
    s.add_argument("--synthetic", type=int, default=0, help="also generate this many unconditional curves")
    q.set_defaults(func=run_predict)

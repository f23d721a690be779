"""Benchmark of the degradation stage on the real DiffBatt splits (MATR1, MATR2).

Trains the diffusion model on ``matr_1_train`` (MATR1 and MATR2 share it), then for MATR1
(``matr_1_test``) and MATR2 (``matr_2_test``) prints the RUL RMSE of the model (median of the
sampled lives, DDIM) and of the two baselines fitted in the same run (Severson variance model,
random forest), next to DiffBatt's published numbers (88 and 235 cycles), with the empirical
coverage of the 90 % intervals. Then it times ancestral sampling (all T = 1000 steps) against DDIM
on the same MATR1 cells and samples, and prints curves/s, the speed-up and both RUL RMSEs.

End-of-life rule: MATR records end at end of life, so cycle life = valid_len * 10 (end of record),
for the truth and for every sampled curve (its predicted record length); RUL RMSE = cycle-life RMSE.

Default run: CPU-sized (a few minutes of training); ``--steps``, ``--samples``, ``--widths`` ...
for longer runs. ``--model`` reuses a trained model file (skips training).

    python bench/degradation.py                       # default, short
    python bench/degradation.py --steps 20000 --samples 64 --ancestral-cells 42
    python bench/degradation.py --model bench/out/degradation_matr.pt     # re-evaluate only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = {"MATR1": 88.0, "MATR2": 235.0}  # DiffBatt RUL RMSE (cycles), Eivazi et al. 2024
SPLITS = {"MATR1": "matr_1_test.npz", "MATR2": "matr_2_test.npz"}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("BATTERYTWIN_DIFFBATT", str(ROOT.parent / "shared/data/diffbatt")),
                   help="directory of the DiffBatt .npz splits")
    p.add_argument("--steps", type=int, default=3000, help="training steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--widths", default="32,64,64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=16, help="sampled curves per test cell (intervals)")
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--ancestral-cells", type=int, default=4,
                   help="MATR1 cells for the ancestral vs DDIM timing (0: skip it)")
    p.add_argument("--ancestral-samples", type=int, default=8, help="samples per cell for that timing")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    p.add_argument("--model", default=None, help="use this trained model file instead of training")
    p.add_argument("--save-model", default=str(ROOT / "bench/out/degradation_matr.pt"))
    p.add_argument("--out", default=str(ROOT / "bench/out/degradation.json"))
    return p.parse_args()


def main() -> int:
    args = parse()
    import numpy as np
    import torch

    from batterytwin.degradation.data import load_npz_split
    from batterytwin.degradation.config import SampleSettings
    from batterytwin.degradation.predict import evaluate
    from batterytwin.degradation.train import TrainConfig, load_model, train_model
    from batterytwin.distributed import get_world, init_torch_distributed

    data_dir = Path(args.data_dir)
    if not (data_dir / "matr_1_train.npz").is_file():
        print(f"bench/degradation.py: no DiffBatt splits in {data_dir} (give --data-dir): skipped")
        return 0
    torch.set_num_threads(args.threads)
    world = get_world()
    train = load_npz_split(data_dir / "matr_1_train.npz")
    report: dict = {"rule": "end_of_record: cycle life = valid_len * 10 (MATR); RUL RMSE = cycle-life RMSE",
                    "train_cells": len(train), "steps": args.steps}
    if args.model:
        net, payload = load_model(args.model)
        report["train_wall_s"] = None
    else:
        device = init_torch_distributed(world, "cpu")
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          widths=[int(w) for w in args.widths.split(",")],
                          checkpoint_every=max(args.steps, 1))
        cfg.attention = [False] + [True] * (len(cfg.widths) - 1)
        t0, c0 = time.perf_counter(), time.process_time()
        res = train_model(train, cfg, None, world, device, log_every=max(1, args.steps // 10))
        report["train_wall_s"], report["train_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        Path(args.save_model).parent.mkdir(parents=True, exist_ok=True)
        torch.save(res.payload, args.save_model)
        net, payload = load_model(args.save_model)
        print(f"trained {args.steps} steps on {len(train)} MATR cells: {report['train_wall_s']:.0f} s wall, "
              f"{report['train_cpu_s']:.0f} s CPU")

    rows = []
    st = SampleSettings(samples=args.samples, sampler="ddim", ddim_steps=args.ddim_steps, guidance=args.guidance,
                        seed=args.seed)
    for name, fname in SPLITS.items():
        test = load_npz_split(data_dir / fname)
        _, m = evaluate(net, payload, test, st, world=world)
        rows.append((name, m))
        report[name] = m
    print()
    print(f"RUL RMSE in cycles (rule: {report['rule']})")
    print(f"{'split':6} {'cells':>5} {'model':>7} {'DiffBatt':>8} {'ratio':>6} {'variance':>8} {'forest':>7} "
          f"{'mean':>6} {'cover90':>7} {'curveRMSE%':>10}")
    for name, m in rows:
        r = m["model"]["rul_rmse_cycles"]
        print(f"{name:6} {m['n_evaluated']:5d} {r:7.1f} {PUBLISHED[name]:8.0f} {r / PUBLISHED[name]:6.2f} "
              f"{m['variance_model']['rul_rmse_cycles']:8.1f} {m['random_forest']['rul_rmse_cycles']:7.1f} "
              f"{m['mean_curve']['rul_rmse_cycles']:6.1f} {m['model']['interval_coverage']:7.2f} "
              f"{m['model']['soh_curve_rmse_percent']:10.2f}")

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=float) + "\n")
    if args.ancestral_cells <= 0:
        print(f"\nwritten {args.out}")
        return 0
    # Ancestral (T steps) vs DDIM on the same cells and samples.
    test = load_npz_split(data_dir / SPLITS["MATR1"]).subset(np.arange(min(args.ancestral_cells, 42)))
    timing = {}
    for sampler in ("ancestral", "ddim"):
        s = SampleSettings(samples=args.ancestral_samples, sampler=sampler, ddim_steps=args.ddim_steps,
                           guidance=args.guidance, seed=args.seed)
        _, m = evaluate(net, payload, test, s, world=world)
        wall = m["sampling"]["sampling_rank_seconds"]  # the sampling loop only (not the baselines' fit)
        timing[sampler] = {"curves": m["sampling"]["curves"], "wall_s": wall,
                           "curves_per_s": m["sampling"]["curves"] / wall,
                           "rul_rmse_cycles": m["model"]["rul_rmse_cycles"],
                           "coverage": m["model"]["interval_coverage"]}
    speedup = timing["ddim"]["curves_per_s"] / timing["ancestral"]["curves_per_s"]
    report["sampler_timing"] = {**timing, "ddim_speedup": speedup, "cells": len(test),
                                "samples_per_cell": args.ancestral_samples, "ddim_steps": args.ddim_steps,
                                "threads": args.threads}
    print()
    print(f"sampling on {len(test)} MATR1 cells x {args.ancestral_samples} samples ({args.threads} thread(s)):")
    for k, v in timing.items():
        label = "ancestral (1000 steps)" if k == "ancestral" else f"DDIM ({args.ddim_steps} steps)"
        print(f"  {label:22} {v['curves_per_s']:8.2f} curves/s   RUL RMSE {v['rul_rmse_cycles']:7.1f} cycles")
    print(f"  DDIM speed-up vs ancestral: {speedup:.1f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

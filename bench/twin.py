"""Benchmark of the hybrid digital twin on the real DiffBatt splits.

For MATR1 (train ``matr_1_train``, test ``matr_1_test``) and MATR2 (same training set, test
``matr_2_test``), end-of-life rule ``end_of_record`` (the MATR cells were stopped at end of life:
cycle life = valid_len * 10), and for HUST, SNL and CRUH by K-fold cross-validation over cells of
their training splits, rule ``threshold`` (first point with SOH <= 80 %; censored cells left out):
RUL RMSE of the physics fit alone, the hybrid twin, the Severson variance model, the random
forest (and the diffusion model when ``--diffusion NAME=ZARR`` gives its prediction store of that
split), interval coverage, and the fit time per cell -- for both physics models (semi-empirical,
PyBaMM SPM+SEI surrogate; PyBaMM surrogate build time reported apart).

    python bench/twin.py                                   # both physics models, every split
    python bench/twin.py --physics empirical --splits MATR1 MATR2
    python bench/twin.py --diffusion MATR1=results/degradation_real/matr1.zarr

Writes ``bench/results/twin-cpu-<date>.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PUBLISHED = {"MATR1": 88.0, "MATR2": 235.0, "HUST": 368.0, "SNL": 125.0, "CRUH": 119.0}  # DiffBatt RUL RMSE
SPLITS = {"MATR1": ("matr_1_train.npz", "matr_1_test.npz"), "MATR2": ("matr_1_train.npz", "matr_2_test.npz"),
          "HUST": ("hust_train.npz", None), "SNL": ("snl_train.npz", None), "CRUH": ("cruh_train.npz", None)}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("BATTERYTWIN_DIFFBATT", str(ROOT.parent / "shared/data/diffbatt")))
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    p.add_argument("--physics", nargs="+", default=["empirical", "pybamm"], choices=["empirical", "pybamm"])
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (HUST, SNL, CRUH)")
    p.add_argument("--steps", type=int, default=None, help="correction steps (default: the twin's)")
    p.add_argument("--config-json", default="{}", help="other twin settings (JSON)")
    p.add_argument("--diffusion", nargs="*", default=[], metavar="SPLIT=ZARR",
                   help="diffusion-model prediction store of a test split (MATR1/MATR2)")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/twin-cpu-<date>.json)")
    return p.parse_args()


def main() -> int:
    import torch

    from batterytwin.config import load_settings
    from batterytwin.twin.cli import load_cells, read_diffusion
    from batterytwin.twin.config import TwinConfig
    from batterytwin.twin.driver import run_evaluation

    args = parse()
    torch.set_num_threads(1)
    diffusion = dict(item.split("=", 1) for item in args.diffusion)
    rows, results = [], {}
    for physics in args.physics:
        over = {"physics": physics, "folds": args.folds, "series": {"enabled": False}}
        if args.steps:
            over["correction"] = {"steps": args.steps}
        settings = load_settings(TwinConfig, "twin", text=args.config_json, overrides=over)
        for split in args.splits:
            train_f, test_f = SPLITS[split]
            train = load_cells([os.path.join(args.data_dir, train_f)], [], settings)
            test = load_cells([os.path.join(args.data_dir, test_f)], [], settings) if test_f else None
            if test is None:
                train, test = None, train
            diff = (read_diffusion(diffusion[split], len(test.cs), test.cs.eol_rule, settings.threshold)
                    if split in diffusion else None)
            t0 = time.perf_counter()
            res = run_evaluation(train, test, settings, diff)
            m = res["metrics"]
            m["bench_wall_seconds"] = time.perf_counter() - t0
            results[f"{split}/{physics}"] = m
            row = {"split": split, "physics": physics, "rule": m["eol_rule"], "cells": m["n_evaluated"],
                   "censored": m["n_censored"], "excluded": m["n_excluded"], "failed": m["n_failed"],
                   **{f"rmse_{k}": m[k]["rul_rmse_cycles"] for k in
                      ("physics", "hybrid", "variance_model", "random_forest", "diffusion")},
                   "cov_physics": m["physics"]["interval_coverage"], "cov_hybrid": m["hybrid"]["interval_coverage"],
                   "fit_ms_per_cell": 1e3 * (m["fit_seconds_per_cell"]["mean"] or float("nan")),
                   "surrogate_build_s": m["run"]["surrogate_build_seconds"], "wall_s": m["bench_wall_seconds"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    hdr = ("split", "physics", "rule", "cells", "rmse_physics", "rmse_hybrid", "rmse_variance_model",
           "rmse_random_forest", "rmse_diffusion", "cov_physics", "cov_hybrid", "fit_ms_per_cell", "surrogate_build_s")
    print("| " + " | ".join(hdr) + " | DiffBatt published |")
    print("|" + "---|" * (len(hdr) + 1))
    for r in rows:
        cells = [f"{r[h]:.3g}" if isinstance(r[h], float) else str(r[h]) for h in hdr]
        print("| " + " | ".join(cells) + f" | {PUBLISHED[r['split']]:.0f} |")
    out = Path(args.out or ROOT / "bench" / "results" / f"twin-cpu-{datetime.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    from batterytwin.store import json_safe

    out.write_text(json.dumps(json_safe({"command": " ".join(sys.argv), "rows": rows, "metrics": results,
                                         "published_diffbatt_rul_rmse": PUBLISHED}), indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

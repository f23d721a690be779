"""Benchmark of the degradation stage on every real split: MATR1, MATR2, HUST, SNL, CRUH, CRUSH.

- MATR1 / MATR2: one model trained on ``matr_1_train`` (both share it), scored on ``matr_1_test`` /
  ``matr_2_test`` (rule ``end_of_record``: cycle life = record length).
- HUST, SNL, CRUH, CRUSH: their test splits are not shipped, so ``--folds``-fold cross-validation over
  the cells of the train files (scikit-learn ``KFold``, shuffled, seeded); every cell is scored once by a
  model that did not see it, and the metrics are computed on the pooled out-of-fold predictions (rule
  ``threshold``, 80 %). CRUSH is built here as CRUH + SNL (CALCE, RWTH, UL-PUR, HNEI + Sandia, DiffBatt's
  CRUSH groups), on the first 20 early cycles of the capacity matrix (SNL has 20 rows).
- ``--select``: the same cross-validation on ``matr_1_train`` only (model choice without the test files).

Per split, every life predictor fitted in the same run on the same training cells (the model file's,
as ``predict-degradation`` does):

- ``model``: the default RUL predictor (``degradation.sample.predictor``, default ``stack``: the
  :class:`~batterytwin.cycling.life_model.LifeModel` stack with its cross-conformal 90 % interval; the
  diffusion model when the stack cannot be fitted, with the reason), and each stacked member's RMSE
  beside its weight (per fold for the CV splits);
- ``diffusion``: the diffusion model (median of the sampled lives; conformally calibrated 90 % interval);
- the baselines: Severson variance model, random forest, mean life;

their RUL RMSE, DiffBatt's published RMSE, the coverage of the 90 % intervals, the censoring figures
(censored cells predicted below their known lower bound, censoring-aware RMSE, C-index), the RMSE
under DiffBatt's own convention (every cell scored; non-crossing full records at 2560 cycles) and the
best point predictor. ``summary`` counts the splits on which the default predictor (and the diffusion
model) beats both baselines and DiffBatt's published RMSE. Then ancestral sampling (all T steps)
against DDIM on the same MATR1 cells. Writes ``bench/results/degradation-<date>.json``.

Rerun it whenever ``cycling/life_model.py`` or ``cycling/features.py`` change (the stack's figures
here are those of the committed code), niced, one thread, from the repository root:

    nice -n 19 env OMP_NUM_THREADS=1 python bench/degradation.py --steps 500   # the whole bench (~5 min wall, 1 thread)
    python bench/degradation.py --splits MATR1,MATR2 --steps 3000
    python bench/degradation.py --select --prediction eps    # model choice by CV on matr_1_train
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = {"MATR1": 88.0, "MATR2": 235.0, "HUST": 368.0, "SNL": 125.0, "CRUH": 119.0, "CRUSH": 294.0}
CV_FILES = {"HUST": ["hust_train.npz"], "SNL": ["snl_train.npz"], "CRUH": ["cruh_train.npz"],
            "CRUSH": ["cruh_train.npz", "snl_train.npz"], "MATR-CV": ["matr_1_train.npz"]}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT / "data/cycling"), help="directory of the DiffBatt .npz splits")
    p.add_argument("--splits", default="MATR1,MATR2,HUST,SNL,CRUH,CRUSH")
    p.add_argument("--select", action="store_true", help="only cross-validate on matr_1_train (model choice)")
    p.add_argument("--folds", type=int, default=4, help="cross-validation folds (HUST, SNL, CRUH, CRUSH)")
    p.add_argument("--steps", type=int, default=500, help="training steps per model (500: chosen by --select)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--prediction", default="eps", choices=["eps", "x0", "v"])
    p.add_argument("--representation", default="basis", choices=["basis", "unet"])
    p.add_argument("--no-variance-feature", action="store_true")
    p.add_argument("--train-json", default="{}", help="further degradation.train keys as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=32, help="sampled curves per cell")
    p.add_argument("--ddim-steps", type=int, default=20)
    p.add_argument("--ancestral-cells", type=int, default=42, help="MATR1 cells for the sampler timing (0: skip)")
    p.add_argument("--ancestral-samples", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/degradation-<date>.json)")
    return p.parse_args()


def crush(sets):
    """CRUH (first 20 early cycles) + SNL as one set."""
    from batterytwin.cycling.curves import CurveSet, concat

    rows = min(s.qmatrix.shape[1] for s in sets)
    cut = [CurveSet(s.soh, s.valid_len, s.qmatrix[:, :rows], s.cycles_per_point, s.eol_rule, s.names, s.source,
                    s.excluded) for s in sets]
    return concat(cut)


POOLED = ("life_pred", "life_lo", "life_hi", "life_true", "censored", "life_variance", "life_forest", "life_mean",
          "life_pred_diffbatt", "life_stack", "life_stack_lo", "life_stack_hi")
RANKED = ("model", "diffusion", "variance_model", "random_forest", "mean_life")  # best point predictor among these


def default_arrays(arrays: dict) -> dict:
    """``life_stack*`` of an evaluation, or the diffusion model's ``life_pred/_lo/_hi`` when the stack was
    not fitted (the metrics' ``model`` then is the diffusion model too)."""
    if "life_stack" in arrays:
        return arrays
    return {**arrays, "life_stack": arrays["life_pred"], "life_stack_lo": arrays["life_lo"],
            "life_stack_hi": arrays["life_hi"]}


def pooled_metrics(arrays: dict, soh_true, valid_len, cpp: int, threshold: float = 80.0) -> dict:
    """Metrics of (pooled) prediction arrays, the same definitions as predict.evaluate."""
    import numpy as np

    from batterytwin.cycling.life import diffbatt_life
    from batterytwin.cycling.scores import censoring_scores, coverage, rmse

    a = {k: np.asarray(v, float) for k, v in default_arrays(arrays).items()}
    cens = a["censored"].astype(bool)
    keep = ~cens
    db_true = diffbatt_life(soh_true, valid_len, cpp, threshold)
    out = {"n_cells": int(len(cens)), "n_evaluated": int(keep.sum()), "n_censored": int(cens.sum())}
    for name, key in (("model", "life_stack"), ("diffusion", "life_pred"), ("variance_model", "life_variance"),
                      ("random_forest", "life_forest"), ("mean_life", "life_mean")):
        out[name] = {"rul_rmse_cycles": rmse(a[key], a["life_true"], keep),
                     "censoring": censoring_scores(a[key], a["life_true"], cens),
                     "diffbatt_convention_rmse_cycles": rmse(a["life_pred_diffbatt"] if key == "life_pred" else a[key],
                                                             db_true)}
    for name, key in (("model", "life_stack"), ("diffusion", "life")):
        lo, hi = a[f"{key}_lo"], a[f"{key}_hi"]
        out[name]["interval_coverage"] = coverage(lo, hi, a["life_true"], keep)
        finite = keep & np.isfinite(hi)
        out[name]["mean_interval_width_cycles"] = float(np.mean((hi - lo)[finite])) if finite.any() else float("nan")
    scored = [(out[k]["rul_rmse_cycles"], i, k) for i, k in enumerate(RANKED) if np.isfinite(out[k]["rul_rmse_cycles"])]
    out["best_point_predictor"] = min(scored)[2] if scored else None
    return out


def default_predictor(folds: list[dict]) -> dict:
    """What the default predictor was on each fold's evaluation (metrics ``model``): its name, the reason
    of a fallback, and each stacked member's weight and RMSE (pooled over the folds: the root of the
    n-weighted mean square of the fold RMSEs, exactly the RMSE of the pooled predictions)."""
    import numpy as np

    names = sorted({m["model"]["name"] for m in folds})
    out = {"name": names[0] if len(names) == 1 else names,
           "reasons": sorted({m["model"]["reason"] for m in folds if m["model"].get("reason")})}
    stacked = [m for m in folds if m["model"]["name"] == "stack"]
    if stacked:
        out["contains_baselines"] = stacked[0]["model"]["contains_baselines"]
        out["life_model"] = [m["model"]["life_model"] for m in stacked]
        members = {}
        for name in stacked[0]["model"]["members"]:
            rows = [(m["n_evaluated"], m["model"]["members"][name]) for m in stacked]
            n = np.array([r[0] for r in rows], float)
            sq = np.array([(r[1]["rul_rmse_cycles"] if r[1]["rul_rmse_cycles"] is not None else np.nan) ** 2
                           for r in rows])
            ok = (n > 0) & np.isfinite(sq)
            members[name] = {"rul_rmse_cycles": float(np.sqrt(np.sum(n[ok] * sq[ok]) / n[ok].sum())) if ok.any()
                             else float("nan"),
                             "weight": float(np.mean([r[1]["weight"] for r in rows])),
                             "weight_per_fold": [r[1]["weight"] for r in rows],
                             "cv_rul_rmse_cycles_per_fold": [r[1]["cv_rul_rmse_cycles"] for r in rows]}
        out["members"] = members
    return out


def code_version() -> dict:
    """The commit the bench ran on, and whether the life model's files differed from it (a rerun is due
    whenever they change)."""
    import subprocess

    def git(*a):
        r = subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT)
        return r.stdout.strip() if r.returncode == 0 else None

    files = ["src/batterytwin/cycling/life_model.py", "src/batterytwin/cycling/features.py"]
    return {"commit": git("rev-parse", "HEAD"), "life_model_last_commit": git("log", "-1", "--format=%H", "--", *files),
            "life_model_files_modified": bool(git("status", "--porcelain", "--", *files))}


def summary(splits: dict) -> dict:
    """For the default predictor (``model``) and the diffusion model: on how many scored splits each beats
    both baselines and DiffBatt's published RMSE ("k of n"), the 90 % coverage per split, and the best
    point predictor per split."""
    out = {}
    for who in ("model", "diffusion"):
        rows = {name: r[who] for name, r in splits.items() if who in r}
        pub = {k: v["beats_published_diffbatt"] for k, v in rows.items() if v.get("beats_published_diffbatt") is not None}
        out[who] = {"beats_both_baselines": f"{sum(v['beats_both_baselines'] for v in rows.values())} of {len(rows)}",
                    "beats_published_diffbatt": f"{sum(pub.values())} of {len(pub)}",
                    "splits_beating_both_baselines": [k for k, v in rows.items() if v["beats_both_baselines"]],
                    "splits_beating_published_diffbatt": [k for k, v in pub.items() if v],
                    "interval_coverage": {k: round(v["interval_coverage"], 3) for k, v in rows.items()}}
    out["best_point_predictor"] = {name: r["best_point_predictor"] for name, r in splits.items()}
    return out


def main() -> int:
    args = parse()
    import numpy as np
    import torch
    from sklearn.model_selection import KFold

    from batterytwin.degradation.config import ModelTrainSettings, SampleSettings
    from batterytwin.cycling.loaders import load_npz_split
    from batterytwin.degradation.predict import evaluate
    from batterytwin.degradation.train import net_from_payload, train_model
    from batterytwin.distributed import get_world, init_torch_distributed

    torch.set_num_threads(args.threads)
    world = get_world()
    device = init_torch_distributed(world, "cpu")
    data = Path(args.data_dir)
    cfg = ModelTrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      prediction=args.prediction, representation=args.representation,
                      variance_feature=not args.no_variance_feature, checkpoint_every=max(args.steps, 1),
                      **json.loads(args.train_json))
    st = SampleSettings(samples=args.samples, ddim_steps=args.ddim_steps, seed=args.seed)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv), "code": code_version(), "train_config": cfg.model_dump(), "sample": st.model_dump(),
              "folds": args.folds, "threads": args.threads, "splits": {}}
    cpu_train = 0.0
    wall0 = time.perf_counter()

    def train(cs):
        nonlocal cpu_train
        c0 = time.process_time()
        res = train_model(cs, cfg, None, world, device, log_every=10 ** 9)
        cpu_train += time.process_time() - c0
        return net_from_payload(res.payload), res.payload

    names = ["MATR-CV"] if args.select else [s for s in args.splits.split(",") if s]
    matr_model = None
    for name in names:
        t0 = time.perf_counter()
        if name in ("MATR1", "MATR2"):
            if matr_model is None:
                matr_model = train(load_npz_split(data / "matr_1_train.npz"))
            test = load_npz_split(data / ("matr_1_test.npz" if name == "MATR1" else "matr_2_test.npz"))
            arrays, m = evaluate(*matr_model, test, st, world=world)
            res = {**pooled_metrics(arrays, test.soh, test.valid_len, test.cycles_per_point),
                   "default_predictor": default_predictor([m]),
                   "interval": m["interval"], "eol_rule": m["eol_rule"], "excluded_cells": m["excluded_cells"],
                   "roughness_soh_per_10_cycles": {"samples": m["diffusion"]["sample_roughness_soh_per_10_cycles"],
                                                   "data": m["data_roughness_soh_per_10_cycles"]},
                   "variance_rows_cycles": m["variance_model"]["cycles"], "protocol": "train file -> test file"}
        else:
            sets = [load_npz_split(data / f) for f in CV_FILES[name]]
            cs = crush(sets) if name == "CRUSH" else sets[0]
            kf = KFold(args.folds, shuffle=True, random_state=args.seed)
            pooled, intervals, rough, fold_metrics = {}, [], [], []
            order = np.empty(0, int)
            for tr_idx, te_idx in kf.split(np.arange(len(cs))):
                net, payload = train(cs.subset(tr_idx))
                arrays, m = evaluate(net, payload, cs.subset(te_idx), st, world=world)
                arrays = default_arrays(arrays)
                for k in POOLED:
                    pooled.setdefault(k, []).append(arrays[k])
                intervals.append(m["interval"])
                fold_metrics.append(m)
                rough.append(m["diffusion"]["sample_roughness_soh_per_10_cycles"])
                order = np.concatenate([order, te_idx])
            arrays = {k: np.concatenate(v) for k, v in pooled.items()}
            res = {**pooled_metrics(arrays, cs.soh[order], cs.valid_len[order], cs.cycles_per_point),
                   "default_predictor": default_predictor(fold_metrics),
                   "interval_per_fold": intervals, "eol_rule": cs.eol_rule, "excluded_cells": cs.excluded,
                   "roughness_soh_per_10_cycles": {"samples": float(np.median(rough)),
                                                   "data": float(np.median(np.abs(np.diff(cs.soh, axis=1))[
                                                       np.isfinite(np.diff(cs.soh, axis=1))]) * 10 / cs.cycles_per_point)},
                   "protocol": f"{args.folds}-fold CV over the cells of {'+'.join(CV_FILES[name])}"
                               + (" (first 20 early cycles)" if name == "CRUSH" else "")}
        res["published_diffbatt"] = PUBLISHED.get(name)
        res["wall_s"] = time.perf_counter() - t0
        report["splits"][name] = res
        m, d = res["model"], res["diffusion"]
        best_baseline = min(res["variance_model"]["rul_rmse_cycles"], res["random_forest"]["rul_rmse_cycles"])
        for entry in (m, d):
            entry["beats_both_baselines"] = bool(entry["rul_rmse_cycles"] < best_baseline)
            entry["beats_published_diffbatt"] = (bool(entry["rul_rmse_cycles"] < PUBLISHED[name])
                                                 if name in PUBLISHED else None)
        print(f"{name:7} cells {res['n_cells']:3d} (cens {res['n_censored']:2d}) "
              f"model({res['default_predictor']['name']}) {m['rul_rmse_cycles']:6.0f}  "
              f"diffusion {d['rul_rmse_cycles']:6.0f}  "
              f"var {res['variance_model']['rul_rmse_cycles']:6.0f}  rf {res['random_forest']['rul_rmse_cycles']:6.0f}  "
              f"mean {res['mean_life']['rul_rmse_cycles']:6.0f}  DiffBatt {PUBLISHED.get(name) or float('nan'):5.0f}  "
              f"best {res['best_point_predictor']}  beats-baselines {m['beats_both_baselines']!s:5}  "
              f"cov90 model {m['interval_coverage']:.2f} diffusion {d['interval_coverage']:.2f}  "
              f"cens<bound {m['censoring']['n_censored_pred_below_bound']}/{m['censoring']['n_censored']}  "
              f"C {m['censoring']['c_index']:.2f}  DiffBatt-conv {m['diffbatt_convention_rmse_cycles']:6.0f}  "
              f"({res['wall_s']:.0f} s)", flush=True)

    report["summary"] = summary(report["splits"])
    for who in ("model", "diffusion"):
        row = report["summary"][who]
        print(f"{who}: beats both baselines on {row['beats_both_baselines']}, DiffBatt's published RMSE on "
              f"{row['beats_published_diffbatt']}; 90 % coverage {row['interval_coverage']}")
    print(f"best point predictor per split: {report['summary']['best_point_predictor']}")

    if matr_model is not None and args.ancestral_cells > 0:
        test = load_npz_split(data / "matr_1_test.npz").subset(np.arange(min(args.ancestral_cells, 42)))
        timing = {}
        for sampler in ("ancestral", "ddim"):
            s = SampleSettings(samples=args.ancestral_samples, sampler=sampler, ddim_steps=args.ddim_steps,
                               seed=args.seed, predictor="diffusion")  # the sampler only: no stack fit
            _, m = evaluate(*matr_model, test, s, world=world)
            wall = m["sampling"]["sampling_rank_seconds"]
            timing[sampler] = {"curves": m["sampling"]["curves"], "wall_s": wall,
                               "curves_per_s": m["sampling"]["curves"] / wall,
                               "rul_rmse_cycles": m["diffusion"]["rul_rmse_cycles"]}
        timing["ddim_speedup"] = timing["ddim"]["curves_per_s"] / timing["ancestral"]["curves_per_s"]
        timing.update(cells=len(test), samples_per_cell=args.ancestral_samples, ddim_steps=args.ddim_steps)
        report["sampler_timing"] = timing
        print(f"sampling {len(test)} MATR1 cells x {args.ancestral_samples}: ancestral {timing['ancestral']['curves_per_s']:.1f} "
              f"curves/s (RMSE {timing['ancestral']['rul_rmse_cycles']:.0f}), DDIM-{args.ddim_steps} "
              f"{timing['ddim']['curves_per_s']:.1f} curves/s (RMSE {timing['ddim']['rul_rmse_cycles']:.0f}): "
              f"{timing['ddim_speedup']:.1f}x")
    report["train_cpu_s"] = cpu_train
    report["train_cpu_min"] = cpu_train / 60
    report["wall_s"] = time.perf_counter() - wall0
    out = Path(args.out or ROOT / f"bench/results/degradation-{datetime.date.today().isoformat()}"
               f"{'-select' if args.select else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"training {cpu_train / 60:.1f} CPU min, total {report['wall_s'] / 60:.1f} min wall; written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

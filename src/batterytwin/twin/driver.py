"""The twin of a set of cells: one evaluation (a split or a cross-validation), its scores and time
series, and the output store.

A split is forecast by :func:`.forecast.forecast_split` (fit, correct, calibrate, forecast,
baselines), scored by :func:`.scoring.score`; one test cell's refits on growing windows come from
:func:`.series.time_series`.

Store ``{evaluation}.zarr``: ``soh_true`` [n, L]; ``soh_physics``, ``soh_hybrid``, ``soh_hybrid_lo``,
``soh_hybrid_hi``, ``soh_physics_lo``, ``soh_physics_hi`` [n, H]; ``life_true``, ``life_physics``
(+ ``_lo``/``_hi``), ``life_hybrid`` (+ ``_lo``/``_hi``), ``life_variance``, ``life_forest``,
``life_diffusion`` (+ ``_lo``/``_hi``) [n]; ``params``, ``param_sd`` [n, P]; ``fit_seconds``,
``fit_rmse`` [n]; ``status`` int8 [n] (0 ok, 1 excluded, 2 failed); ``censored``, ``evaluated`` int8;
the time series ``series_*`` of one cell; attributes: ``cell_names``, ``reasons``, ``param_names``,
``cycles_per_point``, ``fit_cycles``, ``eol_level``, ``metrics``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..cycling.curves import CurveSet
from ..cycling.life import cycle_life
from ..errors import InputError
from .fitting import Cells
from .forecast import forecast_split
from .physics import make_model
from .scoring import score
from .series import time_series


def metrics_life_true(test: Cells, series: dict, threshold: float) -> float:
    i = int(series["series_cell"][0])
    life, _ = cycle_life(test.cs.soh[i:i + 1], test.cs.valid_len[i:i + 1], test.cs.eol_rule, test.cs.cycles_per_point,
                         threshold)
    return float(life[0])


def cross_validate(cells: Cells, settings, folds: int) -> tuple[dict, dict]:
    """K-fold cross-validation by cell: (arrays for every cell from the fold that held it out, info)."""
    n = len(cells.cs)
    if n < 2 * folds:
        raise InputError(f"{cells.cs.source}: {n} cells are too few for {folds}-fold cross-validation")
    fold_of = np.random.default_rng([settings.seed, 3]).permutation(n) % folds
    merged: dict = {}
    infos = []
    last = None
    model = make_model(settings)  # built once (PyBaMM surrogate), shared by the folds
    for f in range(folds):
        te, tr = np.flatnonzero(fold_of == f), np.flatnonzero(fold_of != f)
        run = forecast_split(cells.subset(tr), cells.subset(te), settings, model=model)
        if run.get("interrupted"):
            return run, {}
        last = run
        infos.append(run["info"])
        for k, v in run["arrays"].items():
            if k == "reasons":
                merged.setdefault(k, [""] * n)
                for j, i in enumerate(te):
                    merged[k][i] = v[j]
                continue
            v = np.asarray(v)
            if k not in merged:
                merged[k] = np.full((n, *v.shape[1:]), np.nan if v.dtype.kind == "f" else 0, v.dtype)
            merged[k][te] = v
    info = {**infos[0], "folds": folds, "fold_info": infos,
            "surrogate_build_seconds": float(sum(i["surrogate_build_seconds"] for i in infos)),
            "correction_train_seconds": float(sum(i["correction_train_seconds"] for i in infos))}
    return {"arrays": merged, "info": info, "last": last}, {}


def run_evaluation(train: Cells | None, test: Cells, settings, diffusion: dict | None = None,
                   checkpoint=None) -> dict:
    """One evaluation (``train`` None: cross-validation on ``test``): arrays, metrics, series."""
    t0 = time.perf_counter()
    if train is None:
        run, _ = cross_validate(test, settings, settings.folds)
        series_run = run.get("last")
        series_cells = None
    else:
        run = forecast_split(train, test, settings, checkpoint)
        series_run, series_cells = run, test
    if run.get("interrupted"):
        return run
    metrics, arrays = score(run["arrays"], test.cs, settings, diffusion)
    metrics["run"] = run["info"]
    series = {}
    if series_cells is not None:
        series = time_series(series_run, series_cells, settings)
        if series:
            w = series["series_life_hi"] - series["series_life_lo"]
            metrics["series"] = {"cell": test.cs.names[int(series["series_cell"][0])],
                                 "window_cycles": series["series_window_cycles"].tolist(),
                                 "life_interval_width_cycles": w.tolist(),
                                 "life_pred_cycles": series["series_life"].tolist(),
                                 "life_true_cycles": metrics_life_true(test, series, settings.threshold),
                                 "physics_life_pred_cycles": series["series_physics_life"].tolist(),
                                 "physics_life_interval_width_cycles": (series["series_physics_life_hi"]
                                                                        - series["series_physics_life_lo"]).tolist(),
                                 "fit_seconds": series["series_fit_seconds"].tolist(),
                                 "nfev": series["series_nfev"].tolist()}
    metrics["wall_seconds"] = time.perf_counter() - t0
    return {"arrays": arrays, "metrics": metrics, "series": series}


def write_outputs(result: dict, test: CurveSet, out: Path, metrics_path: Path | None, params: dict) -> None:
    """The store (``out``) and the metrics JSON of one evaluation."""
    from ..cycling.store import write_store
    from ..distributed import World
    from ..store import json_safe, provenance, write_json

    arrays = {k: np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f" else None)
              for k, v in {**result["arrays"], **result["series"]}.items() if k != "reasons"}
    arrays = {k: (v.astype(np.int8) if v.dtype == bool else v) for k, v in arrays.items()}
    m = result["metrics"]
    attrs = {**provenance("twin", params), "cell_names": list(test.names), "reasons": list(result["arrays"]["reasons"]),
             "param_names": m["run"]["param_names"], "cycles_per_point": int(test.cycles_per_point),
             "fit_cycles": m["fit_cycles"], "eol_rule": m["eol_rule"], "eol_level_percent": m["run"]["eol_level_percent"],
             "interval_level": m["interval_level"], "metrics": m}
    write_store(Path(out), arrays, json_safe(attrs), World())
    if metrics_path is not None:
        write_json(metrics_path, m)

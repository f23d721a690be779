"""``batterytwin twin``: the hybrid digital twin of real cells (fit, correct, forecast, score)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..cliargs import InputsOutputs, add_settings, arrange
from ..config import settings_from_args
from ..errors import InputError
from .config import TwinConfig

log = logging.getLogger(__name__)


def _stress(path: Path, n: int, use: bool) -> np.ndarray:
    """Temperature stress per cell from a DiffBatt split's ``aux`` (column 5: temperature in C)."""
    from .physics import temperature_stress

    if not use:
        return np.ones(n)
    with np.load(path, allow_pickle=False) as d:
        if "aux" not in d.files or d["aux"].ndim != 2 or d["aux"].shape[1] < 6:
            return np.ones(n)
        t = np.asarray(d["aux"][:, 5], np.float64)
    return temperature_stress(np.where(np.isfinite(t) & (t > -60) & (t < 100), t, 25.0))


def load_cells(npz: list[str], user_dirs: list[str], settings: TwinConfig):
    """The cells of ``npz`` splits and/or generic-format directories (docs/degradation.md), concatenated."""
    from ..cycling.curves import concat
    from ..cycling.loaders import load_npz_split, load_user_dir
    from .driver import Cells

    sets, stress = [], []
    for p in npz:
        cs = load_npz_split(p, settings.eol_rule)
        sets.append(cs)
        stress.append(_stress(Path(p), len(cs), settings.empirical.stress))
    for d in user_dirs:
        cs = load_user_dir(d, eol_rule=settings.eol_rule or "threshold")
        sets.append(cs)
        stress.append(np.ones(len(cs)))
    if not sets:
        return None
    cs = concat(sets) if len(sets) > 1 else sets[0]
    return Cells(cs, np.concatenate(stress))


def read_diffusion(path: str, n: int, eol_rule: str, threshold: float, cells=None) -> dict:
    """Life predictions of the diffusion model's store of the same evaluation (aligned by cell), after
    checking that the store read the lives of these cells (``cells``: the test CurveSet) by the same
    end-of-life rule and threshold (one line, exit 2)."""
    from ..cycling.store import read_lives

    return read_lives(path, n, eol_rule, threshold, cells=cells)


def run_twin(args) -> int:
    from ..cycling.curves import check_distinct_cells
    from ..distributed import get_world
    from ..training import preempted
    from .driver import run_evaluation, write_outputs

    settings = settings_from_args(args, TwinConfig, "twin")
    train = load_cells(args.train, args.train_user_dir, settings)
    test = load_cells(args.test, args.test_user_dir, settings)
    if test is None:
        if train is None:
            raise InputError("no data: give --train (and --test) NPZ files or user directories")
        train, test = None, train  # cross-validation on the training cells
        log.info("no test split: %d-fold cross-validation over %d cells", settings.folds, len(test.cs))
    check_distinct_cells({"--train": train.cs if train is not None else None, "--test": test.cs})
    if train is not None and train.cs.eol_rule != test.cs.eol_rule:
        raise InputError(f"{test.cs.source}: end-of-life rule {test.cs.eol_rule!r} differs from the training cells' "
                         f"({train.cs.eol_rule!r}): set twin.eol_rule")
    diffusion = (read_diffusion(args.diffusion, len(test.cs), test.cs.eol_rule, settings.threshold, test.cs)
                 if args.diffusion else None)
    result = run_evaluation(train, test, settings, diffusion, Path(args.checkpoint) if args.checkpoint else None)
    if result.get("interrupted"):
        return preempted("twin", result["step"], settings.correction.steps, args.checkpoint, get_world())
    params = {"train": args.train, "test": args.test, "train_user_dir": args.train_user_dir,
              "test_user_dir": args.test_user_dir, "diffusion": args.diffusion, **settings.model_dump()}
    write_outputs(result, test.cs, Path(args.out), Path(args.metrics) if args.metrics else None, params)
    m = result["metrics"]
    brief = {k: m[k]["rul_rmse_cycles"] for k in ("physics", "hybrid", "diffusion", "variance_model", "random_forest")}
    log.info("RUL RMSE (cycles, %s rule, %d cells): %s", m["eol_rule"], m["n_evaluated"],
             ", ".join(f"{k} {v:.0f}" if v is not None and v == v else f"{k} -" for k, v in brief.items()))
    print(json.dumps({k: (v if v is not None and v == v else None) for k, v in brief.items()}))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "twin", help="hybrid digital twin of real cells: physics fit + learned correction, SOH/RUL forecasts",
        description="Fit a reduced ageing model (semi-empirical, or PyBaMM SPM+SEI through a surrogate) to each "
                    "cell's early cycles, train an MLP across the training cells on the physics residual, and "
                    "forecast SOH to end of life with an interval (fit covariance + split conformal) and RUL; "
                    "scored next to the variance model, a random forest and (with --diffusion) the diffusion "
                    "model on the same cells and end-of-life rule. Without --test: cross-validation by cell "
                    "over --train. See docs/twin.md.")
    io = InputsOutputs(p)
    io.add("--train", nargs="+", default=[], metavar="NPZ", help="training split(s) (DiffBatt .npz)")
    io.add("--test", nargs="+", default=[], metavar="NPZ", help="test split(s); none: cross-validation")
    io.add("--train-user-dir", nargs="+", default=[], metavar="DIR",
           help="training cells in the generic format (docs/degradation.md)")
    io.add("--test-user-dir", nargs="+", default=[], metavar="DIR", help="test cells in the generic format")
    io.add("--diffusion", default=None, metavar="ZARR",
           help="the degradation_real prediction store of the same evaluation (scored on the same cells)")
    io.output("out", metavar="ZARR", old=("--out",), help="output store (twin.zarr)")
    io.add("--metrics", default=None, metavar="JSON", help="metrics JSON")
    p.add_argument("--checkpoint", default=None, help="checkpoint of the correction training (resumed when present)")
    add_settings(p, TwinConfig, "twin", flags={
        "--physics": "physics", "--fit-cycles": "fit_cycles", "--eol-rule": "eol_rule", "--folds": "folds",
        "--seed": "seed", "--level": "level", "--steps": "correction.steps", "--threads": "correction.threads"})
    arrange(p, common=("--physics", "--fit-cycles", "--eol-rule", "--threads", "--checkpoint"))
    p.set_defaults(func=run_twin)

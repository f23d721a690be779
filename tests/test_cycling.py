"""The cycling core (:mod:`batterytwin.cycling`) against independent references: hand-computed scores,
conformal quantiles against numpy's inverted CDF, the end-of-life rule on hand-made and real curves
(data/cycling), the baselines through ``.fit`` against the figures of main, seeded splits, the store
check, and the import boundary between the diffusion stage and the twin."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from batterytwin.cycling import baselines, conformal, life, scores, split
from batterytwin.cycling.loaders import load_npz_split
from batterytwin.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
CYCLING = ROOT / "data/cycling"
SRC = ROOT / "src/batterytwin"


# ------------------------------------------------------------------ end-of-life rule
def test_cycle_life_rules_and_variance_baseline():
    soh = np.array([[100, 95, 85, 81, np.nan, np.nan],      # MATR-like: stopped above 80
                    [100, 90, 82, 79, 70, np.nan],          # crosses at point 3
                    [100, 99, 98, 97, 96, 95]], float)       # no crossing, full length: censored
    length = np.array([4, 5, 6])
    lives, cens = life.cycle_life(soh, length, "end_of_record", 10)
    np.testing.assert_array_equal(lives, [40, 50, 60])
    np.testing.assert_array_equal(cens, [False, False, True])
    lives, cens = life.cycle_life(soh, length, "threshold", 10)
    np.testing.assert_array_equal(lives, [40, 30, 60])
    np.testing.assert_array_equal(cens, [True, False, True])
    # the variance model recovers an exact log-linear law
    rng = np.random.default_rng(0)
    q = np.zeros((20, 100, 30))
    amp = rng.uniform(0.01, 0.1, 20)
    q[:, 99] = amp[:, None] * rng.normal(size=(20, 30))
    lives = 10 ** (1.0 - 0.5 * baselines.variance_feature(q))
    m = baselines.VarianceModel().fit(q, lives)
    np.testing.assert_allclose(m.coef_, [-0.5, 1.0], atol=1e-8)
    assert scores.coverage(np.array([0, 5]), np.array([10, 6]), np.array([5, 7])) == 0.5


def test_forecast_crossing_and_level_hand_computed():
    curves = np.array([[100, 90, 79, 70, 60],     # below 80 at point 2
                       [100, 78, 85, 79, 70],     # point 1 is inside the fit window (start 2): point 3
                       [100, 99, 98, 97, 96]], float)
    lives, crossed = life.first_crossing(curves, 80.0, 2, 10)
    np.testing.assert_array_equal(lives, [20, 30, 50])       # no crossing: the horizon, 5 points
    np.testing.assert_array_equal(crossed, [True, True, False])
    soh = np.array([[100, 90, 84, np.nan], [100, 86, np.nan, np.nan], [100, 95, 90, 85]], float)
    # end_of_record: median SOH at the record ends, full-length records (the last) left out: median(84, 86)
    assert life.eol_level("end_of_record", 80.0, soh, np.array([3, 2, 4])) == 85.0
    assert life.eol_level("threshold", 75.0, soh, np.array([3, 2, 4])) == 75.0
    assert life.default_eol_rule("x/MATR_1_test.npz") == "end_of_record"
    assert life.default_eol_rule("x/hust_train.npz") == "threshold"


def test_diffbatt_convention_on_real_cells():
    """SNL: full records that never reach 80 % score 2560 cycles; crossing cells score their crossing;
    MATR test cells (records stop above 80 %) score their record length."""
    snl = load_npz_split(CYCLING / "snl_train.npz")
    lives, cens = life.cycle_life(snl.soh, snl.valid_len, "threshold", 10)
    db = life.diffbatt_life(snl.soh, snl.valid_len, 10)
    full = cens & (snl.valid_len == 256)
    assert full.any()
    np.testing.assert_array_equal(db[full], 2560)
    np.testing.assert_array_equal(db[~cens], lives[~cens])
    short = cens & (snl.valid_len < 256)          # record ends above 80 %: DiffBatt's padding ends the life there
    np.testing.assert_array_equal(db[short], snl.valid_len[short] * 10)
    m2 = load_npz_split(CYCLING / "matr_2_test.npz")
    np.testing.assert_array_equal(life.diffbatt_life(m2.soh, m2.valid_len, 10), m2.valid_len * 10)


# ------------------------------------------------------------------ scores
def test_concordance_index_hand_computed():
    time = np.array([2.0, 4.0, 6.0, 8.0])
    event = np.array([True, False, True, True])
    # comparable pairs (i observed, t_i < t_j): (0,1) (0,2) (0,3) (2,3)
    assert scores.concordance_index(time, np.array([1.0, 3, 2, 5]), event) == 1.0
    assert scores.concordance_index(time, np.array([3.0, 1, 2, 5]), event) == 0.5     # (0,3) (2,3)
    assert scores.concordance_index(time, np.array([2.0, 1, 2, 5]), event) == 0.625   # + a tie (0,2)
    assert math.isnan(scores.concordance_index(time, time, np.zeros(4, bool)))


def test_censoring_scores_hand_computed():
    pred = np.array([100.0, 300.0, 500.0, 700.0])
    true = np.array([150.0, 300.0, 600.0, 650.0])   # cells 2, 3 censored: lower bounds
    cens = np.array([False, False, True, True])
    c = scores.censoring_scores(pred, true, cens)
    assert c["n_censored"] == 2 and c["n_censored_pred_below_bound"] == 1
    assert c["censored_shortfall_rmse_cycles"] == pytest.approx(math.sqrt((100.0 ** 2 + 0.0) / 2))
    assert c["censoring_aware_rmse_cycles"] == pytest.approx(math.sqrt((50.0 ** 2 + 0 + 100.0 ** 2 + 0) / 4))


def test_rmse_coverage_interval_and_curve_scores_hand_computed():
    assert scores.rmse(np.array([1.0, 2, 10]), np.array([4.0, 6, 0]), np.array([True, True, False])) == \
        pytest.approx(math.sqrt((9 + 16) / 2))
    assert math.isnan(scores.rmse(np.ones(2), np.ones(2), np.zeros(2, bool)))
    assert scores.coverage(np.array([0, 5, 0]), np.array([10, 6, 1]), np.array([10, 7, 5]), np.array([1, 1, 0])) == 0.5
    s = scores.interval_summary(np.array([[10.0, 20, 30, 40, 50]]), 0.5)      # quartiles (linear): 20, 40
    assert (s["median"][0], s["lo"][0], s["hi"][0]) == (30.0, 20.0, 40.0)
    true = np.array([[100.0, 90, 80, np.nan]])
    pred = np.array([[101.0, 88, 80, 0.0]])       # the point after the record (length 3) is not scored
    assert scores.curve_rmse(pred, true, np.array([3])) == pytest.approx(math.sqrt((1 + 4 + 0) / 3))


# ------------------------------------------------------------------ conformal calibration
def test_conformal_quantile_hand_computed():
    s = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 1.0, 0.4, 0.8, 0.6])  # n = 10
    assert conformal.conformal_quantile(s, 0.9) == 1.0   # ceil(11 * 0.9) = 10th smallest
    assert conformal.conformal_quantile(s, 0.8) == 0.9   # ceil(8.8) = 9th
    assert conformal.conformal_quantile(s, 0.5) == 0.6   # ceil(5.5) = 6th
    assert conformal.conformal_quantile(s[:5], 0.9) == math.inf  # ceil(5.4) = 6 > 5: too few cells
    # n = 9, level 0.7: (n + 1) level = 7 exactly, though 10 * 0.7 = 7.000000000000001 in floating point
    # (both earlier copies took the 8th, 0.9): the 7th smallest of 0.1 0.2 0.3 0.4 0.5 0.7 0.8 0.9 1.0
    assert conformal.conformal_quantile(s[:9], 0.7) == 0.8


@pytest.mark.parametrize("level", [0.1, 0.5, 0.7, 0.8, 0.9, 0.95])
def test_conformal_quantile_is_numpys_inverted_cdf(level):
    """The k-th smallest score, k = ceil((n + 1) level), is numpy's inverted-CDF quantile at any p in
    ((k - 1) / n, k / n] (the empirical inverse CDF is constant there). Asked at the midpoint: at p = k / n
    itself numpy computes n * p in floating point and can land on k + 4e-15 (numpy 2.4: n = 29, level 0.5),
    returning the (k + 1)-th. Ties and negative scores included; k > n is infinite."""
    rng = np.random.default_rng(int(level * 100))
    for n in range(1, 120):
        s = np.round(rng.normal(size=n), 1)   # rounding makes ties
        k = math.ceil(round((n + 1) * level, 9))
        q = conformal.conformal_quantile(s, level)
        if k > n:
            assert q == math.inf
        else:
            assert q == np.quantile(s, (k - 0.5) / n, method="inverted_cdf"), (n, k)


def test_conformal_quantile_counts_a_nan_score_as_a_miss():
    """A calibration cell that could not be scored stays in n as +inf (conservative): 9 finite scores and a
    NaN at level 0.9 ask for the 10th of 10, the NaN: infinite. Dropping it (the twin's former copy) would
    have returned the 9th of 9, the largest finite score."""
    s = np.append(np.arange(1.0, 10.0), np.nan)
    assert conformal.conformal_quantile(s, 0.9) == math.inf
    assert conformal.conformal_quantile(s, 0.8) == 9.0        # ceil(8.8) = 9th: the largest finite score
    assert conformal.conformal_quantile(np.zeros(0), 0.9) == math.inf


def test_split_conformal_coverage_is_the_analytic_value():
    """Exchangeable scores: P(score_test <= q) = ceil((n+1) level) / (n+1) exactly (Vovk et al. 2005);
    with n = 19, level 0.9: 18/20 = 0.90. Monte Carlo over 4000 draws (std 0.005)."""
    rng = np.random.default_rng(0)
    n, trials = 19, 4000
    hits = 0
    for _ in range(trials):
        s = rng.standard_exponential(n + 1)
        hits += s[-1] <= conformal.conformal_quantile(s[:-1], 0.9)
    assert abs(hits / trials - 18 / 20) < 0.02


def test_interval_scores_and_interval_in_ln_remaining_life():
    lo, hi, y = np.array([100.0, 200.0]), np.array([400.0, 300.0]), np.array([50.0, 600.0])
    s = conformal.interval_scores(lo, hi, y)
    np.testing.assert_allclose(s, [math.log(2), math.log(2)])  # 100/50 below, 600/300 above
    a, b = conformal.conformal_interval(lo, hi, float(s.max()))
    np.testing.assert_allclose(a, [50, 100])
    np.testing.assert_allclose(b, [800, 600])
    # after 100 observed cycles the scores are on the remaining life: 200..400 remaining, truth 600 remaining
    s = conformal.interval_scores(np.array([300.0]), np.array([500.0]), np.array([700.0]), seen=100.0)
    assert s[0] == pytest.approx(math.log(600 / 400))
    a, b = conformal.conformal_interval(np.array([300.0]), np.array([500.0]), float(s[0]), seen=100.0)
    assert (a[0], b[0]) == (pytest.approx(100 + 200 / 1.5), pytest.approx(700.0))
    a, b = conformal.conformal_interval(lo, hi, math.inf)           # too few calibration cells
    assert np.all(a == 0) and np.all(np.isinf(b))


# ------------------------------------------------------------------ baselines through .fit
# The figures of main (7591428), computed there by
# degradation.predict.fit_baselines(payload) -- the model-file path that set coef_ and model_ by hand --
# on a payload built as train.model_payload built it from data/cycling/matr_1_train.npz (every cell),
# predicting data/cycling/matr_1_test.npz (42 cells, end_of_record, none censored); for SNL on the
# even cells of snl_train.npz predicting its odd cells (threshold 80 %, 4 of 18 uncensored).
MAIN_FIGURES = {"matr1": {"variance_model": 127.89591596501643, "random_forest": 146.6474927943098,
                          "mean_curve": 380.8737600700311, "coef": [-0.35977744617191604, 1.486473886865303]},
                "snl": {"variance_model": 277.9165136066203, "random_forest": 286.02828822804685,
                        "mean_curve": 290.32220630030076, "coef": [-0.022005640442427848, 2.5008110895938875]}}


def _split(name):
    if name == "matr1":
        return load_npz_split(CYCLING / "matr_1_train.npz"), load_npz_split(CYCLING / "matr_1_test.npz")
    a = load_npz_split(CYCLING / "snl_train.npz")
    return a.subset(np.arange(0, len(a), 2)), a.subset(np.arange(1, len(a), 2))


@pytest.mark.parametrize("name", sorted(MAIN_FIGURES))
def test_baselines_through_fit_reproduce_the_figures_of_main(name):
    train, test = _split(name)
    lt, ct = life.cycle_life(train.soh, train.valid_len, test.eol_rule, 10)
    models = baselines.fit_baselines(train.qmatrix, lt, ct, 0, train.soh, train.valid_len)
    true, cens = life.cycle_life(test.soh, test.valid_len, test.eol_rule, 10)
    ref = MAIN_FIGURES[name]
    for key in ("variance_model", "random_forest", "mean_curve"):
        assert scores.rmse(models[key].predict(test.qmatrix), true, ~cens) == pytest.approx(ref[key], rel=1e-12), key
    np.testing.assert_allclose(models["variance_model"].coef_, ref["coef"], rtol=1e-12)


def test_fit_uses_uncensored_cells_only_and_needs_two():
    train, test = _split("snl")
    lt, ct = life.cycle_life(train.soh, train.valid_len, "threshold", 10)
    assert ct.any() and (~ct).sum() >= 2
    a = baselines.VarianceModel().fit(train.qmatrix, lt, ct)
    b = baselines.VarianceModel().fit(train.qmatrix[~ct], lt[~ct])
    np.testing.assert_array_equal(a.coef_, b.coef_)
    f1 = baselines.ForestModel(n_estimators=20, seed=3).fit(train.qmatrix, lt, ct).predict(test.qmatrix)
    f2 = baselines.ForestModel(n_estimators=20, seed=3).fit(train.qmatrix[~ct], lt[~ct]).predict(test.qmatrix)
    np.testing.assert_array_equal(f1, f2)
    m = baselines.MeanCurveModel().fit(train.qmatrix, lt, ct, train.soh, train.valid_len)
    assert m.predict(test.qmatrix[:3]).tolist() == [np.mean(lt[~ct])] * 3
    soh, length = m.predict_curves(2)
    assert soh.shape == (2, 256) and length.tolist() == [int(np.median(train.valid_len))] * 2
    with pytest.raises(InputError, match="1 uncensored training cell"):
        baselines.VarianceModel().fit(train.qmatrix[:2], np.array([100.0, 200.0]), np.array([False, True]))
    only_one = baselines.fit_baselines(train.qmatrix[:2], np.array([100.0, 200.0]), np.array([False, True]))
    assert set(only_one) == {"mean_curve"} and only_one["mean_curve"].predict(test.qmatrix[:1])[0] == 100.0


def test_forest_features_are_idempotent_on_their_grid():
    """What lets a model file written by an older batterytwin (forest_x only) refit the same forest."""
    q = np.random.default_rng(0).normal(size=(3, 100, 50)).astype(np.float32)
    r, v = baselines.forest_grid(100, 50)
    x = baselines.forest_features(q)
    assert x.shape == (3, len(r) * len(v)) == (3, 400)
    np.testing.assert_array_equal(baselines.forest_features(x.reshape(3, len(r), len(v))), x)


def test_all_zero_capacity_matrices_are_excluded_and_named():
    snl = load_npz_split(CYCLING / "snl_train.npz")
    raw = np.load(CYCLING / "snl_train.npz")["qmatrix"]
    zero = [i for i in range(len(raw)) if not raw[i].any()]
    assert zero == [2, 17, 33] and len(snl) == len(raw) - 3
    assert [e.split(":")[0] for e in snl.excluded] == [f"snl_train[{i}]" for i in zero]
    assert not np.all(snl.qmatrix == 0, axis=(1, 2)).any()
    with pytest.raises(InputError, match="identical capacity-matrix rows 9 and 19"):
        baselines.variance_feature(raw[zero])
    # the 20-row matrices use Q_20 - Q_10 (rows 9, 19); 100 rows: Q_100 - Q_10
    assert baselines.variance_rows(20) == (9, 19) and baselines.variance_rows(100) == (9, 99)
    dq = raw[0, 19].astype(np.float64) - raw[0, 9]
    assert baselines.variance_feature(raw[:1])[0] == pytest.approx(math.log10(np.var(dq)))


# ------------------------------------------------------------------ splits
def test_calibration_split_sizes():
    flags = split.calibration_split(41, 0.35, 0, 9)
    assert flags.sum() == 14 and flags.dtype == bool               # round(0.35 * 41)
    assert split.calibration_split(12, 0.35, 0, 9).sum() == 0      # 4 < 9: too few to calibrate, all cells train
    assert split.calibration_split(12, 0.35, 0, 1).sum() == 4
    assert split.calibration_split(10, 0.9, 0, 1).sum() == 8       # at least 2 cells stay in training
    cal, proper = split.calibration_subset(np.array([0, 2, 3, 5, 8, 9]), 0.25, 0)
    assert len(cal) == 2 and len(proper) == 4                      # max(2, round(1.5))
    assert sorted([*cal, *proper]) == [0, 2, 3, 5, 8, 9]


def test_calibration_splits_depend_only_on_the_seed():
    """The same (seed, cells) give the same split whatever the global RNG states (numpy, random, torch)
    and the calls before; another seed gives another split."""
    import random

    import torch

    usable = np.array([1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 17])
    first = split.calibration_split(41, 0.35, 0, 9), split.calibration_subset(usable, 0.25, 3)
    for state in (1, 2):
        np.random.seed(state)
        random.seed(state)
        torch.manual_seed(state)
        np.random.random(state)
        again = split.calibration_split(41, 0.35, 0, 9), split.calibration_subset(usable, 0.25, 3)
        np.testing.assert_array_equal(again[0], first[0])
        np.testing.assert_array_equal(again[1][0], first[1][0])
        np.testing.assert_array_equal(again[1][1], first[1][1])
    assert not np.array_equal(split.calibration_split(41, 0.35, 1, 9), first[0])
    assert not np.array_equal(split.calibration_subset(usable, 0.25, 4)[0], first[1][0])


# ------------------------------------------------------------------ stores
def test_reading_a_store_checks_the_end_of_life_rule(tmp_path):
    from batterytwin.cycling.store import read_lives, write_store
    from batterytwin.distributed import World

    lives = {k: np.array([100.0, 200.0, 300.0], np.float32) for k in ("life_pred", "life_lo", "life_hi")}
    write_store(tmp_path / "d.zarr", lives, {"eol_rule": "threshold", "threshold_percent": 80.0}, World())
    got = read_lives(tmp_path / "d.zarr", 3, "threshold", 80.0)
    np.testing.assert_array_equal(got["life_pred"], [100, 200, 300])
    for args, message in (((3, "end_of_record", 80.0), "end-of-life rule 'threshold'"),
                          ((3, "threshold", 75.0), "threshold 80.0 %"),
                          ((4, "threshold", 80.0), "3 cells, the test split has 4")):
        with pytest.raises(InputError, match=message) as err:
            read_lives(tmp_path / "d.zarr", *args)
        assert str(tmp_path / "d.zarr") in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------ import boundary
def _imports(path: Path, package: str) -> set[str]:
    """Absolute module names imported by a module of ``package`` (relative imports resolved; ``from x
    import y`` counts as importing ``x`` and ``x.y``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("stage, forbidden", [("degradation", ("twin",)), ("twin", ("degradation",)),
                                              ("cycling", ("degradation", "twin"))])
def test_stages_meet_only_through_stores(stage, forbidden):
    """degradation/ and twin/ import nothing from each other (at module level or inside functions);
    cycling/ imports neither."""
    files = sorted((SRC / stage).rglob("*.py"))
    assert files
    bad = [f"{f.relative_to(SRC)}: {name}" for f in files for name in sorted(_imports(f, f"batterytwin.{stage}"))
           if any(name == f"batterytwin.{o}" or name.startswith(f"batterytwin.{o}.") for o in forbidden)]
    assert not bad, bad


def test_the_import_reader_resolves_relative_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from ..twin.driver import x\nfrom . import data\nimport batterytwin.twin\n"
                 "def g():\n    from ..cycling import life\n")
    got = _imports(f, "batterytwin.degradation")
    assert {"batterytwin.twin.driver", "batterytwin.degradation.data", "batterytwin.twin",
            "batterytwin.cycling.life"} <= got

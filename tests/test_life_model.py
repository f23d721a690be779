"""The default life predictor (:mod:`batterytwin.cycling.life_model`) against independent references:
an analytic case (log life exactly linear in Severson's variance feature), the conformal coverage of
its interval against the nominal level on fresh cells of a known noise law, and real cells (data/cycling:
MATR train -> MATR test) against the two baselines fitted on the same cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batterytwin.cycling.baselines import ForestModel, VarianceModel
from batterytwin.cycling.life import cycle_life
from batterytwin.cycling.life_model import MIN_CELLS, LifeModel
from batterytwin.cycling.loaders import load_npz_split
from batterytwin.cycling.scores import coverage, rmse
from batterytwin.errors import InputError

CYCLING = Path(__file__).resolve().parents[1] / "data/cycling"
FAST = ("variance", "ridge", "extra_trees")  # a second or two per fit on 40 cells
LINEAR = ("variance", "ridge")


def severson_cells(n: int, sigma: float, seed: int, rows: int = 30, volts: int = 40):
    """Capacity matrices whose Q_hi - Q_lo is an amplitude times one voltage shape, and lives with
    log10(life) = 3.4 - 0.5 log10 var_V(Q_hi - Q_lo) + N(0, sigma) (Severson's variance law)."""
    rng = np.random.default_rng(seed)
    v = np.linspace(0.0, 1.0, volts)
    shape = np.exp(-((v - 0.6) / 0.12) ** 2)
    amp = 10 ** rng.uniform(-3.0, -1.5, n)
    q = np.zeros((n, rows, volts))
    q[:, 9:] = (amp[:, None] * shape[None, :])[:, None, :] * np.linspace(0, 1, rows - 9)[None, :, None]
    x = np.log10(np.var(q[:, -1] - q[:, 9], axis=1))
    life = 10 ** (3.4 - 0.5 * x + rng.normal(0.0, sigma, n) - 2.0)
    return q, life


def test_noise_free_variance_law_is_recovered():
    """No noise: the variance member is exact; the ensemble predicts fresh cells to within 2 %."""
    q, life = severson_cells(40, 0.0, seed=1)
    qt, lt = severson_cells(30, 0.0, seed=2)
    m = LifeModel(members=FAST, seed=0, combine="stack").fit(q, life)
    assert m.describe()["members"]["variance"]["weight"] > 0.5
    assert np.max(np.abs(m.predict(qt) / lt - 1)) < 0.02
    d = m.describe()
    assert d["contains_baselines"] == ["variance_model"]


def test_interval_covers_at_the_nominal_level():
    """Lognormal scatter around the law: the cross-conformal 90 % interval covers 0.90 +- 0.05 of 2000
    fresh cells (averaged over 4 training sets), and the point prediction's log error is near sigma."""
    covers, errors = [], []
    for seed in range(4):
        q, life = severson_cells(60, 0.08, seed=10 + seed)
        qt, lt = severson_cells(500, 0.08, seed=100 + seed)
        point, lo, hi = LifeModel(members=LINEAR, level=0.9, seed=seed).fit(q, life).predict_interval(qt)
        covers.append(coverage(lo, hi, lt))
        errors.append(np.std(np.log10(point / lt)))
    assert abs(np.mean(covers) - 0.9) < 0.05
    assert np.mean(errors) < 0.08 * 1.15


def test_censored_cells_are_left_out_and_too_few_cells_is_an_error():
    q, life = severson_cells(12, 0.05, seed=3)
    censored = np.zeros(12, bool)
    censored[:4] = True
    a = LifeModel(members=LINEAR, seed=0).fit(q, life, censored)
    b = LifeModel(members=LINEAR, seed=0).fit(q[4:], life[4:])
    np.testing.assert_allclose(a.predict(q), b.predict(q))
    censored[: 12 - MIN_CELLS + 1] = True
    with pytest.raises(InputError, match="uncensored training cell"):
        LifeModel(members=LINEAR).fit(q, life, censored)
    with pytest.raises(InputError, match="capacity matrix"):
        a.predict(q[:, :-1])


def test_same_seed_same_numbers_other_seed_other_folds():
    q, life = severson_cells(30, 0.1, seed=4)
    a = LifeModel(members=FAST, seed=7).fit(q, life)
    b = LifeModel(members=FAST, seed=7).fit(q, life)
    np.testing.assert_array_equal(a.predict(q), b.predict(q))
    assert a.describe() == b.describe()
    c = LifeModel(members=LINEAR, seed=8).fit(q, life)
    assert not np.array_equal(a.oof_log_[:, :2], c.oof_log_)  # other folds


def test_real_cells_beat_both_baselines_on_the_matr_test_file():
    """MATR1 (DiffBatt split; rule end_of_record): the default ensemble, fitted on matr_1_train, against the
    Severson variance model and the random forest fitted on the same cells, scored on matr_1_test.
    Measured: ensemble 86 cycles (90 % interval coverage 1.00), variance 128, forest 147
    (bench/degradation.py has every split)."""
    tr, te = load_npz_split(CYCLING / "matr_1_train.npz"), load_npz_split(CYCLING / "matr_1_test.npz")
    life, cens = cycle_life(tr.soh, tr.valid_len, tr.eol_rule, tr.cycles_per_point)
    truth, tcens = cycle_life(te.soh, te.valid_len, te.eol_rule, te.cycles_per_point)
    keep = ~tcens
    stack = LifeModel(seed=0).fit(tr.qmatrix, life, cens)
    var = VarianceModel().fit(tr.qmatrix, life, cens)
    forest = ForestModel(seed=0).fit(tr.qmatrix, life, cens)
    best_baseline = min(rmse(var.predict(te.qmatrix), truth, keep), rmse(forest.predict(te.qmatrix), truth, keep))
    assert rmse(stack.predict(te.qmatrix), truth, keep) < 0.85 * best_baseline
    point, lo, hi = stack.predict_interval(te.qmatrix)
    assert coverage(lo, hi, truth, keep) >= 0.8

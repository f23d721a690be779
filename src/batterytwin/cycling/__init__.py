"""Real cycling data and its scoring: the core the diffusion model (:mod:`batterytwin.degradation`) and the
hybrid twin (:mod:`batterytwin.twin`) both build on. It imports neither; they import nothing from each
other and meet only through prediction stores (:mod:`.store`).

- :mod:`.curves`: :class:`~.curves.CurveSet` (SOH curves + early-cycle capacity matrices), ``concat``,
  the all-zero-condition filter, resampling, the mean of sampled curves.
- :mod:`.loaders`: DiffBatt ``.npz`` splits (SHA-256 checked), the generic user format, the shipped data
  directory :data:`~.loaders.SHIPPED_DATA`.
- :mod:`.life`: the end-of-life rule (``cycle_life``; ``first_crossing``/``eol_level`` for forecasts;
  DiffBatt's convention), :data:`~.life.DEFAULT_THRESHOLD`.
- :mod:`.scores`: RMSE, coverage, interval summary, curve RMSE, censoring scores, C-index.
- :mod:`.conformal`: the one split-conformal quantile, CQR scores (ln remaining life), the widened interval.
- :mod:`.baselines`: Severson variance model, random forest, mean curve (``.fit``/``.predict``).
- :mod:`.split`: seeded training/calibration splits.
- :mod:`.store`: writing prediction stores, reading another stage's lives with the rule checked.

See ``docs/degradation.md`` ("Where things live").
"""

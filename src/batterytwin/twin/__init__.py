"""Hybrid digital twin of real cells: a reduced ageing model fitted per cell + a learned correction.

- :mod:`.config`: the ``twin`` settings; :mod:`.physics`: semi-empirical and PyBaMM models, the fit;
- :mod:`.correction`: the residual MLP (training harness);
- :mod:`.fitting`: per-cell fits; :mod:`.hybrid`: the correction's training data and the hybrid forecasts;
  :mod:`.calibration`: split-conformal intervals; :mod:`.forecast`: one split, fit to baselines;
- :mod:`.scoring`: the metrics; :mod:`.series`: one cell's refits on growing windows;
- :mod:`.driver`: one evaluation (split or cross-validation) and the store; :mod:`.cli`: ``batterytwin twin``.

Curve sets, loaders, the end-of-life rule (``first_crossing``/``eol_level`` of forecasts included),
scores, conformal calibration, the baselines and the store writer come from :mod:`batterytwin.cycling`;
nothing is imported from :mod:`batterytwin.degradation` (the diffusion model's store is read as a store).

See ``docs/twin.md``.
"""

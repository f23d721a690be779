"""Hybrid digital twin of real cells: a reduced ageing model fitted per cell + a learned correction.

- :mod:`.config`: the ``twin`` settings; :mod:`.physics`: semi-empirical and PyBaMM models, the fit;
- :mod:`.correction`: the residual MLP (training harness);
- :mod:`.driver`: fit, correct, forecast, score, store; :mod:`.cli`: ``batterytwin twin``.

Curve sets, loaders, the end-of-life rule (``first_crossing``/``eol_level`` of forecasts included),
scores, conformal calibration, the baselines and the store writer come from :mod:`batterytwin.cycling`;
nothing is imported from :mod:`batterytwin.degradation` (the diffusion model's store is read as a store).

See ``docs/twin.md``.
"""

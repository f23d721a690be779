"""Hybrid digital twin of real cells: a reduced ageing model fitted per cell + a learned correction.

- :mod:`.config`: the ``twin`` settings; :mod:`.physics`: semi-empirical and PyBaMM models, the fit;
- :mod:`.correction`: the residual MLP (training harness); :mod:`.forecast`: life, conformal pieces;
- :mod:`.driver`: fit, correct, forecast, score, store; :mod:`.cli`: ``batterytwin twin``.

See ``docs/twin.md``.
"""

"""Battery degradation: a DiffBatt-style conditional diffusion model over capacity-fade curves.

Modules (pure core first, drivers last):

- :mod:`.data`: :class:`~.data.CurveSet` (SOH curves + early-cycle capacity matrices) and its
  loaders: ``sweep.zarr`` (cellsim), DiffBatt ``.npz`` splits, the generic user format (CSV/NPZ).
- :mod:`.nets`: 1-D residual U-Net with attention, time embedding, transformer condition encoder.
- :mod:`.diffusion`: noise schedule, masked denoising loss, ancestral and DDIM samplers with
  classifier-free guidance.
- :mod:`.evaluate`: end-of-life/RUL rule, RMSE, prediction intervals and coverage.
- :mod:`.baselines`: Severson "variance" linear model and a random forest on the capacity matrix.
- :mod:`.train`: DDP training driver (checkpoint/resume, signals, EMA).
- :mod:`.predict`: inference driver (samples, intervals, metrics, synthetic curves -> store).
- :mod:`.cli`: ``batterytwin train-degradation`` and ``batterytwin predict-degradation``.

See ``docs/degradation.md``.
"""

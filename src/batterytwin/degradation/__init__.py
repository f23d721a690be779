"""Battery degradation: a DiffBatt-style conditional diffusion model over capacity-fade curves.

Modules (pure core first, drivers last):

- :mod:`.data`: cellsim ``sweep.zarr`` as a curve set (``load_sweep``, the seeded held-out split) and
  the network's curve encoding. Curve sets, the real-data loaders (DiffBatt ``.npz``, the generic user
  format), the end-of-life rule, scores, conformal calibration and the baselines are
  :mod:`batterytwin.cycling`, shared with the twin (nothing is imported from :mod:`batterytwin.twin`).
- :mod:`.basis`: the curve basis (training mean + principal components, log record length) in which the
  default model (``degradation.train.representation: basis``) diffuses, and its monotone decoding.
- :mod:`.nets`: the denoisers: a residual MLP over the basis coefficients (the default) or a 1-D residual
  U-Net with attention over the curve points (``representation: unet``); time embedding and the
  transformer encoder of the early-cycle capacity matrix (the condition).
- :mod:`.diffusion`: noise schedule, masked denoising loss, ancestral and DDIM samplers with
  classifier-free guidance.
- :mod:`.train`: DDP training driver (checkpoint/resume, signals, EMA).
- :mod:`.predict`: inference driver (samples, intervals, metrics, synthetic curves -> store).
- :mod:`.cli`: ``batterytwin train-degradation`` and ``batterytwin predict-degradation``.

See ``docs/degradation.md``.
"""

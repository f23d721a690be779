"""NLM denoising stage: fast 3-D non-local means (PyTorch CPU, fused Triton GPU) and a sharded driver.

Pure core (arrays in, arrays out): :func:`~batterytwin.denoise.nlm.nlm`,
:func:`~batterytwin.denoise.nlm.nlm_padded`, :func:`~batterytwin.denoise.nlm_triton.nlm_padded_triton`,
:func:`~batterytwin.denoise.sigma.estimate_sigma`, with parameters
:class:`~batterytwin.denoise.nlm_params.NLMParams`. Driver (stores in, stores out, ranks, resume):
:func:`~batterytwin.denoise.driver.denoise_store`. CLI: ``batterytwin denoise``.
"""

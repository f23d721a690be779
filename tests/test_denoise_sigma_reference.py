"""The whole-volume noise estimate against scikit-image's estimate_sigma (PyWavelets), same data."""

from __future__ import annotations

import pytest
from skimage.restoration import estimate_sigma as skimage_estimate_sigma

from batterytwin.denoise.sigma import estimate_sigma
from batterytwin.ingest.phantom import make_phantom


@pytest.mark.parametrize("shape,noise", [((48, 48, 48), 0.05), ((64, 64, 64), 0.02)])
def test_sigma_matches_skimage_on_the_phantom(shape, noise):
    image, _ = make_phantom(shape, seed=3, noise_sigma=noise)
    ours, reference = estimate_sigma(image), skimage_estimate_sigma(image)
    # skimage keeps the wavelet border coefficients, which bias small volumes slightly low
    assert abs(ours - reference) / reference < 0.05, (ours, reference)
    assert abs(ours - noise) / noise < 0.05

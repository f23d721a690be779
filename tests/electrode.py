"""A CT-imaged Li-ion electrode (pore / active material / carbon-binder), drawn by PoreSpy, imaged by tests/ctforward.py.

Not the project's geometry and not the pretraining's: a class set the shipped batteryNET never saw.

geometry
    active material: PoreSpy ``blobs`` (a smoothed Gaussian field thresholded to ``active_fraction``);
    carbon-binder domain: a finer ``blobs`` field kept where it lies within ``binder_reach`` voxels of
    the active material, thresholded so that it fills ``binder_fraction`` of the volume; pore: the rest.
image formation
    :func:`tests.ctforward.scan` (parallel-beam radon, detector blur, Poisson photons, filtered
    back-projection) with NMC-like active material far brighter than the binder, and the pore dark.

Example::

    image, labels = electrode_volume((48, 48, 48), seed=3)   # float32, uint8 (0 pore, 1 active, 2 binder)
"""

from __future__ import annotations

import numpy as np

from .ctforward import ForwardParams, scan

CLASSES = {0: "pore", 1: "active_material", 2: "binder"}
PORE, ACTIVE, BINDER = 0, 1, 2
ATTENUATION = {PORE: 0.0, ACTIVE: 1.0, BINDER: 0.3}


def electrode_labels(shape, seed: int = 0, active_fraction: float = 0.5, binder_fraction: float = 0.15,
                     blobiness: float = 1.0, binder_reach: float = 2.5) -> np.ndarray:
    """Labels (uint8; 0 pore, 1 active material, 2 binder) of a seeded electrode."""
    import porespy as ps
    from scipy import ndimage

    shape = [int(s) for s in shape]
    # porespy's blobs: True where the field is above its (1 - porosity) quantile... its "porosity" is the True share
    active = ps.generators.blobs(shape, porosity=active_fraction, blobiness=blobiness, seed=int(seed))
    near = ndimage.distance_transform_edt(~active) <= binder_reach
    field = ps.generators.blobs(shape, porosity=0.5, blobiness=3.0 * blobiness, seed=int(seed) + 7919)
    # the binder: the densest `binder_fraction` of the near-surface pore, ranked by a smooth random field
    noise = ndimage.gaussian_filter(np.random.default_rng([seed, 0xB1D]).standard_normal(shape), 1.0)
    score = np.where(near & ~active, noise + 0.5 * field, -np.inf)
    n_binder = int(round(binder_fraction * np.prod(shape)))
    thresh = np.partition(score.ravel(), -n_binder)[-n_binder]
    labels = np.full(shape, PORE, np.uint8)
    labels[active] = ACTIVE
    labels[(score >= thresh) & ~active] = BINDER
    return labels


def electrode_volume(shape=(48, 48, 48), seed: int = 0, photons: float = 1.0e4, **geometry
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(image float32, labels uint8)``: the electrode imaged by radon -> Poisson -> FBP."""
    labels = electrode_labels(shape, seed, **geometry)
    return scan(labels, seed, ForwardParams(attenuation=dict(ATTENUATION), photons=photons)), labels

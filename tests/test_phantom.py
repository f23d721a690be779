"""The synthetic cell: deterministic, split-independent, with the geometry it promises."""

from __future__ import annotations

import numpy as np
import pytest

from batterytwin.errors import InputError
from batterytwin.ingest.phantom import CLASSES, CellGeometry, PhantomParams, make_phantom, render_region


def test_same_seed_same_volume_other_seed_differs():
    a = make_phantom((32, 32, 32), seed=4)
    b = make_phantom((32, 32, 32), seed=4)
    c = make_phantom((32, 32, 32), seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert (a[1] != c[1]).mean() > 0.05


def test_regions_assemble_to_the_whole_volume():
    p = PhantomParams(shape=(40, 36, 33), seed=3, photons=300, ring_amplitude=0.05, blur_sigma=1.1)
    g = CellGeometry.build(p)
    whole = render_region(g, tuple(slice(0, n) for n in p.shape))
    parts = {k: np.zeros_like(v) for k, v in whole.items()}
    for z in ((0, 13), (13, 40)):
        for y in ((0, 20), (20, 36)):
            r = (slice(*z), slice(*y), slice(0, 33))
            for k, v in render_region(g, r).items():
                parts[k][r] = v
    for k in whole:
        np.testing.assert_array_equal(parts[k], whole[k], err_msg=k)


def test_layers_classes_and_active_fraction():
    p = PhantomParams(shape=(64, 64, 64), seed=1)
    image, labels, clean = make_phantom(p.shape, seed=1, with_clean=True)
    assert set(np.unique(labels)) <= set(CLASSES)
    lay = p.layers
    assert (labels[: lay["current_collector"][1]] == 5).all()
    cathode = labels[slice(*lay["cathode"])]
    # Boolean model: overlapping random spheres cover the target fraction of the cathode
    # (less what pores/dendrites take, more what particles clipped at the slab edges lose).
    assert abs((cathode == 3).mean() - p.active_fraction) < 0.1
    assert (labels[slice(*lay["anode"])] == 2).mean() > 0.9
    assert (labels == 4).sum() > 20 and (labels[: lay["separator"][0]] == 4).mean() < 0.05
    # image formation: away from edges, the noise-free image is the phase's attenuation
    interior = (labels == 1) & (np.abs(np.gradient(labels.astype(float))).sum(0) == 0)
    assert abs(np.median(clean[interior]) - p.attenuation[1]) < 0.02
    assert abs(np.std(image[interior] - clean[interior]) - p.noise_sigma) < 0.01


def test_dendrites_grow_frame_by_frame():
    counts = [(make_phantom((48, 48, 48), seed=2, frame=t, n_frames=4)[1] == 4).sum() for t in range(4)]
    assert all(b > a for a, b in zip(counts, counts[1:])), counts


def test_bad_parameters_are_named():
    with pytest.raises(InputError, match="unknown parameter.*bogus"):
        PhantomParams.from_dict({"bogus": 1})
    with pytest.raises(InputError, match="shape"):
        PhantomParams(shape=(8, 8, 8))

"""Morphology statistics against analytic geometry and independent counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from batterytwin.microstructure import stats
from batterytwin.microstructure.clusters import phase_clusters


def _ball(shape, center, r):
    z, y, x = np.indices(shape)
    return (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= r * r


def test_volume_fractions_and_unlabelled():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 3, (10, 11, 12)).astype(np.uint8)
    lab[0, 0, :5] = 255
    vf = stats.volume_fractions(lab, {0: "a", 1: "b", 2: "c"})
    assert np.isclose(vf["b"], np.count_nonzero(lab == 1) / lab.size)
    assert np.isclose(vf["unlabelled"], 5 / lab.size)
    assert np.isclose(sum(vf.values()), 1.0)


def test_sphere_interface_area_and_particle_radius():
    r, h = 10.0, 0.5
    lab = np.zeros((32, 32, 32), np.uint8)
    lab[_ball(lab.shape, (16, 16, 16), r)] = 3
    areas = stats.interface_areas(lab, {0: "pore", 3: "cathode_active"}, (h, h, h))
    exact = 4 * math.pi * (r * h) ** 2
    a = areas["pore|cathode_active"]
    assert abs(a["area_um2"] / exact - 1) < 0.05
    assert np.isclose(a["specific_area_per_um"], a["area_um2"] / (32 ** 3 * h ** 3))
    part = stats.particle_stats(lab == 3, (h, h, h))
    assert part["count"] == 1
    assert abs(part["mean_radius_um"] / (r * h) - 1) < 0.06
    assert abs(part["equivalent_radius_mean_um"] / (r * h) - 1) < 0.02


def test_three_phase_interfaces_add_up():
    # planar layers: interface areas are exactly the cross-section; no a|c contact
    lab = np.zeros((30, 20, 10), np.uint8)
    lab[10:20] = 1
    lab[20:] = 2
    areas = stats.interface_areas(lab, {0: "a", 1: "b", 2: "c"}, (1.0, 0.5, 2.0))
    assert set(areas) == {"a|b", "b|c"}
    # marching cubes closes the surface half a voxel short of the open side faces
    assert abs(areas["a|b"]["area_um2"] - (20 - 1) * 0.5 * (10 - 1) * 2.0) < 1e-6
    assert abs(areas["b|c"]["area_um2"] - areas["a|b"]["area_um2"]) < 1e-6
    lay = stats.layers(lab, {0: "a", 1: "b", 2: "c"}, (1.0, 0.5, 2.0))
    assert lay["b"] == {"z_start": 10, "z_stop": 20, "thickness_um": 10.0}


def test_cluster_fractions():
    m = np.zeros((12, 12, 12), bool)
    m[:, 1, 1] = True           # spans z
    m[0:5, 5, 5] = True         # touches z=0 only: dead end along z
    m[5:7, 8:10, 8:10] = True   # touches nothing: isolated
    info = phase_clusters(m)
    assert info.percolating == (True, False, False)
    f = info.fractions
    assert np.isclose(f["z"]["percolating"], 12 / m.size)
    assert np.isclose(f["z"]["dead_end"], 5 / m.size)
    assert np.isclose(f["z"]["isolated"], 8 / m.size)
    assert np.isclose(f["isolated_all_faces"], 8 / m.size)
    assert info.start_mask.sum() == 12
    ref_n = ndimage.label(m)[1]
    assert info.n_clusters == ref_n == 3


def test_lithium_dendrites():
    vs = (0.5, 1.0, 1.0)
    lab = np.ones((40, 16, 16), np.uint8)   # solid electrolyte
    lab[30:] = 2                              # anode from z = 30
    lab[22:30, 4, 4] = 4                      # dendrite of 8 voxels into the electrolyte
    lab[27:30, 10, 10:12] = 4                 # short one, 3 voxels
    lab[10:12, 12:14, 2:4] = 4                # detached agglomerate, protrudes 20 voxels
    li = stats.lithium_stats(lab, 4, 2, vs)
    assert li["count"] == 3 and li["attached_count"] == 2
    assert np.isclose(li["dendrite_length_um"], 8 * 0.5)
    assert np.isclose(li["max_protrusion_um"], 20 * 0.5)
    assert sorted(li["volumes_um3"]) == [6 * 0.5, 8 * 0.5, 8 * 0.5]
    v = 8 * 0.5
    assert np.isclose(max(li["equivalent_diameters_um"]), (6 * v / math.pi) ** (1 / 3))
    empty = stats.lithium_stats(np.ones((5, 5, 5), np.uint8), 4, 2, vs)
    assert empty["count"] == 0 and empty["dendrite_length_um"] == 0.0


def test_single_voxel_phase_has_no_resolvable_surface():
    """A one-voxel speck (as a segmentation can leave) gives area 0, not a marching-cubes error."""
    from batterytwin.microstructure.stats import surface_area_um2

    mask = np.zeros((12, 12, 12), bool)
    mask[6, 6, 6] = True
    assert surface_area_um2(mask, [1.0, 1.0, 1.0]) == 0.0


def test_dual_connectivity_pore_26_solid_6():
    """A diagonal pore sheet (y == z) in a solid: the connectivities give different answers, and only the
    dual pair (26 pore, 6 solid) is consistent (the sheet connects, and separates the solid in two)."""
    from batterytwin.microstructure.clusters import connectivity_of

    n = 12
    z, y, _ = np.indices((n, n, n))
    lab = np.where(y == z, 0, 1).astype(np.uint8)  # 0 pore: 144 voxels; 1 solid: two halves of 792
    classes = {0: "pore", 1: "cathode_active"}
    assert connectivity_of("pore") == 26 and connectivity_of("cathode_active") == 6
    perc = stats.percolation(lab, classes)
    pore, solid = perc["pore"], perc["cathode_active"]
    assert pore["connectivity"] == 26 and solid["connectivity"] == 6
    # pore, 26: one sheet, touching both z faces; solid, 6: two halves, neither reaches both z faces
    assert pore["n_clusters"] == 1 and pore["percolating"] == {"z": True, "y": True, "x": True}
    assert solid["n_clusters"] == 2 and solid["percolating"] == {"z": False, "y": False, "x": True}
    assert np.isclose(solid["fractions"]["z"]["dead_end"], 2 * 792 / n ** 3)
    # the other connectivities give other answers (independent: scipy's label with explicit structures)
    six = phase_clusters(lab == 0, 6)
    assert six.n_clusters == n == ndimage.label(lab == 0)[1]      # 12 separate lines along x
    assert six.percolating == (False, False, True)
    s26 = phase_clusters(lab == 1, 26)
    assert s26.n_clusters == 1 == ndimage.label(lab == 1, np.ones((3, 3, 3)))[1]
    assert s26.percolating == (True, True, True)                  # crosses the pore sheet: the paradox


def test_surface_area_in_slabs_equals_the_whole_volume_mesh():
    """The slab-wise area (bounded memory) equals marching cubes on the whole smoothed volume
    (scikit-image directly), whatever the slab, anisotropic voxels included."""
    from scipy import ndimage
    from skimage import measure

    from batterytwin.microstructure.stats import SMOOTH_SIGMA, surface_area_um2

    rng = np.random.default_rng(3)
    mask = ndimage.gaussian_filter(rng.standard_normal((37, 20, 24)), 2.0) > 0.1  # blobs crossing slabs
    vs = (0.7, 0.5, 1.1)
    field = ndimage.gaussian_filter(mask.astype(np.float32), SMOOTH_SIGMA, mode="nearest")
    verts, faces, _, _ = measure.marching_cubes(field, level=0.5, spacing=vs)
    whole = measure.mesh_surface_area(verts, faces)
    assert whole > 100
    for slab in (1, 5, 8, 36, 64):
        assert surface_area_um2(mask, vs, slab=slab) == pytest.approx(whole, rel=1e-6)

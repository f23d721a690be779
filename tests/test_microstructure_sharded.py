"""The microstructure stage read slab by slab: the same numbers as the whole-volume functions.

References are independent: ``scipy.ndimage.label`` on the whole volume (clusters), numpy on the
whole labels array (counts, masks) and the whole-volume functions of ``microstructure.stats``.
Volumes are built so that clusters cross slab and shard faces, edges and corners.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from batterytwin.distributed import World
from batterytwin.errors import EXIT_OK
from batterytwin.ingest.phantom import CLASSES, make_phantom
from batterytwin.microstructure import stats
from batterytwin.microstructure.clusters import STRUCTURES, phase_clusters
from batterytwin.microstructure.components import mask_clusters, mask_components
from batterytwin.microstructure.config import MicrostructureConfig
from batterytwin.microstructure.driver import measure, measure_store
from batterytwin.microstructure.sharded import store_stats
from batterytwin.microstructure.slabs import LabelSlabs
from batterytwin.store import create_volume, open_volume, volume_attrs

from .conftest import BIN, mpiexec

CLS = {str(k): v for k, v in CLASSES.items()}
IDS = {v: k for k, v in CLASSES.items()}


def _blobs(shape, seed, sigma=1.5, level=0.55):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), sigma) > level


def _corner_chain(shape, start=(0, 0, 0)):
    """Voxels along the main diagonal: neighbours only through corners (one 26-cluster, n 6-clusters)."""
    m = np.zeros(shape, bool)
    k = np.arange(min(shape) - max(start))
    m[start[0] + k, start[1] + k, start[2] + k] = True
    return m


MASKS = {
    "blobs": lambda: _blobs((40, 24, 28), 1),
    "sparse": lambda: _blobs((33, 20, 20), 2, sigma=1.0, level=0.6),
    "corners": lambda: _corner_chain((24, 24, 24)) | _corner_chain((24, 24, 24), (0, 3, 0)),
    "spanning": lambda: np.pad(np.ones((30, 3, 3), bool), ((0, 0), (5, 5), (6, 6))),
}


@pytest.mark.parametrize("kind", sorted(MASKS))
@pytest.mark.parametrize("conn", [6, 18, 26])
def test_slab_components_equal_whole_volume_labels(kind, conn):
    mask = MASKS[kind]()
    ref = phase_clusters(mask, conn)
    lab, n = ndimage.label(mask, structure=STRUCTURES[conn])
    for slab in (1, 4, 7):  # faces every plane / every 4 / uneven
        m = mask_components(mask, conn, slab)
        assert m.n == n
        np.testing.assert_array_equal(m.sizes, np.bincount(lab.ravel(), minlength=n + 1)[1:])  # label order too
        info = mask_clusters(mask, conn, slab)
        assert info.labels is None and info.n_clusters == ref.n_clusters
        assert info.percolating == ref.percolating and info.fractions == ref.fractions
        for a, b in zip(info.spanning, ref.spanning):
            np.testing.assert_array_equal(a, b)
        start = np.flatnonzero(ref.start_mask)
        assert len(info.start_mask) == len(start) and info.start_mask.mean() == ref.start_mask.mean()
        if len(start):
            import torch

            np.testing.assert_array_equal(info.start_mask[torch.arange(len(start))].numpy(), start)


def test_corner_chain_is_one_cluster_only_with_26():
    mask = _corner_chain((24, 24, 24))
    assert mask_components(mask, 26, 4).n == 1 and mask_components(mask, 6, 4).n == 24
    assert mask_components(mask, 18, 4).n == 24


def _volume(shape=(64, 64, 64), seed=3) -> np.ndarray:
    """A phantom cell plus features across the 16^3 shard grid: a pore corner chain through shard
    corners, 6-connected lithium bars across z faces and redeposited voxels touching only by corners."""
    _, lab = make_phantom(shape, seed=seed)
    lab[_corner_chain(shape, (8, 8, 8)) & (lab != IDS["lithium_metal"])] = IDS["pore"]
    red = IDS["redeposited_lithium"]
    lab[10:40, 15:17, 31:33] = red  # crosses z faces 16, 32 and the y / x shard faces
    k = np.arange(12, 22)
    lab[k, 40 + (k - 12), 47 - (k - 12)] = red  # corner neighbours only: 10 separate 6-clusters
    return lab


@pytest.fixture(scope="module")
def label_store(tmp_path_factory):
    lab = _volume()
    path = tmp_path_factory.mktemp("sharded") / "labels.zarr"
    arr = create_volume(path, lab.shape, "uint8", volume_attrs("segment", 0.5, classes=CLS, ignore_label=255),
                        chunk=16, shard=16)
    arr[...] = lab
    return path, lab


def test_reader_counts_and_masks(label_store):
    path, lab = label_store
    reader = LabelSlabs(open_volume(path))
    assert reader.bounds[:2] == [(0, 16), (16, 32)]
    counts = reader.slice_counts(World())
    for c in range(256):
        np.testing.assert_array_equal(counts[:, c], (lab == c).sum(axis=(1, 2)))
    for z0, z1 in ((0, 64), (5, 37), (16, 32), (63, 64)):
        np.testing.assert_array_equal(reader.region_mask(z0, z1, IDS["pore"]), lab[z0:z1] == IDS["pore"])


@pytest.mark.parametrize("depth", [16, 5])
def test_store_stats_equal_whole_volume(label_store, depth):
    path, lab = label_store
    classes = {int(k): v for k, v in CLS.items()}
    vs = (0.5, 0.5, 0.5)
    p = MicrostructureConfig()
    got = store_stats(LabelSlabs(open_volume(path), depth), classes, vs, p, World())
    assert got["volume_fractions"] == stats.volume_fractions(lab, classes)
    assert got["layers"] == stats.layers(lab, classes, vs, p.layer_min_fraction)
    assert got["percolation"] == stats.percolation(lab, classes)
    assert got["percolation"]["pore"]["connectivity"] == 26
    ref = stats.lithium_stats(lab, IDS["redeposited_lithium"], IDS["lithium_metal"], vs)
    assert got["lithium"] == ref
    assert ref["count"] >= 11 and ref["attached_count"] >= 1
    part = stats.particle_stats(lab == IDS["cathode_active"], vs)
    assert got["particles"] == part  # the same marching-cubes slabs: the same area floats
    inter = stats.interface_areas(lab, classes, vs)
    assert sorted(got["interfaces"]) == sorted(inter)
    for k, v in inter.items():
        assert got["interfaces"][k] == pytest.approx(v, rel=1e-9, abs=1e-9)


def _params(**walk):
    w = {"n_walkers": 256, "n_steps": 200, "n_records": 8, "n_batches": 4, "n_bootstrap": 20,
         "max_steps": 200, "max_walkers": 256, **walk}
    return MicrostructureConfig(walk=w)


def test_measure_store_equals_measure(tmp_path):
    _, lab = make_phantom((32, 24, 24), seed=5)
    path = tmp_path / "l.zarr"
    create_volume(path, lab.shape, "uint8", volume_attrs("segment", 0.5, classes=CLS, ignore_label=255),
                  chunk=8, shard=8)[...] = lab
    classes = {int(k): v for k, v in CLS.items()}
    p = _params()
    a, msd_a = measure(lab, classes, (0.5,) * 3, p, World())
    b, msd_b = measure_store(LabelSlabs(open_volume(path)), classes, (0.5,) * 3, p, World())
    for r in (a, b):
        r.pop("wall_time_s")
    ia, ib = a.pop("interfaces"), b.pop("interfaces")
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    assert sorted(ia) == sorted(ib) and all(ia[k] == pytest.approx(ib[k], rel=1e-9) for k in ia)
    assert sorted(msd_a) == sorted(msd_b)
    assert a["cell"]["positive_electrode"]["tortuosity_electrolyte"] is not None


@pytest.mark.slow
@pytest.mark.mpi
def test_two_ranks_equal_one_with_slabs_split(label_store, tmp_path, cli):
    """2 ranks split the slabs (face planes exchanged between ranks) and the walker batches."""
    path, _ = label_store
    walk = ["--walkers", "256", "--steps", "200", "--records", "8", "--batches", "4", "--bootstrap", "20",
            "--config-json", '{"walk": {"max_steps": 200, "max_walkers": 256}}']
    one = tmp_path / "one.json"
    code, err = cli("microstructure", "--labels", path, "--output", one, "--msd", tmp_path / "1.npz", *walk)
    assert code == EXIT_OK, err
    two = tmp_path / "two.json"
    mpiexec(2, str(BIN / "batterytwin"), "-q", "microstructure", "--labels", str(path), "--output", str(two),
            "--msd", str(tmp_path / "2.npz"), *walk, timeout=240)
    volatile = {"created", "wall_time_s"}
    a = {k: v for k, v in json.loads(one.read_text()).items() if k not in volatile}
    b = {k: v for k, v in json.loads(two.read_text()).items() if k not in volatile}
    assert a == b


def test_area_blocks_add_up_to_the_whole_mesh():
    """Marching cubes in y-x blocks with halos: the blocks' areas add up to one mesh of the volume's."""
    from batterytwin.microstructure.sharded import slab_areas

    lab = _volume((40, 57, 50), seed=4)
    keys = [IDS["pore"], IDS["cathode_active"], (IDS["pore"], IDS["solid_electrolyte"])]
    got = slab_areas(lab, (0, lab.shape[0] - 1), keys, (0.5, 0.5, 0.5), tile=9)
    for k in keys:
        mask = (lab == k) if not isinstance(k, tuple) else (lab == k[0]) | (lab == k[1])
        ref = stats.surface_area_um2(mask, (0.5, 0.5, 0.5), slab=lab.shape[0])  # one mesh
        assert ref > 10 and got[k] == pytest.approx(ref, rel=1e-6)


STATS_SCRIPT = """
import json, sys
from batterytwin.distributed import get_world
from batterytwin.microstructure.components import mask_clusters
from batterytwin.microstructure.config import MicrostructureConfig
from batterytwin.microstructure.sharded import store_stats
from batterytwin.microstructure.slabs import LabelSlabs
from batterytwin.store import open_volume
world = get_world()
vol = open_volume(sys.argv[1])
out = {}
for depth in (16, 32):  # 4 slabs over 3 ranks (2, 1, 1); 2 slabs over 3 ranks (one rank idle)
    st = store_stats(LabelSlabs(vol, depth), vol.classes, vol.voxel_size_um, MicrostructureConfig(), world)
    st.pop("slice_counts")
    info = mask_clusters(LabelSlabs(vol).phase_mask(0), 6, depth, world)  # class 0 = pore
    st["walk_clusters"] = [info.n_clusters, info.fractions, info.start_mask.packed.tolist()]
    out[depth] = st
if world.is_root:
    print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.mpi
def test_three_ranks_uneven_and_idle_equal_whole_volume(label_store):
    path, lab = label_store
    out = json.loads(mpiexec(3, str(BIN / "python"), "-c", STATS_SCRIPT, str(path), timeout=240).stdout)
    classes = {int(k): v for k, v in CLS.items()}
    vs = (0.5, 0.5, 0.5)
    for st in out.values():
        assert st["percolation"] == json.loads(json.dumps(stats.percolation(lab, classes)))
        assert st["lithium"] == stats.lithium_stats(lab, IDS["redeposited_lithium"], IDS["lithium_metal"], vs)
        assert st["particles"] == stats.particle_stats(lab == IDS["cathode_active"], vs)
        assert st["volume_fractions"] == stats.volume_fractions(lab, classes)
        inter = stats.interface_areas(lab, classes, vs)
        assert sorted(st["interfaces"]) == sorted(inter)
        assert all(st["interfaces"][k] == pytest.approx(v, rel=1e-9) for k, v in inter.items())
        ref = phase_clusters(lab == IDS["pore"], 6)  # the walk's start clusters, split over the ranks
        n, fractions, packed = st["walk_clusters"]
        assert n == ref.n_clusters and fractions == json.loads(json.dumps(ref.fractions))
        np.testing.assert_array_equal(np.asarray(packed, np.uint8),
                                      np.packbits(ref.start_mask.reshape(lab.shape[0], -1), axis=1))

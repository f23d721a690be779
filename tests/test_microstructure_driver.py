"""The microstructure driver and CLI: outputs, the cell block, checkpoints, MPI, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK
from batterytwin.ingest.phantom import CLASSES, make_phantom
from batterytwin.store import create_volume, volume_attrs

from .conftest import BIN, mpiexec

# a fixed walk (budgets = the first block): these tests are about the driver, not convergence
BUDGET = '{"walk": {"max_steps": 600, "max_walkers": 1024}}'
WALK = ["--walkers", "1024", "--steps", "600", "--records", "12", "--batches", "4", "--bootstrap", "50",
        "--config-json", BUDGET]
CLS = {str(k): v for k, v in CLASSES.items()}


@pytest.fixture(scope="module")
def phantom_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("ms")
    _, lab = make_phantom((40, 32, 32), seed=2)
    path = d / "labels.zarr"
    arr = create_volume(path, lab.shape, "uint8", volume_attrs("segment", 0.5, classes=CLS, ignore_label=255))
    arr[...] = lab
    return path, lab


def _layer(lab, cls):
    z = np.flatnonzero((lab == cls).mean(axis=(1, 2)) >= 0.01)
    return int(z[0]), int(z[-1]) + 1


def test_driver_outputs_and_cell_block(phantom_store, tmp_path, cli):
    path, lab = phantom_store
    out, msd = tmp_path / "m.json", tmp_path / "msd.npz"
    code, err = cli("microstructure", "--labels", path, "--output", out, "--msd", msd, *WALK,
                    "--checkpoint-dir", tmp_path / "work")
    assert code == EXIT_OK, err
    rec = json.loads(out.read_text())
    assert rec["schema"] == "batterytwin.microstructure/1"
    assert rec["voxel_size_um"] == [0.5, 0.5, 0.5] and rec["classes"] == CLS
    for c, name in CLASSES.items():
        assert np.isclose(rec["volume_fractions"][name], np.mean(lab == c))
    se = rec["tortuosity"]["solid_electrolyte"]
    assert se["convention"] == "tau = eps * D_bulk / D_eff (TauFactor)"
    assert np.array(se["tensor_D_eff_over_D_bulk"]).shape == (3, 3)
    for a in ("z", "y", "x"):
        assert set(se["axes"][a]) >= {"eps", "D_eff_over_D_bulk", "tau", "tau_pore", "tau_std", "percolating",
                                      "linear_regime"}
    # the electrolyte cannot cross the collector and the anode: no through-plane path in the whole cell
    assert se["axes"]["z"]["percolating"] is False and se["axes"]["z"]["tau"] is None
    assert se["axes"]["y"]["tau"] > 1.0

    cell = rec["cell"]
    assert cell["stacking_axis"] == "z" and cell["electrolyte_phase"] == "solid_electrolyte"
    pe, sep = cell["positive_electrode"], cell["separator"]
    z0, z1 = _layer(lab, 3)
    a0, _ = _layer(lab, 2)
    assert pe["z_range"] == [z0, z1] and sep["z_range"] == [z1, a0]
    assert np.isclose(pe["thickness_um"], (z1 - z0) * 0.5)
    region = lab[z0:z1]
    assert np.isclose(pe["electrolyte_volume_fraction"], np.mean(region == 1))
    assert np.isclose(pe["active_material_volume_fraction"], np.mean(region == 3))
    assert np.isclose(pe["porosity_void"], np.mean(region == 0))
    tau, eps = pe["tortuosity_electrolyte"], pe["electrolyte_volume_fraction"]
    assert tau > 1.0 and np.isclose(pe["bruggeman"], 1 - np.log(tau) / np.log(eps))
    assert np.isclose(pe["bruggeman_std"], pe["tortuosity_electrolyte_std"] / tau / -np.log(eps))
    assert pe["particle_radius_um"] > 0.5
    for key in ("thickness_um", "electrolyte_volume_fraction", "tortuosity_electrolyte", "bruggeman"):
        assert key in sep
    # a nearly pure separator (eps ~ 1) fixes no Bruggeman exponent: null with a flag, or a certain value
    if sep["bruggeman"] is None:
        assert sep["electrolyte_volume_fraction"] > 0.9 and "undetermined" in sep["bruggeman_flag"]
    else:
        assert sep["bruggeman"] > 0 and sep["bruggeman_std"] <= 0.5
    assert {"percolation", "layers", "interfaces", "particles", "lithium"} <= set(rec)

    # MSD file: plain arrays, and refitting its mean curve gives the reported D_pore / D_bulk
    with np.load(msd, allow_pickle=False) as f:
        t = f["positive_electrode.solid_electrolyte.t_steps"]
        m = f["positive_electrode.solid_electrolyte.msd_um2"]
        free = f["positive_electrode.solid_electrolyte.free_slope_um2_per_step"]
        assert "volume.solid_electrolyte.msd_um2" in f.files
    sel = t >= 0.5 * t[-1]
    slope = np.polyfit(t[sel], m[sel, 0], 1)[0]
    assert np.isclose(slope / free[0], pe["tortuosity_detail"]["axes"]["z"]["D_pore_over_D_bulk"], rtol=1e-6)

    # checkpoints: a rerun reuses every finished batch and reproduces the numbers
    batches = sorted((tmp_path / "work").rglob("batch_*.npz"))
    assert len(batches) > 0
    stamp = {p: p.stat().st_mtime_ns for p in batches}
    out2 = tmp_path / "m2.json"
    code, err = cli("microstructure", "--labels", path, "--output", out2, "--msd", tmp_path / "msd2.npz", *WALK,
                    "--checkpoint-dir", tmp_path / "work")
    assert code == EXIT_OK, err
    assert sorted((tmp_path / "work").rglob("batch_*.npz")) == batches
    assert all(p.stat().st_mtime_ns == s for p, s in stamp.items())
    assert json.loads(out2.read_text())["cell"] == rec["cell"]


@pytest.mark.slow
@pytest.mark.mpi
def test_two_ranks_equal_one(phantom_store, tmp_path, cli):
    """Extensions (more steps, more batches) are decided on gathered moments: 2 ranks == 1 rank."""
    path, _ = phantom_store
    grow = [*WALK, "--config-json", '{"walk": {"max_steps": 4800, "max_walkers": 4096, "target_rel_std": 0.02}}']
    one = tmp_path / "one.json"
    code, err = cli("microstructure", "--labels", path, "--output", one, "--msd", tmp_path / "1.npz", *grow,
                    "--no-surface-area")
    assert code == EXIT_OK, err
    two = tmp_path / "two.json"
    mpiexec(2, str(BIN / "batterytwin"), "-q", "microstructure", "--labels", str(path), "--output", str(two),
            "--msd", str(tmp_path / "2.npz"), *grow, "--no-surface-area", timeout=240)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert len(a["tortuosity"]["solid_electrolyte"]["walk"]["history"]) > 1  # the walk was extended
    assert a["tortuosity"] == b["tortuosity"]
    assert a["cell"] == b["cell"]


def test_taufactor_crosscheck_side_by_side():
    """crosscheck_taufactor: TauFactor's tau recorded next to the walk's, per axis; skipped (flag)
    above crosscheck_max_voxels; bad values refused."""
    ps = pytest.importorskip("porespy")
    tf = pytest.importorskip("taufactor")
    from batterytwin.errors import InputError
    from batterytwin.config import validate_settings
    from batterytwin.microstructure.config import MicrostructureConfig
    from batterytwin.microstructure.driver import measure

    im = ps.generators.blobs(shape=[32, 32, 32], porosity=0.5, blobiness=1.5, seed=3).astype(bool)
    lab = np.where(im, 0, 1).astype(np.uint8)
    classes = {0: "pore", 1: "solid_electrolyte"}
    sec = {"phases": ["pore"], "surface_area": False, "crosscheck_taufactor": True,
           "walk": {"n_walkers": 8192, "max_walkers": 65536, "target_rel_std": 0.015, "seed": 1}}
    rec, _ = measure(lab, classes, (1.0, 1.0, 1.0), validate_settings(MicrostructureConfig, sec, "microstructure"))
    pore = rec["tortuosity"]["pore"]
    assert pore["taufactor"]["solver"] == "taufactor"
    for i, a in enumerate("zyx"):
        solver = tf.Solver(np.ascontiguousarray(np.moveaxis(im, i, 0)).astype(np.uint8), device="cpu")
        ref = float(np.ravel(solver.solve(verbose=False))[0])
        e = pore["axes"][a]
        assert e["tau_taufactor"] == pytest.approx(ref, rel=1e-6)
        assert e["walk_minus_taufactor_rel"] == pytest.approx(e["tau"] / ref - 1, abs=1e-12)
        assert abs(e["tau"] / ref - 1) < 0.05, (a, e["tau"], ref)
    small = {**sec, "crosscheck_max_voxels": 1000, "walk": {"n_walkers": 512, "max_walkers": 512, "n_steps": 200,
                                                              "max_steps": 200}}
    rec, _ = measure(lab, classes, (1.0, 1.0, 1.0), validate_settings(MicrostructureConfig, small, "microstructure"))
    assert "crosscheck_max_voxels" in rec["tortuosity"]["pore"]["taufactor"]["skipped"]
    assert "tau_taufactor" not in rec["tortuosity"]["pore"]["axes"]["z"]
    for bad in ({"crosscheck_max_voxels": 0}, {"crosscheck_taufactor": "yes"}):
        with pytest.raises(InputError, match="crosscheck"):
            validate_settings(MicrostructureConfig, bad, "microstructure")


def _store(path, lab, attrs):
    arr = create_volume(path, lab.shape, "uint8", attrs)
    arr[...] = lab
    return path


def test_bad_input(tmp_path, cli):
    lab = np.ones((12, 12, 12), np.uint8)
    lab[:, :4] = 0
    good = volume_attrs("segment", 1.0, classes={"0": "pore", "1": "solid_electrolyte"})
    p = _store(tmp_path / "a.zarr", lab, good)
    args = ["--output", tmp_path / "o.json", "--msd", tmp_path / "o.npz", "--walkers", "64", "--batches", "4",
            "--steps", "100", "--records", "5"]
    fixed = {"max_steps": 100, "max_walkers": 64}
    code, err = cli("microstructure", "--labels", p, *args, "--phases", "pore", "binder")
    assert code == EXIT_BAD_INPUT and "'binder' is not a class" in err
    code, err = cli("microstructure", "--labels", p, *args[:-4], "--steps", "200000", "--records", "5",
                    "--config-json", '{"walk": {"max_steps": 200000}}')
    assert code == EXIT_BAD_INPUT and "too small for the requested walk" in err
    empty = _store(tmp_path / "e.zarr", np.ones_like(lab), good)
    code, err = cli("microstructure", "--labels", empty, *args)
    assert code == EXIT_BAD_INPUT and "absent" in err
    # absent_phase: skip records the absent phase as not measured and measures the rest
    skip_args = ["--output", tmp_path / "skip.json", "--msd", tmp_path / "skip.npz", *args[4:]]
    code, err = cli("microstructure", "--labels", empty, *skip_args, "--config-json",
                    json.dumps({"absent_phase": "skip", "walk": fixed}))
    assert code == EXIT_OK, err
    rec = json.loads((tmp_path / "skip.json").read_text())
    assert rec["tortuosity"]["pore"]["axes"] is None and "absent" in rec["tortuosity"]["pore"]["flag"]
    assert rec["tortuosity"]["solid_electrolyte"]["axes"]["z"]["tau"] == pytest.approx(1.0, abs=0.1)
    no_vs = {k: v for k, v in good.items() if k != "voxel_size_um"}
    p2 = _store(tmp_path / "b.zarr", lab, no_vs)
    code, err = cli("microstructure", "--labels", p2, *args)
    assert code == EXIT_BAD_INPUT and "voxel_size_um" in err
    no_cls = {k: v for k, v in good.items() if k != "classes"}
    code, err = cli("microstructure", "--labels", _store(tmp_path / "c.zarr", lab, no_cls), *args)
    assert code == EXIT_BAD_INPUT and "classes" in err
    code, err = cli("microstructure", "--labels", p, *args, "--config-json", '{"walk": {"n_walker": 5}}')
    assert code == EXIT_BAD_INPUT and "walk.n_walker" in err
    assert not (tmp_path / "o.json").exists()


def test_time_series_lithium_growth(tmp_path, cli):
    outs, vols = [], []
    for frame in (0, 1):
        _, lab = make_phantom((40, 32, 32), seed=3, frame=frame, n_frames=2)
        vols.append(np.count_nonzero(lab == 4) * 0.5 ** 3)
        path = _store(tmp_path / f"l{frame}.zarr", lab, volume_attrs("segment", 0.5, classes=CLS))
        out = tmp_path / f"m{frame}.json"
        prev = ["--previous", outs[-1]] if outs else []
        code, err = cli("microstructure", "--labels", path, "--output", out, "--msd", tmp_path / f"{frame}.npz",
                        *WALK, "--no-surface-area", "--phases", "solid_electrolyte", *prev)
        assert code == EXIT_OK, err
        outs.append(out)
    a, b = (json.loads(o.read_text())["lithium"] for o in outs)
    assert np.isclose(a["total_volume_um3"], vols[0]) and np.isclose(b["total_volume_um3"], vols[1])
    g = b["growth_from_previous"]
    assert g["previous"] == str(outs[0]) and "growth_from_previous" not in a
    assert np.isclose(g["total_volume_um3"]["change"], vols[1] - vols[0])
    assert np.isclose(g["dendrite_length_um"]["change"], b["dendrite_length_um"] - a["dendrite_length_um"])
    assert vols[1] > vols[0]  # the phantom's lithium grows


def test_bruggeman_is_null_when_eps_near_one():
    """b = 1 - ln(tau)/ln(eps) is ill-conditioned at eps -> 1: noise in tau must not become a b."""
    from batterytwin.contracts import bruggeman
    from batterytwin.microstructure import driver

    eps, tau, tau_std = 0.995, 0.943, 0.017  # measured on the demo separator
    b = bruggeman(eps, tau)
    b_std = tau_std / tau / -np.log(eps)
    assert "undetermined" in driver._undetermined_bruggeman(b, b_std, eps)
    # a cathode-like electrolyte fixes b well: kept
    eps, tau = 0.48, 1.37
    assert driver._undetermined_bruggeman(bruggeman(eps, tau), 0.03, eps) is None
    assert "undetermined" in driver._undetermined_bruggeman(-0.2, 0.1, eps)  # b <= 0 is unphysical

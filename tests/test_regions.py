"""Cell regions: layer boundaries robust to segmentation noise, through-plane tau of thin
slabs against TauFactor, and the gate that keeps an untrusted tau away from PyBaMM."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from batterytwin.distributed import get_world
from batterytwin.ingest.phantom import CLASSES, PhantomParams, make_phantom
from batterytwin.microstructure import stats
from batterytwin.microstructure.config import MicrostructureConfig
from batterytwin.microstructure.regions import cell_block, layer_run, slice_counts

IDS = {n: c for c, n in CLASSES.items()}
PORE, ELEC, LI, CATH, REDEP, COLL = (IDS[n] for n in ("pore", "solid_electrolyte", "lithium_metal", "cathode_active",
                                                      "redeposited_lithium", "current_collector"))
VS = (0.5, 0.5, 0.5)
# long enough for the long-time limit on these slabs (2000-step walks read ~2 % low), 1 % bootstrap error
WALK = {"n_walkers": 16384, "n_steps": 4000, "n_records": 20, "n_batches": 16, "n_bootstrap": 200,
        "target_rel_std": 0.01, "max_walkers": 65536, "max_steps": 8000}
PARAMS = MicrostructureConfig.model_validate({"walk": WALK})


def taufactor_z(mask: np.ndarray) -> float:
    """TauFactor's steady-state tau along axis 0, solved here (independent of the stage's wrapper)."""
    import taufactor

    return float(np.ravel(taufactor.Solver(mask.astype(np.uint8), device="cpu").solve(verbose=False))[0])


def run_cell(labels: np.ndarray, ck=None) -> dict:
    return cell_block(slice_counts(labels), lambda z0, z1, c: labels[z0:z1] == c, IDS, PARAMS, VS, get_world(),
                      ck, {})


def test_slice_counts_and_layer_run():
    lab = np.full((10, 8, 8), ELEC, np.uint8)
    lab[:2] = COLL
    lab[2:7, :, :4] = CATH  # a 50 % cathode layer, z 2..7
    lab[5, :, :3] = ELEC    # one thinner slice inside it (37.5 %): still the same layer
    lab[1, 0, :5] = CATH    # 5 stray cathode voxels (8 %) in the collector's last slice
    lab[9, 0, :2] = CATH    # and 2 (3 %) far above
    counts = slice_counts(lab)
    assert counts.shape == (10, 256) and counts.dtype == np.int64
    assert counts[1, CATH] == 5 and counts.sum() == lab.size
    assert stats.layer_ranges(lab, CATH) == (1, 10)  # the old rule: any 1 % slice moves the boundary
    assert layer_run(counts, CATH, 0.01, 0.3) == (2, 7)
    lab[4, :, :4] = ELEC    # a whole slice without cathode splits it: the longest run wins
    lab[2:4, :, 4:6] = CATH
    assert layer_run(slice_counts(lab), CATH, 0.01, 0.3) == (2, 4)
    assert layer_run(counts, REDEP) is None


def test_electrode_scan_without_anode_finds_the_electrode_and_seeks_no_separator():
    from batterytwin.microstructure.regions import find_regions

    lab = np.zeros((12, 8, 8), np.uint8)  # pore 0, cathode_active 1, binder 2: an electrode alone
    lab[:, :, :5] = 1
    lab[:, 0, :] = 2
    lab[9:] = 0  # a pore-only margin above the electrode
    ids = {"pore": 0, "cathode_active": 1, "binder": 2}
    p = MicrostructureConfig.model_validate({"electrolyte_phase": "pore", "anode_phase": None})
    regions, flags = find_regions(slice_counts(lab), ids, p)
    assert regions == {"positive_electrode": (0, 9)}
    assert flags == {"separator_flag": "microstructure.anode_phase is null (no anode in the scan): "
                                       "separator not sought"}
    regions, flags = find_regions(slice_counts(lab), ids, p.model_copy(update={"anode_phase": "lithium_metal"}))
    assert "no lithium_metal layer" in flags["separator_flag"]


@pytest.fixture(scope="module")
def phantom():
    _, lab = make_phantom((48, 48, 48), seed=2)
    lay = PhantomParams(shape=(48, 48, 48), seed=2).layers
    cath, sep = lay["cathode"], lay["separator"]
    return lab, cath, sep, taufactor_z(lab[cath[0]:cath[1]] == ELEC)


def _noisy(lab, pattern: str, rng) -> np.ndarray:
    out = lab.copy()
    if pattern == "collector_slice_with_cathode":  # the demo's failure: cathode (and a little electrolyte) at z = 3
        out[3][rng.random(out[3].shape) < 0.05] = CATH
        out[3][rng.random(out[3].shape) < 0.01] = ELEC
    elif pattern == "lithium_inside_cathode":  # 3 % of the active voxels of the cathode's middle read as lithium
        mid = out[8:20]
        mid[(mid == CATH) & (rng.random(mid.shape) < 0.03)] = LI
    elif pattern == "speckles_at_both_interfaces":  # 8 % random classes in the slices next to the electrode
        for z in (3, 24, 35, 36):
            hit = rng.random(out[z].shape) < 0.08
            out[z][hit] = rng.choice([PORE, ELEC, LI, CATH, COLL], hit.sum())
    return out


@pytest.mark.parametrize("pattern", ["collector_slice_with_cathode", "lithium_inside_cathode",
                                     "speckles_at_both_interfaces"])
def test_stray_voxels_keep_regions_and_cathode_tau(phantom, pattern, tmp_path_factory):
    lab, cath, sep, tau_ref = phantom
    noisy = _noisy(lab, pattern, np.random.default_rng(7))
    # the noise is enough to break the old rule (a boundary moves or the separator vanishes) ...
    old_pe = stats.layer_ranges(noisy, CATH)
    old_an = stats.layer_ranges(noisy, LI)
    assert old_pe != cath or old_an[0] < cath[1]
    # ... and moves nothing now; walks of an unchanged mask are reused from the shared checkpoints
    cell = run_cell(noisy, tmp_path_factory.getbasetemp() / "walks")
    pe, sp = cell["positive_electrode"], cell["separator"]
    assert pe["z_range"] == list(cath) and pe["transport_z_range"] == list(cath)
    assert sp is not None and sp["z_range"] == list(sep) and "separator_flag" not in cell
    assert pe["tortuosity_converged"] is True
    assert pe["tortuosity_electrolyte"] == pytest.approx(tau_ref, rel=0.03)
    # TauFactor on the region's own mask is recorded beside the walk
    assert pe["tortuosity_taufactor"] == pytest.approx(taufactor_z(noisy[cath[0]:cath[1]] == ELEC), rel=1e-6)
    assert pe["electrolyte_volume_fraction"] == pytest.approx(np.mean(noisy[cath[0]:cath[1]] == ELEC))


def test_electrolyte_free_boundary_slice_is_left_out_of_the_walk(phantom, tmp_path_factory):
    """A collector slice read as 40 % cathode joins the electrode layer (thickness), but its 1 % of
    electrolyte would throttle the z flux: the walk runs on the slices that carry electrolyte."""
    lab, cath, _, tau_ref = phantom
    noisy = lab.copy()
    rng = np.random.default_rng(3)
    z = cath[0] - 1
    noisy[z][rng.random(noisy[z].shape) < 0.4] = CATH
    noisy[z][rng.random(noisy[z].shape) < 0.01] = ELEC
    cell = run_cell(noisy, tmp_path_factory.getbasetemp() / "walks")
    pe = cell["positive_electrode"]
    assert pe["z_range"] == [z, cath[1]] and pe["transport_z_range"] == list(cath)
    assert pe["tortuosity_electrolyte"] == pytest.approx(tau_ref, rel=0.03) and pe["tortuosity_converged"]
    # the same slab with that slice: what the old region measured (the interface, not the electrode)
    assert taufactor_z(noisy[z:cath[1]] == ELEC) > 3 * tau_ref


def _slab_cell(slab: np.ndarray) -> np.ndarray:
    """Collector (2 slices), then the slab (True: electrolyte, False: cathode); no anode."""
    return np.concatenate([np.full((2,) + slab.shape[1:], COLL, np.uint8), np.where(slab, ELEC, CATH).astype(np.uint8)])


@pytest.mark.parametrize("thickness", [5, 12, 30])
def test_thin_slab_tau_matches_taufactor(thickness):
    import porespy as ps

    slab = ps.generators.blobs([thickness, 40, 40], porosity=0.6, blobiness=1.5, seed=thickness)
    cell = run_cell(_slab_cell(slab))
    pe = cell["positive_electrode"]
    assert pe["z_range"] == [2, 2 + thickness] and pe["transport_z_range"] == [2, 2 + thickness]
    assert cell["separator"] is None and "no lithium_metal layer" in cell["separator_flag"]
    ref = taufactor_z(slab)
    assert ref > 1.5  # a tortuous medium, not a trivial one
    assert pe["tortuosity_electrolyte"] == pytest.approx(ref, rel=0.03)
    assert pe["tortuosity_taufactor"] == pytest.approx(ref, rel=1e-6)


def test_straight_channels_have_tau_one():
    slab = np.zeros((8, 32, 32), bool)
    slab[:, ::4, ::4] = slab[:, 1::4, ::4] = slab[:, ::4, 1::4] = slab[:, 1::4, 1::4] = True  # 2x2 channels along z
    pe = run_cell(_slab_cell(slab))["positive_electrode"]
    assert pe["electrolyte_volume_fraction"] == pytest.approx(0.25)
    assert pe["tortuosity_electrolyte"] == pytest.approx(1.0, rel=0.03)
    assert pe["tortuosity_taufactor"] == pytest.approx(1.0, rel=1e-3)
    assert pe["tortuosity_in_plane"] is None  # no in-plane path


# -- the gate: an untrusted tau never reaches PyBaMM silently ----------------------------------------

def _ms(**pe) -> dict:
    block = {"thickness_um": 10.0, "electrolyte_volume_fraction": 0.44, "active_material_volume_fraction": 0.5,
             "particle_radius_um": 2.0, "tortuosity_electrolyte": 1.50, "tortuosity_electrolyte_std": 0.02,
             "tortuosity_converged": True, "tortuosity_in_plane": 1.75, "tortuosity_taufactor": 1.49,
             "bruggeman": 1 - math.log(1.5) / math.log(0.44)}
    block.update(pe)
    sep = {"thickness_um": 6.0, "electrolyte_volume_fraction": 0.95, "tortuosity_electrolyte": 1.03,
           "tortuosity_converged": True, "tortuosity_in_plane": 1.03, "bruggeman": 1 - math.log(1.03) / math.log(0.95)}
    return {"schema": "batterytwin.microstructure/1", "cell": {"positive_electrode": block, "separator": sep}}


B_PE = "Positive electrode Bruggeman coefficient (electrolyte)"
T_PE = "Positive electrode tortuosity factor (electrolyte)"


@pytest.mark.parametrize("change, reason", [
    ({"tortuosity_electrolyte": 28.0, "tortuosity_electrolyte_std": 1.2, "tortuosity_converged": False,
      "tortuosity_in_plane": 1.7, "tortuosity_taufactor": None}, "did not converge"),            # the demo's value
    ({"tortuosity_electrolyte": 28.0, "tortuosity_in_plane": 1.7, "tortuosity_taufactor": None}, "in-plane tau 1.7"),
    ({"tortuosity_electrolyte": 6.0, "tortuosity_in_plane": None, "tortuosity_taufactor": None},
     "Bruggeman tau eps^-1/2 = 1.508"),
    ({"tortuosity_electrolyte": 1.80}, "TauFactor's 1.49"),
    ({"tortuosity_electrolyte": None, "tortuosity_converged": None, "bruggeman": None,
      "flag": "no percolating path along z"}, "no percolating path along z"),
])
@pytest.mark.parametrize("transport", ["bruggeman", "tortuosity_factor"])
def test_untrusted_tau_falls_back_with_a_recorded_warning(change, reason, transport, caplog):
    from batterytwin.cellsim.params import microstructure_substitutions

    warnings: list[str] = []
    with caplog.at_level("WARNING"):
        subs = {s.name: s.new for s in microstructure_substitutions(_ms(**change), "m.json", transport, warnings)}
    assert B_PE not in subs and T_PE not in subs  # the set keeps its transport ...
    assert subs["Positive electrode porosity"] == 0.44 and subs["Positive electrode thickness [m]"] == 1e-5
    assert len(warnings) == 1 and reason in warnings[0] and "cell.positive_electrode" in warnings[0]
    assert "keeping the parameter set's" in warnings[0] and warnings[0] in caplog.text
    # ... while the trusted separator's measurement is used
    assert ("Separator Bruggeman coefficient (electrolyte)" in subs) == (transport == "bruggeman")
    assert ("Separator tortuosity factor (electrolyte)" in subs) == (transport == "tortuosity_factor")


def test_trusted_tau_is_used_and_missing_separator_is_recorded():
    from batterytwin.cellsim.params import microstructure_substitutions

    warnings: list[str] = []
    ms = _ms()
    subs = {s.name: s.new for s in microstructure_substitutions(ms, "m.json", "bruggeman", warnings)}
    assert subs[B_PE] == pytest.approx(1 - math.log(1.5) / math.log(0.44), rel=1e-12) and warnings == []
    subs = {s.name: s.new for s in microstructure_substitutions(ms, "m.json", "tortuosity_factor", warnings)}
    assert subs[T_PE] == 1.5 and warnings == []
    ms["cell"]["separator"] = None
    ms["cell"]["separator_flag"] = "no lithium_metal layer above the positive electrode (z >= 24): separator not found"
    microstructure_substitutions(ms, "m.json", "bruggeman", warnings)
    assert warnings == ["m.json: cell.separator missing (no lithium_metal layer above the positive electrode "
                        "(z >= 24): separator not found): keeping the parameter set's values"]


def test_warning_reaches_the_sweep_record_and_the_report_table(tmp_path):
    pybamm = pytest.importorskip("pybamm")
    from batterytwin.cellsim.driver import prepare, resolve_config
    from batterytwin.cellsim.params import tortuosity_from_bruggeman
    from batterytwin.report.cellsim import cell_parameter_rows

    path = tmp_path / "m.json"
    path.write_text(json.dumps(_ms(tortuosity_electrolyte=28.0, tortuosity_converged=False, thickness_um=70.0)))
    pv, _, _, _, cell = prepare(str(path), resolve_config({"balance": {"enabled": False}}))
    (w,) = cell["microstructure_warnings"]  # cell goes into sweep.zarr attributes and sweep.json as is
    assert "tau 28 +/- 0.02 did not converge" in w
    b_set = pybamm.ParameterValues("OKane2022")[B_PE]
    assert pv[T_PE] == pytest.approx(tortuosity_from_bruggeman(0.44, b_set), rel=1e-12)  # the set's b at eps
    rows = cell_parameter_rows({**cell, "substitutions": {}})
    warn = [r for r in rows if r[0] == "WARNING"]
    assert rows[:len(warn)] == warn and warn[0][1] == "electrode"  # first, naming the region
    assert "tau 28 +/- 0.02 did not converge" in " ".join(r[2] for r in warn)
    assert "cell form" in [r[0] for r in rows]

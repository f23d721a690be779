"""Every report figure as a reader sees it: drawn with matplotlib's renderer from small stage outputs
(tests/report_inputs.py), then checked by tests/figure_checks.py (no text outside the figure or its
panel, no overlapping text, table texts inside their cells, one font per table, units with µm,
legends beside bars) and for the facts each figure must show: values as formatted (not cut),
units on axes and colour bars, rows only for the classes the sample has.
"""

from __future__ import annotations

import json

import matplotlib.colors as mcolors
import numpy as np
import pytest
import zarr
from matplotlib.figure import Figure

from batterytwin.report import cellsim, degradation, microstructure, scaling, style, training, volumes
from batterytwin.store import open_volume

from . import report_inputs as inputs
from .conftest import REPO
from .figure_checks import assert_clean, cell_texts, layout_problems, unit_of

SHAPE = (20, 24, 28)
VOXEL = (1.0, 0.5, 0.5)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    d = tmp_path_factory.mktemp("figures")
    image, labels, clean = inputs.write_ct(d, SHAPE, 1, VOXEL)
    inputs.write_denoise(d, image, clean, VOXEL)
    inputs.write_segment(d, labels, VOXEL)
    micro, _ = inputs.write_microstructure(d, labels, VOXEL)
    inputs.write_sweep(d / "sweep.zarr")
    inputs.write_degradation(d / "degradation.zarr")
    return {"dir": d, "micro": micro}


def test_checker_finds_each_kind_of_defect():
    """The checker itself: each planted defect is reported (so that a clean result means something)."""
    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1])
    ax.text(1.6, 0.5, "0.0n/a")                                  # past the panel's right edge
    ax.scatter([0.5], [0.2])
    ax.text(0.5, 0.2, "1.000", ha="center", va="center")         # over a precision marker
    ax.set_xlabel("thickness (um)")                              # um for µm
    tab = fig.add_subplot().table(cellText=[["2.25e-05 -> 3.1e-05"]], colWidths=[0.1], loc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    im = ax.imshow(np.zeros((2, 2)))
    fig.colorbar(im, ax=ax, label="entropy")                     # a colour bar without unit
    problems = "\n".join(layout_problems(fig))
    assert "'0.0n/a' outside its panel" in problems
    assert "writes um for µm" in problems
    assert "'1.000' covers a data marker" in problems
    assert "'2.25e-05 -> 3.1e-05' spills over its border" in problems
    assert "colour bar 'entropy' has no unit" in problems
    clean = Figure(figsize=(3, 2), layout="constrained")
    clean.add_subplot().set_xlabel("thickness (µm)")
    assert layout_problems(clean) == []


def test_training_legends_beside_bars_and_na_explained():
    metrics = inputs.segment_metrics(0)
    names = list(metrics["final_dice"])
    metrics["final_dice"][names[4]] = None                       # a class absent from the validation data
    metrics["final_dice"][names[0]] = 0.95                       # a long bar in the top row, where a legend went
    metrics["final_precision"] = {n: 0.97 for n in names}        # markers near the right end, where a legend went
    metrics["final_recall"] = {n: (None if n == names[4] else 0.99) for n in names}
    fig = training.plot_training(metrics)
    assert_clean(fig)
    ax_loss, ax_dice, ax_bar, _ = fig.axes[:4]
    na = [t for t in ax_bar.texts if t.get_text().startswith("n/a")]
    assert len(na) == 1 and "absent" in na[0].get_text()
    # the per-class panel has its class legend; the bar panel's legend names the markers
    assert [t.get_text() for t in ax_dice.get_legend().get_texts()] == [n.replace("_", " ") for n in names] + ["mean"]
    assert [t.get_text() for t in ax_bar.get_legend().get_texts()] == ["precision", "recall"]
    values = {t.get_text() for t in ax_bar.texts}
    assert "0.950" in values
    assert {f"{metrics['final_dice'][n]:.3f}" for n in names if n != names[4]} <= values


def _luminance(colour) -> float:
    r, g, b = mcolors.to_rgb(colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_slices_scale_bar_readable_and_map_without_banding(sample, tmp_path):
    d = sample["dir"]
    # an entropy map as inference writes it: float16 background near 1e-3, a few confident errors
    rng = np.random.default_rng(0)
    ent = (1e-3 + 2e-4 * rng.random(SHAPE)).astype(np.float16)
    ent[SHAPE[0] // 2, 5:8, 5:8] = 0.9
    inputs.write_volume(tmp_path / "uncertainty.zarr", ent, VOXEL, "segment", units="nats")
    panels = [volumes.load_panel("raw", d / "volume.zarr"), volumes.load_panel("segmented", d / "labels.zarr", "labels"),
              volumes.load_panel("uncertainty: MC dropout, 4 passes (nats)", tmp_path / "uncertainty.zarr", "map")]
    fig = volumes.plot_orthoslices(panels, "s")
    assert_clean(fig)
    image_axes = [ax for ax in fig.axes if ax.images]
    for ax in image_axes:  # black text on a light box: readable on any class colour or grey level
        bar = ax.scale_bar
        box = bar.patch
        assert box.get_visible() and box.get_alpha() >= 0.7
        text = bar.txt_label._text
        assert text.get_text().endswith("µm")
        assert abs(_luminance(box.get_facecolor()) - _luminance(text.get_color())) > 0.7
    # the near-constant background takes a sliver of the colour map, not all of it (no bands)
    im = image_axes[-1].images[0]
    background = np.asarray(im.get_array(), dtype=np.float64)
    background = background[background < 0.01]
    spread = np.ptp(im.norm(background))
    assert spread < 0.05, f"background spans {spread:.0%} of the colour map"
    bar = next(ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None)
    label = bar._colorbar.long_axis.get_label_text()
    assert unit_of(label) == "nats" and label == "uncertainty: MC dropout, 4 passes (nats)"  # the unit once


def three_phase_micro() -> dict:
    """microstructure.json of a scan with pore, electrolyte and active material only (the class map
    still names lithium metal, which has no voxel): lithium statistics all zero, no lithium layer."""
    return {
        "schema": "batterytwin.microstructure/1", "voxel_size_um": [0.7, 0.7, 0.7],
        "classes": {"0": "pore", "1": "electrolyte", "2": "cathode_active", "3": "lithium_metal"},
        "volume_fractions": {"pore": 0.1234567, "electrolyte": 0.3, "cathode_active": 0.5765433, "lithium_metal": 0.0},
        "cell": {"stacking_axis": "z", "electrolyte_phase": "electrolyte",
                 "positive_electrode": {"z_range": [0, 40], "thickness_um": 28.123456, "electrolyte_volume_fraction":
                                        0.30000001, "tortuosity_electrolyte": 2.3456789, "bruggeman": 1.7},
                 "separator": {}},
        "layers": {"pore": {"z_start": 0, "z_stop": 40, "thickness_um": 28.0},
                   "lithium_metal": {"z_start": 0, "z_stop": 0, "thickness_um": 0.0}},
        "lithium": {"count": 0, "volumes_um3": [], "equivalent_diameters_um": [], "total_volume_um3": 0.0,
                    "dendrite_length_um": 0.0, "max_protrusion_um": 0.0, "attached_count": 0},
        "interfaces": {"cathode_active|electrolyte": {"area_um2": 1e4, "specific_area_per_um": 0.0123456}},
    }


def test_microstructure_table_units_and_only_the_sample_classes():
    micro = three_phase_micro()
    fig = microstructure.plot_microstructure_table(micro)
    assert_clean(fig)
    assert list(fig.fractions) == ["pore", "electrolyte", "cathode_active"] and fig.absent == ["lithium_metal"]
    keys = [k for k, _ in fig.rows["other"]]
    assert not any(k.startswith("lithium") or "lithium_metal" in k for k in keys), keys
    assert "layers.pore.thickness_um" in keys
    rows = cell_texts(fig)
    flat = [c for r in rows for c in r]
    # units with the micro sign, values as formatted (3 significant digits), not cut
    assert ["electrode", "thickness (µm)", "28.1"] in rows
    assert "layers: pore: thickness (µm)" in flat and "interface cathode active|electrolyte (1/µm)" in flat
    assert "0.0123" in flat and "2.35" in flat
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["pore", "electrolyte", "cathode active"]
    assert "no voxel: lithium metal" in fig.axes[0].get_xlabel()


def test_tortuosity_tables_fit_and_non_percolating_phase_said(sample):
    micro = json.loads(json.dumps(sample["micro"]))
    msd = microstructure.read_msd(sample["dir"] / "msd.npz")
    rec = micro["cell"]["positive_electrode"]["tortuosity_detail"]
    rec["axes"]["y"].update(converged=False, stop_reason="step_budget")
    rec["axes"]["z"]["tau_taufactor"] = 2.0512345
    # a phase that percolates along no axis: its walkers never leave their clusters
    none = {a: {"eps": 0.0076, "D_eff_over_D_bulk": 0.0, "tau": None, "percolating": False, "converged": None,
                "stop_reason": None} for a in "zyx"}
    micro["tortuosity"]["redeposited_lithium"] = {"axes": none, "tensor_D_eff_over_D_bulk": np.zeros((3, 3)).tolist()}
    msd["volume.redeposited_lithium"] = {"t": msd["volume.pore"]["t"], "msd": np.zeros_like(msd["volume.pore"]["msd"]),
                                         "free_slope": msd["volume.pore"]["free_slope"]}
    keys = ["positive_electrode.solid_electrolyte", "volume.pore", "volume.redeposited_lithium"]
    fig = microstructure.plot_tortuosity(micro, msd, keys=keys)
    assert_clean(fig)
    rows = cell_texts(fig)
    headers = [r for r in rows if r[0] == "axis"]
    assert headers[0][:5] == ["axis", "ε", "D_eff/D_bulk", "τ", "σ(τ)"] and "τ TauFactor" in headers[0]
    assert "τ TauFactor" not in headers[1]                       # no cross-check for that walk: no column
    elec = fig.tables["positive_electrode.solid_electrolyte"]
    assert elec[1][-4] == "no: steps ran out" and elec[0][5] == "2.05"
    assert elec[0][2] == f"{rec['axes']['z']['D_eff_over_D_bulk']:.3g}"
    # the non-percolating phase: no curves, no fit, the statement instead
    ax = next(a for a in fig.axes if a.get_title() == "redeposited lithium, whole volume")
    assert not ax.lines and "does not percolate" in ax.texts[0].get_text()
    assert "volume.redeposited_lithium" not in fig.fits
    notes = [t.get_text() for a in fig.axes for t in a.texts if "TauFactor" in t.get_text()]
    assert any("cross-check" in n for n in notes)


def _table_attrs(path) -> None:
    g = zarr.open_group(str(path), mode="r+")
    g.attrs.update({
        "microstructure_warnings": ["microstructure.json: cell.positive_electrode: tortuosity_electrolyte walk not "
                                    "converged along z (step budget spent): keeping the parameter set's value"],
        "cell_form": "full_cell", "cell_form_reason": "the labels have no lithium-metal anode layer",
        "transport": "tortuosity_factor",
        "balance": {"n_to_p_parameter_set": 1.0423, "n_to_p_before": 0.8734, "n_to_p_after": 1.0423,
                    "rescaled": {"Negative electrode thickness [m]": 1.19}},
        "substitutions": {"Positive electrode porosity": {"old": 0.335, "value": 0.30123, "from":
                                                          "microstructure: cell.positive_electrode.electrolyte_volume_fraction"},
                          "Positive particle radius [m]": {"old": 5.22e-06, "value": 2.25e-06,
                                                           "from": "microstructure: cell.positive_electrode.particle_radius_um"}},
    })


def test_cellsim_figures_units_values_and_every_varied_input(sample, tmp_path):
    path = tmp_path / "sweep.zarr"
    arrays = inputs.write_sweep(path)
    _table_attrs(path)
    volt = cellsim.plot_voltage_curves(path)
    assert_clean(volt)
    bars = [ax for ax in volt.axes if getattr(ax, "_colorbar", None) is not None]
    assert [b._colorbar.long_axis.get_label_text() for b in bars] == ["C-rate (C)"]
    fade = cellsim.plot_capacity_fade(path)
    assert_clean(fade)
    flat = [c for r in cell_texts(fade) for c in r]
    assert "5.22e-06 → 2.25e-06" in flat and "1.042" in flat  # whole values, as formatted
    assert "0.8734 / 1.042" in flat
    # each varied input has its own panel: C-rate and temperature, with units
    assert [ax.get_xlabel() for ax in fade.input_axes] == ["C-rate (C)", "temperature (K)"]
    soh = arrays["soh"]
    last = np.array([row[np.isfinite(row)][-1] for row in soh])
    np.testing.assert_allclose(fade.final_soh, last)
    ok = arrays["status"] == 1
    np.testing.assert_allclose(fade.input_axes[1].collections[0].get_offsets()[:, 0], arrays["inputs"][ok, 1])


@pytest.mark.parametrize("name, label", [("discharge_c_rate", "discharge C-rate (C)"),
                                         ("ambient_temperature_C", "ambient temperature (°C)"),
                                         ("SEI kinetic rate constant [m.s-1]", "SEI kinetic rate constant (m s⁻¹)"),
                                         ("depth_of_discharge", "depth of discharge (fraction of nominal)")])
def test_sweep_input_labels_carry_units(name, label):
    assert cellsim.input_label(name) == label


def test_degradation_predictions_stop_at_the_truth_and_mark_censoring(tmp_path):
    path = tmp_path / "deg.zarr"
    deg = inputs.write_degradation(path)
    g = zarr.open_group(str(path), mode="r+")
    true = deg["soh_true"].copy()
    true[1, 20:] = np.nan                     # cell 1 (held out, censored): cycling stopped at point 20
    g["soh_true"][...] = true
    fig = degradation.plot_predictions(path, max_cells=4)
    assert_clean(fig)
    d = fig.drawn[1]
    assert d["censored"] and d["end"] == 20
    ax = next(a for a in fig.axes if a.get_title().startswith("cell1:"))
    mean_line = next(line for line in ax.lines if line.get_label() == "predicted (mean)")
    assert mean_line.get_xdata()[-1] == 19 * 10.0            # not past the last true point
    marks = [line for line in ax.lines if line.get_label() == "censored: truth ends"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == 19 * 10.0
    assert "vs ≥ " in ax.get_title()
    full = next(a for a in fig.axes if a.get_title().startswith("cell3:"))
    assert next(ln for ln in full.lines if ln.get_label() == "predicted (mean)").get_xdata()[-1] == 39 * 10.0


def test_rul_without_information_says_so(tmp_path):
    path = tmp_path / "deg.zarr"
    inputs.write_degradation(path, stack=False)
    g = zarr.open_group(str(path), mode="r+")
    for k in ("life_true", "life_pred", "life_lo", "life_hi"):  # every cell at the 30-cycle horizon
        g[k][...] = np.full(g[k].shape, 30.0, np.float32)
    fig = degradation.plot_rul(path)
    assert_clean(fig)
    assert fig.informative is False
    ax = fig.axes[0]
    said = ax.texts[0].get_text().replace("\n", " ")
    assert not ax.containers and "true and predicted life 30 cycles" in said and "no life information" in said
    # a normal store: the scatter, and the long title wrapped inside the figure
    inputs.write_degradation(path)
    fig = degradation.plot_rul(path)
    assert fig.informative is True and fig.axes[0].containers
    assert_clean(fig)


def test_every_default_figure_reads_cleanly(sample):
    """The figures of one sample as the report draws them (stand-in outputs): no layout problem."""
    d = sample["dir"]
    assert_clean(training.plot_training(inputs.segment_metrics(0)))
    assert_clean(volumes.plot_nlm(open_volume(d / "volume.zarr"), open_volume(d / "denoised.zarr"),
                                  open_volume(d / "clean.zarr")))
    assert_clean(microstructure.plot_microstructure_table(sample["micro"]))
    assert_clean(microstructure.plot_tortuosity(sample["micro"], microstructure.read_msd(d / "msd.npz")))
    assert_clean(degradation.plot_predictions(d / "degradation.zarr"))
    labels = open_volume(d / "truth.zarr").array[...]
    frames = [(f"cell_t{t:03d}", inputs.microstructure(labels, VOXEL, 0, t)[0]) for t in range(3)]
    series = microstructure.plot_series(frames)
    assert_clean(series)
    assert "total volume (µm³)" in [ax.get_title() for ax in series.axes]
    style.plt.close("all")


def test_scaling_figure_reads_cleanly():
    bench = scaling.latest_bench(REPO / "bench" / "results")
    if bench is None:
        pytest.skip("the repository holds no bench/chain.py result")
    assert_clean(scaling.plot_scaling(json.loads(bench.read_text()), str(bench)))


def test_rate_sensitivity_units_use_the_micro_sign():
    """The sweep records derivative units as ASCII ("Ah per um", cellsim/rate.py); the table shows µm."""
    from batterytwin.cellsim.rate import UNITS

    block = {"sensitivity": {"rows": [{"quantity": q, "factor": 1.0, "value": 1.0, "capacity_Ah": 0.39}
                                      for q in UNITS],
                             "derivatives": {q: {"dQ_dx": 0.039, "unit": u, "elasticity": 1.0}
                                             for q, u in UNITS.items()}}}
    rows = cellsim.rate_sensitivity_rows(block)
    assert [r[4] for r in rows] == ["0.039 Ah per unit tau (elasticity 1)",
                                    "0.039 Ah per unit volume fraction (elasticity 1)",
                                    "0.039 Ah per µm (elasticity 1)"]
    assert style.micro("um2 and um3, not drum") == "µm² and µm³, not drum"

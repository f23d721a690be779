"""Report figures and OME-Zarr export: every figure draws the values of its stage outputs.

The inputs are small stores in the formats of docs/interfaces.md (tests/report_inputs.py):
real phantoms for the CT stores, seeded stand-ins for the later stages. Each test reads the plotted
data back from the matplotlib artists and compares it with numbers computed here independently
(numpy on the arrays the test wrote, analytic slopes, skimage), and checks that the PNG changes
when the input does.
"""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest
import zarr

from batterytwin.ingest.phantom import CLASSES
from batterytwin.report import cellsim, degradation, microstructure, style, training, volumes
from batterytwin.report.ome import export_ome
from batterytwin.store import open_volume

from . import report_inputs as inputs

SHAPE = (20, 24, 28)
VOXEL = (1.0, 0.5, 0.5)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Two samples with different phantoms (seeds 1 and 2) and every stage output."""
    root = tmp_path_factory.mktemp("report")
    out = {}
    for seed in (1, 2):
        d = root / f"s{seed}"
        d.mkdir()
        image, labels, clean = inputs.write_ct(d, SHAPE, seed, VOXEL)
        metrics = inputs.write_denoise(d, image, clean, VOXEL, seed)
        pred = inputs.write_segment(d, labels, VOXEL, seed)
        micro, msd = inputs.write_microstructure(d, labels, VOXEL, seed, frame=seed)
        sweep = inputs.write_sweep(d / "sweep.zarr", seed)
        deg = inputs.write_degradation(d / "degradation.zarr", seed)
        seg = inputs.segment_metrics(seed)
        (d / "metrics.json").write_text(json.dumps(seg))
        out[seed] = dict(dir=d, image=image, labels=labels, clean=clean, denoise=metrics, pred=pred,
                         micro=micro, msd=msd, sweep=sweep, deg=deg, seg=seg)
    return out


def _png(fig, path):
    style.save(fig, path, dpi=60)
    img = mpimg.imread(path)
    assert path.stat().st_size > 1000 and img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img[..., :3].std() > 0.01  # not a blank canvas
    return path.read_bytes()


def test_nice_scale_bar_lengths():
    assert style.nice_length(14.0) == 2.0          # quarter of 14 um = 3.5 -> 2 um
    assert style.nice_length(100.0) == 20.0
    assert style.nice_length(0.04) == pytest.approx(0.01)
    assert style.format_um(0.5) == "500 nm" and style.format_um(20.0) == "20 µm"


def test_orthoslices_draw_the_mid_planes_with_physical_extent(samples, tmp_path):
    s = samples[1]
    d = s["dir"]
    panels = [volumes.Panel("raw", open_volume(d / "volume.zarr")),
              volumes.Panel("truth", open_volume(d / "truth.zarr"), "labels")]
    fig = volumes.plot_orthoslices(panels)
    zc, yc, xc = (n // 2 for n in SHAPE)
    expected = [s["image"][zc], s["image"][:, yc], s["image"][:, :, xc],
                s["labels"][zc], s["labels"][:, yc], s["labels"][:, :, xc]]
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 6
    for ax, plane in zip(image_axes, expected):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), plane)
    nz, ny, nx = SHAPE
    dz, dy, dx = VOXEL
    assert image_axes[0].images[0].get_extent() == [0, nx * dx, ny * dy, 0]   # z plane: x across, y down
    assert image_axes[1].images[0].get_extent() == [0, nx * dx, nz * dz, 0]   # y plane: x across, z down
    assert image_axes[2].images[0].get_extent() == [0, ny * dy, nz * dz, 0]   # x plane: y across, z down
    # the class legend names exactly the classes present in the drawn planes
    present = sorted(set(np.unique(np.concatenate([p.ravel() for p in expected[3:]]))) - {255})
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [f"{k} {CLASSES[k].replace('_', ' ')}" for k in present]
    # scale bar on the z plane: a round length near a quarter of the 14 um width
    bars = [a for a in image_axes[0].artists if hasattr(a, "txt_label")]
    assert bars and bars[0].txt_label.get_text() == "2 µm"
    a = _png(fig, tmp_path / "a.png")
    other = volumes.plot_orthoslices([volumes.Panel("raw", open_volume(samples[2]["dir"] / "volume.zarr"))])
    assert _png(other, tmp_path / "b.png") != a


def test_orthoslices_reject_mismatched_shapes(samples, tmp_path):
    from batterytwin.errors import InputError

    small = inputs.write_volume(tmp_path / "small.zarr", np.zeros((16, 16, 16), np.float32), VOXEL, "test")
    with pytest.raises(InputError, match="differs"):
        volumes.plot_orthoslices([volumes.Panel("a", open_volume(samples[1]["dir"] / "volume.zarr")),
                                  volumes.Panel("b", open_volume(small))])


def test_nlm_figure_shows_psnr_ssim_before_and_after(samples, tmp_path):
    s = samples[1]
    d = s["dir"]
    fig = volumes.plot_nlm(open_volume(d / "volume.zarr"), open_volume(d / "denoised.zarr"),
                           open_volume(d / "clean.zarr"), json.loads((d / "denoise.json").read_text()))
    q = fig.quality
    z = SHAPE[0] // 2
    ref = s["clean"][z].astype(np.float64)
    rng = s["denoise"]["data_range"]
    den = np.asarray(open_volume(d / "denoised.zarr").array[z], np.float64)
    for key, img in (("plane_noisy", s["image"][z]), ("plane_denoised", den)):
        mse = np.mean((img.astype(np.float64) - ref) ** 2)
        assert q[key]["psnr_db"] == pytest.approx(10 * np.log10(rng**2 / mse), rel=1e-9)
    assert q["plane_denoised"]["psnr_db"] > q["plane_noisy"]["psnr_db"]  # smoothing removes noise
    assert q["plane_denoised"]["ssim"] > q["plane_noisy"]["ssim"]
    assert q["volume"] == pytest.approx({"psnr_db": s["denoise"]["psnr_db"], "ssim": s["denoise"]["ssim"]})
    title = fig._suptitle.get_text()
    assert f"PSNR {s['denoise']['psnr_db']:.1f} dB" in title and "patch_size=3" in title
    # the displayed planes are the stores' planes
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), s["image"][z])
    _png(fig, tmp_path / "nlm.png")


def test_training_figure_plots_loss_and_dice_from_metrics(samples, tmp_path):
    seg = samples[1]["seg"]
    fig = training.plot_training(seg)
    ax_loss = fig.axes[0]
    np.testing.assert_allclose(ax_loss.lines[0].get_ydata(), [c["loss"] for c in seg["loss_curve"]])
    widths = [b.get_width() for b in fig.bars]
    final = [seg["final_dice"][CLASSES[k]] for k in range(6)]
    np.testing.assert_allclose(widths, [np.nan if v is None else v for v in final])
    # the Dice curve of class 0 over the validation steps
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), [v["dice"][0] for v in seg["validation"]])
    a = _png(fig, tmp_path / "t1.png")
    assert _png(training.plot_training(samples[2]["seg"]), tmp_path / "t2.png") != a


def test_tortuosity_fit_recovers_the_einstein_slope(samples, tmp_path):
    s = samples[1]
    msd = microstructure.read_msd(s["dir"] / "msd.npz")
    assert set(msd) == {"volume.solid_electrolyte", "volume.pore", "positive_electrode.solid_electrolyte",
                        "separator.solid_electrolyte"}
    np.testing.assert_array_equal(msd["volume.pore"]["msd"], s["msd"]["volume.pore.msd_um2"][:, :3])
    fig = microstructure.plot_tortuosity(s["micro"], msd)
    # cell regions first (what PyBaMM gets), then the whole-volume electrolyte
    assert list(fig.fits) == ["positive_electrode.solid_electrolyte", "separator.solid_electrolyte",
                              "volume.solid_electrolyte"]
    slope, intercept, start = fig.fits["volume.solid_electrolyte"]
    ratio = np.array([0.30, 0.55, 0.60]) + 0.02 * 1
    free = 2 * np.array(VOXEL) ** 2 / 6
    assert start == 200.0  # the stage's fit window from the JSON record
    np.testing.assert_allclose(slope, ratio * free, rtol=1e-9)      # <dx^2> = 2 D t
    np.testing.assert_allclose(intercept, 0.0, atol=1e-9)
    np.testing.assert_allclose(fig.ratios["volume.solid_electrolyte"], ratio, rtol=1e-9)
    texts = {c.get_text().get_text() for ax in fig.axes for t in ax.tables for c in t.get_celld().values()}
    for a in "zyx":
        assert f"{s['micro']['tortuosity']['solid_electrolyte']['axes'][a]['tau']:.3g}" in texts
    _png(fig, tmp_path / "tau.png")
    # the pore phase does not percolate along z: no tau, "n/a" in its table
    pore = microstructure.plot_tortuosity(s["micro"], msd, keys=["volume.pore"])
    cells = {c.get_text().get_text() for t in pore.axes[1].tables for c in t.get_celld().values()}
    assert "n/a" in cells and "no" in cells


def test_tortuosity_figure_agrees_with_the_microstructure_stage(samples, tmp_path, cli):
    """On real stage output (batterytwin microstructure, small walk): the Einstein fit drawn over the
    stage's fit window gives the stage's own D_pore/D_bulk on every percolating axis."""
    truth = inputs.write_volume(tmp_path / "truth.zarr", samples[1]["labels"], (0.5, 0.5, 0.5), "phantom",
                                classes=inputs.CLASS_ATTRS, ignore_label=255)  # cubic voxels: lattice walk
    out, npz = tmp_path / "micro.json", tmp_path / "msd.npz"
    code, err = cli("microstructure", "--labels", truth, "--output", out, "--msd", npz,
                    "--walkers", "256", "--steps", "200", "--records", "10", "--batches", "4",
                    "--bootstrap", "8", "--no-surface-area", "--checkpoint-dir", tmp_path / "ck",
                    "--config-json", '{"walk": {"max_steps": 200, "max_walkers": 256}}')  # a fixed (short) walk
    assert code == 0, err
    micro = json.loads(out.read_text())
    fig = microstructure.plot_tortuosity(micro, microstructure.read_msd(npz), max_panels=4)
    checked = 0
    for key, ratio in fig.ratios.items():
        rec = microstructure.tortuosity_record(micro, key)
        for i, a in enumerate("zyx"):
            if rec["axes"][a]["percolating"]:
                assert ratio[i] == pytest.approx(rec["axes"][a]["D_pore_over_D_bulk"], rel=1e-9)
                checked += 1
    assert checked >= 6
    _png(fig, tmp_path / "real_tau.png")
    table = microstructure.plot_microstructure_table(micro)
    assert fig.ratios and table.fractions == pytest.approx(micro["volume_fractions"])
    assert table.rows["other"][0][0].startswith("lithium.")  # lithium statistics come first


def test_read_msd_rejects_files_without_curves(tmp_path):
    from batterytwin.errors import InputError

    np.savez(tmp_path / "x.npz", foo=np.zeros(3))
    with pytest.raises(InputError, match="no MSD curves"):
        microstructure.read_msd(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", **{"volume.pore.msd_um2": np.zeros((5, 6))})
    with pytest.raises(InputError, match="time axis"):
        microstructure.read_msd(tmp_path / "y.npz")


def test_microstructure_table_fractions_are_those_of_the_labels(samples, tmp_path):
    s = samples[2]
    fig = microstructure.plot_microstructure_table(s["micro"])
    counts = np.bincount(s["labels"].ravel(), minlength=6)
    expected = {CLASSES[k]: counts[k] / s["labels"].size for k in range(6)}
    assert fig.fractions == pytest.approx(expected)
    assert ("lithium.count", 3 + 2) in fig.rows["other"]
    _png(fig, tmp_path / "table.png")


def test_series_follows_the_frames(samples, tmp_path):
    micros = [("t000", samples[1]["micro"]), ("t001", samples[2]["micro"])]
    fig = microstructure.plot_series(micros)
    np.testing.assert_array_equal(fig.growth["count"], [4, 5])    # 3 + frame
    key = "fraction redeposited lithium"
    np.testing.assert_allclose(fig.growth[key], [m["volume_fractions"]["redeposited_lithium"] for _, m in micros])
    _png(fig, tmp_path / "series.png")


def test_voltage_curves_are_the_qv_matrix(samples, tmp_path):
    s = samples[1]
    fig = cellsim.plot_voltage_curves(s["dir"] / "sweep.zarr")
    grid = np.linspace(4.2, 3.0, 25)
    qv, status = s["sweep"]["qv_capacity_Ah"], s["sweep"]["status"]
    ok = np.flatnonzero(status == 1)
    first, last = fig.axes[0], fig.axes[1]
    assert len(first.lines) == len(ok) == 5
    for line, i in zip(first.lines, ok):
        np.testing.assert_allclose(line.get_xdata(), qv[i, 0])
        np.testing.assert_allclose(line.get_ydata(), grid)
    for line, i in zip(last.lines, ok):
        np.testing.assert_allclose(line.get_xdata(), qv[i, -1])
    # coloured by C-rate (first varied input), styled by temperature
    colours = [line.get_color() for line in first.lines]
    rates = s["sweep"]["inputs"][ok, 0]
    assert colours[0] == colours[3] and rates[0] == rates[3] and colours[0] != colours[1]
    assert {line.get_linestyle() for line in first.lines} == {"-", "--"}
    _png(fig, tmp_path / "v.png")


def test_capacity_fade_draws_soh_and_marks_stopped_runs(samples, tmp_path):
    s = samples[1]
    fig = cellsim.plot_capacity_fade(s["dir"] / "sweep.zarr")
    soh = s["sweep"]["soh"]
    ax = fig.axes[0]
    curves = [ln for ln in ax.lines if ln.get_linestyle() in ("-", "--")]
    assert len(curves) == soh.shape[0]
    for line, row in zip(curves, soh):
        np.testing.assert_allclose(line.get_ydata(), row[np.isfinite(row)])
    marks = [ln for ln in ax.lines if ln.get_marker() == "x"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == 7 and marks[0].get_ydata()[0] == pytest.approx(soh[4, 6])
    a = _png(fig, tmp_path / "f1.png")
    assert _png(cellsim.plot_capacity_fade(samples[2]["dir"] / "sweep.zarr"), tmp_path / "f2.png") != a


def test_degradation_intervals_are_sample_quantiles(samples, tmp_path):
    s = samples[1]
    path = s["dir"] / "degradation.zarr"
    fig = degradation.plot_predictions(path, max_cells=4)
    deg = s["deg"]
    assert sorted(fig.drawn) == [1, 3, 5, 7]  # the held-out (evaluated) cells
    for i, d in fig.drawn.items():
        samp = deg["soh_samples"][i].astype(np.float64)
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            np.testing.assert_allclose(d["lo"], np.nanquantile(samp, 0.05, axis=0), equal_nan=True)
        np.testing.assert_allclose(d["true"], deg["soh_true"][i])
    _png(fig, tmp_path / "d.png")
    # the RUL figure draws the default predictor (the stack), and beside it every point predictor's score,
    # the best one named, the stack's members with weight and RMSE
    rul = degradation.plot_rul(path)
    np.testing.assert_array_equal(rul.points[0], deg["life_true"])
    np.testing.assert_array_equal(rul.points[1], deg["life_stack"])
    assert rul.predictor == "stack"
    assert rul.axes[0].get_title().replace("\n", " ") == "stack (default predictor); RUL RMSE 10.5 cycles; coverage 100%"
    text = rul.axes[1].texts[0].get_text()
    assert "best point predictor: random forest" in text and "* random forest" in text
    assert "diffusion model                14" in text and "contains the baselines: variance" in text
    assert [ln.split()[0] for ln in text.splitlines() if ln.startswith("  ") and "0." in ln] == ["ridge", "variance"]
    _png(rul, tmp_path / "r.png")
    # a store written by an older batterytwin: "model" is the diffusion model, drawn from life_pred
    old = inputs.write_degradation(tmp_path / "old.zarr", 1, stack=False)
    rul = degradation.plot_rul(tmp_path / "old.zarr")
    np.testing.assert_array_equal(rul.points[1], old["life_pred"])
    assert rul.predictor == "diffusion" and rul.axes[0].get_title().replace("\n", " ") == "diffusion model; RUL RMSE 13.5 cycles; coverage 88%"
    # the fallback: the diffusion model is the default predictor, and the figure gives the reason
    g = zarr.open_group(str(tmp_path / "old.zarr"), mode="r+")
    diffusion = {**g.attrs["metrics"]["model"], "name": "diffusion"}
    g.attrs["metrics"] = {"model": {**diffusion, "reason": "m.pt: 3 uncensored training cell(s) (of 7), the stack "
                                    "needs at least 6"}, "diffusion": diffusion, "best_point_predictor": "model"}
    rul = degradation.plot_rul(tmp_path / "old.zarr")
    text = rul.axes[1].texts[0].get_text()
    assert rul.predictor == "diffusion" and rul.axes[0].get_title().replace("\n", " ").startswith("diffusion model (default predictor);")
    assert "best point predictor: diffusion model (default)" in text and "3 uncensored training" in text


def test_ome_export_reads_back_with_ome_zarr_reader(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    shape, voxel = (32, 32, 40), (1.0, 0.5, 0.25)
    d = tmp_path / "s"
    d.mkdir()
    image, labels, _ = inputs.write_ct(d, shape, 3, voxel)
    out = export_ome(d / "volume.zarr", tmp_path / "v.ome.zarr", {"truth": d / "truth.zarr"}, levels=3, chunk=16)
    nodes = list(Reader(parse_url(str(out)))())
    img = nodes[0]
    # levels 0, 1, 2 (a third would make z = 4 < 8 voxels)
    assert [tuple(a.shape) for a in img.data] == [shape, (16, 16, 20), (8, 8, 10)]
    np.testing.assert_array_equal(np.asarray(img.data[0]), image)
    block_mean = image.reshape(16, 2, 16, 2, 20, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(np.asarray(img.data[1]), block_mean, rtol=1e-5, atol=1e-6)
    scales = [t[0]["scale"] for t in img.metadata["coordinateTransformations"]]
    assert scales == [[v * f for v in voxel] for f in (1, 2, 4)]
    assert [a["unit"] for a in img.metadata["axes"]] == ["micrometer"] * 3
    lab = next(n for n in nodes if n.zarr.path.endswith("labels/truth"))
    np.testing.assert_array_equal(np.asarray(lab.data[0]), labels)
    coarse = np.asarray(lab.data[1])
    assert coarse.dtype == np.uint8 and coarse.shape == (16, 16, 20)
    # nearest neighbour: every coarse label is one of the 8 labels of its block (no averaged ids)
    blocks = labels.reshape(16, 2, 16, 2, 20, 2).transpose(0, 2, 4, 1, 3, 5).reshape(16, 16, 20, 8)
    assert (blocks == coarse[..., None]).any(axis=-1).all()
    assert [t[0]["scale"] for t in lab.metadata["coordinateTransformations"]] == scales
    props = zarr.open_group(str(out / "labels" / "truth"), mode="r").attrs["ome"]["image-label"]["properties"]
    assert {p["label-value"]: p["class"] for p in props} == CLASSES


def test_cli_figures_and_bad_input(samples, tmp_path, cli):
    d = samples[1]["dir"]
    png = tmp_path / "train.png"
    code, err = cli("report", "training", d / "metrics.json", "--out", png, "--dpi", "50")
    assert code == 0, err
    assert mpimg.imread(png).shape[1] == int(style.DOUBLE_COLUMN_IN * 50) or png.stat().st_size > 1000
    code, err = cli("report", "slices", "--raw", tmp_path / "missing.zarr", "--out", tmp_path / "x.png")
    assert code == 2 and "missing.zarr: no such store" in err
    code, err = cli("report", "ome", "--volume", d / "volume.zarr", "--labels", "nolabel", "--out", tmp_path / "o")
    assert code == 2 and "NAME=PATH" in err
    code, err = cli("report", "voltage", d / "metrics.json", "--out", tmp_path / "v.png")
    assert code == 2 and "metrics.json" in err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "v.png").exists()


def test_report_targets_follow_each_stage_samples():
    from batterytwin.report import targets

    specs = {"s_t000": {"series": "s"}, "s_t001": {"series": "s"}, "b": {}}
    assert targets.series_frames(list(specs), specs) == {"s": ["s_t000", "s_t001"]}
    figures = {"ingest": ["i.png"], "denoise": ["d.png"]}
    assert targets.flatten(figures, ()) == ["i.png", "d.png"]
    assert targets.flatten(figures, ("denoise",)) == ["d.png"]
    with pytest.raises(ValueError, match="unknown stage"):
        targets.flatten(figures, ("nope",))
    assert targets.sample_inputs("results/a", {"raw": "volume.zarr"}, synthetic=True, clean=True) == {
        "raw": "results/a/volume.zarr", "truth": "results/a/truth.zarr", "clean": "results/a/clean.zarr"}
    assert targets.sample_inputs("results/a", {"raw": "volume.zarr"}, synthetic=False) == {"raw": "results/a/volume.zarr"}
    rules = {"r1": {"stage": "ingest", "output": "results/{sample}/f.png"},
             "r2": {"stage": "degradation", "output": "results/{sample}/g.png"},
             "r3": {"stage": "degradation", "output": "results/figures/real_{evaluation}.png"},
             "r4": {"stage": "ingest", "output": "results/figures/model.png"}}
    values = {"sample": {"ingest": ["a", "b"], "degradation": ["b"]}, "evaluation": ["m1", "m2"]}
    assert targets.figure_targets(rules, values) == {
        "ingest": ["results/a/f.png", "results/b/f.png", "results/figures/model.png"],
        "degradation": ["results/b/g.png", "results/figures/real_m1.png", "results/figures/real_m2.png"]}

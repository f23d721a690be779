"""``batterytwin report <figure> ...``: one paper-style PNG per call, and the OME-Zarr export.

Every figure sub-command reads only the parts of the stage outputs it draws and writes one PNG
atomically (``-o/--output``). The Snakemake rules in ``workflow/rules/report.smk`` call these.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..cliargs import InputsOutputs, arrange
from ..errors import InputError
from ..paths import guard
from ..store import open_volume, read_json
from .config import ReportConfig

log = logging.getLogger(__name__)
DEFAULTS = ReportConfig()  # the report section's defaults (one source: report/config.py)


def _figure_parser(sub, name: str, help_: str, description: str, source: tuple[str, str, str] | None = None,
                   nargs: str | None = None) -> tuple[argparse.ArgumentParser, InputsOutputs]:
    """A figure's parser: ``-o/--output PNG`` (old ``--out``), ``--dpi``, and with ``source`` =
    (dest, metavar, help) its one input as ``-i/--input`` (old: positional)."""
    p = sub.add_parser(name, help=help_, description=description)
    io = InputsOutputs(p)
    if source:
        dest, metavar, what = source
        io.input(dest, metavar=metavar, help=what, positional=True, nargs=nargs)
    io.output("out", metavar="PNG", old=("--out",), help="output figure (PNG)")
    p.add_argument("--dpi", type=int, default=DEFAULTS.dpi, help="resolution of the PNG")
    return p, io


def register(subparsers) -> None:
    top = subparsers.add_parser(
        "report", help="paper-ready figures of the stage outputs, and the OME-Zarr export",
        description="Figures (matplotlib, one paper style) from the stores and JSON files of the "
        "pipeline stages, one PNG per call, and an OME-Zarr multiscale export of a volume with its "
        "label images for napari/neuroglancer. Only the slices/rows a figure draws are read.")
    sub = top.add_subparsers(dest="figure", metavar="<figure>", required=True)

    p, io = _figure_parser(sub, "slices", "orthogonal mid-plane slices of volume/label stores",
                       "Rows of z, y, x mid-planes (scale bar in µm from voxel_size_um, class colours "
                       "and legend for label stores), in the order raw, denoised, labels, truth, uncertainty.")
    for flag, what in (("--raw", "CT volume store (volume.zarr)"), ("--denoised", "denoised store"),
                       ("--labels", "segmentation label store"), ("--truth", "ground-truth label store (phantom)"),
                       ("--uncertainty", "uncertainty store (entropy; the panel names the method)")):
        io.add(flag, metavar="ZARR", help=what)
    p.add_argument("--title", help="figure title")
    arrange(p, common=("--title",))
    p.set_defaults(func=run_slices)

    p, io = _figure_parser(sub, "nlm", "NLM denoising before/after with PSNR/SSIM",
                       "z mid-plane of the noisy, denoised (and noise-free) images, the removed noise, a "
                       "through-plane profile; PSNR/SSIM of the plane before/after and of the volume.")
    io.add("--noisy", required=True, metavar="ZARR", help="input of the denoise stage (volume.zarr)")
    io.add("--denoised", required=True, metavar="ZARR", help="denoised.zarr")
    io.add("--clean", metavar="ZARR", help="noise-free reference (clean.zarr, phantom only)")
    io.add("--metrics", metavar="JSON", help="denoise.json written by the denoise stage")
    arrange(p)
    p.set_defaults(func=run_nlm)

    p, io = _figure_parser(sub, "tortuosity", "random-walk MSD curves with linear fit and tortuosity tensor",
                           "Per transport phase: MSD vs walk time per axis with the linear fit, and a table of "
                           "eps, D_eff/D_bulk, tau per axis and the D_eff/D_bulk tensor.",
                           ("microstructure", "JSON", "microstructure.json"))
    io.add("--msd", metavar="NPZ", help="msd.npz (MSD curves); without it: tables only")
    p.add_argument("--phase", action="append", help="phase(s) to draw (default: the electrolyte first)")
    arrange(p, common=("--phase",))
    p.set_defaults(func=run_tortuosity)

    for name, help_, description, (arg, metavar, arg_help), func in (
            ("training", "segmentation training loss, per-class Dice, precision, recall and calibration",
             "Loss curve, validation Dice per class over training, final Dice, precision and recall per "
             "class, reliability diagram with the expected calibration error.",
             ("metrics", "JSON", "segmentation metrics, e.g. results/models/segment/metrics.json"), run_training),
            ("microstructure", "table of the measured microstructure quantities",
             "Volume fractions, the cell parameters handed to PyBaMM, surface areas, thicknesses, lithium "
             "statistics: every number of microstructure.json.", ("microstructure", "JSON", "microstructure.json"),
             run_table),
            ("rul", "predicted vs true cycle life (RUL) with intervals",
             "Median predicted cycle life with its interval against the true life, every cell.",
             ("predictions", "ZARR", "degradation.zarr"), run_rul)):
        p, _ = _figure_parser(sub, name, help_, description, (arg, metavar, arg_help))
        arrange(p)
        p.set_defaults(func=func)

    p, _ = _figure_parser(sub, "series", "lithium growth over the frames of a time series",
                          "Volume fractions of the lithium classes and the lithium statistics per frame.",
                          ("microstructure", "JSON", "microstructure.json of each frame, in order"), nargs="+")
    p.add_argument("--names", nargs="+", help="frame names (default: the parent folder of each file)")
    arrange(p, common=("--names",))
    p.set_defaults(func=run_series)

    for name, help_, description, func in (
            ("voltage", "PyBaMM discharge voltage curves of the sweep",
             "Voltage vs discharge capacity (qv_capacity_Ah on voltage_grid_V) of the first and last early "
             "cycle per condition, coloured by the first varied input.", run_voltage),
            ("fade", "capacity fade across the sweep, coloured by condition",
             "SOH and discharge capacity per cycle for each condition; stopped runs marked.", run_fade)):
        p, _ = _figure_parser(sub, name, help_, description, ("sweep", "ZARR", "sweep.zarr"))
        p.add_argument("--max-conditions", type=int, default=DEFAULTS.max_conditions,
                       help="conditions drawn (spread over the sweep)")
        arrange(p, common=("--max-conditions",))
        p.set_defaults(func=func)

    p, _ = _figure_parser(sub, "rate", "capacity vs C-rate, plating and tau sensitivity of the fresh cell",
                          "Discharge capacity vs C-rate (measured electrode vs the parameter set's), plated "
                          "lithium vs charge C-rate, and the sensitivity table (cellsim.rate_capability).",
                          ("sweep", "ZARR", "sweep.zarr (simulated with cellsim.rate_capability enabled)"))
    arrange(p)
    p.set_defaults(func=run_rate)

    p, _ = _figure_parser(sub, "degradation", "degradation-model SOH predictions with intervals vs truth",
                          "Sampled SOH curves per cell: mean, central interval (interval_level) and the truth.",
                          ("predictions", "ZARR", "degradation.zarr"))
    p.add_argument("--max-cells", type=int, default=DEFAULTS.max_cells, help="cells drawn (held-out cells first)")
    arrange(p, common=("--max-cells",))
    p.set_defaults(func=run_degradation)

    p, _ = _figure_parser(sub, "twin", "hybrid twin: measured vs physics vs hybrid SOH, and the error table",
                          "Measured, physics-fit and hybrid SOH curves (hybrid band) for a few cells of a twin "
                          "store, and RUL RMSE / interval coverage of physics, hybrid, diffusion and baselines.",
                          ("twin", "ZARR", "twin store, e.g. results/twin/{evaluation}.zarr"))
    p.add_argument("--max-cells", type=int, default=DEFAULTS.max_cells, help="cells drawn (evaluated cells)")
    arrange(p, common=("--max-cells",))
    p.set_defaults(func=run_twin)

    p, _ = _figure_parser(sub, "scaling", "cost and peak memory of each stage vs voxels (bench/chain.py)",
                          "Log-log wall time and peak RSS per stage against the volume's voxels, from the JSON "
                          "of bench/chain.py, with each stage's fitted exponent and a linear guide.",
                          ("bench", "JSON", "bench/chain.py result, e.g. bench/results/chain-cpu-<date>.json"))
    arrange(p)
    p.set_defaults(func=run_scaling)

    q = sub.add_parser("ome", help="OME-Zarr multiscale export of a volume and its labels (napari)",
                       description="Write an OME-NGFF 0.5 (zarr v3) multiscale image of the input volume with "
                       "--levels extra levels (local mean) and each --labels store as an image-label "
                       "(nearest-neighbour pyramid, class colours and names), physical scale in µm.")
    io = InputsOutputs(q)
    io.input("volume", metavar="ZARR", old=("--volume",), help="volume store")
    io.add("--labels", action="append", default=[], metavar="NAME=ZARR",
           help="label store to add as labels/NAME (repeat)")
    io.output("out", metavar="OME_ZARR", old=("--out",), help="output, e.g. results/s1/ome/volume.ome.zarr")
    q.add_argument("--levels", type=int, default=DEFAULTS.ome_levels, help="extra pyramid levels (factors 2, 4, ...)")
    q.add_argument("--chunk", type=int, default=DEFAULTS.ome_chunk, help="chunk edge of every level")
    arrange(q, common=("--levels",))
    q.set_defaults(func=run_ome)
    for figure in sub.choices.values():  # cli.build_parser guards only the top-level commands
        guard(figure, "report")


def _save(fig, args) -> None:
    from .style import save

    save(fig, args.out, dpi=args.dpi)
    log.info("wrote %s", args.out)


def uncertainty_title(attrs) -> str:
    """Panel title of an uncertainty store, naming the method recorded by ``segment``."""
    method = attrs.get("uncertainty_method")
    if method == "mc_dropout":
        return f"uncertainty: MC dropout, {attrs.get('mc_samples')} passes (nats)"
    if method == "entropy":
        return "uncertainty: softmax entropy (nats)"
    return "uncertainty (nats)"  # gmm: class-posterior entropy; stores written before the method was recorded


def run_slices(args: argparse.Namespace) -> None:
    from .volumes import Panel, plot_orthoslices

    spec = [("raw CT", args.raw, "image", "--raw"), ("NLM denoised", args.denoised, "image", "--denoised"),
            ("segmented", args.labels, "labels", "--labels"), ("ground truth", args.truth, "labels", "--truth")]
    panels = [Panel(t, _volume(p, "ct" if k == "image" else k, f"report slices {flag}"), k)
              for t, p, k, flag in spec if p]
    if args.uncertainty:
        unc = _volume(args.uncertainty, "uncertainty", "report slices --uncertainty")
        panels.append(Panel(uncertainty_title(unc.attrs), unc, "map"))
    if not panels:
        raise InputError("report slices: give at least one of --raw/--denoised/--labels/--truth/--uncertainty")
    _save(plot_orthoslices(panels, title=args.title), args)


def run_nlm(args: argparse.Namespace) -> None:
    from .volumes import plot_nlm

    metrics = read_json(args.metrics, "denoise metrics") if args.metrics else None
    clean = _volume(args.clean, "ct", "report nlm --clean") if args.clean else None
    noisy = _volume(args.noisy, "ct", "report nlm --noisy")
    _save(plot_nlm(noisy, _volume(args.denoised, "ct", "report nlm --denoised"), clean, metrics), args)


def _volume(path: str, kind: str, role: str):
    """The volume store at ``path``, refused unless it is of ``kind`` (:func:`batterytwin.kinds.require_kind`)."""
    from ..kinds import require_kind

    vol = open_volume(path)
    require_kind(vol, kind, role)
    return vol


def run_training(args: argparse.Namespace) -> None:
    from .training import plot_training

    _save(plot_training(read_json(args.metrics, "segmentation metrics"), args.metrics), args)


def run_tortuosity(args: argparse.Namespace) -> None:
    from .microstructure import plot_tortuosity, read_msd

    micro = read_json(args.microstructure, "microstructure.json")
    _save(plot_tortuosity(micro, read_msd(args.msd) if args.msd else None, args.phase), args)


def run_table(args: argparse.Namespace) -> None:
    from .microstructure import plot_microstructure_table

    _save(plot_microstructure_table(read_json(args.microstructure, "microstructure.json")), args)


def run_series(args: argparse.Namespace) -> None:
    from .microstructure import plot_series

    names = args.names or [Path(p).parent.name for p in args.microstructure]
    if len(names) != len(args.microstructure):
        raise InputError(f"report series: {len(names)} --names for {len(args.microstructure)} files")
    micros = [(n, read_json(p, "microstructure.json")) for n, p in zip(names, args.microstructure)]
    _save(plot_series(micros), args)


def run_voltage(args: argparse.Namespace) -> None:
    from .cellsim import plot_voltage_curves

    _save(plot_voltage_curves(args.sweep, args.max_conditions), args)


def run_fade(args: argparse.Namespace) -> None:
    from .cellsim import plot_capacity_fade

    _save(plot_capacity_fade(args.sweep, args.max_conditions), args)


def run_rate(args: argparse.Namespace) -> None:
    from .cellsim import plot_rate_capability

    _save(plot_rate_capability(args.sweep), args)


def run_degradation(args: argparse.Namespace) -> None:
    from .degradation import plot_predictions

    _save(plot_predictions(args.predictions, args.max_cells), args)


def run_rul(args: argparse.Namespace) -> None:
    from .degradation import plot_rul

    _save(plot_rul(args.predictions), args)


def run_twin(args: argparse.Namespace) -> None:
    from .twin import plot_twin

    _save(plot_twin(args.twin, args.max_cells), args)


def run_scaling(args: argparse.Namespace) -> None:
    from .scaling import plot_scaling

    _save(plot_scaling(read_json(args.bench, "bench/chain.py result"), args.bench), args)


def run_ome(args: argparse.Namespace) -> None:
    from .ome import export_ome

    labels = {}
    for item in args.labels:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"report ome --labels {item!r}: expected NAME=PATH")
        labels[name] = path
    export_ome(args.volume, args.out, labels, levels=args.levels, chunk=args.chunk)
    log.info("wrote %s", args.out)

"""``batterytwin ingest`` and ``batterytwin phantom``."""

from __future__ import annotations

import argparse
import json
import logging
import math

from ..contracts import CLASSES, IGNORE_LABEL, format_class_map
from .. import store
from ..cliargs import InputsOutputs, arrange, deprecated
from ..distributed import get_world
from ..errors import InputError
from . import driver, labels, readers
from .config import FileSampleSettings, IngestConfig, StoreSettings
from .phantom import PhantomParams

log = logging.getLogger(__name__)


HELP = "tomography volume (TIFF, HDF5, NumPy, raw) -> sharded Zarr v3 volume store"
DESCRIPTION = ("Stream a volume into a sharded Zarr v3 store in z slabs (memory bounded by "
               "--max-memory-mb whatever the volume size), with optional crop and binning. The output "
               "appears only when complete.")


def register(subparsers) -> None:
    p = subparsers.add_parser("ingest", help=HELP, description=DESCRIPTION)
    io = InputsOutputs(p)
    io.input("source", metavar="SRC", positional=True,
             help="TIFF folder, multi-page .tif, .h5/.hdf5, .npy or raw file")
    io.output(metavar="OUT", positional=True, help="output store, e.g. results/s1/volume.zarr")
    p.add_argument("--format", default=_file("format"), choices=readers.FORMATS, help="input format (default: from the name)")
    p.add_argument("--dataset", default=_file("dataset"), help="HDF5 dataset path (default: DXchange %(default)s)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="raw input: volume shape")
    p.add_argument("--dtype", help="raw input: sample type, e.g. uint16, float32")
    p.add_argument("--byte-order", default=_file("byte_order"), choices=("little", "big"),
                   help="raw input: byte order (default: the one in --dtype, e.g. '>u2', else little; a "
                        "contradiction is an error)")
    p.add_argument("--header-bytes", type=int, default=_file("header_bytes"), help="raw input: bytes to skip at the start")
    p.add_argument("--channel", type=int, default=_file("channel"),
                   help="multi-page TIFF with channels (ImageJ hyperstack, OME-TIFF, RGB): the channel to read")
    p.add_argument("--timepoint", type=int, default=_file("timepoint"),
                   help="multi-page TIFF with time points: the time point to read")
    p.add_argument("--voxel-size-um", type=float, nargs="+",
                   help="voxel size of the source in micrometres: one value or three (z y x); required "
                        "unless --labels --like gives it")
    p.add_argument("--crop", help="source-space crop 'z0:z1,y0:y1,x0:x1' (empty range = whole axis)")
    p.add_argument("--bin", type=int, default=_file("bin"), help="bin factor (mean over bin^3 voxels; output float32)")
    p.add_argument("--output-dtype", default=_file("output_dtype"), help="output sample type (default: source type)")
    p.add_argument("--nan-fill", type=float, help="replace NaN/Inf with this finite value (default: reject them)")
    p.add_argument("--clip", action="store_true",
                   help="clip values outside the range of --output-dtype (default: refuse them)")
    _store_options(p)
    p.add_argument("--max-memory-mb", type=float, default=IngestConfig().max_memory_mb,
                   help="memory budget for one slab (default %(default)s)")
    p.add_argument("--no-checksum", action="store_true", help="skip the SHA-256 of the source files")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT even if it is not a volume store (a file, another folder); an earlier "
                        "store at OUT is always replaced")
    g = p.add_argument_group(
        "hand labels", "with --labels, the input is a label image (integer class ids, 255 = unlabelled) and the output a "
        "label store: uint8, 'classes' attribute, every id checked against the class map, shape checked "
        "against --like (whose voxel size it takes)")
    g.add_argument("--labels", action="store_true", help="import a label image instead of a CT volume")
    g.add_argument("--classes", metavar="NAME=ID,...",
                   help=f"class map of the ids in the image (default: {format_class_map(CLASSES).replace(',', ', ')})")
    g.add_argument("--like", metavar="ZARR", help="the sample's volume store: same shape (after --crop), voxel size")
    g.add_argument("--unlabelled", type=int, default=IGNORE_LABEL, metavar="ID",
                   help="an id of the image meaning 'not labelled', written as 255 (default %(default)s)")
    arrange(p, common=("--voxel-size-um", "--format", "--dataset", "--crop", "--bin", "--max-memory-mb"))
    p.set_defaults(func=run_ingest, parser=p)

    q = subparsers.add_parser(
        "phantom", help="synthetic solid-state lithium-metal cell: CT image + ground-truth labels",
        description="Write the built-in battery phantom shard by shard (ranks share the shards): "
        "the noisy CT image, optionally the noise-free image and the ground-truth labels. "
        "Classes: 0 pore, 1 solid_electrolyte, 2 lithium_metal, 3 cathode_active, "
        "4 redeposited_lithium, 5 current_collector. Layers stack along z.")
    io = InputsOutputs(q)
    io.output("volume", metavar="OUT", positional=True, help="output CT image store, e.g. results/phantom/volume.zarr")
    io.add("--clean", help="also write the noise-free image here")
    io.add("--labels", help="also write the ground-truth labels here")
    q.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=PhantomParams.shape,
                   help="volume shape in voxels")
    q.add_argument("--seed", type=int, default=PhantomParams.seed, help="geometry and noise seed (default %(default)s)")
    q.add_argument("--frame", type=int, default=PhantomParams.frame, help="time-series frame (dendrites grow with it)")
    q.add_argument("--n-frames", type=int, default=PhantomParams.n_frames, help="number of frames in the time series")
    q.add_argument("--voxel-size-um", type=float, default=PhantomParams.voxel_size_um, help="voxel size in micrometres")
    q.add_argument("--param", action="append", default=[], metavar="KEY=JSON",
                   help="any other phantom parameter, e.g. --param noise_sigma=0.08 --param ring_amplitude=0.03")
    _store_options(q)
    arrange(q, common=("--shape", "--seed", "--voxel-size-um"))
    q.set_defaults(func=run_phantom)


def _file(name: str):
    """The default of a file-sample setting (:class:`~batterytwin.ingest.config.FileSampleSettings` holds it)."""
    return FileSampleSettings.model_fields[name].default


def _store_options(p: argparse.ArgumentParser) -> None:
    store = StoreSettings()
    p.add_argument("--chunk", type=int, default=store.chunk, help="chunk edge (read unit), default %(default)s")
    p.add_argument("--shard", type=int, default=store.shard, help="shard edge (write unit), default %(default)s")


def run_ingest(args: argparse.Namespace) -> None:
    world = get_world()
    if not args.labels and not args.voxel_size_um:
        args.parser.error("the following arguments are required: --voxel-size-um")
    if not args.labels and (args.classes or args.like):
        raise InputError("ingest: --classes and --like apply to label images: add --labels")
    if world.is_root:  # one sequential writer: ingest is I/O bound
        # every check of the arguments comes before the (possibly long) source scan
        store.check_output(args.output, args.overwrite)  # a file or foreign folder there: a typo, not a rerun
        if not (math.isfinite(args.max_memory_mb) and args.max_memory_mb > 0):
            raise InputError(f"--max-memory-mb must be a finite number > 0 (megabytes), got {args.max_memory_mb}")
        class_map = parse_classes(args.classes) if args.labels else None
        if args.labels and args.bin != 1:
            raise InputError("ingest --labels: labels cannot be binned (--bin); label the binned volume instead")
        if args.labels and not args.like and not args.voxel_size_um:
            raise InputError("ingest --labels: give --like VOLUME_STORE (or --voxel-size-um)")
        reader = readers.open_reader(args.source, args.format, dataset=args.dataset, shape=args.shape,
                                     dtype=args.dtype, byte_order=args.byte_order, header_bytes=args.header_bytes,
                                     channel=args.channel, timepoint=args.timepoint)
        params = {k: v for k, v in vars(args).items() if k not in ("func", "verbose", "quiet", "command", "parser")}
        if args.labels:
            voxel = None if not args.voxel_size_um else (
                args.voxel_size_um[0] if len(args.voxel_size_um) == 1 else args.voxel_size_um)
            labels.import_labels(reader, args.output, class_map, like=args.like, voxel_size_um=voxel,
                                 crop=args.crop, unlabelled=args.unlabelled, chunk=args.chunk, shard=args.shard,
                                 max_memory_mb=args.max_memory_mb, checksum=not args.no_checksum, params=params)
            log.info("wrote %s", args.output)
            world.barrier()
            return
        voxel = args.voxel_size_um[0] if len(args.voxel_size_um) == 1 else args.voxel_size_um
        driver.ingest_volume(reader, args.output, voxel_size_um=voxel, crop=args.crop, bin_factor=args.bin,
                             output_dtype=args.output_dtype, nan_fill=args.nan_fill, chunk=args.chunk,
                             shard=args.shard, max_memory_mb=args.max_memory_mb,
                             checksum=not args.no_checksum, params=params, overwrite=args.overwrite,
                             clip=args.clip)
        log.info("wrote %s", args.output)
    world.barrier()


def parse_classes(text: str | None) -> dict[int, str]:
    """``--classes NAME=ID,...`` -> ``{id: name}`` (:func:`~batterytwin.ingest.labels.parse_class_map` checks it).

    The old order ``ID=NAME`` (an integer left of ``=``) is still read, with one warning line.
    """
    if text is None:
        return labels.parse_class_map(None)
    items, old = [], False
    for part in (p.strip() for p in text.split(",")):
        name, sep, cid = (s.strip() for s in part.partition("="))
        if part and (not sep or not name or not cid):
            raise InputError(f"--classes: expected NAME=ID items separated by commas, got {part!r}")
        if _is_integer(name) and not _is_integer(cid):
            name, cid, old = cid, name, True
        items.append(f"{cid}={name}" if part else "")
    if old:
        deprecated("batterytwin ingest", "--classes ID=NAME", "--classes NAME=ID")
    return labels.parse_class_map(",".join(items))


def _is_integer(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def parse_params(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--param {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            raise InputError(f"--param {key}: value {value!r} is not valid JSON (quote strings)") from None
    return out


def run_phantom(args: argparse.Namespace) -> None:
    values = {"shape": tuple(args.shape), "seed": args.seed, "frame": args.frame, "n_frames": args.n_frames,
              "voxel_size_um": args.voxel_size_um, **parse_params(args.param)}
    params = PhantomParams.from_dict(values)
    driver.write_phantom(params, args.volume, args.clean, args.labels, chunk=args.chunk, shard=args.shard)
    log.info("wrote %s", args.volume)

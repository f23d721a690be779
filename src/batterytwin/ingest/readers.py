"""Readers for tomography volumes, each streamed in z slabs with bounded memory.

A reader exposes ``shape`` (z, y, x), ``dtype``, ``files`` (for the checksum) and
``read(z0, z1) -> ndarray [z1-z0, y, x]``. Every check that can be done before reading data is done
in the constructor, so bad input fails before any output exists, with an :class:`InputError`
naming the file and the problem.

Formats: a folder of single-page TIFF slices (``tiff-stack``), one multi-page TIFF (``tiff``),
HDF5 (``hdf5``: DXchange ``/exchange/data`` by default), NumPy ``.npy`` and raw binary (``raw``:
shape, dtype, byte order and header size from the config).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..inputfile import regular_file

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".cxi")
RAW_SUFFIXES = (".raw", ".bin", ".vol", ".dat")
FORMATS = ("auto", "tiff-stack", "tiff", "hdf5", "npy", "raw")
DXCHANGE_DATASET = "/exchange/data"


def check_numeric(dtype: np.dtype, where: str) -> np.dtype:
    """Accept integer and real floating dtypes only (no bool, complex, strings or objects)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        raise InputError(f"{where}: data type {dtype} is not numeric (need integer or float)")
    return dtype


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


class _TiffErrors(logging.Handler):
    """Collects the errors tifffile logs instead of raising (a truncated file: 'invalid page offset')."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


@contextlib.contextmanager
def tiff_strict(where: os.PathLike | str) -> Iterator[None]:
    """Turn tifffile's logged errors (and its exceptions) into one :class:`InputError` naming ``where``."""
    handler = _TiffErrors()
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error...
        raise InputError(f"{where}: unreadable or corrupt TIFF ({' '.join(str(exc).split())})") from None
    finally:
        logger.removeHandler(handler)
    if handler.messages:
        raise InputError(f"{where}: truncated or corrupt TIFF (tifffile: {handler.messages[0]})")


def _check_extent(page, size: int, where: Path) -> None:
    """Refuse a page whose pixel data lies (partly) past the end of the file: a truncated TIFF."""
    ends = [int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts) if int(c) > 0]
    if ends and max(ends) > size:  # (empty tiles, byte count 0, are legal: they read as zeros)
        raise InputError(f"{where}: truncated TIFF: the data of page {page.index} ends past the end of the file "
                         f"({size} bytes)")


ZLIKE = "ZQI"  # axes that are slices of the volume: Z, unknown (Q), image sequence (I)


class TiffStackReader:
    """A folder of 2-D TIFF slices, one z slice per file, in natural file-name order."""

    def __init__(self, folder: os.PathLike | str):
        import tifffile

        self.path = Path(folder)
        files = sorted((f for f in self.path.iterdir() if f.suffix.lower() in TIFF_SUFFIXES), key=_natural_key)
        if not files:
            raise InputError(f"{self.path}: folder contains no .tif/.tiff files")
        self.files = files
        first = None
        for f in files:  # headers only: cheap, and catches mixed stacks before any output
            regular_file(f, "TIFF slice")
            with tiff_strict(f), tifffile.TiffFile(f) as tif:
                page = tif.pages[0]
                n_pages = len(tif.pages)
                key = (tuple(page.shape), np.dtype(page.dtype))
                _check_extent(page, f.stat().st_size, f)
            if n_pages != 1 or len(key[0]) != 2:
                raise InputError(f"{f}: expected one 2-D grey-level slice per file, found {n_pages} page(s) of "
                                 f"shape {key[0]}")
            if first is None:
                first = (f, key)
            elif key != first[1]:
                raise InputError(f"{f}: slice shape/dtype {key[0]} {key[1]} differs from {first[0].name} "
                                 f"({first[1][0]} {first[1][1]})")
        self.shape = (len(files), *first[1][0])
        self.dtype = check_numeric(first[1][1], str(self.path))

    def read(self, z0: int, z1: int) -> np.ndarray:
        import tifffile

        out = np.empty((z1 - z0, *self.shape[1:]), self.dtype)
        for i, f in enumerate(self.files[z0:z1]):
            with tiff_strict(f):
                out[i] = tifffile.imread(f)
        return out


class MultipageTiffReader:
    """One TIFF file: the z slices of its first image series (tifffile's ``series[0]``).

    The series' axes decide: Z, Q (unknown) or I (image sequence) are slices; a channel (C, or the
    samples S of RGB) or time (T) axis longer than 1 needs ``channel`` / ``timepoint`` to pick one
    (ImageJ hyperstacks and OME TZCYX files would otherwise be flattened into z); other axes are refused.
    """

    def __init__(self, path: os.PathLike | str, channel: int | None = None, timepoint: int | None = None):
        import tifffile

        self.path = Path(path)
        self.files = [self.path]
        with tiff_strict(self.path):
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series
            if not series:
                raise InputError(f"{self.path}: unreadable or corrupt TIFF (no image pages)")
            if len(series) > 1:
                shapes = ", ".join(f"{s.axes} {list(s.shape)}" for s in series[:4])
                raise InputError(f"{self.path}: holds {len(series)} image series ({shapes}); pages differ in shape "
                                 "or dtype: ingest reads one 3-D series (split the file)")
            self._series = series[0]
            self._plan(channel, timepoint)
            size = self.path.stat().st_size
            for k in self._pages:
                page = self._series.pages[k]
                if page is None:
                    raise InputError(f"{self.path}: page {k} of the series is missing (truncated or corrupt TIFF)")
                _check_extent(page, size, self.path)
            self.dtype = check_numeric(np.dtype(self._series.dtype), str(self.path))

    def _plan(self, channel: int | None, timepoint: int | None) -> None:
        """Which page (and sample) is each z slice; refuses axes it cannot map to z unambiguously."""
        s = self._series
        axes, shape = s.axes, tuple(s.shape)
        page_axes = s.keyframe.axes
        self._whole = None
        if not axes.endswith(page_axes):  # tifffile's shaped series of a volume with a y or x extent of 1
            if len(shape) != 3 or any(a not in ZLIKE + "YX" for a in axes) or channel is not None \
                    or timepoint is not None:
                raise InputError(f"{self.path}: series of axes {axes} (shape {list(shape)}) does not lay out as "
                                 "z slices of 2-D pages")
            self._pages, self.shape, self._sample, self._whole = list(range(len(s.pages))), shape, None, False
            return
        lead_axes, lead_shape = axes[: len(axes) - len(page_axes)], shape[: len(axes) - len(page_axes)]
        if page_axes not in ("YX", "YXS"):
            raise InputError(f"{self.path}: pages of axes {page_axes!r} (shape {list(s.keyframe.shape)}) are not "
                             "2-D grey-level slices")
        sizes = dict(zip(axes, shape))
        where = f"{self.path} (axes {axes}, shape {list(shape)})"
        self._sample = None
        picks: dict[str, int] = {}
        for option, value, names in (("--channel", channel, "CS"), ("--timepoint", timepoint, "T")):
            long_axes = [a for a in names if sizes.get(a, 1) > 1]
            if len(long_axes) > 1:
                raise InputError(f"{where}: both channels (C) and samples (S) are longer than 1: not supported")
            if value is None:
                if long_axes:
                    what = "time points" if names == "T" else "channels"
                    raise InputError(f"{where}: {sizes[long_axes[0]]} {what} would be interleaved into z; select one "
                                     f"with {option} (0..{sizes[long_axes[0]] - 1})")
                continue
            if not long_axes:
                raise InputError(f"{where}: {option} {value} given, but the file has no such axis longer than 1")
            axis = long_axes[0]
            if not 0 <= value < sizes[axis]:
                raise InputError(f"{where}: {option} {value} is outside 0..{sizes[axis] - 1}")
            if axis == "S":
                self._sample = value
            else:
                picks[axis] = value
        zs = [a for a in lead_axes if a in ZLIKE and sizes[a] > 1]
        other = [a for a in lead_axes if a not in ZLIKE + "CT" and sizes[a] > 1]
        if other or len(zs) > 1:
            raise InputError(f"{where}: axes {''.join(other + zs[1:])} cannot be read as one 3-D volume (z, y, x)")
        z_axis = zs[0] if zs else None
        nz = sizes[z_axis] if z_axis else 1
        index = []
        for z in range(nz):
            multi = [z if a == z_axis else picks.get(a, 0) for a in lead_axes]
            index.append(int(np.ravel_multi_index(multi, lead_shape)) if lead_axes else 0)
        self._pages = index
        self.shape = (nz, *s.keyframe.shape[:2])

    def read(self, z0: int, z1: int) -> np.ndarray:
        if self._whole is not None:  # a degenerate shaped series (small): read it whole, as tifffile shapes it
            with tiff_strict(self.path):
                return self._series.asarray().reshape(self.shape)[z0:z1].astype(self.dtype, copy=False)
        with tiff_strict(self.path):
            planes = [self._series.pages[k].asarray() for k in self._pages[z0:z1]]
        if self._sample is not None:
            planes = [p[..., self._sample] for p in planes]
        return np.stack(planes).astype(self.dtype, copy=False)


class Hdf5Reader:
    """A 3-D dataset in an HDF5 file (DXchange ``/exchange/data`` unless another path is given)."""

    def __init__(self, path: os.PathLike | str, dataset: str = DXCHANGE_DATASET):
        import h5py

        self.path = Path(path)
        self.files = [self.path]
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        if dataset not in self._file or not isinstance(self._file[dataset], h5py.Dataset):
            found = []
            self._file.visititems(lambda name, obj: found.append("/" + name) if isinstance(obj, h5py.Dataset) else None)
            raise InputError(f"{self.path}: no dataset '{dataset}' (datasets found: {', '.join(found[:8]) or 'none'})")
        self._data = self._file[dataset]
        if self._data.ndim != 3:
            raise InputError(f"{self.path}:{dataset}: expected a 3-D volume, got shape {self._data.shape}")
        self.shape = tuple(self._data.shape)
        self.dtype = check_numeric(self._data.dtype, f"{self.path}:{dataset}")

    def read(self, z0: int, z1: int) -> np.ndarray:
        try:
            return np.asarray(self._data[z0:z1])
        except (OSError, ValueError) as exc:  # a truncated or corrupt dataset
            raise InputError(f"{self.path}: corrupt or truncated HDF5 data in slices {z0}..{z1 - 1} "
                             f"({' '.join(str(exc).split())})") from None


class NpyReader:
    """A NumPy ``.npy`` file, read slab by slab from its data offset (never unpickled)."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        self.files = [self.path]
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
                self._offset = f.tell()
        except (ValueError, OSError) as exc:
            raise InputError(f"{self.path}: not a readable .npy file ({exc})") from None
        if dtype.hasobject:
            raise InputError(f"{self.path}: holds Python objects (refused: never unpickled)")
        if len(shape) != 3:
            raise InputError(f"{self.path}: expected a 3-D volume, got shape {shape}")
        if fortran:
            raise InputError(f"{self.path}: Fortran-order arrays are not supported; save with C order")
        self.shape = tuple(shape)
        self.dtype = check_numeric(dtype, str(self.path))
        need = self._offset + int(np.prod(self.shape)) * self.dtype.itemsize
        if self.path.stat().st_size < need:
            raise InputError(f"{self.path}: file has {self.path.stat().st_size} bytes, its header {list(shape)} "
                             f"{dtype} needs {need}: truncated .npy")
        self._reader = _SlabFile(self.path, self._offset, self.shape, self.dtype)

    def read(self, z0: int, z1: int) -> np.ndarray:
        return self._reader.read(z0, z1)


class _SlabFile:
    """Plain reads of z slabs from a C-order binary file (no mmap: RSS stays what we hold)."""

    def __init__(self, path: Path, offset: int, shape: tuple, dtype: np.dtype):
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype
        self.plane = int(np.prod(shape[1:]))

    def read(self, z0: int, z1: int) -> np.ndarray:
        with open(self.path, "rb") as f:
            f.seek(self.offset + z0 * self.plane * self.dtype.itemsize)
            data = np.fromfile(f, dtype=self.dtype, count=(z1 - z0) * self.plane)
        if data.size != (z1 - z0) * self.plane:
            raise InputError(f"{self.path}: file ends early (truncated?) in slices {z0}..{z1 - 1}")
        return data.reshape(z1 - z0, *self.shape[1:]).astype(self.dtype.newbyteorder("="), copy=False)


class RawReader:
    """Raw binary volume: C-order (z, y, x) samples after an optional header."""

    def __init__(self, path: os.PathLike | str, shape: Sequence[int] | None, dtype: str | None,
                 byte_order: str | None = None, header_bytes: int = 0):
        """``byte_order`` None: the one written in ``dtype`` (``>u2``), else little-endian; one that
        contradicts the dtype's is refused."""
        self.path = Path(path)
        self.files = [self.path]
        if shape is None or len(shape) != 3 or any(int(s) <= 0 for s in shape):
            raise InputError(f"{self.path}: raw input needs shape: [z, y, x] (positive sizes), got {shape}")
        if dtype is None:
            raise InputError(f"{self.path}: raw input needs dtype (e.g. uint16, float32)")
        if byte_order not in (None, "little", "big"):
            raise InputError(f"{self.path}: byte_order must be 'little' or 'big', got {byte_order!r}")
        if isinstance(header_bytes, bool) or not isinstance(header_bytes, (int, np.integer)) or header_bytes < 0:
            raise InputError(f"{self.path}: --header-bytes must be an integer >= 0, got {header_bytes!r}")
        try:
            base = np.dtype(dtype)
        except TypeError:
            raise InputError(f"{self.path}: unknown dtype {dtype!r}") from None
        base = check_numeric(base, str(self.path))
        written = {"<": "little", ">": "big"}.get(str(dtype).strip()[:1]) if base.itemsize > 1 else None
        if written and byte_order and written != byte_order:
            raise InputError(f"{self.path}: dtype {dtype!r} is {written}-endian but --byte-order is {byte_order}; "
                             "give one of them")
        byte_order = written or byte_order or "little"
        self.dtype = base.newbyteorder("<" if byte_order == "little" else ">") if base.itemsize > 1 else base
        self.shape = tuple(int(s) for s in shape)
        expected = int(np.prod(self.shape)) * self.dtype.itemsize + int(header_bytes)
        actual = self.path.stat().st_size
        if actual != expected:
            raise InputError(f"{self.path}: file has {actual} bytes but shape {list(self.shape)} x {base} "
                             f"+ {header_bytes} header bytes needs {expected}")
        self._reader = _SlabFile(self.path, int(header_bytes), self.shape, self.dtype)

    def read(self, z0: int, z1: int) -> np.ndarray:
        return self._reader.read(z0, z1)


def guess_format(path: Path) -> str:
    if path.is_dir():
        return "tiff-stack"
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix == ".npy":
        return "npy"
    if suffix in RAW_SUFFIXES:
        return "raw"
    raise InputError(f"{path}: cannot tell the format from the name; set format to one of {', '.join(FORMATS[1:])}")


def open_reader(path: os.PathLike | str, fmt: str = "auto", *, dataset: str = DXCHANGE_DATASET,
                shape: Sequence[int] | None = None, dtype: str | None = None, byte_order: str | None = None,
                header_bytes: int = 0, channel: int | None = None, timepoint: int | None = None):
    """Open a volume reader for ``path``; raises :class:`InputError` for anything wrong with it.

    ``channel`` / ``timepoint``: which channel (or RGB sample) and time point of a multi-page TIFF
    with such axes (ImageJ hyperstack, OME-TIFF) to read; other formats refuse them.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if fmt not in FORMATS:
        raise InputError(f"{p}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    fmt = guess_format(p) if fmt == "auto" else fmt
    if fmt != "tiff" and (channel is not None or timepoint is not None):
        raise InputError(f"{p}: --channel/--timepoint select in a multi-page TIFF; format {fmt} has neither")
    if fmt == "tiff-stack":
        if not p.is_dir():
            raise InputError(f"{p}: format tiff-stack needs a folder of TIFF slices")
        return TiffStackReader(p)
    if p.is_dir():
        raise InputError(f"{p}: is a folder, but format {fmt} needs a file")
    regular_file(p, "input file")  # a named pipe would block the reader forever
    if fmt == "tiff":
        return MultipageTiffReader(p, channel, timepoint)
    if fmt == "hdf5":
        return Hdf5Reader(p, dataset)
    if fmt == "npy":
        return NpyReader(p)
    return RawReader(p, shape, dtype, byte_order, header_bytes)

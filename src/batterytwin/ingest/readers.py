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

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError

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
            try:
                with tifffile.TiffFile(f) as tif:
                    page = tif.pages[0]
                    n_pages = len(tif.pages)
                    key = (tuple(page.shape), np.dtype(page.dtype))
            except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error...
                raise InputError(f"{f}: unreadable or corrupt TIFF ({exc})") from None
            if n_pages != 1 or len(key[0]) != 2:
                raise InputError(f"{f}: expected one 2-D slice per file, found {n_pages} page(s) of shape {key[0]}")
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
            try:
                out[i] = tifffile.imread(f)
            except Exception as exc:
                raise InputError(f"{f}: unreadable or corrupt TIFF ({exc})") from None
        return out


class MultipageTiffReader:
    """One TIFF file whose pages are the z slices (or a 3-D series)."""

    def __init__(self, path: os.PathLike | str):
        import tifffile

        self.path = Path(path)
        self.files = [self.path]
        try:
            self._tif = tifffile.TiffFile(self.path)
            pages = self._tif.pages
            shapes = {tuple(p.shape) for p in pages}
            dtypes = {np.dtype(p.dtype) for p in pages}
        except Exception as exc:
            raise InputError(f"{self.path}: unreadable or corrupt TIFF ({exc})") from None
        if not shapes:
            raise InputError(f"{self.path}: unreadable or corrupt TIFF (no image pages)")
        if len(shapes) != 1 or len(dtypes) != 1:
            raise InputError(f"{self.path}: pages differ in shape or dtype ({sorted(shapes)}, {sorted(map(str, dtypes))})")
        (shape,) = shapes
        if len(shape) != 2:
            raise InputError(f"{self.path}: pages must be 2-D grey-level slices, got page shape {shape}")
        self.shape = (len(pages), *shape)
        self.dtype = check_numeric(dtypes.pop(), str(self.path))

    def read(self, z0: int, z1: int) -> np.ndarray:
        try:
            return np.stack([self._tif.pages[i].asarray() for i in range(z0, z1)]).astype(self.dtype, copy=False)
        except Exception as exc:
            raise InputError(f"{self.path}: corrupt TIFF data in pages {z0}..{z1 - 1} ({exc})") from None


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
        return np.asarray(self._data[z0:z1])


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
                 byte_order: str = "little", header_bytes: int = 0):
        self.path = Path(path)
        self.files = [self.path]
        if shape is None or len(shape) != 3 or any(int(s) <= 0 for s in shape):
            raise InputError(f"{self.path}: raw input needs shape: [z, y, x] (positive sizes), got {shape}")
        if dtype is None:
            raise InputError(f"{self.path}: raw input needs dtype (e.g. uint16, float32)")
        if byte_order not in ("little", "big"):
            raise InputError(f"{self.path}: byte_order must be 'little' or 'big', got {byte_order!r}")
        try:
            base = np.dtype(dtype)
        except TypeError:
            raise InputError(f"{self.path}: unknown dtype {dtype!r}") from None
        base = check_numeric(base, str(self.path))
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
                shape: Sequence[int] | None = None, dtype: str | None = None, byte_order: str = "little",
                header_bytes: int = 0):
    """Open a volume reader for ``path``; raises :class:`InputError` for anything wrong with it."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if fmt not in FORMATS:
        raise InputError(f"{p}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    fmt = guess_format(p) if fmt == "auto" else fmt
    if fmt == "tiff-stack":
        if not p.is_dir():
            raise InputError(f"{p}: format tiff-stack needs a folder of TIFF slices")
        return TiffStackReader(p)
    if p.is_dir():
        raise InputError(f"{p}: is a folder, but format {fmt} needs a file")
    if fmt == "tiff":
        return MultipageTiffReader(p)
    if fmt == "hdf5":
        return Hdf5Reader(p, dataset)
    if fmt == "npy":
        return NpyReader(p)
    return RawReader(p, shape, dtype, byte_order, header_bytes)

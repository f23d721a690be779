"""Property-based bad input: random shapes, dtypes, NaN patterns and parameter values.

Every property is "a clear error (InputError / exit 2 with one line) or a correct result, never a
traceback". Bounded: a few dozen examples each, no deadline, well under a minute in all.
"""

from __future__ import annotations

import json
import math
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from batterytwin import store
from batterytwin.distributed import World
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK, InputError

FEW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
ANY_NUMBER = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                       st.booleans(), st.text(max_size=4), st.none(), st.lists(st.integers(0, 3), max_size=3))


SHAPES = hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=12)


def _volume(tmp, data: np.ndarray, name: str = "v.zarr", **extra) -> store.Volume:
    path = tmp / name
    if path.exists():
        import shutil

        shutil.rmtree(path)
    with store.atomic_output(path, World()) as t:
        store.create_volume(t, data.shape, data.dtype, store.volume_attrs("test", 1.0, **extra),
                            chunk=4, shard=8)[...] = data
    return store.open_volume(path)


# ------------------------------------------------------------------------------ store cores
@FEW
@given(shape=st.lists(st.integers(1, 40), min_size=3, max_size=3),
       chunk=st.integers(-3, 20), shard=st.integers(-3, 40))
def test_block_shapes_clear_error_or_consistent_blocks(shape, chunk, shard):
    try:
        chunks, shards = store.block_shapes(shape, chunk, shard)
    except InputError as exc:
        assert chunk < 1 or shard < 1 or shard < chunk, exc
        assert "\n" not in str(exc)
        return
    assert chunk >= 1 and shard >= chunk
    for c, h, n in zip(chunks, shards, shape):
        assert 1 <= c <= n and h % c == 0
    covered = sum(math.prod(s.stop - s.start for s in r) for r in store.shard_regions(shape, shards))
    assert covered == math.prod(shape)


@FEW
@given(data=st.one_of(
    hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64]), SHAPES,
               elements=st.sampled_from([0.0, 1.5, -2.0, np.nan, np.inf, -np.inf])),
    hnp.arrays(st.sampled_from([np.float32]), SHAPES, elements=st.floats(-1e6, 1e6, width=32)),
    hnp.arrays(st.sampled_from([np.int16, np.uint8]), SHAPES)))
def test_check_finite_counts_and_locates_non_finite_voxels(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("finite")
    vol = _volume(tmp, data)
    bad = ~np.isfinite(data) if data.dtype.kind == "f" else np.zeros(data.shape, bool)
    if not bad.any():
        store.check_finite(vol)
        return
    with pytest.raises(InputError) as err:
        store.check_finite(vol)
    msg = str(err.value)
    assert f"{int(bad.sum())} NaN/infinite voxel(s)" in msg and "\n" not in msg
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    # the first position is the first one in shard order: check it is a non-finite voxel
    pos = tuple(int(v) for v in msg.split("= (")[1].split(")")[0].split(", "))
    assert bad[pos] and (len(store.shard_regions(data.shape, vol.shards)) > 1 or pos == first)


@FEW
@given(data=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=10),
                       elements=st.sampled_from([0, 1, 2, 3, 4, 5, 6, 9, 200, 254, 255])),
       n_classes=st.integers(1, 8))
def test_check_labels_refuses_exactly_the_unknown_ids(tmp_path_factory, data, n_classes):
    tmp = tmp_path_factory.mktemp("labels")
    classes = {str(k): f"c{k}" for k in range(n_classes)}
    vol = _volume(tmp, data, classes=classes)
    unknown = sorted(set(np.unique(data).tolist()) - set(range(n_classes)) - {255})
    if not unknown:
        store.check_labels(vol)
        return
    with pytest.raises(InputError, match="unknown label id") as err:
        store.check_labels(vol)
    assert str(sorted(unknown)[:10]) in str(err.value)


@FEW
@given(shape=st.lists(st.integers(1, 9), min_size=3, max_size=3), halo=st.integers(0, 4), data=st.data())
def test_read_with_halo_equals_padding_the_whole_volume(shape, halo, data):
    from batterytwin.denoise.driver import read_with_halo

    if halo >= min(shape):
        halo = min(shape) - 1  # reflection needs halo < size (as the driver ensures)
    vol = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    lo = [data.draw(st.integers(0, n - 1)) for n in shape]
    hi = [data.draw(st.integers(a + 1, n)) for a, n in zip(lo, shape)]
    region = tuple(slice(a, b) for a, b in zip(lo, hi))
    padded = np.pad(vol, halo, mode="reflect")
    want = padded[tuple(slice(a, b + 2 * halo) for a, b in zip(lo, hi))]
    np.testing.assert_array_equal(read_with_halo(vol, region, halo), want)


# ---------------------------------------------------------------------------- parameter cores
PHANTOM_FIELDS = ["noise_sigma", "blur_sigma", "photons", "seed", "n_rings", "active_fraction",
                  "particle_radius", "dendrite_radius", "cathode_fraction", "ring_amplitude", "frame"]


@FEW
@given(name=st.sampled_from(PHANTOM_FIELDS), value=ANY_NUMBER)
def test_phantom_params_clear_error_or_valid(name, value):
    from batterytwin.ingest.phantom import PhantomParams

    try:
        p = PhantomParams.from_dict({"shape": (16, 16, 16), name: value})
    except InputError as exc:
        assert "\n" not in str(exc) and name in str(exc)
        return
    got = getattr(p, name)
    assert not isinstance(got, (bool, str)) and got is not None or name == "particle_radius"
    assert got is None or math.isfinite(float(got))


@FEW
@given(crop=st.one_of(st.text(alphabet=string.digits + ":,;ab -", max_size=14),
                      st.lists(st.one_of(st.none(), st.lists(st.integers(-5, 40), min_size=2, max_size=2)),
                               max_size=4)))
def test_parse_crop_clear_error_or_slices_inside(crop):
    from batterytwin.ingest.driver import parse_crop

    shape = (20, 30, 40)
    try:
        region = parse_crop(crop, shape)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert len(region) == 3
    for s, n in zip(region, shape):
        assert 0 <= s.start < s.stop <= n


@FEW
@given(launcher=st.text(alphabet=string.ascii_letters + string.digits + " -=_./;|&$`'\"()<>*?\n\\", max_size=30))
def test_mpi_launcher_accepted_only_without_shell_syntax(launcher):
    from batterytwin.workflow_config import complete_config

    try:
        complete_config({"samples": {"s": {"source": "synthetic"}}, "mpi": launcher})
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert launcher and not set(launcher) & set(";|&$`'\"()<>*?\n\\")


# ------------------------------------------------------------------------------------ the CLIs
def _cli(capsys, *argv) -> tuple[int, str]:
    from batterytwin.cli import main

    capsys.readouterr()
    try:
        code = main(["-q", *map(str, argv)])
    except SystemExit as exc:  # argparse: usage + one error line
        code = exc.code
    err = capsys.readouterr().err
    return code, err


def _one_clear_line(code, err) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(("usage:", " "))
             and " WARNING " not in ln]
    assert code == EXIT_BAD_INPUT and len(lines) == 1 and "Traceback" not in err, (code, err)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(PHANTOM_FIELDS[:6]), value=ANY_NUMBER)
def test_phantom_cli_clear_error_or_a_finite_image(tmp_path_factory, capsys, name, value):
    tmp = tmp_path_factory.mktemp("ph")
    out = tmp / "v.zarr"
    code, err = _cli(capsys, "phantom", out, "--shape", "16", "16", "16", "--param", f"{name}={json.dumps(value)}")
    if code == EXIT_OK:
        vol = store.open_volume(out)
        store.check_finite(vol)
    else:
        _one_clear_line(code, err)
        assert not out.exists()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk=st.integers(-2, 20), shard=st.integers(-2, 24), mem=st.sampled_from(["0", "-1", "nan", "0.01", "64"]),
       dtype=st.sampled_from(["auto", "uint8", "float32", "banana", "complex64", "int16", "bool"]),
       data=hnp.arrays(np.float32, (6, 7, 8), elements=st.sampled_from([0.0, 0.5, 1.0, 300.0, np.nan])))
def test_ingest_cli_clear_error_or_the_same_voxels(tmp_path_factory, capsys, chunk, shard, mem, dtype, data):
    tmp = tmp_path_factory.mktemp("in")
    src, out = tmp / "a.npy", tmp / "v.zarr"
    np.save(src, data)
    code, err = _cli(capsys, "ingest", src, out, "--voxel-size-um", "1", "--chunk", chunk, "--shard", shard,
                     "--max-memory-mb", mem, "--output-dtype", dtype)
    if code != EXIT_OK:
        _one_clear_line(code, err)
        assert not out.exists()
        return
    got = np.asarray(store.open_volume(out).array[...])
    assert np.isfinite(data).all()
    want = data if dtype in ("auto", "float32") else np.rint(data).astype(dtype)
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------ store corruption
FLIPS = st.lists(st.tuples(st.integers(0, 10**6), st.floats(0.0, 1.0), st.integers(0, 7)), min_size=1, max_size=4)


@FEW
@given(data=st.one_of(hnp.arrays(np.float32, SHAPES, elements=st.floats(1, 1e3, width=32)),
                      hnp.arrays(np.uint16, SHAPES, elements=st.integers(1, 65535))),
       flips=FLIPS)
def test_bit_flips_in_shards_are_refused_never_silently_read(tmp_path_factory, data, flips):
    """Random bits flipped at random offsets of random shard files: the read is refused (one line
    naming the store), or, where the flips cancel out, the data read is exactly the data written."""
    tmp = tmp_path_factory.mktemp("flips")
    vol = _volume(tmp, data)
    shards = sorted(q for q in (vol.path / "0" / "c").rglob("*") if q.is_file())
    assert shards  # no chunk of this data equals the fill value
    original = {q: q.read_bytes() for q in shards}
    for k, where, bit in flips:
        f = shards[k % len(shards)]
        buf = bytearray(f.read_bytes())
        buf[int(where * (len(buf) - 1))] ^= 1 << bit
        f.write_bytes(bytes(buf))
    changed = any(q.read_bytes() != b for q, b in original.items())
    try:
        got = store.read_region(store.open_volume(vol.path), tuple(slice(0, n) for n in data.shape))
    except InputError as exc:
        msg = str(exc)
        assert changed and str(vol.path) in msg and "\n" not in msg, msg
        return
    assert not changed, "a changed shard was read without error"
    np.testing.assert_array_equal(got, data)


# ------------------------------------------------------------------------------ ingest formats
INGEST_DTYPES = [np.uint8, np.uint16, np.int16, np.float32, np.float64]


@FEW
@given(data=hnp.arrays(st.sampled_from(INGEST_DTYPES), hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=6),
                       elements={"allow_nan": True, "allow_infinity": True}),
       fmt=st.sampled_from(["npy", "tiff", "raw-big", "raw-little", "hdf5"]),
       out_dtype=st.sampled_from(["auto", "uint8", "int16", "uint16", "float32"]))
def test_ingest_commits_the_data_read_or_refuses(tmp_path_factory, data, fmt, out_dtype):
    """Any dtype, format and output type: one clear line, or a store equal to the data (never wrapped,
    never non-finite)."""
    import contextlib
    import io

    import h5py
    import tifffile

    from batterytwin.cli import main

    tmp = tmp_path_factory.mktemp("ingest")
    extra = []
    if fmt == "npy":
        src = tmp / "v.npy"
        np.save(src, data)
    elif fmt == "tiff":
        src = tmp / "v.tif"
        tifffile.imwrite(src, data, photometric="minisblack")  # grey slices (a last axis of 3 is not RGB)
    elif fmt == "hdf5":
        src = tmp / "v.h5"
        with h5py.File(src, "w") as f:
            f["/exchange/data"] = data
    else:
        order = ">" if fmt == "raw-big" else "<"
        src = tmp / "v.raw"
        src.write_bytes(data.astype(data.dtype.newbyteorder(order)).tobytes())
        extra = ["--shape", *map(str, data.shape), "--dtype", order + data.dtype.str[1:]]
    out = tmp / "out.zarr"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["-q", "ingest", str(src), str(out), "--voxel-size-um", "1", "--output-dtype", out_dtype, *extra])
    target = data.dtype if out_dtype == "auto" else np.dtype(out_dtype)
    finite = data.dtype.kind not in "f" or bool(np.isfinite(data).all())
    info = np.iinfo(target) if target.kind in "iu" else np.finfo(target)
    fits = finite and (data.size == 0 or (float(data.min()) >= float(info.min) and float(data.max()) <= float(info.max)))
    if code != EXIT_OK:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        assert code == EXIT_BAD_INPUT and len(lines) == 1 and str(src) in lines[0] and not out.exists(), lines
        assert not fits, lines  # refused only what cannot be stored faithfully
        return
    assert fits
    got = store.open_volume(out).array[:]
    ref = np.rint(data.astype(np.float64)) if target.kind in "iu" and data.dtype.kind == "f" else data
    np.testing.assert_array_equal(got, ref.astype(target))


@FEW
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(2, 5), st.integers(2, 5)),
       layout=st.sampled_from(["imagej", "ome"]), pick=st.tuples(st.integers(0, 2), st.integers(0, 2)))
def test_hyperstack_reads_one_channel_and_time_point_or_refuses(tmp_path_factory, shape, layout, pick):
    """A T Z C Y X stack (ImageJ or OME metadata): without a selection of a longer-than-1 channel or
    time axis, one clear line; with it, exactly ``data[t, :, c]`` (the written array is the reference)."""
    import tifffile

    from batterytwin.ingest.readers import open_reader

    tmp = tmp_path_factory.mktemp("hyper")
    data = np.arange(math.prod(shape), dtype=np.uint16).reshape(shape)
    src = tmp / "h.tif"
    try:
        tifffile.imwrite(src, data, **({"imagej": True} if layout == "imagej" else {"ome": True}),
                         metadata={"axes": "TZCYX"})
    except ValueError:  # tifffile's OME writer refuses some shapes with axes of length 1
        assume(False)
    t, c = (min(pick[0], shape[0] - 1), min(pick[1], shape[2] - 1))
    needs = {"timepoint": shape[0] > 1, "channel": shape[2] > 1}
    with pytest.raises(InputError) as err:
        if not any(needs.values()):
            raise InputError("nothing to select")  # a plain Z Y X stack: checked below
        open_reader(src)
    assert "\n" not in str(err.value)
    kwargs = {k: (t if k == "timepoint" else c) for k, need in needs.items() if need}
    reader = open_reader(src, **kwargs)
    np.testing.assert_array_equal(reader.read(0, reader.shape[0]), data[t, :, c])

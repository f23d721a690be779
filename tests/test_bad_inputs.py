"""Bad inputs a new user might give, one row each: every one must end in a clear error.

"Clear" means: exit status 2, one error line on stderr (argparse's usage lines and log lines aside)
that names the file or option (``expect``), no traceback, and nothing at the output paths. A run
that exits 0 is "silent" (a wrong result written without complaint), any other status or a
traceback is "traceback".

The table runs in-process (``batterytwin.cli.main``), so it takes seconds. To count outcomes for
another checkout (e.g. main before a fix)::

    PYTHONPATH=/work/main/src BT_BAD_INPUT_REPORT=/tmp/before.json python -m pytest -q tests/test_bad_inputs.py

writes ``{case: outcome}`` to that file (the assertions still fail where the checkout is wrong).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from batterytwin import store
from batterytwin.distributed import World
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK
from batterytwin.ingest.phantom import make_phantom

from .conftest import REPO

TINY_SEG = {"model": {"channels": [4, 8], "strides": [2], "num_res_units": 1},
            "train": {"steps": 2, "batch_size": 2, "patch_size": [16, 16, 16], "warmup_steps": 1, "init_from": None,
                      "val_every": 2, "checkpoint_every": 1, "threads": 1}}
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")
REPORT = os.environ.get("BT_BAD_INPUT_REPORT")
OUTCOMES: dict[str, str] = {}


# ----------------------------------------------------------------------------------- fixtures
def _write(path: Path, data: np.ndarray, classes: dict | None = None, chunk: int = 16) -> Path:
    extra = {"classes": {str(k): v for k, v in classes.items()}, "ignore_label": 255} if classes else {}
    with store.atomic_output(path, World()) as tmp:
        store.create_volume(tmp, data.shape, data.dtype, store.volume_attrs("phantom", 0.5, **extra),
                            chunk=chunk, shard=chunk)[...] = data
    return path


@dataclass
class Base:
    root: Path
    vol: Path
    lab: Path
    nan: Path
    inf: Path
    lab_unknown: Path
    tiny: Path
    npy: Path
    npy_nan: Path
    model: Path
    ckpt_model: Path
    extra: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    from batterytwin.cli import main
    from batterytwin.contracts import CLASSES

    root = tmp_path_factory.mktemp("bad")
    img, lab = make_phantom((32, 32, 32), seed=3)
    vol = _write(root / "volume.zarr", img)
    labp = _write(root / "labels.zarr", lab, CLASSES)
    bad = img.copy()
    bad[5, 6, 7] = np.nan
    nan = _write(root / "nan.zarr", bad)
    bad = img.copy()
    bad[20, 1, 2] = np.inf
    inf = _write(root / "inf.zarr", bad)
    unknown = lab.copy()
    unknown[1, 1, 1], unknown[30, 30, 30] = 9, 200
    lab_unknown = _write(root / "labels_unknown.zarr", unknown, CLASSES)
    tiny = _write(root / "tiny.zarr", np.ones((1, 1, 1), np.float32), chunk=1)
    npy = root / "scan.npy"
    np.save(npy, img)
    npy_nan = root / "scan_nan.npy"
    np.save(npy_nan, np.where(np.arange(img.size).reshape(img.shape) == 77, np.nan, img).astype(np.float32))
    model = root / "model.pt"
    code = main(["-q", "train-seg", "--volume", str(vol), "--labels", str(labp), "--model-out", str(model),
                 "--metrics-out", str(root / "m.json"), "--checkpoint-dir", str(root / "ck"),
                 "--config-json", json.dumps(TINY_SEG)])
    assert code == EXIT_OK and model.exists()
    ckpt = root / "checkpoint.pt"  # what a training checkpoint holds (run_key, step, states)
    torch.save({"run_key": "abc", "step": 1, "model": {}, "optimizer": {}}, ckpt)
    return Base(root, vol, labp, nan, inf, lab_unknown, tiny, npy, npy_nan, model, ckpt)


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _first_shard(p: Path) -> Path:
    return next(q for q in sorted((p / "0" / "c").rglob("*")) if q.is_file())


def deleted_shard(b: Base, tmp: Path, src: str = "vol") -> Path:
    p = copy_store(getattr(b, src), tmp / "deleted.zarr")
    _first_shard(p).unlink()
    return p


def truncated_shard(b: Base, tmp: Path) -> Path:
    p = copy_store(b.vol, tmp / "truncated.zarr")
    f = _first_shard(p)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    return p


def garbled_shard(b: Base, tmp: Path) -> Path:
    p = copy_store(b.vol, tmp / "garbled.zarr")
    f = _first_shard(p)
    data = bytearray(f.read_bytes())
    for i in range(8, len(data) - 64, 5):
        data[i] ^= 0xA5
    f.write_bytes(bytes(data))
    return p


def corrupt_array_meta(b: Base, tmp: Path) -> Path:
    p = copy_store(b.vol, tmp / "badmeta.zarr")
    (p / "0" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array", "shape": [')
    return p


def zero_size_store(b: Base, tmp: Path) -> Path:
    p = tmp / "empty.zarr"
    p.write_bytes(b"")
    return p


def locked_work_dir(tmp: Path) -> Path:
    import socket

    work = tmp / "work"
    work.mkdir()
    (work / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(),
                                            "started": "2026-01-01T00:00:00+00:00"}))
    return work


# ------------------------------------------------------------------------------------- the table
@dataclass
class Case:
    name: str
    argv: Callable[[Base, Path], list]   # (fixture, case folder) -> argv (outputs under the case folder)
    expect: Callable[[Base, Path], str] | str  # what the error line must name
    outputs: tuple[str, ...] = ("out.zarr",)  # relative to the case folder: must not exist afterwards


def _denoise(inp, *extra):
    return lambda b, t: ["denoise", inp(b, t), t / "out.zarr", "--patch-size", "3", "--search-radius", "1", *extra]


def _seg(inp, *extra, model=None):
    return lambda b, t: ["segment", "--input", inp(b, t), "--model", (model or (lambda b, t: b.model))(b, t),
                         "--output", t / "out.zarr", *extra]


def _train(vol, lab=lambda b, t: b.lab, *extra):
    return lambda b, t: ["train-seg", "--volume", vol(b, t), "--labels", lab(b, t), "--model-out", t / "out.pt",
                         "--metrics-out", t / "out.json", "--checkpoint-dir", t / "ck",
                         "--config-json", json.dumps(TINY_SEG), *extra]


def _micro(lab):
    return lambda b, t: ["microstructure", "--labels", lab(b, t), "--output", t / "out.json", "--msd", t / "out.npz"]


def _ome(vol, *extra):
    return lambda b, t: ["report", "ome", "--volume", vol(b, t), "--out", t / "out.zarr", *extra]


def _ingest(*extra, source=lambda b, t: b.npy, out=lambda b, t: t / "out.zarr"):
    return lambda b, t: ["ingest", source(b, t), out(b, t), "--voxel-size-um", "0.5", *extra]


def _phantom(*extra):
    return lambda b, t: ["phantom", t / "out.zarr", "--shape", "16", "16", "16", *extra]


def _predict(*extra):
    return lambda b, t: ["predict-degradation", "--npz", b.root / "none.npz", "--model", b.root / "none.pt",
                         "--out", t / "out.zarr", *extra]


V = lambda b, t: b.vol  # noqa: E731
NAN = lambda b, t: b.nan  # noqa: E731
INF = lambda b, t: b.inf  # noqa: E731
DEL = lambda b, t: deleted_shard(b, t)  # noqa: E731
TRUNC = lambda b, t: truncated_shard(b, t)  # noqa: E731
GARBLE = lambda b, t: garbled_shard(b, t)  # noqa: E731
META = lambda b, t: corrupt_array_meta(b, t)  # noqa: E731
ZERO = lambda b, t: zero_size_store(b, t)  # noqa: E731
MISSING = lambda b, t: t / "missing.zarr"  # noqa: E731

CASES = [
    # --- 1. incomplete or damaged stores
    Case("inspect-deleted-shard", lambda b, t: ["inspect", DEL(b, t)], "deleted.zarr"),
    Case("inspect-truncated-shard", lambda b, t: ["inspect", TRUNC(b, t)], "truncated.zarr"),
    Case("inspect-garbled-shard", lambda b, t: ["inspect", GARBLE(b, t)], "garbled.zarr"),
    Case("inspect-verify-garbled", lambda b, t: ["inspect", "--verify", GARBLE(b, t)], "garbled.zarr"),
    Case("inspect-corrupt-array-meta", lambda b, t: ["inspect", META(b, t)], "badmeta.zarr"),
    Case("inspect-zero-size-store", lambda b, t: ["inspect", ZERO(b, t)], "empty.zarr"),
    Case("inspect-empty-folder", lambda b, t: ["inspect", (t / "e.zarr").mkdir() or t / "e.zarr"], "e.zarr"),
    Case("inspect-missing", lambda b, t: ["inspect", MISSING(b, t)], "missing.zarr"),
    Case("denoise-deleted-shard", _denoise(DEL), "deleted.zarr"),
    Case("denoise-truncated-shard", _denoise(TRUNC), "truncated.zarr"),
    Case("denoise-garbled-shard", _denoise(GARBLE), "garbled.zarr"),
    Case("denoise-corrupt-array-meta", _denoise(META), "badmeta.zarr"),
    Case("denoise-missing-input", _denoise(MISSING), "missing.zarr"),
    Case("denoise-input-is-a-file", _denoise(ZERO), "empty.zarr"),
    Case("train-seg-deleted-shard", _train(DEL), "deleted.zarr", ("out.pt",)),
    Case("train-seg-deleted-label-shard", _train(V, lambda b, t: deleted_shard(b, t, "lab")), "deleted.zarr",
         ("out.pt",)),
    Case("segment-deleted-shard", _seg(DEL), "deleted.zarr"),
    Case("segment-garbled-shard", _seg(GARBLE), "garbled.zarr"),
    Case("microstructure-deleted-shard", _micro(lambda b, t: deleted_shard(b, t, "lab")), "deleted.zarr",
         ("out.json",)),
    Case("report-ome-deleted-shard", _ome(DEL), "deleted.zarr"),
    Case("report-slices-deleted-shard", lambda b, t: ["report", "slices", "--raw", DEL(b, t), "--out",
                                                      t / "out.png"], "deleted.zarr", ("out.png",)),
    # --- 2. non-finite voxels
    Case("denoise-nan", _denoise(NAN), "nan.zarr"),
    Case("denoise-inf", _denoise(INF), "inf.zarr"),
    Case("train-seg-nan", _train(NAN), "nan.zarr", ("out.pt",)),
    Case("train-seg-inf", _train(INF), "inf.zarr", ("out.pt",)),
    Case("segment-nan", _seg(NAN), "nan.zarr"),
    Case("report-ome-nan", _ome(NAN), "nan.zarr"),
    Case("ingest-nan-source", _ingest(source=lambda b, t: b.npy_nan), "scan_nan.npy"),
    # --- 3. unknown label ids
    Case("microstructure-unknown-labels", _micro(lambda b, t: b.lab_unknown), "labels_unknown.zarr", ("out.json",)),
    Case("train-seg-unknown-labels", _train(V, lambda b, t: b.lab_unknown), "labels_unknown.zarr", ("out.pt",)),
    Case("report-ome-unknown-labels", _ome(V, "--labels", "seg=" + "{lab_unknown}"), "labels_unknown.zarr"),
    # --- 4. ingest over something that is not a store
    Case("ingest-over-regular-file",
         _ingest(out=lambda b, t: (t / "out.zarr").write_text("keep me") and t / "out.zarr"), "out.zarr", ()),
    Case("ingest-over-plain-folder",
         _ingest(out=lambda b, t: ((t / "out.zarr").mkdir(), (t / "out.zarr" / "notes.txt").write_text("x"))
                 and t / "out.zarr"), "out.zarr", ()),
    # --- 5. absurd parameters
    Case("ingest-chunk-0", _ingest("--chunk", "0"), "--chunk"),
    Case("ingest-shard-negative", _ingest("--shard", "-5"), "--shard"),
    Case("ingest-shard-below-chunk", _ingest("--chunk", "16", "--shard", "8"), "--shard"),
    Case("ingest-max-memory-0", _ingest("--max-memory-mb", "0"), "--max-memory-mb"),
    Case("ingest-bin-0", _ingest("--bin", "0"), "bin"),
    Case("ingest-voxel-size-negative", lambda b, t: ["ingest", b.npy, t / "out.zarr", "--voxel-size-um", "-1"],
         "voxel_size_um"),
    Case("ingest-crop-outside", _ingest("--crop", "0:99,,"), "crop"),
    Case("phantom-noise-sigma-negative", _phantom("--param", "noise_sigma=-1"), "noise_sigma"),
    Case("phantom-blur-sigma-nan", _phantom("--param", "blur_sigma=NaN"), "blur_sigma"),
    Case("phantom-photons-inf", _phantom("--param", "photons=Infinity"), "photons"),
    Case("phantom-active-fraction-2", _phantom("--param", "active_fraction=2"), "active_fraction"),
    Case("phantom-chunk-0", _phantom("--chunk", "0"), "--chunk"),
    Case("phantom-shape-too-small", lambda b, t: ["phantom", t / "out.zarr", "--shape", "8", "8", "8"], "shape"),
    Case("phantom-frame-outside", _phantom("--frame", "3", "--n-frames", "2"), "frame"),
    Case("phantom-unknown-param", _phantom("--param", "noise=1"), "noise"),
    Case("phantom-param-without-value", _phantom("--param", "noise_sigma"), "noise_sigma"),
    Case("report-ome-levels-negative", _ome(V, "--levels", "-1"), "--levels"),
    Case("report-ome-chunk-0", _ome(V, "--chunk", "0"), "--chunk"),
    Case("segment-1x1x1-volume", _seg(lambda b, t: b.tiny), "tiny.zarr"),
    Case("denoise-shard-below-chunk", _denoise(V, "--shard", "8"), "--shard"),
    Case("denoise-even-patch", lambda b, t: ["denoise", b.vol, t / "out.zarr", "--patch-size", "4"], "patch_size"),
    Case("denoise-h-negative", _denoise(V, "--h", "-1"), "h"),
    Case("denoise-volume-smaller-than-patch", _denoise(lambda b, t: b.tiny), "tiny.zarr"),
    Case("train-seg-steps-0", _train(V, lambda b, t: b.lab, "--steps", "0"), "steps", ("out.pt",)),
    Case("train-degradation-lr-negative",
         lambda b, t: ["train-degradation", "--npz", b.root / "none.npz", "--out", t / "out.pt", "--lr", "-1"],
         "lr", ("out.pt",)),
    # --- 6. one line, not a traceback
    Case("ingest-crop-garbage", _ingest("--crop", "a:b;rm"), "crop"),
    Case("ingest-output-dtype-banana", _ingest("--output-dtype", "banana"), "banana"),
    Case("ingest-output-dtype-complex", _ingest("--output-dtype", "complex64"), "complex64"),
    Case("ingest-missing-source", _ingest(source=lambda b, t: t / "none.npy"), "none.npy"),
    Case("phantom-seed-negative", _phantom("--seed", "-1"), "seed"),
    Case("phantom-param-string", _phantom("--param", 'noise_sigma="abc"'), "noise_sigma"),
    Case("phantom-param-not-json", _phantom("--param", "noise_sigma=abc"), "noise_sigma"),
    Case("segment-sw-batch-size-0", _seg(V, "--sw-batch-size", "0"), "sw_batch_size"),
    Case("segment-checkpoint-as-model", _seg(V, model=lambda b, t: b.ckpt_model), "checkpoint"),
    Case("segment-corrupt-model", _seg(V, model=lambda b, t: (t / "bad.pt").write_bytes(b"PK\x03\x04garbage")
                                       and t / "bad.pt"), "bad.pt"),
    Case("segment-truncated-model", _seg(V, model=lambda b, t: (t / "cut.pt").write_bytes(
        b.model.read_bytes()[:2000]) and t / "cut.pt"), "cut.pt"),
    Case("segment-missing-model", _seg(V, model=lambda b, t: t / "none.pt"), "none.pt"),
    Case("predict-degradation-samples-0", _predict("--samples", "0"), "samples"),
    Case("predict-degradation-level-1.5", _predict("--level", "1.5"), "level"),
    Case("predict-degradation-missing-data", _predict(), "none.npz"),
    Case("predict-degradation-predictor-unknown", _predict("--predictor", "forest"), "predictor"),
    Case("predict-degradation-stack-member-unknown",
         _predict("--config-json", '{"sample": {"life_model": {"members": ["variance", "lstm"]}}}'), "lstm"),
    Case("predict-degradation-stack-combine-unknown",
         _predict("--config-json", '{"sample": {"life_model": {"combine": "vote"}}}'), "combine"),
    Case("predict-degradation-checkpoint-as-model", lambda b, t: [
        "predict-degradation", "--npz", REPO / "data/cycling/matr_1_test.npz", "--model", b.ckpt_model,
        "--out", t / "out.zarr", "--samples", "2"], "checkpoint"),
    Case("predict-degradation-corrupt-model", lambda b, t: [
        "predict-degradation", "--npz", REPO / "data/cycling/matr_1_test.npz", "--model",
        (t / "bad.pt").write_bytes(b"\x80\x02garbage") and t / "bad.pt", "--out", t / "out.zarr"], "bad.pt"),
    Case("simulate-missing-microstructure",
         lambda b, t: ["simulate", "-i", t / "none.json", "-o", t / "out.zarr", "--summary", t / "out.json",
                       "--work-dir", t / "w"], "none.json"),
    Case("report-training-missing-metrics",
         lambda b, t: ["report", "training", t / "none.json", "--out", t / "out.png"], "none.json", ("out.png",)),
    Case("twin-missing-data", lambda b, t: ["twin", "--train", t / "none.npz", "--out", t / "out.zarr"], "none.npz"),
    Case("twin-diffusion-deleted-shard", lambda b, t: [
        "twin", "--train", REPO / "data/cycling/matr_1_train.npz", "--test", REPO / "data/cycling/matr_1_test.npz",
        "--diffusion", DEL(b, t), "--out", t / "out.zarr"], "deleted.zarr"),
    # --- 7. concurrency
    Case("denoise-work-dir-in-use", lambda b, t: [*_denoise(V)(b, t), "--work-dir", locked_work_dir(t)], ".lock"),
]


def _fill(value, b: Base) -> str:
    return str(value).replace("{lab_unknown}", str(b.lab_unknown))


def run_case(case: Case, b: Base, tmp: Path, capsys) -> tuple[str, int, str]:
    from batterytwin.cli import main

    argv = [_fill(a, b) for a in case.argv(b, tmp)]
    capsys.readouterr()
    try:
        code = main(["-q", *argv])
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    except BaseException as exc:  # noqa: BLE001 - anything escaping main is a traceback
        return "traceback", -1, f"{type(exc).__name__}: {exc}"
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines()
             if ln.strip() and not LOG_LINE.match(ln) and not ln.startswith(("usage:", " "))]
    expect = case.expect(b, tmp) if callable(case.expect) else case.expect
    leftovers = [o for o in case.outputs if (tmp / o).exists()]
    if code == EXIT_OK:
        outcome = "silent"
    elif code != EXIT_BAD_INPUT or "Traceback" in err:
        outcome = "traceback"
    elif len(lines) == 1 and expect in lines[0] and not leftovers:
        outcome = "clear"
    else:
        outcome = "unclear"
    return outcome, code, err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line(case: Case, base: Base, tmp_path: Path, capsys) -> None:
    outcome, code, err = run_case(case, base, tmp_path, capsys)
    OUTCOMES[case.name] = outcome
    if REPORT:
        Path(REPORT).write_text(json.dumps(OUTCOMES, indent=1))
    assert outcome == "clear", f"{case.name}: {outcome} (exit {code})\n{err[-2000:]}"


def test_ingest_overwrite_replaces_a_file_when_asked(base: Base, tmp_path: Path, capsys) -> None:
    from batterytwin.cli import main

    out = tmp_path / "out.zarr"
    out.write_text("old")
    assert main(["-q", "ingest", str(base.npy), str(out), "--voxel-size-um", "0.5", "--overwrite"]) == EXIT_OK
    assert store.open_volume(out).shape == (32, 32, 32)


# ------------------------------------------------------------------- the workflow's MPI launcher
@pytest.mark.parametrize("launcher,ok", [
    ("mpiexec", True), ("srun --cpus-per-task=8 --gpus-per-task=1", True),
    ("/opt/mpi/bin/mpirun -x OMP_NUM_THREADS", True),
    ("mpiexec; rm -rf ~", False), ("srun $(id)", False), ("srun `id`", False), ("mpiexec | tee log", False),
    ("srun > out", False), ("srun\n-n 2", False), ("'srun'", False), ("", False),
])
def test_mpi_launcher_is_a_program_and_options(launcher: str, ok: bool) -> None:
    from batterytwin.errors import InputError
    from batterytwin.workflow_config import complete_config

    for cfg in ({"mpi": launcher}, {"resources": {"denoise": {"mpi": launcher}}}):
        config = {"samples": {"s": {"source": "synthetic"}}, **cfg}
        if ok:
            complete_config(config)
        else:
            with pytest.raises(InputError, match="mpi: must match"):
                complete_config(config)


# --------------------------------------------------------------------- stores and their manifest
def test_manifest_is_written_and_checked(base: Base, tmp_path: Path, caplog) -> None:
    from batterytwin.errors import InputError

    manifest = json.loads((base.vol / store.MANIFEST).read_text())
    assert manifest["schema"] == store.MANIFEST_SCHEMA and "0/zarr.json" in manifest["files"]
    assert store.verify_store(base.vol, checksums=True) == len(manifest["files"])
    older = copy_store(base.vol, tmp_path / "older.zarr")
    (older / store.MANIFEST).unlink()  # committed with a manifest (group attribute): its loss is refused
    with pytest.raises(InputError, match="batterytwin.manifest.json: missing"):
        store.open_volume(older)
    with pytest.raises(InputError, match="missing"):
        store.open_volume(deleted_shard(base, tmp_path))


def test_non_finite_check_names_count_and_first_position(base: Base) -> None:
    from batterytwin.errors import InputError

    with pytest.raises(InputError, match=r"1 NaN/infinite voxel\(s\), first at \(z, y, x\) = \(5, 6, 7\)"):
        store.check_finite(store.open_volume(base.nan))
    store.check_finite(store.open_volume(base.vol))


def test_non_finite_loss_stops_training() -> None:
    from batterytwin.errors import InputError
    from batterytwin.training import check_loss

    check_loss(0.5, 1, "train-x")
    with pytest.raises(InputError, match="train-x: training loss is nan at step 3"):
        check_loss(float("nan"), 3, "train-x")


def test_work_dir_lock_is_exclusive_and_stale_locks_are_taken_over(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from batterytwin.errors import InputError

    with store.exclusive_lock(tmp_path, World()):
        with pytest.raises(InputError, match="in use by another run"):
            with store.exclusive_lock(tmp_path, World()):  # same host, live owner
                pass
    assert not (tmp_path / ".lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    with store.exclusive_lock(tmp_path, World()):  # its owner is gone: taken over
        pass



@pytest.mark.slow
@pytest.mark.mpi
def test_two_ranks_share_the_manifest_checksums(tmp_path: Path) -> None:
    from .conftest import mpiexec

    out = tmp_path / "v.zarr"
    mpiexec(2, "batterytwin", "-q", "phantom", str(out), "--shape", "32", "32", "32", "--chunk", "16", "--shard", "16")
    files = json.loads((out / store.MANIFEST).read_text())["files"]
    assert len(files) == 2 + 8 and store.verify_store(out, checksums=True) == len(files)

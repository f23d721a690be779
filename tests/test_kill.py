"""SIGKILL at random points, then rerun: the result equals an uninterrupted run's.

For each long-running command: one uninterrupted reference run (in-process), then two runs of the
same command as separate processes, each killed with SIGKILL at a seeded random moment once it has
started writing, then a final rerun to completion. The final output must equal the reference (data
bit for bit, attributes apart from the creation time), and no unfinished output may sit at the
final path in between.

SIGKILL leaves no chance to clean up: what must hold is that the final path is either absent or
complete (atomic commit), and that resumable commands (denoise ``--work-dir``, train-seg checkpoints)
pick up where they were and take over the dead run's work-folder lock.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from batterytwin import store
from batterytwin.cli import main
from batterytwin.distributed import World
from batterytwin.errors import EXIT_OK
from batterytwin.ingest.phantom import make_phantom

from .conftest import REPO

pytestmark = pytest.mark.slow  # each command runs to completion three or four times

RNG = random.Random(18)
KILLS = 2  # killed runs per command before the final rerun


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    return env


def run_and_kill(argv: list, started: Callable[[], bool], delay: float, timeout: float = 60) -> bool:
    """Start ``batterytwin argv`` as a process; SIGKILL it ``delay`` s after ``started()``; True if killed."""
    proc = subprocess.Popen([sys.executable, "-m", "batterytwin.cli", "-q", *map(str, argv)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    t0 = time.monotonic()
    while proc.poll() is None and not started() and time.monotonic() - t0 < timeout:
        time.sleep(0.005)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=timeout)
    assert killed or proc.returncode == EXIT_OK, err.decode()[-2000:]
    return killed


def tmp_sibling(path: Path) -> Callable[[], bool]:
    return lambda: any(path.parent.glob(f"{path.name}{store.TMP_MARKER}*"))


def assert_same_store(ref: Path, got: Path) -> None:
    """``got`` holds the reference's data and attributes (apart from the creation time), and its manifest
    lists as many files as the reference's, every one present with its size and CRC-32."""
    a, b = store.open_volume(ref), store.open_volume(got)
    assert a.shape == b.shape and a.array.dtype == b.array.dtype
    np.testing.assert_array_equal(np.asarray(a.array[...]), np.asarray(b.array[...]))
    skip = {"created"}
    assert {k: v for k, v in a.attrs.items() if k not in skip} == {k: v for k, v in b.attrs.items() if k not in skip}
    n_files = store.verify_store(ref, checksums=True)
    assert n_files > 0 and store.verify_store(got, checksums=True) == n_files


def kill_then_finish(argv: list, out: Path, ref: Path, started: Callable[[], bool], max_delay: float,
                     kills: int = KILLS) -> int:
    """``kills`` killed runs, then a final rerun to completion; returns the kills that landed.

    After each killed run the output is absent, or complete: equal to the reference ``ref``."""
    landed = 0
    for _ in range(kills):
        landed += run_and_kill(argv, started, RNG.uniform(0.0, max_delay))
        if out.exists():
            assert_same_store(ref, out)
    print(f"{argv[0]}: {landed}/{kills} kills landed before the run ended")
    assert main(["-q", *map(str, argv)]) == EXIT_OK
    return landed


def _reference(argv: list, out: Path) -> Path:
    assert main(["-q", *map(str, argv)]) == EXIT_OK
    ref = out.with_name("reference-" + out.name)
    os.rename(out, ref)
    return ref


def test_phantom_killed_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    out = tmp_path / "volume.zarr"
    argv = ["phantom", out, "--shape", "48", "48", "48", "--chunk", "16", "--shard", "16",
            "--param", "photons=200"]
    ref = _reference(argv, out)
    kill_then_finish(argv, out, ref, tmp_sibling(out), 0.6)
    assert_same_store(ref, out)


def test_ingest_killed_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    src = tmp_path / "scan.npy"
    np.save(src, make_phantom((48, 48, 48), seed=2)[0])
    out = tmp_path / "volume.zarr"
    argv = ["ingest", src, out, "--voxel-size-um", "0.5", "--chunk", "8", "--shard", "8", "--max-memory-mb", "0.05"]
    ref = _reference(argv, out)
    kill_then_finish(argv, out, ref, tmp_sibling(out), 0.5)
    assert_same_store(ref, out)


def test_denoise_killed_then_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    img = make_phantom((32, 32, 32), seed=4)[0]
    src = tmp_path / "volume.zarr"
    with store.atomic_output(src, World()) as t:
        store.create_volume(t, img.shape, "float32", store.volume_attrs("phantom", 0.5), chunk=8, shard=8)[...] = img
    out, work = tmp_path / "denoised.zarr", tmp_path / "work"
    argv = ["denoise", src, out, "--patch-size", "3", "--search-radius", "2", "--h", "0.1", "--threads", "1",
            "--work-dir", work]
    ref = _reference(argv, out)
    shutil.rmtree(work, ignore_errors=True)
    (out.parent / "denoise.json").unlink()
    partial = work / "shards"
    kill_then_finish(argv, out, ref, lambda: partial.exists(), 1.0)  # the dead run's lock is stale: taken over
    assert_same_store(ref, out)
    assert not (work / ".lock").exists() and not (work / "denoised.partial.zarr").exists()


def test_train_seg_killed_then_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    img, lab = make_phantom((24, 24, 24), seed=5)
    vol, labp = tmp_path / "v.zarr", tmp_path / "l.zarr"
    from batterytwin.contracts import CLASSES

    for path, data, extra in ((vol, img, {}), (labp, lab, {"classes": {str(k): v for k, v in CLASSES.items()}})):
        with store.atomic_output(path, World()) as t:
            store.create_volume(t, data.shape, data.dtype, store.volume_attrs("phantom", 0.5, **extra),
                                chunk=8, shard=8)[...] = data
    tiny = {"model": {"channels": [4, 8], "strides": [2], "num_res_units": 1},
            "train": {"steps": 16, "batch_size": 2, "patch_size": [16, 16, 16], "warmup_steps": 2, "init_from": None,
                      "val_every": 100, "checkpoint_every": 2, "threads": 1, "lr": 0.01}}

    def argv(model: Path, ckpt: Path) -> list:
        return ["train-seg", "--volume", vol, "--labels", labp, "--model-out", model, "--metrics-out",
                model.with_suffix(".json"), "--checkpoint-dir", ckpt, "--config-json", json.dumps(tiny)]

    assert main(["-q", *map(str, argv(tmp_path / "ref.pt", tmp_path / "ck_ref"))]) == EXIT_OK
    model, ckpt = tmp_path / "model.pt", tmp_path / "ck"

    def assert_same_model() -> None:
        a = torch.load(tmp_path / "ref.pt", weights_only=True)["state_dict"]
        b = torch.load(model, weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    landed = 0
    for _ in range(KILLS):
        landed += run_and_kill(argv(model, ckpt), lambda: ckpt.exists() and any(ckpt.iterdir()), RNG.uniform(0.0, 1.0))
        if model.exists():  # absent, or complete: the reference's weights
            assert_same_model()
    print(f"train-seg: {landed}/{KILLS} kills landed before the run ended")
    assert main(["-q", *map(str, argv(model, ckpt))]) == EXIT_OK
    assert_same_model()


def _labelled_pair(tmp_path: Path, shape=(32, 32, 32), seed=6) -> tuple[Path, Path]:
    from batterytwin.contracts import CLASSES

    img, lab = make_phantom(shape, seed=seed)
    vol, labp = tmp_path / "v.zarr", tmp_path / "l.zarr"
    for path, data, extra in ((vol, img, {}), (labp, lab, {"classes": {str(k): v for k, v in CLASSES.items()},
                                                             "ignore_label": 255})):
        with store.atomic_output(path, World()) as t:
            store.create_volume(t, data.shape, data.dtype, store.volume_attrs("phantom", 0.5, **extra),
                                chunk=8, shard=8)[...] = data
    return vol, labp


def test_microstructure_killed_then_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    from batterytwin.microstructure.slabs import LabelSlabs

    _, labp = _labelled_pair(tmp_path)
    assert len(LabelSlabs(store.open_volume(labp)).bounds) == 4  # the stage reads it in slabs, merged across faces
    walk = ["--walkers", "2048", "--steps", "1500", "--records", "8", "--batches", "16", "--bootstrap", "20"]

    def argv(tag: str) -> list:
        return ["microstructure", "--labels", labp, "--output", tmp_path / f"{tag}.json", "--msd",
                tmp_path / f"{tag}.npz", "--checkpoint-dir", tmp_path / f"ck_{tag}", *walk]

    assert main(["-q", *map(str, argv("ref"))]) == EXIT_OK
    ck = tmp_path / "ck_run"
    landed = sum(run_and_kill(argv("run"), lambda: ck.exists(), RNG.uniform(0.0, 0.3))
                 for _ in range(KILLS))
    print(f"microstructure: {landed}/{KILLS} kills landed before the run ended")
    assert main(["-q", *map(str, argv("run"))]) == EXIT_OK
    volatile = {"created", "wall_time_s"}
    a = {k: v for k, v in json.loads((tmp_path / "ref.json").read_text()).items() if k not in volatile}
    b = {k: v for k, v in json.loads((tmp_path / "run.json").read_text()).items() if k not in volatile}
    assert a == b
    ra, rb = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "run.npz")
    assert sorted(ra.files) == sorted(rb.files)
    for k in ra.files:
        np.testing.assert_array_equal(ra[k], rb[k])  # NaN == NaN here


def test_segment_killed_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    vol, labp = _labelled_pair(tmp_path, (24, 24, 24), seed=7)
    model = tmp_path / "model.pt"
    tiny = {"model": {"channels": [4, 8], "strides": [2], "num_res_units": 1},
            "train": {"steps": 2, "batch_size": 2, "patch_size": [16, 16, 16], "warmup_steps": 1, "threads": 1,
                      "init_from": None}}
    assert main(["-q", "train-seg", "--volume", str(vol), "--labels", str(labp), "--model-out", str(model),
                 "--metrics-out", str(tmp_path / "m.json"), "--checkpoint-dir", str(tmp_path / "ck"),
                 "--config-json", json.dumps(tiny)]) == EXIT_OK
    out = tmp_path / "labels.zarr"
    argv = ["segment", "--input", vol, "--model", model, "--output", out, "--config-json",
            json.dumps({"infer": {"chunk": 8, "shard": 8, "threads": 1}})]
    ref = _reference(argv, out)
    kill_then_finish(argv, out, ref, tmp_sibling(out), 0.5, kills=1)  # no resume: one kill shows the commit
    assert_same_store(ref, out)

"""Store-to-store denoising: chunked == whole volume, metrics, resume, MPI ranks, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import denoise_nl_means

from batterytwin import store
from batterytwin.config import validate_settings
from batterytwin.denoise.config import DenoiseConfig
from batterytwin.denoise.driver import denoise_store, read_with_halo
from batterytwin.denoise.nlm import nlm
from batterytwin.denoise.sigma import estimate_sigma
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK, InputError

from .conftest import REPO

BIN = Path(sys.executable).parent
SHAPE = (18, 20, 22)


def write_store(path, arr, voxel=1.5, chunk=6, shard=12, attrs=None):
    attrs = store.volume_attrs("ingest", voxel) if attrs is None else attrs
    store.create_volume(path, arr.shape, arr.dtype, attrs, chunk=chunk, shard=shard)
    store.open_volume(path, mode="r+", validate=False).array[...] = arr
    return Path(path)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("denoise")
    rng = np.random.default_rng(11)
    idx = np.indices(SHAPE)
    clean = (0.25 + 0.5 * (((idx[0] // 6) + (idx[1] // 7) + (idx[2] // 8)) % 2)).astype(np.float32)
    noisy = np.clip(clean + 0.08 * rng.standard_normal(SHAPE), 0, 1).astype(np.float32)
    return {"root": root, "clean": clean, "noisy": noisy,
            "volume": write_store(root / "volume.zarr", noisy), "reference": write_store(root / "clean.zarr", clean)}


def test_read_with_halo_equals_padded_volume(sample):
    arr = store.open_volume(sample["volume"]).array
    padded = np.pad(sample["noisy"], 5, mode="reflect")
    region = (slice(12, 18), slice(0, 12), slice(12, 22))
    want = padded[12:18 + 10, 0:12 + 10, 12:22 + 10]
    assert np.array_equal(read_with_halo(arr, region, 5), want)


def test_chunked_equals_whole_volume_and_metrics(sample, tmp_path):
    out = tmp_path / "denoised.zarr"
    cfg = DenoiseConfig(patch_size=3, search_radius=2, h=0.1, threads=2)
    summary = denoise_store(sample["volume"], out, cfg, reference=sample["reference"])
    vol = store.open_volume(out)
    got = np.asarray(vol.array[...])
    assert vol.array.dtype == np.float32 and vol.shards == (12, 12, 12)  # several shards, halos crossed
    whole = nlm(sample["noisy"], 3, 2, 0.1, dtype=torch.float64).numpy()
    assert np.abs(got - whole).max() < 1e-5
    # metrics equal scikit-image's whole-volume functions
    m = json.loads((tmp_path / "denoise.json").read_text())["metrics"]
    rng_ = float(sample["clean"].max() - sample["clean"].min())
    assert m["psnr_db"] == pytest.approx(peak_signal_noise_ratio(sample["clean"], got, data_range=rng_), abs=1e-6)
    assert m["ssim"] == pytest.approx(structural_similarity(got.astype(np.float64), sample["clean"].astype(np.float64),
                                                            data_range=rng_), abs=1e-6)
    assert m["psnr_db"] > peak_signal_noise_ratio(sample["clean"], sample["noisy"], data_range=rng_) + 3
    assert vol.attrs["metrics"]["ssim"] == m["ssim"]
    assert vol.attrs["nlm"]["patch_size"] == 3 and vol.attrs["nlm"]["h"] == 0.1
    assert vol.attrs["voxel_size_um"] == [1.5, 1.5, 1.5]
    assert summary["noise_sigma"] == pytest.approx(estimate_sigma(sample["noisy"]), rel=1e-12)


def test_compat_store_matches_skimage_and_h_factor(sample, tmp_path):
    out = tmp_path / "d.zarr"
    cfg = DenoiseConfig(patch_size=3, search_radius=3, h=None, h_factor=1.2, compat="skimage", subtract_sigma=True)
    summary = denoise_store(sample["volume"], out, cfg)
    sigma = estimate_sigma(sample["noisy"])
    assert summary["h"] == pytest.approx(1.2 * sigma) and store.open_volume(out).attrs["noise_sigma"] == sigma
    ref = denoise_nl_means(sample["noisy"].astype(np.float64), patch_size=3, patch_distance=3, h=1.2 * sigma,
                           sigma=sigma, fast_mode=True)
    assert np.abs(np.asarray(store.open_volume(out).array[...]) - ref).max() < 1e-6  # float64 inside, float32 store


def test_integer_input_is_denoised_in_data_units(tmp_path):
    rng = np.random.default_rng(2)
    x = (1000 + 200 * rng.standard_normal((10, 11, 12))).clip(0, 4000).astype(np.uint16)
    src = write_store(tmp_path / "v.zarr", x, chunk=5, shard=10)
    denoise_store(src, tmp_path / "d.zarr", DenoiseConfig(patch_size=3, search_radius=1, h=150.0))
    got = np.asarray(store.open_volume(tmp_path / "d.zarr").array[...])
    assert np.abs(got - nlm(x.astype(np.float32), 3, 1, 150.0).numpy()).max() < 1e-2  # float32 of ~1e3 values


def test_resume_skips_finished_shards(sample, tmp_path, monkeypatch):
    import batterytwin.denoise.driver as driver

    real, calls = driver.run_padded, []

    def dies_after_three(*args, **kwargs):  # the job is killed while computing its 4th shard
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out, work = tmp_path / "d.zarr", tmp_path / "work"
    cfg = DenoiseConfig(patch_size=3, search_radius=2, h=0.1)
    monkeypatch.setattr(driver, "run_padded", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        denoise_store(sample["volume"], out, cfg, work_dir=work)
    monkeypatch.setattr(driver, "run_padded", real)
    assert not out.exists()
    assert len(list(work.joinpath("shards").glob("*.done"))) == 3
    summary = denoise_store(sample["volume"], out, cfg, work_dir=work)
    assert summary["shards_computed"] == 5 and summary["shards"] == 8
    got = np.asarray(store.open_volume(out).array[...])
    assert np.abs(got - nlm(sample["noisy"], 3, 2, 0.1).numpy()).max() < 1e-5
    assert not (work / "denoised.partial.zarr").exists()
    # other parameters: the partial store is not reused
    cfg2 = DenoiseConfig(patch_size=3, search_radius=1, h=0.1)
    monkeypatch.setattr(driver, "run_padded", dies_after_three)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        denoise_store(sample["volume"], out, cfg2, work_dir=work)
    monkeypatch.setattr(driver, "run_padded", real)
    assert denoise_store(sample["volume"], out, DenoiseConfig(patch_size=3, search_radius=2, h=0.1),
                         work_dir=work)["shards_computed"] == 8


def test_bad_inputs(sample, tmp_path):
    with pytest.raises(InputError, match="no such store"):
        denoise_store(tmp_path / "missing.zarr", tmp_path / "o.zarr", DenoiseConfig(h=0.1))
    for bad in ({"patch_size": 4, "h": 0.1}, {"search_radius": -2, "h": 0.1}, {"h": -1.0}, {"h_factor": 0.0},
                {"backend": "cuda-magic", "h": 0.1}):  # the typed settings refuse them before any work
        with pytest.raises(InputError, match=f"denoise.{next(iter(bad))}"):
            denoise_store(sample["volume"], tmp_path / "o.zarr", validate_settings(DenoiseConfig, bad, "denoise"))
    no_meta = write_store(tmp_path / "nometa.zarr", sample["noisy"], attrs={"producer": {}})
    with pytest.raises(InputError, match="voxel_size_um"):
        denoise_store(no_meta, tmp_path / "o.zarr", DenoiseConfig(h=0.1))
    small = write_store(tmp_path / "small.zarr", np.zeros((4, 20, 20), np.float32))
    with pytest.raises(InputError, match="smaller than the patch"):
        denoise_store(small, tmp_path / "o.zarr", DenoiseConfig(patch_size=5, h=0.1))
    wrong_ref = write_store(tmp_path / "ref.zarr", np.zeros((5, 5, 5), np.float32))
    with pytest.raises(InputError, match="reference shape"):
        denoise_store(sample["volume"], tmp_path / "o.zarr", DenoiseConfig(h=0.1), reference=wrong_ref)
    assert not (tmp_path / "o.zarr").exists()


def test_cli_nan_input_exit_2_and_no_output(tmp_path):
    x = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    x[4, 4, 4] = np.nan
    src = write_store(tmp_path / "v.zarr", x, chunk=4, shard=8)
    proc = subprocess.run([BIN / "batterytwin", "denoise", str(src), str(tmp_path / "d.zarr"), "--patch-size", "3",
                           "--search-radius", "1", "--h", "0.1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_BAD_INPUT and "NaN" in proc.stderr
    assert not (tmp_path / "d.zarr").exists() and not list(tmp_path.glob("d.zarr.tmp-*"))


@pytest.mark.mpi
@pytest.mark.slow
def test_two_ranks_equal_one(sample, tmp_path):
    common = ["denoise", str(sample["volume"]), "--patch-size", "3", "--search-radius", "2", "--h-factor", "0.9",
              "--reference", str(sample["reference"]), "--threads", "1"]
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"n{n}" / "denoised.zarr"
        proc = subprocess.run([BIN / "mpiexec", "-n", str(n), BIN / "batterytwin", "-q", *common[:2], str(out), *common[2:]],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
        outs[n] = (np.asarray(store.open_volume(out).array[...]), json.loads((out.parent / "denoise.json").read_text()))
    assert np.array_equal(outs[1][0], outs[2][0])
    assert outs[2][1]["ranks"] == 2 and outs[1][1]["ranks"] == 1
    assert outs[1][1]["metrics"]["ssim"] == pytest.approx(outs[2][1]["metrics"]["ssim"], abs=1e-12)
    assert outs[1][1]["noise_sigma"] == outs[2][1]["noise_sigma"]


def test_triton_backend_without_gpu_is_a_clear_error(sample, tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InputError, match="CUDA"):
        denoise_store(sample["volume"], tmp_path / "o.zarr", DenoiseConfig(h=0.1, patch_size=3, search_radius=1,
                                                                          backend="triton", device="cpu"))
    assert not (tmp_path / "o.zarr").exists()


FREED_MEMORY_PROBE = """
import json
import os

import numpy as np

from batterytwin.denoise.driver import freed_memory_kept


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


before = rss_mb()
with freed_memory_kept():
    a = np.ones(50_000_000, np.float32)  # 200 MB from the heap (mmap threshold raised)
    del a
    inside = rss_mb()  # freed but kept for reuse
after = rss_mb()  # trimmed when the block ends
print(json.dumps({"before": before, "inside": inside, "after": after}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the kernel's RSS (/proc)")
def test_freed_memory_is_kept_within_a_shard_and_returned_after(tmp_path):
    """The NLM's temporaries are reused within a shard (kept) and returned between shards, so memory
    does not build up with the number of shards (the kernel's RSS count is the reference)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", FREED_MEMORY_PROBE], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    assert m["inside"] - m["before"] > 150  # kept for reuse while the shard's NLM runs
    assert m["after"] - m["before"] < 50  # given back when it ends

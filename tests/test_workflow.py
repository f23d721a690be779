"""The Snakemake workflow: dry-run, lint, config validation, and the whole chain end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from batterytwin import store
from batterytwin.ingest.phantom import make_phantom

from .conftest import BIN, REPO


def snakemake(workdir: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_dry_run_plans_every_stage(tmp_path):
    proc = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for rule in ("phantom",):
        assert f"{rule} " in proc.stdout


def test_lint_is_clean(tmp_path):
    proc = snakemake(tmp_path, "--lint", "--configfile", str(REPO / "config.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_config_violating_the_schema_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("samples:\n  s1:\n    source: data/x.h5\n")  # no voxel_size_um
    proc = snakemake(tmp_path, "-n", "--configfile", str(bad))
    assert proc.returncode != 0
    assert "voxel_size_um" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_whole_chain_on_a_tiny_phantom(tmp_path):
    proc = snakemake(tmp_path, "--cores", "2", "--configfile", str(REPO / "config.yaml"),
                     str(REPO / "tests" / "config.e2e.yaml"))
    assert proc.returncode == 0, proc.stderr[-6000:]
    results = tmp_path / "results"
    # ingest: the stores hold exactly the phantom generated in memory
    image, labels = make_phantom((32, 40, 40), seed=2)
    vol = store.open_volume(results / "phantom" / "volume.zarr")
    np.testing.assert_array_equal(vol.array[:], image)
    np.testing.assert_array_equal(store.open_volume(results / "phantom" / "truth.zarr").array[:], labels)
    assert vol.shards == (32, 32, 32)
    assert (tmp_path / "logs" / "phantom" / "phantom.log").exists()
    assert not list(results.rglob("*.tmp-*"))

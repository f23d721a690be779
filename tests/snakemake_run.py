"""Run the project's Snakemake workflow on a scratch working directory, with the venv's programs first on PATH."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .conftest import BIN, REPO


def snakemake(workdir: Path, *args: str, timeout: float = 1800, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``snakemake --snakefile <repo>/Snakefile --directory workdir *args`` run from ``cwd``; not checked."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)

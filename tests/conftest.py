"""Shared test helpers: run the CLI in-process, run commands under mpiexec."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batterytwin.errors import EXIT_OK

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def mpiexec(n: int, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``batterytwin`` (or another program of the venv) under ``mpiexec -n n``; fail on error."""
    cmd = [str(BIN / "mpiexec"), "-n", str(n), *args]
    run_env = dict(os.environ, **(env or {}))
    run_env["PATH"] = f"{BIN}{os.pathsep}{run_env.get('PATH', '')}"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env, cwd=REPO)
    if proc.returncode != EXIT_OK:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli(capsys):
    """Call ``batterytwin`` in-process: returns (exit code, stderr text)."""
    from batterytwin.cli import main

    def run(*argv: str):
        code = main(["-q", *map(str, argv)])
        return code, capsys.readouterr().err

    return run

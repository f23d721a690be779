"""README.md's "Your own scan" quick start, run as written.

The section's fenced blocks are the test's input, so a renamed key, a wrong path or a broken command
in the README fails here:

- every ```yaml block that starts with ``# examples/<name>.yaml`` is that file, verbatim (the README
  shows the file the user copies), and it validates against the typed configuration;
- the ```bash blocks are run in a sandbox checkout (the repository's workflow, Makefile and example
  configs linked into a temporary folder, ``.venv`` linked to the running interpreter's environment)
  with a scan and its hand labels where the config expects them. The scan comes from a small
  three-phase generator of this file (layers along z: cathode composite of spheres in electrolyte,
  electrolyte separator, lithium metal), not from the project's phantom. ``make install`` is checked
  with ``make -n`` (it would install into the shared environment); every other line runs as written:
  the dry runs (``snakemake -n``) here, the whole chain in the slow test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from batterytwin.contracts import IGNORE_LABEL
from batterytwin.workflow_config import complete_config

from .conftest import BIN, REPO

SECTION = "## Your own scan"
# what a fresh clone holds that the quick start reads (data/ and the outputs are the sandbox's own)
CHECKOUT = ("Snakefile", "workflow", "examples", "src", "Makefile", "pyproject.toml", "requirements.txt",
            "requirements.lock", "config.yaml")
# the names the generated labels use for the three phases, matched to the config's class map
PHASES = ("lithium_metal", "solid_electrolyte", "cathode_active")


# ------------------------------------------------------------------------------------ the README

def quick_start() -> str:
    """The text of the README's "Your own scan" section (up to the next ``## `` heading)."""
    text = (REPO / "README.md").read_text()
    assert text.count(f"\n{SECTION}\n") == 1, f"README.md needs one '{SECTION}' section"
    return text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]


def blocks(kind: str) -> list[str]:
    """The fenced blocks of one kind (``bash``, ``yaml``) of the quick start, in order."""
    return re.findall(rf"^```{kind}\n(.*?)^```", quick_start(), flags=re.S | re.M)


def commands(block: str) -> list[str]:
    """The command lines of a bash block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in (ln.strip() for ln in joined.splitlines()) if line and not line.startswith("#")]


def example_files() -> dict[str, str]:
    """Shown example config -> its text in the README (yaml blocks starting with ``# examples/...yaml``)."""
    out = {}
    for block in blocks("yaml"):
        m = re.match(r"# (examples/[\w.-]+\.yaml)\b", block)
        if m:
            out[m[1]] = block
    return out


def named_configs() -> list[str]:
    """Every example config the quick start names."""
    return sorted(set(re.findall(r"\bexamples/[\w.-]+\.yaml\b", quick_start())))


def is_dry_run(line: str) -> bool:
    words = shlex.split(line)
    return words[0] == "snakemake" and ("-n" in words or "--dry-run" in words)


# ------------------------------------------------------------------------------------ the sample

def three_phase_cell(shape=(32, 40, 40), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A layered three-phase cell (uint16 CT image, phase index 0..2 of :data:`PHASES`).

    Along z: cathode composite (spheres of cathode_active in solid_electrolyte), solid-electrolyte
    separator, lithium metal; blurred attenuations (lithium darkest) plus Gaussian noise.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    phase = np.full(shape, 1, np.uint8)  # solid_electrolyte
    cathode_end, anode_start = int(0.5 * shape[0]), int(0.75 * shape[0])
    for _ in range(40):
        c = rng.uniform([0, 0, 0], [cathode_end, shape[1], shape[2]])
        r = rng.uniform(3, 5)
        ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
        phase[ball & (z < cathode_end)] = 2  # cathode_active
    phase[z >= anode_start] = 0  # lithium_metal
    attenuation = np.array([0.2, 0.5, 0.9])[phase]
    image = gaussian_filter(attenuation, 0.8) + rng.normal(0, 0.04, shape)
    return np.clip(image * 40000, 0, 65535).astype(np.uint16), phase


def write_sample(root: Path, config: dict, shape=(32, 40, 40), labelled_x=(5, 15, 25, 35)) -> dict:
    """The files the config's samples name: TIFF slices of the scan and, where asked, a labels TIFF
    with the config's class ids on ``labelled_x`` slices (x = const) and 255 elsewhere."""
    import tifffile

    image, phase = three_phase_cell(shape)
    classes = config.get("segment", {}).get("classes")
    for spec in config["samples"].values():
        folder = root / spec["source"]
        folder.mkdir(parents=True)
        for k, plane in enumerate(image):
            tifffile.imwrite(folder / f"slice_{k:04d}.tif", plane)
        if spec.get("labels"):
            ids = np.array([classes[name] for name in PHASES], np.uint8)
            labels = np.full(shape, IGNORE_LABEL, np.uint8)
            labels[:, :, list(labelled_x)] = ids[phase[:, :, list(labelled_x)]]
            (root / spec["labels"]).parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / spec["labels"], labels)
    return {"image": image, "phase": phase}


def sandbox(tmp_path: Path) -> Path:
    """A checkout to run the quick start in: the repository's files linked, its own data/ and outputs."""
    if not (BIN / "activate").exists():
        pytest.skip("the tests run outside a virtual environment: no .venv to stand for `make install`'s")
    root = tmp_path / "batterytwin"
    root.mkdir()
    for name in CHECKOUT:
        (root / name).symlink_to(REPO / name)
    (root / ".venv").symlink_to(BIN.parent)  # what `make install` made
    return root


def run_lines(root: Path, lines: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run command lines in one bash, stopping at the first failure; ``make install`` as ``make -n``."""
    script = ["set -euo pipefail"]
    for line in lines:
        script.append(line.replace("make install", "make -n install >/dev/null", 1)
                      if line.startswith("make install") else line)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != BIN)
    return subprocess.run(["bash", "-c", "\n".join(script)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)


def plan(root: Path, lines: list[str]) -> dict[str, int]:
    """Rule -> job count of what ``lines`` would run (the "Job stats" table of ``snakemake -n``)."""
    proc = run_lines(root, lines, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    assert "Job stats:" in proc.stdout, proc.stdout[-2000:]
    table = proc.stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


# ---------------------------------------------------------------------------------------- tests

def test_shown_configs_are_the_example_files_and_validate():
    shown = example_files()
    assert "examples/own-scan.yaml" in shown, "the quick start shows examples/own-scan.yaml"
    for name in named_configs():
        text = (REPO / name).read_text()
        if name in shown:
            assert shown[name] == text, f"README's block of {name} differs from the file"
        cfg = complete_config(yaml.safe_load(text), where=name)  # the workflow's loader: one line per bad key
        assert all(s["source"] != "synthetic" for s in cfg["samples"].values()), name
        assert len(cfg["samples"]) == 1, f"{name}: the quick start is one scan"
    labelled = yaml.safe_load((REPO / "examples/own-scan.yaml").read_text())
    classes = labelled["segment"]["classes"]
    assert sorted(classes) == sorted(PHASES) and len(labelled["segment"]["train"]["class_weights"]) == len(classes)


def test_quick_start_dry_runs_as_written(tmp_path):
    bash = [commands(b) for b in blocks("bash")]
    setup = [line for b in bash for line in b if line.startswith(("make install", "source ", ". ", "export "))]
    assert any(line.startswith("make install") for line in setup), "the quick start installs the environment"
    main = next(b for b in bash if any(is_dry_run(line) for line in b))
    dry = [line for line in main if is_dry_run(line)]
    assert not any("--cores" in line and "--cores 2" not in line for lines in bash for line in lines)
    root = sandbox(tmp_path)
    copies = {}  # example config -> the quick start's lines up to and with copying it
    for b in bash:
        for line in b:
            words = shlex.split(line)
            if words[0] == "cp" and words[1].startswith("examples/"):
                copies[words[1]] = line
    assert set(copies) == set(named_configs()), (copies, named_configs())
    for name, copy in copies.items():
        cfg = yaml.safe_load((REPO / name).read_text())
        data = root / "data"
        if data.exists():
            subprocess.run(["rm", "-rf", str(data)], check=True)
        write_sample(root, cfg)
        rules = plan(root, [*setup, copy, *dry])
        assert "phantom" not in rules and rules.get("ingest") == 1, (name, rules)  # one scan, no phantom
        for rule in ("denoise", "segment", "microstructure", "simulate", "degradation_predict"):
            assert rule in rules, (name, rule, rules)
        trains = any(s.get("labels") for s in cfg["samples"].values())
        assert ("train_seg" in rules) == trains and ("import_labels" in rules) == trains, (name, rules)


def tiny_settings() -> dict:
    """The end-to-end test's small sizes (tests/config.e2e.yaml) for a whole run in minutes, without its
    samples, its six-class weights and its real-cell evaluation: laid over the quick start's config, never replacing a key it names
    but sizes (steps, walkers, cycles, store edges)."""
    tiny = yaml.safe_load((REPO / "tests" / "config.e2e.yaml").read_text())
    tiny.pop("samples")
    tiny["segment"]["train"].pop("class_weights")
    tiny["degradation"].pop("real_data")  # the quick start leaves the real cells out
    return tiny


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path):
    """Every line of the main block, on a 32x40x40 scan; the config gets tests/config.e2e.yaml's sizes
    as a second --configfile (the only change to the README's commands)."""
    bash = [commands(b) for b in blocks("bash")]
    setup = [line for b in bash for line in b if line.startswith(("make install", "source ", ". ", "export "))]
    main = next(b for b in bash if any(is_dry_run(line) for line in b))
    root = sandbox(tmp_path)
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_settings()))
    lines = [re.sub(r"--configfile (\S+)", r"--configfile \1 tiny.yaml", line) for line in main]
    copy = next(line for line in main if line.startswith("cp "))
    cfg = yaml.safe_load((REPO / shlex.split(copy)[1]).read_text())
    truth = write_sample(root, cfg)["phase"]
    proc = run_lines(root, [*setup, *lines], timeout=3600)
    assert proc.returncode == 0, proc.stderr[-6000:]

    from batterytwin import store

    (name,) = cfg["samples"]
    results = root / "results" / name
    classes = cfg["segment"]["classes"]
    seg = store.open_volume(results / "labels.zarr")
    assert seg.classes == {cid: cname for cname, cid in classes.items()}
    pred = seg.array[:]
    # the labels in the config's ids: right on most voxels of the three-phase scan (majority class ~0.5)
    expected = np.array([classes[p] for p in PHASES], np.uint8)[truth]
    assert (pred == expected).mean() > 0.8, (pred == expected).mean()
    micro = json.loads((results / "microstructure.json").read_text())
    counts = np.bincount(pred.ravel(), minlength=len(classes)) / pred.size
    for cname, cid in classes.items():
        assert micro["volume_fractions"][cname] == pytest.approx(counts[cid], abs=1e-9)
    assert micro["cell"]["positive_electrode"]["thickness_um"] > 0
    assert (results / "sweep.zarr").is_dir() and (results / "degradation.zarr").is_dir()
    assert (root / "results" / "report.html").stat().st_size > 10_000

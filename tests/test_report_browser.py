"""The Snakemake report in a real browser: run the report rules, build report.html, open it in
headless Chromium (Debian's package, installed here when missing), and check that the page loads,
lists every figure under its stage, and that every embedded image decodes.

The workflow is the project's own rule files (common, ingest, report) on a small phantom; the
outputs of the later stages are written beforehand in their interface formats
(tests/report_inputs.py) so that every report rule runs without the heavy stages.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import yaml

from batterytwin.report.scaling import latest_bench

from . import report_inputs as inputs
from .conftest import BIN, REPO

pytestmark = pytest.mark.slow

SAMPLE = "phantom"
SHAPE = [24, 32, 32]
# figure -> (category, subcategory, label in the results table)
FIGURES = {
    f"results/{SAMPLE}/figures/ingest_slices.png": ("1 Ingest", SAMPLE, "orthogonal slices: raw CT"),
    f"results/{SAMPLE}/figures/denoise_nlm.png": ("2 Denoise", SAMPLE, "NLM before/after"),
    f"results/{SAMPLE}/figures/segment_slices.png": ("3 Segmentation", SAMPLE, "orthogonal slices: raw, denoised, segmented"),
    "results/figures/segment_training.png": ("3 Segmentation", "model", "training loss and Dice"),
    f"results/{SAMPLE}/figures/microstructure_tortuosity.png": ("4 Microstructure", SAMPLE, "MSD curves and tortuosity"),
    f"results/{SAMPLE}/figures/microstructure_table.png": ("4 Microstructure", SAMPLE, "microstructure table"),
    f"results/{SAMPLE}/figures/cellsim_voltage.png": ("5 Cell simulation", SAMPLE, "discharge voltage curves"),
    f"results/{SAMPLE}/figures/cellsim_fade.png": ("5 Cell simulation", SAMPLE, "capacity fade"),
    f"results/{SAMPLE}/figures/degradation_predictions.png": ("6 Degradation", SAMPLE, "SOH predictions with intervals"),
    f"results/{SAMPLE}/figures/degradation_rul.png": ("6 Degradation", SAMPLE, "predicted vs true life"),
}
if latest_bench(REPO / "bench" / "results") is not None:  # the repository holds a bench/chain.py result
    FIGURES["results/figures/scaling.png"] = ("8 Scaling", "bench/chain.py", "cost and memory vs voxels")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
WINDOW = (1400, 1000)

# Drives the report like a user: click each category (and subcategory) in the menu, click the view
# button of every row of the results table, wait for the <img> to load, record what was shown.
HARNESS = r"""
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const out = { loaded: false, menu: [], views: [], errors: [] };
  const links = () => Array.from(document.querySelectorAll("#app a"));
  const byText = (t) => links().find((a) => a.textContent.trim() === t);
  try {
    for (let i = 0; i < 400 && !byText("About"); i++) await sleep(50);
    const screen = document.querySelector("#loading-screen");
    out.loaded = !!byText("About") && (!screen || screen.style.display === "none");
    for (const cat of Object.keys(categories).sort()) {
      const subs = Object.keys(categories[cat]);
      for (const sub of subs) {
        const link = byText(cat);
        out.menu.push({ category: cat, link: !!link });
        if (!link) { out.errors.push(`no menu entry for ${cat}`); continue; }
        link.click();
        await sleep(100);
        if (subs.length > 1) {
          const s = byText(sub);
          if (!s) { out.errors.push(`no menu entry for ${cat} / ${sub}`); continue; }
          s.click();
          await sleep(100);
        }
        for (const row of Array.from(document.querySelectorAll("#app table tbody tr"))) {
          const label = row.querySelector("td").textContent.trim();
          row.querySelector("td:last-child a").click();
          await sleep(100);
          const path = app.state.resultPath;
          const img = Array.from(document.images).find((im) => im.src === app.state.contentPath);
          for (let i = 0; img && i < 1000 && !(img.complete && img.naturalWidth > 0); i++) await sleep(20);
          out.views.push({ category: cat, subcategory: sub, label, path, shown: !!img,
                           width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0 });
        }
        app.setView({ navbarMode: "menu" });
        await sleep(100);
      }
    }
  } catch (e) { out.errors.push(String((e && e.stack) || e)); }
  const pre = document.createElement("pre");
  pre.id = "batterytwin-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
"""


@pytest.fixture(scope="session")
def chromium():
    """Path of Debian's chromium, installed with apt-get when missing (skip when impossible)."""
    exe = shutil.which("chromium")
    if exe is None:
        if os.geteuid() != 0:
            pytest.skip("chromium is not installed and installing it needs root (apt-get install chromium)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
            except (OSError, subprocess.TimeoutExpired) as exc:
                pytest.skip(f"cannot install chromium: {' '.join(cmd)}: {exc}")
            if proc.returncode != 0:
                pytest.skip(f"cannot install chromium: {' '.join(cmd)} failed: {(proc.stderr or proc.stdout)[-300:]}")
        exe = shutil.which("chromium")
        if exe is None:
            pytest.skip("apt-get installed chromium but no 'chromium' is on PATH")
    return exe


def _chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(BIN / "snakemake"), "--snakefile", str(workdir / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=workdir)


def make_workflow(workdir: Path, samples: dict) -> None:
    """A Snakefile of the project's common, ingest and report rules, and a config for ``samples``."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["samples"] = samples
    cfg["store"] = {"chunk": 16, "shard": 32}
    # the project's own report: with the repository's benchmark figure (report.benchmark)
    cfg["report"] = {"dpi": 80, "ome_levels": 1, "ome_chunk": 16, "benchmark": True}
    # the stand-in sweep.zarr has no rate_capability block (its figure: tests/test_cellsim_rate.py)
    cfg["cellsim"]["rate_capability"] = {"enabled": False}
    # no real-data evaluations: this workflow has no degradation rules to make their predictions
    cfg["degradation"]["real_data"] = {"enabled": False}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    rules = REPO / "workflow" / "rules"
    (workdir / "Snakefile").write_text(
        f'include: "{rules / "common.smk"}"\n'
        f'include: "{rules / "ingest.smk"}"\n'
        f'include: "{rules / "report.smk"}"\n\n'
        "rule all:\n    input:\n        REPORT_TARGETS(),\n    default_target: True\n")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Run the report rules on a phantom and build report.html; returns the work directory."""
    work = tmp_path_factory.mktemp("report_wf")
    make_workflow(work, {SAMPLE: {"source": "synthetic", "shape": SHAPE, "seed": 2, "role": "analyse",
                                  "voxel_size_um": 0.5}})
    # later stages' outputs, derived from the same phantom the workflow's phantom rule writes
    inputs.write_all(work / "results", SAMPLE, tuple(SHAPE), seed=0, voxel=(0.5, 0.5, 0.5), phantom_seed=2,
                     with_ct=False)
    proc = _snakemake(work, "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-5000:]
    proc = _snakemake(work, "--report", str(work / "report.html"))
    assert proc.returncode == 0, proc.stderr[-5000:]
    return work


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_report_embeds_every_figure_as_the_file_written(report):
    html = (report / "report.html").read_text()
    m = re.search(r"var results = (\{.*?\});\n", html, re.S)
    assert m, "no results table in report.html"
    results = json.loads(m.group(1))
    assert set(results) == set(FIGURES)
    for path, entry in results.items():
        header, _, payload = entry["data_uri"].partition(",")
        assert header.startswith("data:image/png") and header.endswith(";base64"), header
        data = base64.b64decode(payload)
        assert data == (report / path).read_bytes()  # embedded, byte for byte
        assert entry["caption"].strip()  # the .rst caption rendered
    cats = json.loads(re.search(r"var categories = (\{.*?\});\n", html, re.S).group(1))
    placed = {p: (c, s) for c, subs in cats.items() for s, paths in subs.items() for p in paths}
    assert placed == {p: v[:2] for p, v in FIGURES.items()}
    # the OME-Zarr export ran too (a directory: not embedded in the HTML report)
    assert (report / "results" / SAMPLE / "ome" / "volume.ome.zarr" / "labels" / "segmentation").is_dir()
    assert not list((report / "results").rglob("*.tmp-*"))
    for log in ("report_slices_ingest", "report_nlm", "report_ome"):
        assert (report / "logs" / SAMPLE / f"{log}.log").exists()


def test_report_opens_in_chromium_with_every_figure(report, chromium, tmp_path):
    html = (report / "report.html").read_text()
    end = html.rfind("</body>")
    page = tmp_path / "report_check.html"
    page.write_text(html[:end] + "<script>" + HARNESS + "</script>" + html[end:])
    # virtual time: the harness's timers run without real waiting; then Chromium takes the screenshot
    # (menu + the last figure viewed) and dumps the DOM with the harness's record
    shot = tmp_path / "report.png"
    proc = _chromium(chromium, tmp_path / "profile", "--virtual-time-budget=120000",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}", "--dump-dom", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r'<pre id="batterytwin-check">(.*?)</pre>', proc.stdout, re.S)
    assert m, "the report page did not finish rendering in Chromium: " + proc.stdout[-500:]
    check = json.loads(m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                       .replace("&amp;", "&"))
    assert check["errors"] == []
    assert check["loaded"], "the loading screen is still shown"
    assert {c["category"] for c in check["menu"]} == {v[0] for v in FIGURES.values()}
    assert all(c["link"] for c in check["menu"])
    seen = {v["path"]: v for v in check["views"]}
    assert set(seen) == set(FIGURES), f"figures listed in the browser: {sorted(seen)}"
    for path, (category, sub, label) in FIGURES.items():
        v = seen[path]
        assert (v["category"], v["subcategory"], v["label"]) == (category, sub, label)
        assert v["shown"], f"{path}: no <img> shown"
        assert (v["width"], v["height"]) == _png_size((report / path).read_bytes()), f"{path}: broken image"
    assert shot.exists(), proc.stderr[-3000:]
    img = mpimg.imread(shot)
    assert img.shape[:2] == (WINDOW[1], WINDOW[0])
    assert np.asarray(img[..., :3]).std() > 0.05  # a rendered page, not a blank one
    print(f"report screenshot: {shot}")


def test_series_figure_is_planned_for_a_time_series(tmp_path):
    """A synthetic time series (frames > 1) gets a lithium-growth figure over its frames."""
    make_workflow(tmp_path, {"cell": {"source": "synthetic", "shape": [16, 16, 16], "seed": 1, "frames": 3}})
    for t in range(3):  # the frames' microstructure outputs (no microstructure rule in this workflow)
        (tmp_path / "results" / f"cell_t{t:03d}").mkdir(parents=True)
        (tmp_path / "results" / f"cell_t{t:03d}" / "microstructure.json").write_text("{}")
    proc = _snakemake(tmp_path, "-n", "--printshellcmds", "results/figures/series_cell_lithium.png")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batterytwin report series -i results/cell_t000/microstructure.json results/cell_t001/microstructure.json " \
           "results/cell_t002/microstructure.json --names cell_t000 cell_t001 cell_t002" in proc.stdout

"""The Snakemake layer: the run's plan (``workflow_plan.plan_workflow``), the checks a dry run makes,
a failed rule's error line on the console, and rule files whose include order does not matter."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import yaml

from batterytwin.config import deep_merge
from batterytwin.errors import InputError
from batterytwin.workflow_config import complete_config
from batterytwin.workflow_plan import check_real_data, plan_workflow

from .conftest import BIN, REPO

BASE = yaml.safe_load((REPO / "config.yaml").read_text())
RULES = REPO / "workflow" / "rules"
CYCLING = REPO / "data" / "cycling"


def run_snakemake(workdir: Path, snakefile: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(BIN / "snakemake"), "--snakefile", str(snakefile), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)


def completed(samples: dict, **sections) -> dict:
    """config.yaml with ``samples`` replaced and ``sections`` merged, validated and completed."""
    return complete_config({**deep_merge(BASE, sections), "samples": samples})


def scan_sample(source: str, **extra) -> dict:
    return {"source": source, "voxel_size_um": 0.5, **extra}


# --- the plan --------------------------------------------------------------------------------------


def test_plan_selects_training_validation_and_pseudo_labelled_samples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite("scan.tif", np.zeros((6, 8, 8), np.uint8))
    tifffile.imwrite("labels.tif", np.full((6, 8, 8), 255, np.uint8))
    tifffile.imwrite("held_out.tif", np.full((6, 8, 8), 255, np.uint8))
    np.save("raw.npy", np.zeros((6, 8, 8), np.float32))
    samples = {
        "ph_train": {"source": "synthetic", "shape": [16, 16, 16], "seed": 1, "role": "train"},
        "ph": {"source": "synthetic", "shape": [16, 16, 16], "seed": 2, "role": "analyse"},
        "scan": scan_sample("scan.tif", labels="labels.tif", val_labels="held_out.tif", role="both"),
        "raw": scan_sample("raw.npy", role="train"),
    }
    plan = plan_workflow(completed(samples, segment={"pseudo_labels": "gmm"}), REPO)

    assert plan.samples == ["ph_train", "ph", "scan", "raw"]
    assert plan.synthetic == ["ph_train", "ph"] and plan.from_files == ["scan", "raw"]
    assert plan.analyse == ["ph", "scan"]
    seg = plan.segment
    assert seg.labels == {"ph_train": "results/ph_train/truth.zarr", "ph": "results/ph/truth.zarr",
                          "scan": "results/scan/hand_labels.zarr", "raw": "results/raw/gmm_labels.zarr"}
    assert seg.train == ["ph_train", "scan", "raw"] and seg.pseudo == ["raw"]
    assert seg.val == ["ph"] and seg.val_labels == {"scan": "results/scan/val_labels.zarr"}
    assert seg.data_args()[:4] == ["--volume", "results/ph_train/denoised.zarr", "--labels",
                                   "results/ph_train/truth.zarr"]
    assert seg.data_args()[-4:] == ["--val-volume", "results/scan/denoised.zarr", "--val-labels",
                                    "results/scan/val_labels.zarr"]


def test_a_synthetic_time_series_is_one_sample_per_frame():
    plan = plan_workflow(completed({"cell": {"source": "synthetic", "shape": [16, 16, 16], "frames": 3}}), REPO)
    assert plan.samples == ["cell_t000", "cell_t001", "cell_t002"]
    assert [(s["frame"], s["n_frames"], s["series"]) for s in plan.specs.values()] == [(0, 3, "cell"), (1, 3, "cell"),
                                                                                       (2, 3, "cell")]


def test_real_data_and_twin_evaluations_follow_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = plan_workflow(completed({"p": {"source": "synthetic"}}, twin={"evaluations": ["matr2"]}), REPO)
    assert list(plan.real_evaluations) == ["matr1", "matr2"] and list(plan.twin_evaluations) == ["matr2"]
    assert plan.real_data_dir == str(CYCLING)  # data/cycling is not in the working directory: the repository's
    off = plan_workflow(completed({"p": {"source": "synthetic"}}, degradation={"real_data": {"enabled": False}}), REPO)
    assert off.real_evaluations == {} and off.twin_evaluations == {}


def test_twin_evaluations_must_be_real_data_evaluations():
    with pytest.raises(InputError, match=r"twin\.evaluations: \['nope'\] not in degradation\.real_data\.evaluations"):
        completed({"p": {"source": "synthetic"}}, twin={"evaluations": ["matr1", "nope"]})


def test_real_data_that_is_absent_or_corrupt_is_one_line(tmp_path):
    data = tmp_path / "cycling"
    shutil.copytree(CYCLING, data)
    real = completed({"p": {"source": "synthetic"}})["degradation"]["real_data"]
    check_real_data(real, str(data))  # the shipped copy passes
    with open(data / "matr_2_test.npz", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InputError, match=r"^degradation\.real_data: .*matr_2_test\.npz.*") as err:
        check_real_data(real, str(data))
    assert "\n" not in str(err.value)
    (data / "matr_1_train.npz").unlink()
    with pytest.raises(InputError, match=r"^degradation\.real_data: .*matr_1_train\.npz: no such file"):
        check_real_data(real, str(data))
    with pytest.raises(InputError, match=r"^degradation\.real_data\.dir: .*not found"):
        check_real_data(real, str(tmp_path / "none"))


# --- checks of input files that need only their metadata -------------------------------------------

SCAN = (6, 8, 8)


def _tif(path: str, shape) -> str:
    tifffile.imwrite(path, np.zeros(shape, np.uint8), photometric="minisblack")
    return path


def _npy(path: str, shape) -> str:
    np.save(path, np.zeros(shape, np.uint8))
    return path


def _h5(path: str, shape) -> str:
    with h5py.File(path, "w") as f:
        f["/exchange/data"] = np.zeros(shape, np.float32)
    return path


def _plan(sample: dict):
    return plan_workflow(completed({"s": sample}), REPO)


@pytest.mark.parametrize("make_scan, make_labels, extra, label_shape", [
    (_tif, _tif, {}, SCAN),
    (_h5, _npy, {}, SCAN),
    (_tif, _tif, {"crop": "1:5,,2:8"}, SCAN),  # labels drawn on the source scan: cropped alike
    (_npy, _tif, {"bin": 2}, (3, 4, 4)),  # a binned scan: labels of the binned volume
])
def test_label_images_of_the_scans_shape_pass(tmp_path, monkeypatch, make_scan, make_labels, extra, label_shape):
    monkeypatch.chdir(tmp_path)
    suffix = {_tif: ".tif", _npy: ".npy", _h5: ".h5"}
    sample = scan_sample(make_scan("scan" + suffix[make_scan], SCAN),
                         labels=make_labels("labels" + suffix[make_labels], label_shape), **extra)
    assert _plan(sample).segment.labels == {"s": "results/s/hand_labels.zarr"}


@pytest.mark.parametrize("make_scan, make_labels, extra, label_shape, message", [
    (_tif, _tif, {}, (6, 8, 7), "samples.s.labels: labels.tif: label image shape [6, 8, 7] differs from the "
                                "scan scan.tif shape [6, 8, 8]"),
    (_h5, _npy, {}, (5, 8, 8), "samples.s.labels: labels.npy: label image shape [5, 8, 8] differs from the "
                               "scan scan.h5 shape [6, 8, 8]"),
    (_tif, _tif, {"crop": "1:5,,"}, (4, 8, 8), "samples.s.labels: labels.tif: crop: range 1:5 on axis z is "
                                               "outside the volume (size 4)"),
    (_npy, _tif, {"bin": 2}, SCAN, "samples.s.labels: labels.tif: label image shape [6, 8, 8] differs from the "
                                   "scan after crop/bin scan.npy shape [3, 4, 4]"),
])
def test_label_images_of_another_shape_are_one_line(tmp_path, monkeypatch, make_scan, make_labels, extra,
                                                    label_shape, message):
    monkeypatch.chdir(tmp_path)
    suffix = {_tif: ".tif", _npy: ".npy", _h5: ".h5"}
    sample = scan_sample(make_scan("scan" + suffix[make_scan], SCAN),
                         labels=make_labels("labels" + suffix[make_labels], label_shape), **extra)
    with pytest.raises(InputError) as err:
        _plan(sample)
    assert str(err.value) == message


@pytest.mark.parametrize("setup, sample, message", [
    (lambda: None, scan_sample("none.tif"), "samples.s.source: none.tif: no such file or folder"),
    (lambda: os.mkdir("folder.tif"), scan_sample("folder.tif", format="tiff"),
     "samples.s.source: folder.tif: is a folder, not a tiff file"),
    (lambda: _tif("one.tif", SCAN), scan_sample("one.tif", format="tiff-stack"),
     "samples.s.source: one.tif: format tiff-stack needs a folder of TIFF slices"),
    (lambda: Path("scan.xyz").write_bytes(b"\0"), scan_sample("scan.xyz"), "samples.s.source: scan.xyz: cannot "
     "tell the format from the name; set format to one of tiff-stack, tiff, hdf5, npy, raw"),
    (lambda: _tif("scan.tif", SCAN), scan_sample("scan.tif", val_labels="held_out.tif"),
     "samples.s.val_labels: held_out.tif: no such file or folder"),
])
def test_missing_or_unknown_inputs_are_one_line(tmp_path, monkeypatch, setup, sample, message):
    monkeypatch.chdir(tmp_path)
    setup()
    with pytest.raises(InputError) as err:
        _plan(sample)
    assert str(err.value) == message


def test_dry_run_refuses_a_label_image_of_another_shape(tmp_path):
    _tif(str(tmp_path / "scan.tif"), SCAN)
    _tif(str(tmp_path / "labels.tif"), (6, 8, 7))
    config = tmp_path / "own.yaml"
    config.write_text(yaml.safe_dump({"samples": {"cell": scan_sample("scan.tif", labels="labels.tif", role="both")}}))
    proc = run_snakemake(tmp_path, REPO / "Snakefile", "-n", "--configfile", str(REPO / "config.yaml"), str(config))
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == ["batterytwin config: error: samples.cell.labels: labels.tif: label image shape [6, 8, 7] "
                      "differs from the scan scan.tif shape [6, 8, 8]"], proc.stderr

    _tif(str(tmp_path / "labels.tif"), SCAN)  # the scan's shape: planned, labels imported
    proc = run_snakemake(tmp_path, REPO / "Snakefile", "-n", "--configfile", str(REPO / "config.yaml"), str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Import hand labels labels.tif -> results/cell/hand_labels.zarr" in proc.stdout


# --- a failed rule shows its command's error line --------------------------------------------------

# Error text made when the command runs ($((6 * 7)) -> 42, tr -> upper case): Snakemake's own report
# quotes the command, so only the wrapper can put these lines on the console.
LOGGED_SNAKEFILE = f"""\
include: "{RULES / 'common.smk'}"


rule with_error_line:
    output:
        "a.txt",
    log:
        "logs/a.log",
    shell:
        logged("echo working; echo batterytwin demo: error: $((6 * 7)) bad voxels; echo cleanup; exit 3")


rule without_error_line:
    output:
        "b.txt",
    log:
        "logs/b.log",
    shell:
        logged("echo working; echo last words | tr a-z A-Z; exit 4")


rule succeeds:
    output:
        "c.txt",
    log:
        "logs/c.log",
    shell:
        logged("echo 'batterytwin demo: error: not an error' | tr a-z A-Z; touch {{output}}")
"""


@pytest.mark.parametrize("target, line, status", [
    ("a.txt", "batterytwin demo: error: 42 bad voxels", 3),  # the error line, not the last line
    ("b.txt", "LAST WORDS", 4),  # no error line: the last line
])
def test_logged_command_prints_the_error_line_and_keeps_the_status(tmp_path, target, line, status):
    (tmp_path / "Snakefile").write_text(LOGGED_SNAKEFILE)
    proc = run_snakemake(tmp_path, tmp_path / "Snakefile", target, "--cores", "1", "--configfile",
                         str(REPO / "config.yaml"))
    assert proc.returncode != 0
    assert line in proc.stderr.splitlines(), proc.stderr
    assert f"exit status {status}" in proc.stderr
    log = (tmp_path / "logs" / f"{target[0]}.log").read_text()
    assert log.startswith("working\n")  # the command's output went to its log


def test_logged_command_that_succeeds_prints_nothing(tmp_path):
    (tmp_path / "Snakefile").write_text(LOGGED_SNAKEFILE)
    proc = run_snakemake(tmp_path, tmp_path / "Snakefile", "c.txt", "--cores", "1", "--configfile",
                         str(REPO / "config.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NOT AN ERROR" not in proc.stderr and (tmp_path / "c.txt").exists()


@pytest.mark.slow
def test_failed_rule_shows_the_commands_one_line_error(tmp_path):
    """The cell simulation rule on a microstructure file that is not one: the console (Snakemake's
    stderr) shows the line `batterytwin simulate: error: ...` that the command wrote to its log."""
    (tmp_path / "Snakefile").write_text(f'include: "{RULES / "common.smk"}"\ninclude: "{RULES / "cellsim.smk"}"\n')
    (tmp_path / "tasks.yaml").write_text("resources:\n  simulate: {tasks: 1}\n")
    micro = tmp_path / "results" / "phantom" / "microstructure.json"
    micro.parent.mkdir(parents=True)
    micro.write_text('{"not": "a microstructure"}')
    proc = run_snakemake(tmp_path, tmp_path / "Snakefile", "results/phantom/sweep.zarr", "--cores", "1",
                         "--configfile", str(REPO / "config.yaml"), str(tmp_path / "tasks.yaml"))
    assert proc.returncode != 0
    log = (tmp_path / "logs" / "phantom" / "simulate.log").read_text()
    logged_errors = [line for line in log.splitlines() if line.startswith("batterytwin simulate: error:")]
    assert logged_errors and "results/phantom/microstructure.json" in logged_errors[-1], log
    assert logged_errors[-1] in proc.stderr.splitlines(), proc.stderr


# --- include order -----------------------------------------------------------------------------------


def _job_counts(stdout: str) -> dict[str, int]:
    table = stdout[stdout.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_rule_files_plan_the_same_jobs_in_any_include_order(tmp_path):
    """The report rules read the run's plan, not other rule files' variables: included first, they plan
    the jobs of the pipeline's Snakefile."""
    text = (REPO / "Snakefile").read_text().replace('configfile: "config.yaml"', "")
    includes = re.findall(r'^include: "workflow/rules/(\w+\.smk)"\n', text, re.M)
    assert includes[0] == "common.smk" and "report.smk" in includes
    reordered = ["common.smk"] + includes[:0:-1]  # report.smk right after common.smk, ingest.smk last
    body = re.sub(r'^include: .*\n', "", text, flags=re.M)
    (tmp_path / "Snakefile").write_text("".join(f'include: "{RULES / name}"\n' for name in reordered) + body)
    args = ("-n", "--quiet", "rules", "--configfile", str(REPO / "config.yaml"))
    pipeline = run_snakemake(tmp_path, REPO / "Snakefile", *args)
    reordered_run = run_snakemake(tmp_path, tmp_path / "Snakefile", *args)
    assert pipeline.returncode == 0 and reordered_run.returncode == 0, pipeline.stderr + reordered_run.stderr
    counts = _job_counts(pipeline.stdout)
    assert counts["report_twin"] == 2 and counts["twin"] == 2 and counts["report_slices_ingest"] == 2
    assert _job_counts(reordered_run.stdout) == counts


def test_benchmark_figure_only_in_the_projects_own_report(tmp_path):
    """The scaling figure of the repository's benchmark is planned only with report.benchmark (config.yaml
    sets it); a user's config leaves it out."""
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({"report": {"benchmark": False}}))
    args = ("-n", "--quiet", "rules", "--configfile", str(REPO / "config.yaml"))
    own = run_snakemake(tmp_path, REPO / "Snakefile", *args)
    users = run_snakemake(tmp_path, REPO / "Snakefile", *args, str(user))
    assert own.returncode == 0 and users.returncode == 0, own.stderr + users.stderr
    assert _job_counts(own.stdout).get("report_scaling") == 1
    counts = _job_counts(users.stdout)
    assert "report_scaling" not in counts and counts["report_twin"] == 2


# --- the report's figure rules run their own command ------------------------------------------------

# Stands in for the CLI: writes its arguments to the file after -o (the figure).
FAKE_CLI = """#!/bin/sh
out=""; prev=""
for arg in "$@"; do [ "$prev" = "-o" ] && out="$arg"; prev="$arg"; done
echo "$*" > "$out"
"""


def test_each_figure_rule_runs_its_own_command(tmp_path):
    """Rules made in report.smk's loop: each job runs its row's command (Snakemake evaluates a rule's
    shell command again when the job runs, after the loop has moved on)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "batterytwin").write_text(FAKE_CLI)
    (tmp_path / "bin" / "batterytwin").chmod(0o755)
    for store in ("volume.zarr", "truth.zarr"):
        (tmp_path / "results" / "ph" / store).mkdir(parents=True)
    (tmp_path / "results" / "models" / "segment").mkdir(parents=True)
    (tmp_path / "results" / "models" / "segment" / "metrics.json").write_text("{}")
    (tmp_path / "Snakefile").write_text(f'include: "{RULES / "common.smk"}"\ninclude: "{RULES / "report.smk"}"\n')
    (tmp_path / "ph.yaml").write_text(yaml.safe_dump({"samples": {"ph": {"source": "synthetic", "seed": 2}}}))
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    figures = ["results/ph/figures/ingest_slices.png", "results/figures/segment_training.png"]
    cmd = [str(BIN / "snakemake"), *figures, "--snakefile", str(tmp_path / "Snakefile"), "--cores", "1",
           "--configfile", str(REPO / "config.yaml"), str(tmp_path / "ph.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dpi = BASE["report"]["dpi"]
    assert (tmp_path / figures[0]).read_text().split() == [
        "report", "slices", "--raw", "results/ph/volume.zarr", "--truth", "results/ph/truth.zarr", "--title", "ph",
        "--dpi", str(dpi), "-o", figures[0]]
    assert (tmp_path / figures[1]).read_text().split() == [
        "report", "training", "-i", "results/models/segment/metrics.json", "--dpi", str(dpi), "-o", figures[1]]

"""Typed configuration: the generated schema, every config and documented snippet, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from batterytwin.config import deep_merge
from batterytwin.errors import EXIT_BAD_INPUT, InputError
from batterytwin.ingest.config import parse_sample
from batterytwin.ingest.driver import ingested_shape
from batterytwin.workflow_config import complete_config, schema_text

from .conftest import REPO
from .snakemake_run import snakemake

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.json"
BASE = yaml.safe_load((REPO / "config.yaml").read_text())


def _yaml_snippets() -> list[tuple[str, dict]]:
    """Every ```yaml block of README.md and docs/*.md that holds configuration."""
    out = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S)):
            data = yaml.safe_load(block)
            if isinstance(data, dict):
                out.append((f"{path.name}#{i}", data))
    return out


REPO_CONFIGS = [("config.yaml", BASE), ("config.cluster.yaml", yaml.safe_load((REPO / "config.cluster.yaml").read_text())),
                *[(p.name, yaml.safe_load(p.read_text())) for p in sorted((REPO / "tests").glob("*.yaml"))]]
CONFIGS = REPO_CONFIGS + _yaml_snippets()


def test_checked_in_schema_is_generated_from_the_models():
    assert SCHEMA.read_text() == schema_text(), (
        "workflow/schemas/config.schema.json is stale: python -m batterytwin.workflow_config " + str(SCHEMA))


@pytest.mark.parametrize("name, data", CONFIGS, ids=[n for n, _ in CONFIGS])
def test_every_config_and_snippet_validates(name, data):
    """Snakemake merges --configfile onto config.yaml; so does this check."""
    done = complete_config(deep_merge(BASE, data))
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(done, json.loads(SCHEMA.read_text()))  # the generated schema accepts the completed config


def _write_inputs(root: Path, spec: dict) -> None:
    """The files of a file sample: its scan, and label images of the scan's shape after crop/bin (the
    dry run reads their headers); a TIFF folder for tiff-stack; other scans are empty files."""
    crop = [r.split(":") for r in (spec.get("crop") or ",,").split(",")]
    shape = [max(8, int(r[1]) if len(r) == 2 and r[1] else 8) for r in crop]  # holds the crop
    binned = spec.get("bin", 1) != 1  # labels of a binned scan have the binned volume's shape
    label_shape = ingested_shape(shape, spec.get("crop"), spec["bin"]) if binned else shape
    for key, fmt, size in (("source", spec.get("format", "auto"), shape),
                           ("labels", spec.get("labels_format", "auto"), label_shape),
                           ("val_labels", spec.get("labels_format", "auto"), label_shape)):
        if not spec.get(key):
            continue
        path = root / spec[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "tiff-stack" or (fmt == "auto" and not path.suffix):
            path.mkdir()
            for z in range(size[0]):
                tifffile.imwrite(path / f"{z:04d}.tif", np.zeros(size[1:], np.uint8))
        elif path.suffix.lower() in (".tif", ".tiff"):
            tifffile.imwrite(path, np.zeros(size, np.uint8))
        else:
            path.touch()


@pytest.mark.slow
@pytest.mark.parametrize("name, data", CONFIGS, ids=[n for n, _ in CONFIGS])
def test_every_config_and_snippet_dry_runs(tmp_path, name, data):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    for spec in data.get("samples", {}).values():  # file samples need their inputs to plan the DAG
        if spec.get("source", "synthetic") != "synthetic":
            _write_inputs(tmp_path, spec)
    init_from = data.get("segment", {}).get("train", {}).get("init_from")  # a pretrained model is an input too
    if init_from:
        (tmp_path / init_from).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / init_from).touch()
    proc = snakemake(tmp_path, "-n", "--quiet", "rules", "--configfile", str(REPO / "config.yaml"),
                     str(tmp_path / "c.yaml"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_file_samples_get_only_their_own_defaults(tmp_path):
    """The README's file sample used to fail: the synthetic branch's defaults were filled into it."""
    files = {"npy": {"source": "data/scan.npy", "voxel_size_um": 0.65},
             "stack": {"source": "data/stack", "format": "tiff-stack", "voxel_size_um": [1.0, 0.5, 0.5]},
             "h5": {"source": "data/scan.h5", "format": "hdf5", "voxel_size_um": 0.5, "crop": "0:32,,"},
             "raw": {"source": "data/scan.raw", "format": "raw", "shape": [8, 8, 8], "dtype": "uint16",
                     "byte_order": "big", "header_bytes": 16, "voxel_size_um": 1}}
    done = complete_config({"samples": files})
    for name, spec in files.items():
        got = done["samples"][name]
        assert {k: got[k] for k in spec} == spec
        assert "seed" not in got and "frames" not in got and got["role"] == "analyse"
    assert done["samples"]["npy"]["format"] == "auto" and done["samples"]["h5"]["dataset"] == "/exchange/data"
    # through the workflow: each file sample is planned for ingest
    (tmp_path / "data" / "stack").mkdir(parents=True)
    for f in ("scan.npy", "scan.h5", "scan.raw"):
        (tmp_path / "data" / f).touch()
    (tmp_path / "files.yaml").write_text(yaml.safe_dump({"samples": files}))
    proc = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "files.yaml"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in files:
        assert f"results/{name}/volume.zarr" in proc.stdout


@pytest.mark.parametrize("bad, key, problem", [
    ({"segment": {"train": {"lr": -1}}}, "segment.train.lr", "must be > 0"),
    ({"segment": {"train": {"stepz": 3}}}, "segment.train.stepz", "unknown key 'stepz'"),
    ({"denoise": {"patch_size": "five"}}, "denoise.patch_size", "valid integer"),
    ({"microstructure": {"walk": {"model": "levy"}}}, "microstructure.walk.model", "must be one of"),
    ({"samples": {"s1": {"source": "x.h5"}}}, "samples.s1.voxel_size_um", "required"),
    ({"samples": {"../x": {"source": "synthetic"}}}, "samples.../x: name must match", "^[A-Za-z0-9]"),
    ({"degradation": {"real_data": {"evaluations": {"a/b": {"train_set": "m", "test": "t.npz"}}}}},
     "degradation.real_data.evaluations.a/b: name must match", "^[A-Za-z0-9]"),
    # the one name pattern (config.Name) of every name that becomes a path
    ({"degradation": {"real_data": {"evaluations": {"e": {"train_set": "../m", "test": "t.npz"}}}}},
     "degradation.real_data.evaluations.e.train_set: must match", "^[A-Za-z0-9]"),
    ({"twin": {"evaluations": ["a b"]}}, "twin.evaluations.0: must match", "^[A-Za-z0-9]"),
    # one end-of-life rule, threshold and data directory for the diffusion model and the twin
    ({"twin": {"eol_rule": "threshold"}}, "twin.eol_rule", "differs from degradation.eol_rule None"),
    ({"twin": {"threshold": 75}}, "twin.threshold", "differs from the degradation real-data threshold 80"),
    ({"degradation": {"real_data": {"sample": {"threshold": 70}}}}, "twin.threshold", "threshold 70"),
    ({"twin": {"data_dir": "elsewhere"}}, "twin.data_dir", "differs from degradation.real_data.dir"),
])
def test_a_bad_config_is_one_line_naming_the_key(bad, key, problem):
    with pytest.raises(InputError) as err:
        complete_config(deep_merge(BASE, bad))
    assert key in str(err.value) and problem in str(err.value) and "\n" not in str(err.value)


def test_the_twin_may_repeat_the_degradation_end_of_life_settings():
    same = {"degradation": {"eol_rule": "threshold", "sample": {"threshold": 75}},
            "twin": {"eol_rule": "threshold", "threshold": 75,
                     "data_dir": complete_config(BASE)["degradation"]["real_data"]["dir"]}}
    done = complete_config(deep_merge(BASE, same))
    assert done["twin"]["threshold"] == 75 and done["twin"]["eol_rule"] == "threshold"


@pytest.mark.slow
def test_snakemake_names_the_bad_key_in_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("segment:\n  train: {lr: -1}\n")
    proc = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"), str(tmp_path / "bad.yaml"), timeout=300)
    assert proc.returncode != 0
    assert "batterytwin config: error: config.segment.train.lr: must be > 0.0, got -1" in proc.stderr


def test_stage_cli_settings_error_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "d.zarr"
    proc = subprocess.run([sys.executable, "-m", "batterytwin.cli", "denoise", "-i", str(tmp_path / "in.zarr"), "-o", str(out),
                           "--config-json", '{"search_radius": -1}'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr.strip().splitlines() == ["batterytwin denoise: error: denoise.search_radius: must be >= 0, got -1"]
    assert not out.exists()


def test_flags_config_file_and_json_take_precedence_in_order(tmp_path):
    """defaults < --config < --config-json < flags, and --help lists every setting with its default."""
    from batterytwin.cli import build_parser
    from batterytwin.config import settings_from_args
    from batterytwin.segment.config import SegmentConfig

    (tmp_path / "c.yaml").write_text("segment:\n  train: {steps: 7, lr: 0.5}\n  infer: {overlap: 0.5}\n")
    args = build_parser("train-seg").parse_args(
        ["train-seg", "--volume", "v", "--labels", "l", "--model-out", "m", "--metrics-out", "j",
         "--config", str(tmp_path / "c.yaml"), "--config-json", '{"train": {"steps": 9}}', "--steps", "11"])
    cfg = settings_from_args(args, SegmentConfig, "segment")
    assert (cfg.train.steps, cfg.train.lr, cfg.infer.overlap, cfg.train.batch_size) == (11, 0.5, 0.5, 4)
    text = build_parser("train-seg")._subparsers._group_actions[0].choices["train-seg"].format_help()
    assert "train.warmup_steps = 20: linear warm-up" in text and "--steps STEPS" in text


def test_sample_union_names_the_bad_key():
    with pytest.raises(InputError, match=r"^samples.p.params: 'bogus'|^samples.p.params: unknown parameter"):
        parse_sample({"source": "synthetic", "params": {"bogus": 1}}, "samples.p")
    assert parse_sample({"source": "synthetic"}).shape == [48, 48, 48]

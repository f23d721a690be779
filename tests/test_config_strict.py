"""Configuration that would mean something else is refused, several members each.

- phase names microstructure needs that are not classes of ``segment.classes`` (a typo on either side);
- a class of the label stores with no labelled training voxel (``train-seg``);
- duplicate YAML keys, in stage config files and in the workflow's configfiles (file:line);
- booleans, decimals and strings for integer settings, non-booleans for boolean settings, while YAML
  ints and floats (``1``, ``0.5``, ``1e-3``) keep working where numbers are expected.
"""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
import yaml

from batterytwin import store
from batterytwin.config import check_yaml_files, load_settings, load_yaml
from batterytwin.contracts import CLASSES
from batterytwin.denoise.config import DenoiseConfig
from batterytwin.distributed import World
from batterytwin.errors import EXIT_BAD_INPUT, InputError
from batterytwin.segment.config import SegmentConfig
from batterytwin.workflow_config import complete_config

from .conftest import REPO
from .snakemake_run import snakemake

BASE = yaml.safe_load((REPO / "config.yaml").read_text())


def one_line(code: int, err: str, *names) -> None:
    lines = err.strip().splitlines()
    assert code == EXIT_BAD_INPUT and len(lines) == 1, err
    for n in names:
        assert str(n) in lines[0], (n, err)


# ----------------------------------------------------------------------------- phase names vs classes

def with_changes(**sections) -> dict:
    cfg = copy.deepcopy(BASE)
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


RENAMED = {n if n != "cathode_active" else "cathode_activ": i for i, n in CLASSES.items()}


@pytest.mark.parametrize("sections, key, wrong, right", [
    ({"segment": {"classes": RENAMED}}, "microstructure.active_phase", "cathode_active", "cathode_activ"),
    ({"microstructure": {"active_phase": "cathode_activ"}}, "microstructure.active_phase", "cathode_activ",
     "cathode_active"),
    ({"microstructure": {"electrolyte_phase": "solid_electrolite"}}, "microstructure.electrolyte_phase",
     "solid_electrolite", "solid_electrolyte"),
    ({"microstructure": {"anode_phase": "Lithium_metal"}}, "microstructure.anode_phase", "Lithium_metal",
     "lithium_metal"),
    ({"microstructure": {"phases": ["pore", "solid_electrolyt"]}}, "microstructure.phases[1]", "solid_electrolyt",
     "solid_electrolyte"),
    ({"microstructure": {"redeposited_phase": "redeposited_lithum"}}, "microstructure.redeposited_phase",
     "redeposited_lithum", "redeposited_lithium"),
])
def test_microstructure_phases_must_be_classes_of_the_run(sections, key, wrong, right):
    with pytest.raises(InputError) as exc:
        complete_config(with_changes(**sections))
    msg = str(exc.value)
    assert "\n" not in msg and key in msg and repr(wrong) in msg and f"did you mean {right!r}" in msg, msg


def test_phase_names_that_are_classes_pass_and_an_absent_optional_phase_is_allowed():
    complete_config(with_changes())
    classes = {"pore": 0, "solid_electrolyte": 1, "lithium_metal": 2, "cathode_active": 3}  # no redeposited Li
    done = complete_config(with_changes(segment={"classes": classes}))
    assert done["microstructure"]["redeposited_phase"] == "redeposited_lithium"
    three = {"pore": 0, "solid_electrolyte": 1, "cathode_active": 2}
    with pytest.raises(InputError, match="microstructure.anode_phase: 'lithium_metal' is not a class"):
        complete_config(with_changes(segment={"classes": three}))
    # an electrode scan without an anode: anode_phase null, no separator sought
    electrode = {"pore": 0, "cathode_active": 1, "binder": 2}
    done = complete_config(with_changes(segment={"classes": electrode},
                                        microstructure={"phases": ["pore"], "electrolyte_phase": "pore",
                                                        "anode_phase": None}))
    assert done["microstructure"]["anode_phase"] is None
    # samples that only train the segmentation never reach microstructure: their class map is theirs
    trained = {name: {**spec, "role": "train"} for name, spec in BASE["samples"].items()}
    complete_config({**with_changes(segment={"classes": three}), "samples": trained})


# ----------------------------------------------------------------------- train-seg: an unlabelled class

def write_store(path, data, stage, **attrs):
    with store.atomic_output(path, World()) as t:
        store.create_volume(t, data.shape, data.dtype, store.volume_attrs(stage, 1.0, **attrs), chunk=16,
                            shard=32)[...] = data
    return path


@pytest.mark.parametrize("absent", [[3], [0], [1, 2]])
def test_train_seg_refuses_a_class_without_a_labelled_voxel(tmp_path, cli, absent):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (32, 32, 32)).astype(np.uint8)
    for c in absent:
        labels[labels == c] = 255 if c % 2 else (max(set(range(4)) - set(absent)))
    img = (labels.astype(np.float32) * 0.2 + rng.normal(0, 0.05, labels.shape)).astype(np.float32)
    vol = write_store(tmp_path / "vol.zarr", img, "phantom")
    classes = {str(i): CLASSES[i] for i in range(4)}
    lab = write_store(tmp_path / "lab.zarr", labels, "segment", classes=classes, ignore_label=255)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.rglob("*") if p.is_file()}
    code, err = cli("train-seg", "--volume", vol, "--labels", lab, "--model-out", tmp_path / "m.pt",
                    "--metrics-out", tmp_path / "m.json", "--config-json",
                    json.dumps({"train": {"steps": 1, "init_from": None, "patch_size": 16,
                                          "checkpoint_dir": str(tmp_path / "ck")}}))
    one_line(code, err, lab, "no labelled training voxel", *[repr(CLASSES[c]) for c in absent])
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # no model, no metrics, no checkpoint; inputs unchanged


# ---------------------------------------------------------------------------------- duplicate YAML keys

DUPLICATES = {
    "nested": ("denoise:\n  patch_size: 3\n  h: 0.1\n  patch_size: 5\n", 4, "patch_size"),
    "top-level": ("denoise:\n  patch_size: 3\ndenoise:\n  patch_size: 5\n", 3, "denoise"),
    "flow-mapping": ("denoise: {patch_size: 3, patch_size: 5}\n", 1, "patch_size"),
    "in-a-list": ("x:\n  - {a: 1}\n  - a: 1\n    b: 2\n    a: 3\ndenoise: {}\n", 5, "a"),
}


@pytest.mark.parametrize("name", list(DUPLICATES))
def test_duplicate_yaml_keys_are_refused_with_file_and_line(tmp_path, cli, name):
    text, line, key = DUPLICATES[name]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    with pytest.raises(InputError) as exc:
        load_yaml(cfg)
    assert str(exc.value).startswith(f"{cfg}:{line}: duplicate key {key!r}"), exc.value
    vol = tmp_path / "in.zarr"
    code, err = cli("denoise", vol, tmp_path / "out.zarr", "--config", cfg)
    one_line(code, err, f"{cfg}:{line}", "duplicate key")
    assert cfg.read_text() == text and not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("js, key", [('{"patch_size": 3, "patch_size": 5}', "patch_size"),
                                     ('{"denoise": {"h": 0.1}, "denoise": {"h": 0.2}}', "denoise")])
def test_duplicate_keys_in_config_json_are_refused(tmp_path, cli, js, key):
    code, err = cli("denoise", tmp_path / "in.zarr", tmp_path / "out.zarr", "--config-json", js)
    one_line(code, err, "--config-json", f"duplicate key {key!r}")
    assert not any(tmp_path.iterdir())


def test_workflow_configfiles_with_duplicate_keys_are_refused(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("denoise:\n  patch_size: 3\nsegment:\n  method: gmm\n")
    check_yaml_files([REPO / "config.yaml", good])
    bad = tmp_path / "bad.yaml"
    bad.write_text("segment:\n  method: gmm\n  gmm:\n    max_iter: 10\n    max_iter: 20\n")
    with pytest.raises(InputError, match=rf"^{bad}:5: duplicate key 'max_iter', first given on line 4"):
        check_yaml_files([REPO / "config.yaml", bad])


@pytest.mark.slow
def test_snakemake_refuses_a_configfile_with_duplicate_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("denoise:\n  h_factor: 1.0\nreport:\n  dpi: 100\ndenoise:\n  h_factor: 2.0\n")
    proc = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"), str(bad), timeout=300)
    assert proc.returncode != 0
    assert f"batterytwin config: error: {bad}:5: duplicate key 'denoise'" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------------------- strict ints

@pytest.mark.parametrize("model, section, text, key", [
    (DenoiseConfig, "denoise", "patch_size: true", "denoise.patch_size"),
    (DenoiseConfig, "denoise", "search_radius: 2.0", "denoise.search_radius"),
    (DenoiseConfig, "denoise", "threads: '4'", "denoise.threads"),
    (DenoiseConfig, "denoise", "subtract_sigma: 1", "denoise.subtract_sigma"),
    (DenoiseConfig, "denoise", "h: true", "denoise.h"),
    (SegmentConfig, "segment", "train: {steps: yes}", "segment.train.steps"),
    (SegmentConfig, "segment", "train: {patch_size: [16, true, 16]}", "segment.train.patch_size"),
    (SegmentConfig, "segment", "classes: {pore: 0, solid_electrolyte: true}", "segment.classes"),
    (SegmentConfig, "segment", "infer: {amp: 0}", "segment.infer.amp"),
    (SegmentConfig, "segment", "train: {lr: .inf}", "segment.train.lr"),
    (SegmentConfig, "segment", "train: {class_weights: [1.0, .nan]}", "segment.train.class_weights"),
    (DenoiseConfig, "denoise", "h_factor: .nan", "denoise.h_factor"),
])
def test_booleans_decimals_and_strings_are_not_integers(tmp_path, model, section, text, key):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"{section}:\n  " + text + "\n")
    with pytest.raises(InputError) as exc:
        load_settings(model, section, cfg)
    msg = str(exc.value)
    assert msg.startswith(f"{key}: ") and "must be" in msg and "\n" not in msg, msg


def test_genuine_yaml_numbers_still_work(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("denoise:\n  patch_size: 3\n  h: 1\n  h_factor: 0.5\n  search_radius: 0\n"
                   "segment:\n  train: {lr: 1e-3, steps: 7, patch_size: 16, class_weights: [1, 2.5]}\n"
                   "  infer: {amp: false}\n  gmm: {classes: {0: pore, 1: cathode_active}}\n")
    d = load_settings(DenoiseConfig, "denoise", cfg)
    assert (d.patch_size, d.h, d.h_factor, d.search_radius) == (3, 1.0, 0.5, 0)
    s = load_settings(SegmentConfig, "segment", cfg)
    assert s.train.lr == pytest.approx(1e-3) and s.train.steps == 7 and s.train.patch_size == [16, 16, 16]
    assert s.train.class_weights == [1.0, 2.5] and s.infer.amp is False
    j = load_settings(SegmentConfig, "segment", text=json.dumps({"gmm": {"classes": {"0": "pore", "1": "pore"}}}))
    assert j.gmm.component_classes() == ["pore", "pore"]
    done = complete_config(with_changes(resources={"default": {"tasks": 1, "mem_mb": 2000}}))
    assert done["resources"]["default"]["mem_mb"] == 2000


def test_the_cli_refuses_true_for_an_integer_setting(tmp_path, cli):
    vol = tmp_path / "in.zarr"
    for js, key in (('{"patch_size": true}', "denoise.patch_size"), ('{"threads": 1.5}', "denoise.threads"),
                    ('{"chunk": "64"}', "denoise.chunk")):
        code, err = cli("denoise", vol, tmp_path / "out.zarr", "--config-json", js)
        one_line(code, err, key, "must be a valid integer")
    assert not any(tmp_path.iterdir())

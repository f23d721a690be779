"""One command-line convention: ``-i/--input`` and ``-o/--output`` for every command, old spellings
kept as aliases that warn once, ``NAME=ID`` class maps, and ``--help`` that puts the common
settings first and shows only defaults that exist."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from batterytwin import cli, store
from batterytwin.contracts import IGNORE_LABEL
from batterytwin.distributed import World
from batterytwin.errors import EXIT_BAD_INPUT, InputError

# (old spelling, new spelling, {dest: value} both must give)
SPELLINGS = {
    "ingest": (["ingest", "scan.tif", "vol.zarr", "--voxel-size-um", "0.5"],
               ["ingest", "-i", "scan.tif", "-o", "vol.zarr", "--voxel-size-um", "0.5"],
               {"source": "scan.tif", "output": "vol.zarr"}),
    "ingest-labels": (["ingest", "lab.tif", "lab.zarr", "--labels", "--like", "vol.zarr"],
                      ["ingest", "--labels", "--input", "lab.tif", "--like", "vol.zarr", "--output", "lab.zarr"],
                      {"source": "lab.tif", "output": "lab.zarr", "like": "vol.zarr"}),
    "phantom": (["phantom", "vol.zarr", "--labels", "truth.zarr"],
                ["phantom", "-o", "vol.zarr", "--labels", "truth.zarr"],
                {"volume": "vol.zarr", "labels": "truth.zarr"}),
    "denoise": (["denoise", "vol.zarr", "den.zarr", "--h", "0.1"],
                ["denoise", "-i", "vol.zarr", "-o", "den.zarr", "--h", "0.1"],
                {"input": "vol.zarr", "output": "den.zarr"}),
    "train-seg": (["train-seg", "--volume", "v.zarr", "--labels", "l.zarr", "--model-out", "m.pt",
                   "--metrics-out", "m.json"],
                  ["train-seg", "--volume", "v.zarr", "--labels", "l.zarr", "-o", "m.pt", "--metrics", "m.json"],
                  {"model_out": "m.pt", "metrics_out": "m.json", "volume": ["v.zarr"]}),
    "microstructure": (["microstructure", "--labels", "l.zarr", "--output", "m.json", "--msd", "m.npz"],
                       ["microstructure", "-i", "l.zarr", "-o", "m.json", "--msd", "m.npz"],
                       {"labels": "l.zarr", "output": "m.json", "msd": "m.npz"}),
    "simulate": (["simulate", "--microstructure", "m.json", "-o", "s.zarr", "--summary", "s.json", "--work-dir", "w"],
                 ["simulate", "--input", "m.json", "--output", "s.zarr", "--summary", "s.json", "--work-dir", "w"],
                 {"microstructure": "m.json", "output": "s.zarr"}),
    "train-degradation": (["train-degradation", "--npz", "a.npz", "--out", "m.pt"],
                          ["train-degradation", "--npz", "a.npz", "-o", "m.pt"], {"out": "m.pt", "npz": ["a.npz"]}),
    "predict-degradation": (["predict-degradation", "--npz", "a.npz", "--model", "m.pt", "--out", "p.zarr"],
                            ["predict-degradation", "--npz", "a.npz", "--model", "m.pt", "-o", "p.zarr"],
                            {"out": "p.zarr", "model": "m.pt"}),
    "twin": (["twin", "--train", "a.npz", "--out", "t.zarr"], ["twin", "--train", "a.npz", "-o", "t.zarr"],
             {"out": "t.zarr", "train": ["a.npz"]}),
    "report-tortuosity": (["report", "tortuosity", "m.json", "--msd", "m.npz", "--out", "t.png"],
                          ["report", "tortuosity", "-i", "m.json", "--msd", "m.npz", "-o", "t.png"],
                          {"microstructure": "m.json", "out": "t.png"}),
    "report-series": (["report", "series", "a.json", "b.json", "--out", "s.png"],
                      ["report", "series", "-i", "a.json", "b.json", "-o", "s.png"],
                      {"microstructure": ["a.json", "b.json"], "out": "s.png"}),
    "report-fade": (["report", "fade", "s.zarr", "--out", "f.png"], ["report", "fade", "-i", "s.zarr", "-o", "f.png"],
                    {"sweep": "s.zarr", "out": "f.png"}),
    "report-slices": (["report", "slices", "--raw", "v.zarr", "--out", "s.png"],
                      ["report", "slices", "--raw", "v.zarr", "-o", "s.png"], {"raw": "v.zarr", "out": "s.png"}),
    "report-ome": (["report", "ome", "--volume", "v.zarr", "--out", "o.zarr"],
                   ["report", "ome", "-i", "v.zarr", "-o", "o.zarr"],
                   {"volume": "v.zarr", "out": "o.zarr"}),
}


def parse(argv: list[str], caplog) -> tuple[dict, list[str]]:
    """(the namespace without its functions, the deprecation warnings logged while parsing)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="batterytwin.cli"):
        args = cli.build_parser(argv[0]).parse_args(argv)
    warned = [r.getMessage() for r in caplog.records if r.name == "batterytwin.cli"]
    return {k: v for k, v in vars(args).items() if k not in ("func", "parser")}, warned


@pytest.mark.parametrize("case", list(SPELLINGS))
def test_old_spelling_parses_like_the_new_and_warns_once(case, caplog):
    old, new, expected = SPELLINGS[case]
    old_args, old_warnings = parse(old, caplog)
    new_args, new_warnings = parse(new, caplog)
    assert old_args == new_args
    assert {k: new_args[k] for k in expected} == expected
    assert new_warnings == []
    assert len(old_warnings) == 1, old_warnings
    assert "old spelling" in old_warnings[0] and ("-o " in old_warnings[0] or "-i " in old_warnings[0])


def test_positional_paths_warn_in_one_line_naming_both_options(caplog):
    _, warned = parse(SPELLINGS["denoise"][0], caplog)
    assert warned == ["batterytwin denoise: 'IN OUT' is an old spelling (still accepted): write '-i IN -o OUT'"]


def test_segment_takes_short_and_long_options_without_warning(caplog):
    short, w1 = parse(["segment", "-i", "v.zarr", "-o", "l.zarr", "--method", "gmm"], caplog)
    long, w2 = parse(["segment", "--input", "v.zarr", "--output", "l.zarr", "--method", "gmm"], caplog)
    assert short == long and (short["input"], short["output"]) == ("v.zarr", "l.zarr")
    assert w1 == w2 == []


@pytest.mark.parametrize("argv, message", [
    (["denoise", "-i", "a.zarr"], "the following arguments are required: -o/--output"),
    (["microstructure", "--msd", "m.npz", "-o", "m.json"], "the following arguments are required: -i/--input"),
    (["twin", "--train", "a.npz", "--out", "a.zarr", "-o", "b.zarr"], "-o/--output: given twice"),
    (["denoise", "a.zarr", "b.zarr", "-i", "c.zarr"], "-i/--input: given twice"),
])
def test_missing_or_doubled_paths_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser(argv[0]).parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def write_volume(path, img, stage="segment", **attrs):
    with store.atomic_output(path, World()) as t:
        store.create_volume(t, img.shape, img.dtype, store.volume_attrs(stage, 0.5, **attrs), chunk=8,
                            shard=16)[...] = img
    return path


@pytest.mark.parametrize("argv", [["denoise", "-i", "{v}", "-o", "{v}"], ["denoise", "{v}", "{v}"],
                                  ["report", "ome", "-i", "{v}", "-o", "{v}"]])
def test_output_guard_sees_every_spelling(argv, tmp_path, cli):
    vol = write_volume(tmp_path / "v.zarr", np.zeros((8, 8, 8), np.float32), stage="denoise")
    code, err = cli(*(a.format(v=vol) for a in argv))
    assert code == EXIT_BAD_INPUT
    assert "is the same path as" in err and str(vol) in err
    assert (vol / "zarr.json").is_file()


# --------------------------------------------------------------------------------------- class maps

def test_class_map_old_order_equals_new_with_one_warning(caplog):
    from batterytwin.ingest.cli import parse_classes

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="batterytwin.cli"):
        new = parse_classes("lithium=3,pore=0")
    assert new == {0: "pore", 3: "lithium"} and caplog.records == []
    with caplog.at_level(logging.WARNING, logger="batterytwin.cli"):
        old = parse_classes("3=lithium,0=pore")
    assert old == new
    assert [r.getMessage() for r in caplog.records] == [
        "batterytwin ingest: '--classes ID=NAME' is an old spelling (still accepted): write '--classes NAME=ID'"]


def test_class_map_errors_name_the_new_form():
    from batterytwin.ingest.cli import parse_classes

    with pytest.raises(InputError, match="expected NAME=ID"):
        parse_classes("pore")
    with pytest.raises(InputError, match="named twice"):
        parse_classes("pore=0,pore=1")


def test_ingest_labels_with_name_id_map_writes_the_classes(tmp_path, cli):
    import tifffile

    vol = write_volume(tmp_path / "vol.zarr", np.zeros((4, 5, 6), np.float32), stage="denoise")
    image = np.zeros((4, 5, 6), np.uint8)
    image[1] = 3
    image[2] = IGNORE_LABEL
    tifffile.imwrite(tmp_path / "lab.tif", image, photometric="minisblack")
    code, err = cli("ingest", "-i", tmp_path / "lab.tif", "-o", tmp_path / "lab.zarr", "--labels",
                    "--classes", "pore=0,lithium_metal=3", "--like", vol)
    assert code == 0, err
    out = store.open_volume(tmp_path / "lab.zarr")
    assert out.attrs["classes"] == {"0": "pore", "3": "lithium_metal"}
    assert np.array_equal(np.asarray(out.array[...]), image)


# --------------------------------------------------------------------------------------------- help

HELP_LIMITS = {("segment",): 65, ("train-seg",): 100, ("ingest",): 75, ("denoise",): 75, ("microstructure",): 110,
               ("simulate",): 80, ("train-degradation",): 120, ("predict-degradation",): 110, ("twin",): 85,
               ("inspect",): 25, ("phantom",): 40, ("report", "slices"): 30, ("report", "ome"): 30}


@pytest.mark.parametrize("command", list(HELP_LIMITS), ids=" ".join)
def test_help_is_short_grouped_and_shows_only_real_defaults(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert len(lines) <= HELP_LIMITS[command], len(lines)
    assert max(map(len, lines)) <= 80
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
    headings = [h for h in ("inputs and outputs:", "common settings:", "advanced settings:") if h in lines]
    assert [lines.index(h) for h in headings] == sorted(lines.index(h) for h in headings)
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 10, description  # every command says what it does


def test_segment_help_is_under_half_of_the_full_listing(capsys, monkeypatch):
    """The settings of the section stay reachable (--help-settings), not in --help."""
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        cli.main(["segment", "--help"])
    short = capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["segment", "--help-settings"])
    everything = capsys.readouterr().out
    assert "train.randomise.dendrite_length = [0.2, 1.0]" in everything
    assert "train.randomise.dendrite_length" not in short and "train.randomise.* (" in short
    assert len(short.splitlines()) * 2 < len(everything.splitlines()) + 60


# ---------------------------------------------------------------------------------- inspect labels

def test_inspect_label_statistics_leave_out_the_ignore_label(tmp_path):
    from batterytwin.inspection import describe

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (12, 10, 9)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.4] = IGNORE_LABEL
    path = write_volume(tmp_path / "lab.zarr", labels, classes={"0": "pore", "1": "solid", "2": "lithium"},
                        ignore_label=IGNORE_LABEL)
    info = describe(str(path))
    labelled = labels[labels != IGNORE_LABEL]
    stats = info["statistics"]
    assert (stats["min"], stats["max"]) == (0.0, 2.0)
    assert stats["mean"] == pytest.approx(labelled.mean()) and stats["std"] == pytest.approx(labelled.std())
    assert stats["unlabelled_in_sample"] == int((labels == IGNORE_LABEL).sum())
    counts = np.bincount(labelled, minlength=3)
    assert info["class_voxels"] == {"pore": counts[0], "solid": counts[1], "lithium": counts[2]}
    names = ("pore", "solid", "lithium")
    assert info["class_fractions"] == pytest.approx({n: c / labelled.size for n, c in zip(names, counts)})

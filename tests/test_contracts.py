"""The stage contracts: one definition, imported by producers and consumers, pointing one way."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import zarr

from batterytwin import contracts, store
from batterytwin.errors import InputError

SRC = Path(__file__).resolve().parents[1] / "src" / "batterytwin"


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved inside batterytwin)."""
    package = ["batterytwin", *path.relative_to(SRC).parent.parts]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return out


def test_bruggeman_definition():
    eps, tau = 0.3, 2.5
    b = contracts.bruggeman(eps, tau)
    # D_eff / D = eps^b must equal eps / tau (TauFactor convention tau = eps D / D_eff)
    assert math.isclose(eps ** b, eps / tau, rel_tol=1e-12)
    for eps, tau in ((1.2, 2.0), (1.0, 2.0), (0.0, 2.0), (0.3, 0.0), (None, 2.0), (0.3, None)):
        assert contracts.bruggeman(eps, tau) is None


def test_status_names_cover_the_codes():
    assert contracts.STATUS_NAMES == {contracts.STATUS_OK: "ok", contracts.STATUS_FAILED: "failed",
                                      contracts.STATUS_TIME_LIMIT: "time_limit"}


def test_one_definition_each():
    """The contract's values are the ones the stages use (imported, not copied)."""
    from batterytwin.cellsim import driver as cellsim_driver, runner
    from batterytwin.ingest import phantom
    from batterytwin.report import cellsim as report_cellsim
    from batterytwin.segment import loss

    assert phantom.CLASSES is contracts.CLASSES and loss.IGNORE_LABEL == contracts.IGNORE_LABEL
    assert cellsim_driver.STATUS_NAMES is contracts.STATUS_NAMES is report_cellsim.STATUS_NAMES
    assert runner.STATUS_FAILED == contracts.STATUS_FAILED
    literals = {contracts.MICROSTRUCTURE_SCHEMA, contracts.SWEEP_SCHEMA, contracts.SEGMENT_METRICS_SCHEMA,
                "solver failed"}
    for path in SRC.rglob("*.py"):
        if path.name == "contracts.py":
            continue
        strings = {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
                   and isinstance(n.value, str)}
        assert not strings & literals, f"{path}: {strings & literals} copied; import it from contracts"


def test_nothing_under_src_imports_snakemake():
    """The package runs without snakemake (that contracts imports nothing of batterytwin: test_import_graph)."""
    for path in SRC.rglob("*.py"):
        assert not {m for m in _imports(path) if m.split(".")[0] == "snakemake"}, path


def test_json_is_strict(tmp_path):
    obj = {"tau": float("nan"), "b": np.float32("inf"), "axes": (1, np.int64(2)), "a": np.arange(2.0),
           "path": tmp_path, "nested": [{"x": -math.inf}]}
    assert store.json_safe(obj) == {"tau": None, "b": None, "axes": [1, 2], "a": [0.0, 1.0],
                                        "path": str(tmp_path), "nested": [{"x": None}]}
    store.write_json(tmp_path / "m.json", obj)
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["tau"] is None


def test_read_json_checks_the_schema(tmp_path):
    store.write_json(tmp_path / "m.json", {"schema": contracts.MICROSTRUCTURE_SCHEMA})
    assert store.read_json(tmp_path / "m.json", schema=contracts.MICROSTRUCTURE_SCHEMA)
    with pytest.raises(InputError, match="expected 'batterytwin.sweep/1'"):
        store.read_json(tmp_path / "m.json", schema=contracts.SWEEP_SCHEMA)
    with pytest.raises(InputError, match="no such microstructure file"):
        store.read_json(tmp_path / "x.json", "microstructure file")


def test_open_group_or_input_error(tmp_path):
    with pytest.raises(InputError, match="no such sweep store"):
        store.open_group(tmp_path / "missing.zarr", "sweep store")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "zarr.json").write_text("{")
    with pytest.raises(InputError, match="not a zarr v3 sweep store"):
        store.open_group(tmp_path / "plain", "sweep store")
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3,
                        attributes={"schema": contracts.SWEEP_SCHEMA})
    g.create_array("status", data=np.ones(3, np.int8))
    assert "status" in store.open_group(tmp_path / "s.zarr", arrays=("status",), schema=contracts.SWEEP_SCHEMA)
    with pytest.raises(InputError, match="lacks array"):
        store.open_group(tmp_path / "s.zarr", "sweep store", arrays=("status", "soh"))
    with pytest.raises(InputError, match="expected 'batterytwin.microstructure/1'"):
        store.open_group(tmp_path / "s.zarr", schema=contracts.MICROSTRUCTURE_SCHEMA)
    tmp = tmp_path / "s.zarr.tmp-1234"
    tmp.mkdir()
    with pytest.raises(InputError, match="unfinished temporary store"):
        store.open_group(tmp)


def test_class_map_form_written_by_the_rule_reads_back_without_warning(caplog):
    """The workflow writes ``--classes`` with contracts.format_class_map; ingest reads it back unchanged
    and takes it as the current spelling (no old-spelling warning)."""
    from batterytwin.contracts import CLASSES, format_class_map
    from batterytwin.ingest.cli import parse_classes

    text = format_class_map(CLASSES)
    assert text.split(",")[0] == f"{CLASSES[0]}=0"
    assert parse_classes(text) == dict(CLASSES) and "old spelling" not in caplog.text
    assert parse_classes(format_class_map({2: "binder", 0: "pore"})) == {0: "pore", 2: "binder"}

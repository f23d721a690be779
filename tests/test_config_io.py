"""Stage settings from --config files and --config-json strings."""

from __future__ import annotations

import pytest

from batterytwin.config import section_from_file, section_from_json
from batterytwin.errors import InputError


def test_section_or_whole_mapping(tmp_path):
    (tmp_path / "c.yaml").write_text("cellsim:\n  n_cycles: 5\nother: 1\n")
    (tmp_path / "s.yaml").write_text("n_cycles: 7\n")
    assert section_from_file(tmp_path / "c.yaml", "cellsim") == {"n_cycles": 5}
    assert section_from_file(tmp_path / "s.yaml", "cellsim") == {"n_cycles": 7}
    assert section_from_json('{"cellsim": {"a": 1}}', "cellsim") == {"a": 1}
    assert section_from_json('{"a": 2}', "cellsim") == {"a": 2}


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(InputError, match="no such config file"):
        section_from_file(tmp_path / "absent.yaml", "x")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(InputError, match="bad.yaml: not valid YAML"):
        section_from_file(tmp_path / "bad.yaml", "x")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="expected a mapping"):
        section_from_file(tmp_path / "list.yaml", "x")
    with pytest.raises(InputError, match="--config-json: not valid JSON"):
        section_from_json("{", "x")
    with pytest.raises(InputError, match="expected a JSON object"):
        section_from_json("[1]", "x")

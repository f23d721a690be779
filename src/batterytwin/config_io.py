"""One config section, from a YAML file and/or a ``--config-json`` string, with clear errors.

Stage commands take their settings as ``--config FILE`` (the section itself, or a whole
``config.yaml`` holding it) and ``--config-json TEXT`` (what Snakemake rules pass).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError


def section_from_file(path: str | Path, section: str) -> dict:
    """The ``section`` mapping of a YAML/JSON file (or the whole file when it has no such key)."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping")
    return dict(data.get(section, data))


def section_from_json(text: str, section: str) -> dict:
    """The ``section`` mapping of a JSON object string (or the whole object when it has no such key)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--config-json: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError("--config-json: expected a JSON object")
    return dict(data.get(section, data))

"""Typed stage settings: one pydantic model per config section, read from files, JSON and flags.

Every stage keeps its settings in one model, ``batterytwin.<stage>.config``; that model is the only
place a default lives. The workflow schema (``workflow/schemas/config.schema.json``) is generated
from the models (:mod:`batterytwin.workflow_config`), and each stage command reads its section with
the same two options::

    batterytwin denoise -i IN -o OUT --config config.yaml              # the section of a whole config
    batterytwin denoise -i IN -o OUT --config-json '{"patch_size": 3}'  # what Snakemake rules pass

A few settings people type by hand also have flags; they are generated from the model
(:func:`add_config_arguments`), so their type, choices, help and default are declared once.
Precedence: model defaults < ``--config`` < ``--config-json`` < flags.

Example::

    class Walk(Section):
        n_steps: int = Field(4000, ge=4, description="steps per walker")

    settings = load_settings(Walk, "walk", text='{"n_steps": 10}')
    settings.n_steps          # 10
    load_settings(Walk, "walk", text='{"n_steps": 0}')
    # InputError: walk.n_steps: must be >= 4, got 0
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, ValidationInfo, field_validator

from .errors import InputError

M = TypeVar("M", bound=BaseModel)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
"""A name that becomes part of a path (a sample, a training set, an evaluation): a letter or digit,
then letters, digits, ``_``, ``.`` and ``-``."""


class Section(BaseModel):
    """Base of every settings model: unknown keys are errors, defaults are validated too, and numbers
    are not booleans (:func:`strict_scalar`: ``true`` for an integer setting is an error, not 1)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if field is not None:
            problem = strict_scalar(field.annotation, value)
            if problem:
                raise ValueError(problem)
        return value


def strict_scalar(annotation: Any, value: Any) -> str | None:
    """Why ``value`` does not fit the integer/boolean parts of ``annotation`` strictly, or None.

    pydantic's lax mode reads ``true`` as 1 for an int, 2.0 or ``"2"`` as 2, and 1 or ``"yes"`` as
    True for a bool: settings that mean something else than was written. Here an int setting takes
    only integers (not booleans, floats or strings), a bool only ``true``/``false``, and a float any
    finite number except a boolean (YAML ints and ``1e-3`` read as a string still work for floats). Lists
    and mapping values are checked item by item; a union passes when one branch fits.
    """
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return strict_scalar(typing.get_args(annotation)[0], value)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        problems = [strict_scalar(a, value) for a in typing.get_args(annotation) if a is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if origin in (list, tuple, set) and isinstance(value, (list, tuple)):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        for item in value:
            problem = strict_scalar(args[0], item) if args else None
            if problem:
                return f"{problem} (item {item!r})"
        return None
    if origin is dict and isinstance(value, dict):
        args = typing.get_args(annotation)
        for key, item in value.items():
            problem = strict_scalar(args[1], item) if len(args) == 2 else None
            if problem:
                return f"{key}: {problem} (got {item!r})"
        return None
    is_bool = isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool too
    if annotation is bool:
        return None if is_bool else "must be true or false"
    if annotation is int:
        ok = isinstance(value, numbers.Integral) and not is_bool
        return None if ok else "must be a valid integer (not a boolean, decimal or string)"
    if annotation is float:
        if is_bool:
            return "must be a number, not a boolean"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"  # .inf / .nan in YAML: no setting means "unbounded" by inf
        return None
    return None


# --------------------------------------------------------------------------------------- reading

class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (the safe
    loader silently keeps the last value: a setting edited in one place and overridden further down)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class names it
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r}, first given on line {first} (a key may appear once per mapping)",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path, text: str | None = None) -> Any:
    """The YAML (or JSON) document of ``path``, refusing duplicate keys.

    Raises:
        InputError: ``config.yaml:12: duplicate key 'h' (first given on line 3)``, or another YAML error
            with its line.
    """
    p = Path(path)
    try:
        return yaml.load(p.read_text() if text is None else text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.constructor.ConstructorError as exc:
        if exc.problem and exc.problem.startswith("duplicate key") and exc.problem_mark is not None:
            line = exc.problem_mark.line + 1
            raise InputError(f"{p}:{line}: {exc.problem}") from None
        raise InputError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from None


def check_yaml_files(paths: Any) -> None:
    """Refuse duplicate keys in each config file of ``paths`` (the workflow's configfiles)."""
    for p in paths or ():
        if Path(p).is_file():
            load_yaml(p)


def section_from_file(path: str | Path, section: str) -> dict:
    """The ``section`` mapping of a YAML/JSON file (or the whole file when it has no such key)."""
    from .inputfile import read_text

    p = Path(path)
    text = read_text(p, "config file")  # a folder, a FIFO or a binary file: one line
    data = load_yaml(p, text) or {}
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping")
    return _section_of(data, section, str(p))


def section_from_json(text: str, section: str) -> dict:
    """The ``section`` mapping of a JSON object string (or the whole object when it has no such key)."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as exc:
        raise InputError(f"--config-json: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError("--config-json: expected a JSON object")
    return _section_of(data, section, "--config-json")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object, refusing a key given twice (``json.loads`` would keep the last)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise InputError(f"--config-json: duplicate key {key!r} in one object (a key may appear once)")
        out[key] = value
    return out


def _section_of(data: dict, section: str, where: str) -> dict:
    value = data.get(section, data) if section else data
    if not isinstance(value, dict):
        raise InputError(f"{where}: {section}: expected a mapping, got {value!r}")
    return dict(value)


def deep_merge(base: dict, new: dict) -> dict:
    """``base`` updated by ``new``, mappings merged key by key (new values win)."""
    out = dict(base)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def validate_settings(model: type[M], values: dict, where: str) -> M:
    """``model`` from ``values``; a problem is one :class:`InputError` line naming the key path."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise InputError(describe_error(exc, where)) from None


def as_settings(model: type[M], value: M | typing.Mapping[str, Any], where: str) -> M:
    """``value`` as a ``model``: itself, or a mapping validated (a section saved in a model file, a
    section written as a dict); a problem is one :class:`InputError` line naming the key path."""
    return value if isinstance(value, model) else validate_settings(model, dict(value), where)


def load_settings(model: type[M], section: str, path: str | Path | None = None, text: str | None = None,
                  overrides: dict | None = None) -> M:
    """Settings of ``section``: defaults < file ``path`` < JSON ``text`` < ``overrides``."""
    values: dict = {}
    if path:
        values = section_from_file(path, section)
    if text:
        values = deep_merge(values, section_from_json(text, section))
    if overrides:
        values = deep_merge(values, overrides)
    return validate_settings(model, values, section)


# ---------------------------------------------------------------------------------------- errors

_MESSAGES = {
    "greater_than": "must be > {gt}", "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}", "less_than_equal": "must be <= {le}",
    "literal_error": "must be one of {expected}", "missing": "required key missing",
    "finite_number": "must be a finite number", "too_short": "needs at least {min_length} items",
    "too_long": "takes at most {max_length} items", "string_pattern_mismatch": "must match {pattern}",
}


def describe_error(exc: ValidationError, where: str) -> str:
    """One line for the first problem of ``exc``: ``segment.train.lr: must be > 0, got -1``."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    parts = [str(p) for p in (where, *err["loc"]) if p != "" and not _is_branch_tag(p)]
    template = _MESSAGES.get(err["type"])
    msg = template.format(**err.get("ctx", {})) if template else err["msg"].replace("Value error, ", "")
    if parts[-1] == "[key]":  # a mapping key that becomes a name or a path
        parts, msg = parts[:-1], f"name {msg}"
    elif err["type"] == "extra_forbidden":
        msg = f"unknown key '{parts[-1]}'"
    loc = ".".join(parts)
    shown = err["type"] not in ("missing", "extra_forbidden") and not isinstance(err["input"], dict)
    got = f", got {err['input']!r}" if shown else ""
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{loc}: {msg}{got}{more}"


def _is_branch_tag(part: Any) -> bool:
    # pydantic names the branch of a tagged union in the location; users never wrote it
    return part in ("synthetic", "file") or (isinstance(part, str) and part.startswith(("function-", "tagged-union")))


# ------------------------------------------------------------------------------------ CLI options

def add_config_arguments(parser: argparse.ArgumentParser, model: type[BaseModel], section: str,
                         flags: dict[str, str] | None = None) -> None:
    """``--config``/``--config-json`` and generated flags for ``model``, documented in ``--help``.

    Args:
        flags: ``{"--patch-size": "patch_size", "--steps": "train.steps"}``: a flag per field path
            that people type by hand. Type, choices, help text and default come from the model.
    """
    parser.add_argument("--config", metavar="FILE",
                        help=f"YAML/JSON file with the '{section}' section (or a whole config.yaml holding it)")
    parser.add_argument("--config-json", metavar="JSON",
                        help=f"JSON object with '{section}' settings (applied after --config)")
    for flag, path in (flags or {}).items():
        field = _field(model, path)
        kwargs: dict[str, Any] = {"dest": _dest(path), "default": None, "metavar": path.rsplit(".", 1)[-1].upper(),
                                  "help": f"{field.description or ''} [{section}.{path}, default {_default(field)}]"}
        kind = _scalar_type(field.annotation)
        if typing.get_origin(kind) is list:
            kind = _scalar_type(typing.get_args(kind)[0])
            kwargs.update(nargs="+")
        if kind is bool:
            kwargs.update(action=argparse.BooleanOptionalAction)
            kwargs.pop("metavar")
        elif typing.get_origin(kind) is Literal:
            kwargs.update(choices=[str(c) for c in typing.get_args(kind)])
            kwargs.pop("metavar")
        else:
            kwargs.update(type=kind)
        parser.add_argument(flag, **kwargs)
    parser.set_defaults(_settings_flags=dict((flags or {})))
    epilog = settings_help(model, section)
    parser.epilog = f"{parser.epilog}\n\n{epilog}" if parser.epilog else epilog
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def settings_from_args(args: argparse.Namespace, model: type[M], section: str) -> M:
    """The settings of a command: defaults < ``--config`` < ``--config-json`` < generated flags."""
    overrides: dict = {}
    for path in getattr(args, "_settings_flags", {}).values():
        value = getattr(args, _dest(path))
        if value is not None:
            node = overrides
            *parents, leaf = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    return load_settings(model, section, args.config, args.config_json, overrides)


def settings_help(model: type[BaseModel], section: str) -> str:
    """Every setting of ``model`` with its type, default and description, one per line."""
    lines = [f"settings (section '{section}'; give them with --config or --config-json):"]
    for path, field in _walk(model):
        lines.append(f"  {path} = {_default(field)}: {field.description or ''}")
    return "\n".join(lines)


def _walk(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        sub = _submodel(field.annotation)
        if sub is not None:
            yield from _walk(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def _submodel(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _field(model: type[BaseModel], path: str):
    *parents, leaf = path.split(".")
    for p in parents:
        model = _submodel(model.model_fields[p].annotation)
    return model.model_fields[leaf]


def _dest(path: str) -> str:
    return "setting__" + path.replace(".", "__")


def _default(field) -> str:
    value = field.get_default(call_default_factory=True)
    return json.dumps(value.model_dump() if isinstance(value, BaseModel) else value, default=str)


def _scalar_type(annotation: Any) -> Any:
    """``int`` for ``int | None`` and ``Annotated[int, ...]``; the Literal itself for a Literal."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _scalar_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0])
    return annotation

"""Output paths that would destroy an input: refused for every command, in one place.

A stage writes its output under a temporary name and renames it into place, removing what was
there. An output path equal to an input (``denoise vol.zarr vol.zarr``), inside it (the output
written into the input store's folder) or containing it (an input store inside the folder that is
replaced) would delete or change the input, so :func:`check_args` refuses it before the stage
starts: one :class:`~batterytwin.errors.InputError` line naming both settings.

Which argument is an output is declared here once, by its destination name (:data:`OUTPUTS`);
every other argument whose value names an existing path is an input. ``cli.build_parser`` wraps
every sub-command with :func:`guard`, so a new stage is covered without code of its own.

Example::

    check_paths({"input": "a.zarr"}, {"output": "a.zarr"})
    # InputError: output a.zarr is the same path as input a.zarr: it would destroy the input; ...
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import InputError

# argument destinations that name what a command writes (any sub-command unless OUTPUTS_OF names it)
OUTPUTS = frozenset({"output", "out", "model_out", "metrics_out", "metrics", "uncertainty", "summary", "msd"})
# commands whose outputs are named otherwise (report reads --metrics, --clean and --msd)
OUTPUTS_OF = {"phantom": frozenset({"volume", "clean", "labels"}), "report": frozenset({"out"})}
# read and written (resumable work folders, checkpoints): not inputs; they may not be or lie inside one
WORK = frozenset({"work_dir", "checkpoint_dir", "checkpoint"})
NEITHER = frozenset({"func", "command"})

def _values(value: Any) -> list[str]:
    """The path strings of an argument value (one, a list, or ``NAME=PATH`` items)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in items:
        if isinstance(v, (str, os.PathLike)) and str(v):
            s = str(v)
            if "=" in s and not Path(s).exists():  # report --labels NAME=ZARR
                s = s.split("=", 1)[1]
            out.append(s)
    return out


def _resolved(path: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def _real(path: str) -> Path:
    return Path(os.path.realpath(os.path.expanduser(path)))


def _is_store(path: str) -> bool:
    """A Zarr store (its root ``zarr.json``): a folder a stage reads as a whole, so nothing may be
    written inside it; a plain data folder (``--train-user-dir .``) may hold outputs."""
    return (Path(path) / "zarr.json").is_file()


def check_paths(inputs: Mapping[str, Any], outputs: Mapping[str, Any], work: Mapping[str, Any] | None = None) -> None:
    """Refuse an output equal to, inside (an input store) or containing an input, or two outputs at
    one path, and a work folder or checkpoint equal to or inside an input store.

    Args:
        inputs, outputs, work: setting name -> path (or list of paths); None and empty values are skipped.

    Raises:
        InputError: one line naming both settings and paths.
    """
    ins = [(k, p) for k, v in inputs.items() for p in _values(v) if os.path.lexists(p)]
    outs = [(k, p) for k, v in outputs.items() for p in _values(v)]
    seen: dict[Path, tuple[str, str]] = {}
    for ko, po in outs:
        ro = _resolved(po)
        if ro in seen:
            k2, p2 = seen[ro]
            raise InputError(f"{ko.replace('_', '-')} {po}: the same path as {k2.replace('_', '-')} {p2} "
                             "(two outputs cannot share a path)")
        seen[ro] = (ko, po)
        for ki, pi in ins:
            for a, b in ((ro, _resolved(pi)), (_real(po), _real(pi))):
                relation = ("is the same path as" if a == b else "is inside" if b in a.parents and _is_store(pi)
                            else "contains" if a in b.parents else None)
                if relation:
                    raise InputError(f"{ko.replace('_', '-')} {po} {relation} {ki.replace('_', '-')} {pi}: writing it "
                                     "would destroy or change the input; choose another output path")
    for kw, pw in [(k, p) for k, v in (work or {}).items() for p in _values(v)]:
        for ki, pi in ins:
            for a, b in ((_resolved(pw), _resolved(pi)), (_real(pw), _real(pi))):
                relation = "is the same path as" if a == b else "is inside" if b in a.parents and _is_store(pi) else None
                if relation:
                    raise InputError(f"{kw.replace('_', '-')} {pw} {relation} {ki.replace('_', '-')} {pi}: its files "
                                     "would change the input; choose another folder")


def check_args(args: argparse.Namespace, command: str | None = None) -> None:
    """:func:`check_paths` over a parsed command line: outputs by name (:data:`OUTPUTS`), inputs the rest."""
    outs_here = OUTPUTS_OF.get(command or getattr(args, "command", ""), OUTPUTS)
    inputs, outputs, work = {}, {}, {}
    for name, value in vars(args).items():
        if name.startswith("_") or name.startswith("setting__") or name in NEITHER or value is None:
            continue
        (outputs if name in outs_here else work if name in WORK else inputs)[name] = value
    check_paths(inputs, outputs, work)


def guard(parser: argparse.ArgumentParser, command: str) -> None:
    """Make ``parser``'s command run :func:`check_args` before its own ``func``."""
    func: Callable | None = parser.get_default("func")
    if func is None or getattr(func, "_paths_guarded", False):
        return

    def guarded(args: argparse.Namespace, _func: Callable = func) -> Any:
        check_args(args, command)
        return _func(args)

    guarded._paths_guarded = True  # type: ignore[attr-defined]
    parser.set_defaults(func=guarded)


def guard_all(subparsers: argparse._SubParsersAction) -> None:
    """:func:`guard` every sub-command registered so far."""
    for name, parser in subparsers.choices.items():
        guard(parser, name)

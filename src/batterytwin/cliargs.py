"""The command-line convention every sub-command follows, and the ``--help`` layout.

- The thing a command reads is ``-i/--input``, the thing it writes ``-o/--output``
  (:meth:`InputsOutputs.input`, :meth:`InputsOutputs.output`); other inputs and outputs are named
  options for their role (``--model``, ``--msd``, ``--metrics``...).
- Old spellings (positional paths, ``--out``, ``--model-out``...) stay accepted: they parse to the
  same namespace as the new spelling, and one warning line on stderr names the new spelling
  (:func:`deprecated`).
- ``--help`` lists the inputs and outputs first, then the common settings, then the advanced ones;
  the settings of the config section without a flag are summarised (``--help-settings`` lists all).

Example::

    p = subparsers.add_parser("denoise", ...)
    io = InputsOutputs(p)
    io.input(metavar="ZARR", help="volume store to denoise", positional=True)   # -i/--input, or IN
    io.output(metavar="ZARR", help="output store", positional=True)            # -o/--output, or OUT
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import textwrap
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

log = logging.getLogger("batterytwin.cli")

INPUT_FLAGS = ("-i", "--input")
OUTPUT_FLAGS = ("-o", "--output")


def deprecated(prog: str, old: str, new: str) -> None:
    """One warning line on stderr: ``old`` is an old spelling of ``new`` (still accepted)."""
    log.warning("%s: '%s' is an old spelling (still accepted): write '%s'", prog, old, new)


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-line texts, keeps texts with line breaks as written (settings lists, examples), and
    shows an option's default only where there is one (not None, False or empty) and its help does
    not already say it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" not in text:
            return super()._fill_text(text, width, indent)
        lines = []
        for line in text.splitlines():
            lead = indent + line[: len(line) - len(line.lstrip())]
            lines.extend(textwrap.wrap(line.strip(), width, initial_indent=lead, subsequent_indent=lead + "    ",
                                       break_on_hyphens=False) or [""])
        return "\n".join(lines)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default is None or default is False or default is argparse.SUPPRESS
                or (isinstance(default, (list, tuple, dict, str)) and not default)
                or not action.option_strings or isinstance(action, argparse.BooleanOptionalAction)):
            return text
        return f"{text} (default: %(default)s)"


@dataclass
class _Path:
    """A primary input/output: its new option, and the old spellings that still reach its ``dest``."""

    action: argparse.Action
    required: bool
    positional: bool
    old_options: dict[str, str] = field(default_factory=dict)  # old flag -> hidden dest

    @property
    def spelling(self) -> str:
        return f"{self.action.option_strings[0]} {self.action.metavar or self.action.dest.upper()}"


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose primary inputs/outputs (:class:`InputsOutputs`) also accept their old
    spellings; help in :class:`HelpFormatter`'s layout. Sub-command parsers inherit the class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._paths: list[_Path] = []

    def format_usage(self) -> str:
        with self._required_shown():
            return super().format_usage()

    def format_help(self) -> str:
        with self._required_shown():
            return super().format_help()

    @contextlib.contextmanager
    def _required_shown(self):
        """Usage names the required arguments and then ``[options]``; a required path shows as required
        (argparse does not enforce it: an old spelling may give it, :meth:`parse_known_args`)."""
        required = [p.action for p in self._paths if p.required]
        usage = self.usage
        for action in required:
            action.required = True
        try:
            if usage is None:
                formatter = self._get_formatter()
                formatter.add_usage(None, [a for a in self._actions if a.required or not a.option_strings], [],
                                    prefix="")
                text = " ".join(formatter.format_help().split()) + " [options]"
                self.usage = textwrap.fill(text, formatter._width - 7, subsequent_indent=" " * (len(self.prog) + 8),
                                           break_on_hyphens=False)
            yield
        finally:
            self.usage = usage
            for action in required:
                action.required = False

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        namespace, extras = super().parse_known_args(args, namespace)
        return namespace, self._resolve_old_spellings(namespace, extras)

    def _resolve_old_spellings(self, namespace: argparse.Namespace, extras: list[str]) -> list[str]:
        if not self._paths:
            return extras
        loose = [s for s in extras if not s.startswith("-") or s == "-"]  # old positional paths, in order
        extras = [s for s in extras if s not in loose]
        old_positional, new_positional, old_options, new_options, missing = [], [], [], [], []
        for path in self._paths:
            dest, nargs = path.action.dest, path.action.nargs
            given = [(path.action.option_strings[-1], getattr(namespace, dest))]
            for flag, hidden in path.old_options.items():
                given.append((flag, getattr(namespace, hidden)))
                delattr(namespace, hidden)
                if given[-1][1] is not None:
                    old_options.append(f"{flag} {path.action.metavar}")
                    new_options.append(path.spelling)
            if path.positional and loose:
                take = len(loose) if nargs in ("+", "*") else 1
                value = loose[:take] if nargs in ("+", "*") else loose[0]
                loose = loose[take:]
                given.append(("a positional argument", value))
                old_positional.append(path.action.metavar or dest.upper())
                new_positional.append(path.spelling)
            given = [(flag, value) for flag, value in given if value is not None]
            if len(given) > 1:
                self.error(f"argument {'/'.join(path.action.option_strings)}: given twice "
                           f"({given[0][0]} and {given[1][0]})")
            if given:
                setattr(namespace, dest, given[0][1])
            elif path.required:
                missing.append("/".join(path.action.option_strings))
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        old = ([" ".join(old_positional)] if old_positional else []) + old_options
        new = ([" ".join(new_positional)] if new_positional else []) + new_options
        if old:
            deprecated(self.prog, " ".join(old), " ".join(new))
        return extras + loose


class InputsOutputs:
    """The 'inputs and outputs' help group of a sub-command: ``-i/--input``, ``-o/--output`` and the
    other named inputs and outputs (:meth:`add`)."""

    def __init__(self, parser: argparse.ArgumentParser):
        if not isinstance(parser, Parser):
            raise TypeError(f"{parser.prog}: build the command line with batterytwin.cliargs.Parser")
        self.parser = parser
        self.group = parser.add_argument_group("inputs and outputs")

    def input(self, dest: str = "input", **kwargs: Any) -> argparse.Action:
        """``-i/--input``: what the command reads; see :meth:`path` for the old spellings."""
        return self.path(INPUT_FLAGS, dest, **kwargs)

    def output(self, dest: str = "output", **kwargs: Any) -> argparse.Action:
        """``-o/--output``: what the command writes; see :meth:`path` for the old spellings."""
        return self.path(OUTPUT_FLAGS, dest, **kwargs)

    def path(self, flags: Sequence[str], dest: str, *, old: Iterable[str] = (), positional: bool = False,
             required: bool = True, **kwargs: Any) -> argparse.Action:
        """A primary input/output stored in ``dest``.

        Args:
            old: old option spellings (``--out``) that still set ``dest``, with a warning.
            positional: the old positional argument still sets ``dest``, with a warning (in the order
                the paths are declared).
            required: one of the spellings must be given.
        """
        action = self.group.add_argument(*flags, dest=dest, default=None, **kwargs)  # required: checked after parsing
        path = _Path(action, required, positional)
        for flag in old:
            hidden = f"_old_{dest}_{flag.lstrip('-').replace('-', '_')}"
            self.parser.add_argument(flag, dest=hidden, default=None, help=argparse.SUPPRESS,
                                     **{k: v for k, v in kwargs.items() if k in ("nargs", "type")})
            path.old_options[flag] = hidden
        self.parser._paths.append(path)
        return action

    def add(self, *flags: str, **kwargs: Any) -> argparse.Action:
        """Another named input or output (``--model``, ``--msd``...)."""
        return self.group.add_argument(*flags, **kwargs)


class _ListSettings(argparse.Action):
    """``--help-settings``: print every setting of the command's config section, and exit."""

    def __init__(self, option_strings, dest, text: str = "", **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)
        self.text = text

    def __call__(self, parser, namespace, values, option_string=None):
        print(self.text)
        parser.exit()


def add_settings(parser: argparse.ArgumentParser, model: type, section: str, flags: dict[str, str],
                 listed: Sequence[str] = ("",)) -> None:
    """``--config``/``--config-json`` and the settings flags of ``model``
    (:func:`~batterytwin.config.add_config_arguments`; ``flags``: flag -> setting path). The help ends
    with the settings of the sub-sections ``listed`` ("" = the top level) that have no flag and one
    count per other sub-section; ``--help-settings`` lists every setting."""
    from .config import add_config_arguments, settings_help

    own_epilog = parser.epilog
    add_config_arguments(parser, model, section, flags=flags)
    everything = settings_help(model, section)
    parser.add_argument("--help-settings", action=_ListSettings, text=everything,
                        help=f"list every setting of the '{section}' section with its default, and exit")
    summary = _settings_summary(everything, section, set(flags.values()), listed)
    parser.epilog = f"{own_epilog}\n\n{summary}" if own_epilog else summary
    parser.formatter_class = HelpFormatter


COMMON = ("--config", "--config-json")


def arrange(parser: argparse.ArgumentParser, common: Sequence[str] = ()) -> None:
    """Help groups in the order inputs and outputs, common settings (``--config``, ``--config-json``
    and the options ``common``), the command's own groups, then every other option under 'advanced
    settings'; 'options' keeps only the help options."""
    unknown = set(common) - set(parser._option_string_actions)
    if unknown:
        raise ValueError(f"{parser.prog}: no option {sorted(unknown)} to list under 'common settings'")
    common_group = parser.add_argument_group("common settings")
    advanced_group = parser.add_argument_group("advanced settings")
    for action in list(parser._optionals._group_actions):  # argparse offers no public way to regroup
        if isinstance(action, (argparse._HelpAction, _ListSettings)):
            continue
        parser._optionals._group_actions.remove(action)
        shared = set(action.option_strings) & {*COMMON, *common}
        (common_group if shared else advanced_group)._group_actions.append(action)
    groups = parser._action_groups
    io = [g for g in groups if g.title == "inputs and outputs"]
    others = [g for g in groups if g not in (parser._positionals, parser._optionals, common_group, advanced_group, *io)]
    groups[:] = [parser._positionals, parser._optionals, *io, common_group, *others, advanced_group]


def _settings_summary(everything: str, section: str, flagged: set[str], listed: Sequence[str]) -> str:
    """The settings of the sub-sections ``listed`` without a flag, and a count of the others."""
    shown, others = [], {}
    for line in everything.splitlines()[1:]:
        path = line.split(" = ", 1)[0].strip()
        parent = path.rpartition(".")[0]
        if path in flagged:
            continue
        if parent in listed:
            shown.append(line)
        else:
            others[parent] = others.get(parent, 0) + 1
    head = f"settings without a flag (section '{section}'; give them with --config or --config-json):"
    rest = ", ".join(f"{parent}.* ({n})" if parent else f"{n} top-level" for parent, n in others.items())
    tail = [f"  more: {rest}; --help-settings lists every setting"] if others else []
    return "\n".join([head, *shown, *tail])

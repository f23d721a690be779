"""``batterytwin <stage> ...``: argument parsing, logging, exit codes.

Each stage package contributes its sub-commands through ``<package>/cli.py``, which defines
``register(subparsers)``; the parser of each sub-command sets ``func`` (called with the parsed
arguments; returns an exit code or ``None``). Bad input (:class:`~batterytwin.errors.InputError`)
prints one line naming the file/key and the problem and exits with status 2; under MPI, every rank
is stopped so none waits forever in a barrier. Every command reads ``-i/--input`` and writes
``-o/--output`` (:mod:`batterytwin.cliargs`: old spellings still accepted, with a warning).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .cliargs import Parser
from .errors import InputError

# Sub-command -> package: a run imports only its own stage (torch, pybamm... cost seconds of
# start-up on every MPI rank); `batterytwin --help` imports them all, in pipeline order.
COMMANDS = {
    "ingest": "ingest", "phantom": "ingest", "denoise": "denoise",
    "train-seg": "segment", "segment": "segment", "microstructure": "microstructure",
    "simulate": "cellsim", "train-degradation": "degradation", "predict-degradation": "degradation",
    "twin": "twin", "report": "report", "inspect": "inspection",
}
STAGE_PACKAGES = tuple(dict.fromkeys(COMMANDS.values()))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``command``, only the package that defines it is imported."""
    parser = Parser(
        prog="batterytwin",
        description="X-ray micro-CT of lithium batteries to a digital twin: one sub-command per "
        "pipeline stage. Run under srun/mpirun for several ranks.",
    )
    parser.add_argument("--version", action="version", version=f"batterytwin {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    subparsers = parser.add_subparsers(dest="command", metavar="<stage>", required=True)
    packages = (COMMANDS[command],) if command in COMMANDS else STAGE_PACKAGES
    for name in packages:
        module = importlib.import_module(f"batterytwin.{name}.cli" if name != "inspection" else f"batterytwin.{name}")
        module.register(subparsers)
    from .paths import guard_all

    guard_all(subparsers)  # no command's output may destroy one of its inputs (batterytwin.paths)
    return parser


def _command(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (global options take no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def setup_logging(verbose: int, quiet: bool) -> None:
    from .distributed import get_world

    world = get_world()
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    if world.rank != 0 and verbose < 2:
        level = logging.WARNING  # rank 0 speaks for the job
    prefix = f"[rank {world.rank}/{world.size}] " if world.size > 1 else ""
    logging.basicConfig(level=level, format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    stored = sys.modules.get("batterytwin.store")
    if stored is not None:
        stored._opened.clear()  # a corrupt read is blamed on a store this command opened
    try:
        try:
            from .inputfile import refuse_special_files

            refuse_special_files(v for k, v in vars(args).items() if k not in ("func", "parser"))
            code = args.func(args)
        except (InputError, KeyboardInterrupt):
            raise
        except Exception as exc:
            os_error = _os_error(exc)
            if os_error is not None:  # a read-only or full filesystem, a permission: one line, the path
                raise InputError(_os_error_line(os_error, args)) from None
            stored = sys.modules.get("batterytwin.store")
            if stored is None or not stored.is_store_read_error(exc):
                raise
            raise stored.corrupt_read_error(exc) from None  # a corrupt shard: one line naming it
    except InputError as exc:
        print(f"batterytwin {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        _abort_other_ranks(2)
        return 2
    except KeyboardInterrupt:
        print(f"batterytwin {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        logging.getLogger("batterytwin").exception("batterytwin %s failed", args.command)
        _abort_other_ranks(1)
        return 1
    return int(code or 0)


OUTPUT_ARGS = ("output", "out", "model_out", "out_dir", "output_dir", "volume", "model", "report")


def _os_error(exc: BaseException) -> OSError | None:
    """The operating-system error behind ``exc`` (itself or in its cause/context chain), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _os_error_line(exc: OSError, args: argparse.Namespace) -> str:
    """``<path>: <OS error>``: the file the OS refused (a temporary output named by its final path),
    else the command's output argument."""
    import errno
    import os

    name = exc.filename
    if name is None:
        name = next((getattr(args, a) for a in OUTPUT_ARGS if isinstance(getattr(args, a, None), str)), None)
    name = str(name) if name is not None else "output"
    if ".tmp-" in name:
        name = name[: name.index(".tmp-")]
    code = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{name}: {exc.strerror or os.strerror(exc.errno)} ({code})"


def _abort_other_ranks(code: int) -> None:
    from .distributed import get_world

    world = get_world()
    if world.size > 1:
        sys.stderr.flush()
        world.abort(code)


if __name__ == "__main__":
    sys.exit(main())

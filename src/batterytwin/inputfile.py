"""Input files must be regular files: a folder, a named pipe (which would block a reader forever),
a device or a binary file where text is expected is one :class:`InputError` line naming the path.

Example::

    text = read_text("config.yaml", "config file")   # refuses a folder, a FIFO, a binary file
    path = regular_file("scan.tif", "input file")    # refuses anything but a regular file
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Iterable

from .errors import InputError


def regular_file(path: os.PathLike | str, what: str = "input file") -> Path:
    """``path`` if it is a regular file (symbolic links followed), else :class:`InputError`."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{p}: no such {what}") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read the {what} ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{p}: is a folder, not a {what}")
    if not stat.S_ISREG(mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device or socket"
        raise InputError(f"{p}: is {kind}, not a regular file; the {what} must be a file")
    return p


def refuse_special_files(values: Iterable[Any]) -> None:
    """Refuse any of ``values`` (command-line arguments) that names an existing file that is neither a
    regular file nor a folder: a named pipe or device would block the command forever or stream junk."""
    for v in values:
        if isinstance(v, (list, tuple)):
            refuse_special_files(v)
            continue
        if not isinstance(v, (str, os.PathLike)) or len(str(v)) > 4096 or not str(v):
            continue
        try:
            mode = os.stat(v).st_mode
        except (OSError, ValueError):
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device or socket"
            raise InputError(f"{v}: is {kind}, not a regular file or folder; give a file")


def read_text(path: os.PathLike | str, what: str = "text file") -> str:
    """The UTF-8 text of regular file ``path``; a binary file is refused (one line)."""
    p = regular_file(path, what)
    data = p.read_bytes()
    if b"\0" in data[:65536]:
        raise InputError(f"{p}: is a binary file, not a {what} (NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: is not UTF-8 text, not a {what} (byte {exc.start})") from None

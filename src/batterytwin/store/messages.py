"""One-line text of an exception, for the one-line :class:`~batterytwin.errors.InputError` messages of stores."""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """``"<type>: <message>"`` on one line, at most 300 characters of message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"

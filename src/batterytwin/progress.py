"""Progress bars on rank 0 only (tqdm), silent elsewhere and with ``--quiet``."""

from __future__ import annotations

import logging
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

from .distributed import get_world

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """Wrap a long loop in a progress bar shown on rank 0 (stderr), when logging is at INFO."""
    quiet = get_world().rank != 0 or logging.getLogger().getEffectiveLevel() > logging.INFO
    return tqdm(iterable, desc=desc, total=total, disable=quiet, file=sys.stderr, mininterval=2.0,
                dynamic_ncols=True)

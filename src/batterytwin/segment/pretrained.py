"""The shipped batteryNET (``--model pretrained``, ``segment.train.init_from: pretrained``): where it is, its digest.

The repository ships one model file, trained on domain-randomised cells by
``python bench/pretrain_segment.py`` (model card: docs/models.md). The name :data:`NAME` stands for
it wherever a model path is accepted. Its sha256 is recorded here (:data:`SHA256`, the one source)
and checked every time the name is resolved: a damaged or replaced file is an
:class:`~batterytwin.errors.InputError` naming the file and both digests (exit 2). The file is
looked up next to this module (``weights/batterynet.pt``, package data in a normal install and in an
editable one); ``BATTERYTWIN_PRETRAINED`` points to another copy (e.g. a site-wide one), which must
have the same digest.

Example::

    resolve_model("pretrained")     # '/.../batterytwin/segment/weights/batterynet.pt' (digest checked)
    resolve_model("results/m.pt")   # 'results/m.pt' (any other path is returned as is)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import InputError

NAME = "pretrained"
ENV = "BATTERYTWIN_PRETRAINED"
FILE = Path(__file__).resolve().parent / "weights" / "batterynet.pt"
SHA256 = "4e20e4c3bb87eca0a333338ca718ea66746888a3a3a32dd2ba0b2a7640edbb32"


def shipped_file() -> Path:
    """The file the name ``pretrained`` stands for (``$BATTERYTWIN_PRETRAINED`` or the package's)."""
    return Path(os.environ[ENV]) if os.environ.get(ENV) else FILE


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path | str, expected: str = SHA256) -> Path:
    """``path`` when its sha256 is ``expected``; else InputError naming the file and both digests."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: the shipped batteryNET (model '{NAME}') is missing; reinstall batterytwin or set "
                         f"{ENV} to a copy")
    got = file_sha256(p)
    if got != expected:
        raise InputError(f"{p}: sha256 {got} differs from the recorded {expected}: the shipped batteryNET is "
                         "damaged or was replaced")
    return p


def is_pretrained(value: str | os.PathLike | None) -> bool:
    return value is not None and str(value) == NAME


def resolve_model(value: str | os.PathLike) -> str:
    """The model file a ``--model``/``init_from`` value names: ``pretrained`` -> the shipped file, checked."""
    if is_pretrained(value):
        return str(verify(shipped_file()))
    return str(value)

"""What kind of volume store a path holds, and the refusal of the wrong kind for a stage.

Every volume store records who wrote it (``producer.stage``, :func:`batterytwin.store.provenance`)
and label stores carry a ``classes`` map. From those attributes a store is one of:

- ``"ct"``: an intensity image (``ingest``, ``phantom`` image or clean image, ``denoise``);
- ``"labels"``: a label store (``classes`` attribute: ``segment``, ``import_labels``, phantom truth);
- ``"uncertainty"``: a segmentation's entropy store (``quantity`` attribute);
- ``"unknown"``: anything else (another tool's store).

A stage asks for the kind it can read (:func:`require_kind`): labels given to ``denoise`` as a CT
volume, a CT volume given as labels, an entropy store segmented: one line naming the store, what it
is and what was expected.

Example::

    vol = store.open_volume("results/s1/labels.zarr")
    require_kind(vol, "ct", "denoise input")
    # InputError: results/s1/labels.zarr: denoise input must be a CT volume, but this is a label store ...
"""

from __future__ import annotations

from typing import Any

from .errors import InputError

CT_STAGES = frozenset({"ingest", "phantom", "denoise"})
LABEL_STAGES = frozenset({"segment", "import_labels", "phantom"})
DESCRIPTION = {"ct": "a CT volume", "labels": "a label store", "uncertainty": "an uncertainty (entropy) store",
               "unknown": "a store of unknown kind"}


def store_kind(attrs: dict[str, Any]) -> str:
    """``"ct"``, ``"labels"``, ``"uncertainty"`` or ``"unknown"`` from a volume store's attributes."""
    stage = (attrs.get("producer") or {}).get("stage") if isinstance(attrs.get("producer"), dict) else None
    if "classes" in attrs or "ignore_label" in attrs:
        return "labels"
    if "quantity" in attrs:
        return "uncertainty"
    if stage in CT_STAGES:
        return "ct"
    return "unknown"


def require_kind(vol: Any, kind: str, role: str) -> None:
    """Refuse ``vol`` (a :class:`batterytwin.store.Volume`) unless it is of ``kind`` (``"ct"``/``"labels"``).

    A store without a recorded producer stage (written by another tool) passes as a CT volume when it
    has no label or uncertainty attributes.

    Raises:
        InputError: one line: the store, the role it was given for, what it is and who wrote it.
    """
    attrs = dict(vol.attrs)
    found = store_kind(attrs)
    if found == kind or (found == "unknown" and kind == "ct" and not _has_producer(attrs)):
        return
    stage = (attrs.get("producer") or {}).get("stage") if isinstance(attrs.get("producer"), dict) else None
    by = f" written by stage {stage!r}" if stage else ""
    raise InputError(f"{vol.path}: {role} must be {DESCRIPTION[kind]}, but this is {DESCRIPTION[found]}{by} "
                     f"(wrong store given?)")


def _has_producer(attrs: dict[str, Any]) -> bool:
    return isinstance(attrs.get("producer"), dict) and bool(attrs["producer"].get("stage"))

"""What stages agree on: the one place a producer and its consumers take it from.

``docs/interfaces.md`` describes the files between stages; this module holds the constants, schema
ids and the one relation both sides of an interface must share, so that a writer and its readers
cannot drift:

- schema ids of the files between stages (the ``schema`` key/attribute a reader checks);
- the label classes and the ignore label of label stores;
- the condition status codes and names of a cellsim sweep;
- the Bruggeman relation between volume fraction, tortuosity and exponent.

It imports nothing of batterytwin (every other module may import it) and nothing of snakemake.
Reading and writing the files (strict JSON, opening a store with its schema checked) is
:mod:`batterytwin.store`.

Example::

    from batterytwin.contracts import SWEEP_SCHEMA, STATUS_OK
    from batterytwin.store import open_group

    g = open_group("results/s1/sweep.zarr", "sweep store", arrays=("status",), schema=SWEEP_SCHEMA)
    ok = g["status"][:] == STATUS_OK
"""

from __future__ import annotations

import math
from typing import Mapping

__all__ = [
    "MICROSTRUCTURE_SCHEMA", "SWEEP_SCHEMA", "SEGMENT_METRICS_SCHEMA",
    "CLASSES", "IGNORE_LABEL",
    "STATUS_OK", "STATUS_FAILED", "STATUS_TIME_LIMIT", "STATUS_NAMES",
    "bruggeman",
]

# -- schema ids (the "schema" key of a JSON file / attribute of a store) ----------------------------
MICROSTRUCTURE_SCHEMA = "batterytwin.microstructure/1"   # microstructure.json: microstructure -> cellsim, report
SWEEP_SCHEMA = "batterytwin.sweep/1"                     # sweep.zarr + sweep.json: cellsim -> degradation, report
SEGMENT_METRICS_SCHEMA = "batterytwin.segment.metrics/1"  # models/segment/metrics.json: segment -> report

# -- label stores ------------------------------------------------------------------------------------
# Default classes of the synthetic solid-state lithium-metal cell (a label store's ``classes``
# attribute is authoritative for its own volume; this is what the phantom writes).
CLASSES: dict[int, str] = {
    0: "pore",
    1: "solid_electrolyte",
    2: "lithium_metal",
    3: "cathode_active",
    4: "redeposited_lithium",
    5: "current_collector",
}
IGNORE_LABEL = 255  # unlabelled voxels: ignored by the loss, drawn white, counted as "unlabelled"

# -- cellsim sweep conditions: ``sweep.zarr`` array ``status`` (int8) ----------------------------------
STATUS_OK, STATUS_FAILED, STATUS_TIME_LIMIT = 1, 2, 3
# code -> name, as written to ``sweep.json`` (``status_name``) and the ``status_codes`` attribute
STATUS_NAMES: dict[int, str] = {STATUS_OK: "ok", STATUS_FAILED: "failed", STATUS_TIME_LIMIT: "time_limit"}


def bruggeman(eps: float | None, tau: float | None) -> float | None:
    """Bruggeman exponent b with ``D_eff = eps^b D``: ``b = 1 - ln(tau) / ln(eps)``.

    tau is the tortuosity factor in the TauFactor convention (tau = eps D / D_eff), so
    ``eps^b = eps / tau``.

    Args:
        eps: volume fraction of the conducting phase, in (0, 1).
        tau: tortuosity factor, > 0 (>= 1 in practice).

    Returns:
        b, or None where it is undefined (eps not in (0, 1), tau missing or <= 0).

    Example: ``bruggeman(0.3, 2.5)`` -> 1.761 (``0.3 ** 1.761 == 0.3 / 2.5``).
    """
    if eps is None or tau is None or not 0.0 < eps < 1.0 or not tau > 0.0:
        return None
    return 1.0 - math.log(tau) / math.log(eps)


def format_class_map(classes: Mapping[int, str]) -> str:
    """``{0: "pore", 1: "solid"}`` -> ``"pore=0,solid=1"``: the ``--classes`` form of ``ingest --labels``
    (the config's ``name: id``), written by the workflow's label-import rule and read by the CLI."""
    return ",".join(f"{name}={int(cid)}" for cid, name in sorted(classes.items()))

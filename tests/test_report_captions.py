"""Figure captions (workflow/report/*.rst) describe the sample of the report, not the phantom.

Each caption is rendered the way ``snakemake --report`` renders it (Jinja with ``trim_blocks`` and
``lstrip_blocks``, a ``snakemake`` object with ``config`` and ``wildcards``, then reStructuredText to
HTML) for a phantom and for a user's 3-phase scan.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from docutils.core import publish_parts
from jinja2 import Environment

from .conftest import REPO

CAPTIONS = sorted((REPO / "workflow" / "report").glob("*.rst"))
PHANTOM_CLASSES = {"pore": 0, "solid_electrolyte": 1, "lithium_metal": 2, "cathode_active": 3,
                   "redeposited_lithium": 4, "current_collector": 5}
SCAN_CLASSES = {"pore": 0, "electrolyte": 1, "cathode_active": 2}


def render(path, samples: dict, classes: dict, sample: str) -> str:
    snakemake = SimpleNamespace(config={"samples": samples, "segment": {"classes": classes}},
                                wildcards=SimpleNamespace(sample=sample, series="s", evaluation="e"))
    text = Environment(trim_blocks=True, lstrip_blocks=True).from_string(path.read_text()).render(snakemake=snakemake)
    return publish_parts(text, writer_name="html", settings_overrides={"report_level": 2, "halt_level": 2})["body"]


@pytest.mark.parametrize("path", CAPTIONS, ids=[p.stem for p in CAPTIONS])
def test_caption_of_a_scan_names_no_phantom_fact(path):
    scan = {"cell2": {"source": "data/cell2.h5", "voxel_size_um": 0.7, "role": "analyse"}}
    html = render(path, scan, SCAN_CLASSES, "cell2")
    for phantom_fact in ("current collector at z = 0", "5 current collector", "redeposited lithium,", "noise-free image"):
        assert phantom_fact not in html, f"{path.name}: {phantom_fact!r} in a scan's caption"
    if path.stem == "segment_slices":
        assert "0 pore, 1 electrolyte, 2 cathode active." in html
    if path.stem == "ingest_slices":
        assert "data/cell2.h5" in html and "ground-truth" not in html


def test_caption_of_the_phantom_keeps_its_facts():
    phantom = {"phantom": {"source": "synthetic", "shape": [48, 48, 48], "seed": 2}}
    html = render(REPO / "workflow" / "report" / "ingest_slices.rst", phantom, PHANTOM_CLASSES, "phantom")
    assert "current collector at z = 0" in html and "ground-truth labels" in html
    html = render(REPO / "workflow" / "report" / "segment_slices.rst", phantom, PHANTOM_CLASSES, "phantom")
    assert "4 redeposited lithium, 5 current collector." in html and "ground truth of the phantom" in html
    # a frame of a synthetic time series (cell_t001) is not in the sample table: taken as the phantom
    html = render(REPO / "workflow" / "report" / "denoise_nlm.rst", phantom, PHANTOM_CLASSES, "cell_t001")
    assert "noise-free image" in html

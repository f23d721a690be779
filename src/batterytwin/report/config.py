"""The ``report`` config section: figures for ``snakemake --report`` and the OME-Zarr export."""

from __future__ import annotations

from pydantic import Field

from ..config import Section


class ReportConfig(Section):
    """Figure and export settings (workflow/rules/report.smk passes them to ``batterytwin report``)."""

    dpi: int = Field(200, ge=50, le=1200, description="resolution of the PNG figures (sized for a journal page)")
    ome_levels: int = Field(3, ge=0, le=10, description="extra OME-Zarr pyramid levels (factors 2, 4, ...; stops "
                            "before an axis gets below 8 voxels)")
    ome_chunk: int = Field(64, ge=8, description="chunk edge of every OME-Zarr level (napari/neuroglancer read unit)")
    max_conditions: int = Field(24, ge=1, description="sweep conditions drawn in the voltage and fade figures")
    max_cells: int = Field(6, ge=1, description="cells drawn in the degradation-prediction figure (held-out first)")
    benchmark: bool = Field(False, description="add the scaling figure of the repository's own benchmark "
                            "(bench/results, bench/chain.py): for the project's report, not a scan's")

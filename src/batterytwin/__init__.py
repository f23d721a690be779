"""batterytwin: X-ray micro-CT of lithium batteries to a digital twin, as an HPC batch pipeline."""

__version__ = "0.1.0"

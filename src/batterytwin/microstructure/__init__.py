"""Microstructure stage: random-walk tortuosity (lattice and off-lattice walks), volume fractions,
interface areas, percolation, layers, particle radii and lithium/dendrite statistics.

Pure core: :func:`.tortuosity.walk_tortuosity` (bool mask in, tortuosity record out) and
:mod:`.stats`; driver: :func:`.driver.run` (``labels.zarr`` in, ``microstructure.json`` +
``msd.npz`` out). See ``docs/microstructure.md``.
"""

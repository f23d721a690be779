"""Cell simulation stage: measured microstructure -> PyBaMM parameters -> cycling sweeps.

Modules, one job each:

- :mod:`.params`: ``microstructure.json`` -> substitutions into a PyBaMM parameter set, plus
  config overrides by PyBaMM name (every substitution recorded).
- :mod:`.design`: the sweep design (full grid or seeded Latin hypercube) -> ``[n, k]`` inputs.
- :mod:`.runner`: one PyBaMM ``Simulation`` built once per rank with ``[input]`` parameters,
  solved per condition (capacity per cycle, early Q(V) curves, status, wall time).
- :mod:`.checkpoint`: per-condition result files under ``work/{sample}/cellsim/`` (resume).
- :mod:`.dispatch`: dynamic load balancing of conditions over MPI ranks.
- :mod:`.driver`: config in, ``sweep.zarr`` + ``sweep.json`` out (atomic).
"""

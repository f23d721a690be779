"""Sweep design: full grid or seeded Latin hypercube over operating and degradation inputs.

Axes (config ``cellsim.sweep.axes``):

- ``discharge_c_rate``, ``charge_c_rate`` (> 0, relative to the nominal capacity),
  ``ambient_temperature_C``, ``depth_of_discharge`` (in (0, 1], of the nominal capacity);
  absent ones take their defaults (:data:`DEFAULTS`) and are still listed as inputs;
- any PyBaMM parameter name (e.g. ``"SEI kinetic rate constant [m.s-1]"``), swept as an
  ``[input]`` parameter of the one built model.

Axis values: a number (fixed), a list (``grid``: the values; ``lhs``: ``[low, high]``), or
``{low, high, scale: linear|log}`` (``lhs`` only).

Example::

    d = make_design({"method": "lhs", "n_samples": 8, "seed": 0,
                     "axes": {"discharge_c_rate": [0.5, 2]}})
    d.names   # ['discharge_c_rate', 'charge_c_rate', 'ambient_temperature_C', 'depth_of_discharge']
    d.values  # float64 [8, 4]
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

OPERATING = ("discharge_c_rate", "charge_c_rate", "ambient_temperature_C", "depth_of_discharge")
DEFAULTS = {"discharge_c_rate": 1.0, "charge_c_rate": 0.5, "ambient_temperature_C": 25.0,
            "depth_of_discharge": 1.0}


@dataclass
class Design:
    """The conditions of a sweep.

    Attributes:
        names: input names (the four operating inputs first, then PyBaMM names).
        values: float64 ``[n_conditions, len(names)]``.
        varied: names whose value differs between conditions (become ``[input]`` parameters).
    """

    names: list[str]
    values: np.ndarray
    varied: list[str]

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def condition(self, i: int) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.names, self.values[i])}


def _check_value(name: str, x: float) -> None:
    where = f"cellsim.sweep.axes.{name}"
    if not math.isfinite(x):
        raise InputError(f"{where}: not a finite number ({x})")
    if name.endswith("c_rate") and x <= 0:
        raise InputError(f"{where}: C-rate must be > 0 (direction is set by the protocol), got {x}")
    if name == "depth_of_discharge" and not 0 < x <= 1:
        raise InputError(f"{where}: depth of discharge must be in (0, 1], got {x}")
    if name == "ambient_temperature_C" and not -60 <= x <= 120:
        raise InputError(f"{where}: ambient temperature {x} degC is outside [-60, 120]")
    if name not in OPERATING and x < 0:
        raise InputError(f"{where}: parameter value must be >= 0, got {x}")


def _floats(name: str, values: Any) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"cellsim.sweep.axes.{name}: expected numbers, got {values!r}") from None
    for x in out:
        _check_value(name, x)
    return out


def _grid(axes: dict[str, Any]) -> tuple[list[str], list[list[float]]]:
    names, levels = [], []
    for name, spec in axes.items():
        if isinstance(spec, dict):
            raise InputError(f"cellsim.sweep.axes.{name}: a range {spec!r} needs method 'lhs'; "
                             "a grid takes a list of values")
        vals = _floats(name, spec if isinstance(spec, (list, tuple)) else [spec])
        if not vals:
            raise InputError(f"cellsim.sweep.axes.{name}: empty list of values (empty sweep)")
        names.append(name)
        levels.append(vals)
    return names, levels


def _range(name: str, spec: Any) -> tuple[float, float, str]:
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "scale"}
        if unknown or "low" not in spec or "high" not in spec:
            raise InputError(f"cellsim.sweep.axes.{name}: expected {{low, high, scale}}, got {spec!r}")
        low, high = _floats(name, [spec["low"], spec["high"]])
        scale = spec.get("scale", "linear")
    elif isinstance(spec, (list, tuple)):
        if len(spec) != 2:
            raise InputError(f"cellsim.sweep.axes.{name}: method 'lhs' takes [low, high], got {spec!r}")
        low, high = _floats(name, spec)
        scale = "linear"
    else:
        (low,) = _floats(name, [spec])
        return low, low, "linear"
    if scale not in ("linear", "log"):
        raise InputError(f"cellsim.sweep.axes.{name}.scale: 'linear' or 'log', got {scale!r}")
    if high < low:
        raise InputError(f"cellsim.sweep.axes.{name}: high ({high}) < low ({low})")
    if scale == "log" and low <= 0:
        raise InputError(f"cellsim.sweep.axes.{name}: log scale needs low > 0, got {low}")
    return low, high, scale


def make_design(sweep: dict[str, Any]) -> Design:
    """Build the conditions from ``cellsim.sweep`` (``method``, ``axes``, ``n_samples``, ``seed``).

    Raises:
        InputError: unknown method, bad axis value (negative C-rate, ...), empty sweep.
    """
    method = sweep.get("method", "grid")
    axes = dict(sweep.get("axes") or {})
    for name in OPERATING:
        axes.setdefault(name, DEFAULTS[name])
    ordered = list(OPERATING) + sorted(n for n in axes if n not in OPERATING)
    axes = {n: axes[n] for n in ordered}
    if method == "grid":
        names, levels = _grid(axes)
        values = np.array(list(itertools.product(*levels)), dtype=np.float64).reshape(-1, len(names))
    elif method == "lhs":
        n = sweep.get("n_samples")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"cellsim.sweep.n_samples: a positive integer for method 'lhs', got {n!r} (empty sweep)")
        seed = int(sweep.get("seed", 0))
        names = list(axes)
        ranges = [_range(name, axes[name]) for name in names]
        free = [j for j, (lo, hi, _) in enumerate(ranges) if hi > lo]
        if not free:  # nothing varies: n copies of one condition would only cost time
            n = 1
        values = np.array([[lo for lo, _, _ in ranges]] * n, dtype=np.float64)
        if free:
            from scipy.stats import qmc

            u = qmc.LatinHypercube(d=len(free), rng=np.random.default_rng(seed)).random(n)
            for col, j in enumerate(free):
                lo, hi, scale = ranges[j]
                if scale == "log":
                    values[:, j] = np.exp(np.log(lo) + u[:, col] * (np.log(hi) - np.log(lo)))
                else:
                    values[:, j] = lo + u[:, col] * (hi - lo)
    else:
        raise InputError(f"cellsim.sweep.method: 'grid' or 'lhs', got {method!r}")
    if values.shape[0] == 0:
        raise InputError("cellsim.sweep: the design has no conditions (empty sweep)")
    varied = [n for j, n in enumerate(names) if np.ptp(values[:, j]) > 0]
    return Design(names, values, varied)

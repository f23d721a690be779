"""Electrode balance (N/P ratio) of the cell after the measured cathode replaced the set's.

When the microstructure stage measures a cathode much thinner than the parameter set's, the
set's graphite anode is left with a large excess of capacity, and lithium lost to SEI never
limits the discharge (no fade). :func:`balance_negative` rescales the negative electrode
thickness so the N/P ratio of the parameter set (or a configured one) is kept.

Definition (a design N/P: the negative's capacity over the capacity the positive can deliver in
the voltage window; electrode SOH after Mohtat et al., J. Power Sources 427, 101-111 (2019), as
implemented in PyBaMM)::

    N/P = Q_n / (Q_p * (y_0 - y_100))

- ``Q_n``, ``Q_p``: theoretical electrode capacities ``F c_max eps_active L A / 3600``, PyBaMM's
  own ``LithiumIonParameters().{n,p}.Q_init`` evaluated on the parameter values;
- ``y_0 - y_100``: the positive electrode's usable stoichiometry window, from PyBaMM's electrode
  SOH helper ``pybamm.lithium_ion.get_min_max_stoichiometries`` on the *unmodified* parameter
  set (a property of the cathode material and the voltage window, not of the geometry).

Because the window is fixed, N/P is linear in the negative thickness, and scaling it by
``target / N/P_before`` meets the target exactly. The initial stoichiometries stay the set's,
so the lithium inventory scales with the electrodes and the rescaled cell has the same
stoichiometry windows as the parameter set.

Example::

    record = balance_negative(pv, "OKane2022", target=None, allowed=(1.0, 2.0), thickness_um=10.0)
    record["n_to_p_after"]   # == the set's N/P
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from ..errors import InputError

log = logging.getLogger(__name__)

NEG_THICKNESS = "Negative electrode thickness [m]"


def electrode_capacities(pv) -> tuple[float, float]:
    """Theoretical capacities ``(Q_n, Q_p)`` in A.h: PyBaMM's ``param.{n,p}.Q_init``."""
    import pybamm

    param = pybamm.LithiumIonParameters()
    return float(pv.evaluate(param.n.Q_init)), float(pv.evaluate(param.p.Q_init))


@functools.lru_cache(maxsize=8)
def positive_window(set_name: str) -> tuple[float, float]:
    """``(y_100, y_0)`` of the unmodified parameter set, from PyBaMM's electrode SOH solver."""
    import pybamm

    from .params import load_parameter_set

    _, _, y_100, y_0 = pybamm.lithium_ion.get_min_max_stoichiometries(load_parameter_set(set_name))
    return float(y_100), float(y_0)


def n_to_p(pv, window: tuple[float, float]) -> float:
    """``Q_n / (Q_p (y_0 - y_100))`` (see the module docstring)."""
    q_n, q_p = electrode_capacities(pv)
    return q_n / (q_p * (window[1] - window[0]))


def check_range(ratio: float, allowed: tuple[float, float], thickness_um: float | None,
                allow_outside: bool, where: str = "cellsim.balance") -> str | None:
    """A warning text when ``ratio`` is outside ``allowed``; InputError unless ``allow_outside``."""
    lo, hi = allowed
    if lo <= ratio <= hi:
        return None
    thick = "the set's" if thickness_um is None else f"{thickness_um:g} um"
    text = (f"N/P = {ratio:.3f} outside [{lo:g}, {hi:g}] with the measured positive electrode "
            f"thickness {thick}")
    if not allow_outside:
        raise InputError(f"{where}: {text} (set {where}.allow_outside_range: true to run anyway)")
    log.warning("WARNING: %s", text)
    return text


def balance_negative(pv, set_name: str, target: float | None, enabled: bool,
                     allowed: tuple[float, float], allow_outside: bool,
                     thickness_um: float | None = None, locked: bool = False) -> dict[str, Any]:
    """Rescale ``Negative electrode thickness [m]`` in ``pv`` (in place) to meet the N/P target.

    Args:
        pv: parameter values after the microstructure substitutions and config overrides.
        set_name: the parameter set (its N/P is the default target, its window the definition).
        target: N/P to meet; None keeps the parameter set's.
        enabled: False records N/P only.
        allowed: ``(low, high)`` sane N/P range, checked on the final cell.
        allow_outside: a final N/P outside ``allowed`` only warns instead of raising.
        thickness_um: the measured positive thickness (named in messages), None if not measured.
        locked: the config set the negative thickness itself: record, do not rescale.

    Returns:
        the record stored in ``sweep.zarr``/``sweep.json`` attribute ``balance``.
    """
    from .params import load_parameter_set

    try:
        window = positive_window(set_name)
        np_set = n_to_p(load_parameter_set(set_name), window)
        np_before = n_to_p(pv, window)
    except (KeyError, ValueError, ArithmeticError, RuntimeError) as exc:  # e.g. a set without OCPs
        if enabled and not locked:
            raise InputError(f"cellsim.balance: PyBaMM cannot compute the N/P ratio of {set_name!r} "
                             f"({type(exc).__name__}); set cellsim.balance.enabled: false") from None
        log.warning("balance: N/P of %r not computable (%s): not recorded", set_name, type(exc).__name__)
        return {"n_to_p_after": None, "note": f"not computable: {type(exc).__name__}"}
    goal = np_set if target is None else float(target)
    old_l = float(pv[NEG_THICKNESS])
    rec: dict[str, Any] = {
        "definition": "Q_n / (Q_p (y_0 - y_100)); Q = F c_max eps_active L A (PyBaMM Q_init), "
                      "positive window of the parameter set (pybamm get_min_max_stoichiometries)",
        "positive_window": list(window), "n_to_p_parameter_set": np_set, "n_to_p_before": np_before,
        "target": goal if enabled and not locked else None, "rescaled": {}, "warning": None,
    }
    if enabled and not locked:
        new_l = old_l * goal / np_before
        pv[NEG_THICKNESS] = new_l
        rec["rescaled"] = {NEG_THICKNESS: {"old": old_l, "value": new_l, "factor": new_l / old_l}}
        log.info("balance: N/P %.4f -> %.4f: %r %.4g -> %.4g m", np_before, goal, NEG_THICKNESS, old_l, new_l)
    elif locked:
        log.info("balance: %r set in cellsim.parameters: not rescaled", NEG_THICKNESS)
    rec["n_to_p_after"] = n_to_p(pv, window)
    rec["warning"] = check_range(rec["n_to_p_after"], allowed, thickness_um, allow_outside)
    return rec

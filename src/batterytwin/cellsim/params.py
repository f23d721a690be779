"""Microstructure -> PyBaMM parameter values, with every substitution recorded.

The PyBaMM lithium-ion models are liquid-electrolyte models. For the imaged solid-state cathode
we map the *ion-conducting* phase (the solid electrolyte) onto the PyBaMM "porosity" and its
measured through-plane tortuosity onto PyBaMM's tortuosity factor (``transport:
tortuosity_factor``, ``B = eps / tau``, the same tau) or onto the Bruggeman exponent,
``D_eff = eps^b D  =>  b = 1 - ln(tau) / ln(eps)`` (tau in the TauFactor convention,
tau = eps D / D_eff). This is an approximation: the electrolyte transport properties remain
those of the liquid electrolyte of the chosen parameter set (see ``docs/cellsim.md``).

Example::

    ms = read_microstructure("results/s1/microstructure.json")
    pv, subs = build_parameter_values("OKane2022", microstructure_substitutions(ms, "..."),
                                      overrides={"Ambient temperature [K]": 300.0})
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from ..contracts import MICROSTRUCTURE_SCHEMA, bruggeman
from ..errors import InputError
from ..store import read_json
from .config import TRANSPORTS

log = logging.getLogger(__name__)

# (json key in cell.<region>, PyBaMM name, divisor to SI); bruggeman is handled separately.
_POSITIVE = (
    ("electrolyte_volume_fraction", "Positive electrode porosity", 1.0),
    ("active_material_volume_fraction", "Positive electrode active material volume fraction", 1.0),
    ("thickness_um", "Positive electrode thickness [m]", 1e6),
    ("particle_radius_um", "Positive particle radius [m]", 1e6),
)
_SEPARATOR = (
    ("electrolyte_volume_fraction", "Separator porosity", 1.0),
    ("thickness_um", "Separator thickness [m]", 1e6),
)
LENGTH_RANGE_UM = (0.01, 1e4)  # a measured thickness or particle radius outside it is a unit slip
_BRUGGEMAN = {
    "positive_electrode": "Positive electrode Bruggeman coefficient (electrolyte)",
    "separator": "Separator Bruggeman coefficient (electrolyte)",
}
NOMINAL_CAPACITY = "Nominal cell capacity [A.h]"
# PyBaMM 26.10 parameters of "transport efficiency": "tortuosity factor" (B = phase fraction / tau)
_TORTUOSITY = {
    "positive_electrode": "Positive electrode tortuosity factor (electrolyte)",
    "separator": "Separator tortuosity factor (electrolyte)",
}
# every tortuosity factor the option needs -> (volume-fraction parameter, Bruggeman parameter, solid?)
TORTUOSITY_EQUIVALENTS = {
    "Negative electrode tortuosity factor (electrolyte)":
        ("Negative electrode porosity", "Negative electrode Bruggeman coefficient (electrolyte)", False),
    "Separator tortuosity factor (electrolyte)":
        ("Separator porosity", "Separator Bruggeman coefficient (electrolyte)", False),
    "Positive electrode tortuosity factor (electrolyte)":
        ("Positive electrode porosity", "Positive electrode Bruggeman coefficient (electrolyte)", False),
    "Negative electrode tortuosity factor (electrode)":
        ("Negative electrode porosity", "Negative electrode Bruggeman coefficient (electrode)", True),
    "Positive electrode tortuosity factor (electrode)":
        ("Positive electrode porosity", "Positive electrode Bruggeman coefficient (electrode)", True),
}


@dataclass
class Substitution:
    """One parameter replaced in the parameter set: PyBaMM ``name``, ``old`` and ``new`` value,
    and ``source`` (which measurement or config key it came from)."""

    name: str
    new: float
    source: str
    old: Any = None

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["from"] = d.pop("source")
        d["value"] = d.pop("new")
        return d


def tortuosity_from_bruggeman(phi: float, b: float) -> float:
    """The tortuosity factor equivalent to a Bruggeman exponent: ``phi / tau = phi^b``.

    PyBaMM's ``"tortuosity factor"`` transport efficiency is ``B = phi / tau`` (``phi``: porosity
    for the electrolyte, ``1 - porosity`` for the electrode phase), its Bruggeman one
    ``B = phi^b``; equal when ``tau = phi^(1 - b)``. TauFactor's ``tau = eps D / D_eff`` is the
    same tau (``D_eff / D = eps / tau = B``).
    """
    if not 0.0 < phi <= 1.0:
        raise InputError(f"tortuosity: need 0 < volume fraction <= 1, got {phi}")
    return phi ** (1.0 - b)


def _tortuosity_substitution(block: dict[str, Any], region: str, path: str) -> Substitution | None:
    """The measured through-plane tau of a region as PyBaMM's tortuosity factor (electrolyte).

    A measured ``tau < 1`` (random-walk noise in an almost open separator, D_eff > eps D is not
    possible) is raised to 1 with a warning; without a measured tau, a measured Bruggeman exponent
    gives ``tau = eps^(1 - b)``; with neither, the set's value is kept (None).
    """
    where = f"{path}: cell.{region}.tortuosity_electrolyte"
    tau = _number(block.get("tortuosity_electrolyte"), where)
    source = where
    if tau is None:
        b = _number(block.get("bruggeman"), f"{path}: cell.{region}.bruggeman")
        eps = _number(block.get("electrolyte_volume_fraction"), f"{path}: cell.{region}")
        if b is None or eps is None:
            return None
        tau, source = tortuosity_from_bruggeman(eps, b), f"{path}: eps^(1-b) from cell.{region}.bruggeman"
    if not tau > 0.0:
        raise InputError(f"{where}: tortuosity must be > 0, got {tau}")
    if tau < 1.0:
        log.warning("%s = %.4g < 1 (not physical; walk noise): using 1", where, tau)
        tau, source = 1.0, f"{where} (measured {tau:.4g} < 1, raised to 1)"
    return Substitution(_TORTUOSITY[region], tau, source)


def add_tortuosity_equivalents(pv, names=None) -> list[Substitution]:
    """Add (in place) the tortuosity factors equivalent to ``pv``'s Bruggeman exponents.

    Args:
        pv: ``pybamm.ParameterValues`` (porosities as they are now).
        names: which of :data:`TORTUOSITY_EQUIVALENTS` (default all).

    Returns:
        one derived :class:`Substitution` per parameter set.
    """
    out = []
    for name in names if names is not None else TORTUOSITY_EQUIVALENTS:
        eps_name, b_name, solid = TORTUOSITY_EQUIVALENTS[name]
        eps = float(pv[eps_name])
        tau = tortuosity_from_bruggeman(1.0 - eps if solid else eps, float(pv[b_name]))
        pv.update({name: tau}, check_already_exists=False)
        out.append(Substitution(name, tau, f"derived: (phase fraction)^(1-b) from {b_name!r} and {eps_name!r}"))
    return out


# -- which measured through-plane tau PyBaMM may trust (docs/cellsim.md, "Trusted tortuosity") ----------
# A region's tau stands in for the parameter set's only when the walk converged, the region percolates
# along z, and the value is plausible: tau_z at most MAX_TAU_RATIO x the region's in-plane tau (an
# electrode's through-plane/in-plane anisotropy is below ~2; a blocked interface slice gives 10+), or,
# without an in-plane value, at most MAX_TAU_RATIO x the Bruggeman tau eps^-1/2 of its electrolyte
# fraction; and within TAUFACTOR_TOLERANCE of TauFactor's solve of the same slab where one is recorded.
# Otherwise the set's value is kept and a warning is recorded (sweep.json "microstructure_warnings").
MAX_TAU_RATIO = 3.0
TAUFACTOR_TOLERANCE = 0.10


def untrusted_tortuosity(block: dict[str, Any], where: str) -> str | None:
    """Why the through-plane tau of a ``cell.<region>`` block must not reach PyBaMM, or None when it may.

    A block without a measured tau (and without a measured Bruggeman exponent) is untrusted too: the
    set's transport is kept, and the caller records why.
    """
    tau = _number(block.get("tortuosity_electrolyte"), f"{where}.tortuosity_electrolyte")
    if tau is None:
        if block.get("bruggeman") is not None or block.get("bruggeman_flag"):
            return None  # an exponent measured without a tau (older files), or flagged undetermined
        why = block.get("flag") or "not measured"
        return f"no through-plane tortuosity ({why})"
    if block.get("tortuosity_converged") is False:
        std = block.get("tortuosity_electrolyte_std")
        return f"through-plane tau {tau:.4g}" + (f" +/- {std:.2g}" if isinstance(std, (int, float)) else "") + \
            " did not converge (random walk budget spent)"
    inplane = _number(block.get("tortuosity_in_plane"), f"{where}.tortuosity_in_plane")
    eps = _number(block.get("electrolyte_volume_fraction"), f"{where}.electrolyte_volume_fraction")
    if inplane is not None and tau > MAX_TAU_RATIO * inplane:
        return (f"through-plane tau {tau:.4g} > {MAX_TAU_RATIO:g} x the in-plane tau {inplane:.4g} "
                "(implausible: a blocked interface slice?)")
    if inplane is None and eps is not None and 0 < eps <= 1 and tau > MAX_TAU_RATIO * eps ** -0.5:
        return (f"through-plane tau {tau:.4g} > {MAX_TAU_RATIO:g} x the Bruggeman tau eps^-1/2 = "
                f"{eps ** -0.5:.4g} of eps = {eps:.4g} (implausible)")
    ref = _number(block.get("tortuosity_taufactor"), f"{where}.tortuosity_taufactor")
    if ref is not None and ref > 0 and abs(tau / ref - 1) > TAUFACTOR_TOLERANCE:
        return (f"through-plane tau {tau:.4g} differs from TauFactor's {ref:.4g} on the same slab by "
                f"{100 * (tau / ref - 1):+.0f} % (> {100 * TAUFACTOR_TOLERANCE:.0f} %)")
    return None


def read_microstructure(path: str) -> dict[str, Any]:
    """Read ``microstructure.json`` and check its schema and ``cell`` block."""
    ms = read_json(path, "microstructure file", schema=MICROSTRUCTURE_SCHEMA)
    if not isinstance(ms.get("cell"), dict):
        raise InputError(f"{path}: no 'cell' block (the microstructure stage writes it)")
    return ms


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected a number or null, got {value!r}") from None
    if not math.isfinite(x):
        raise InputError(f"{where}: not finite ({value!r})")
    return x


def microstructure_substitutions(ms: dict[str, Any], path: str = "microstructure.json",
                                 transport: str = "bruggeman", warnings: list[str] | None = None
                                 ) -> list[Substitution]:
    """The PyBaMM parameters the measured cell geometry replaces (unmeasured values are skipped).

    A region's through-plane tau (and the Bruggeman exponent from it) is used only when
    :func:`untrusted_tortuosity` finds nothing wrong; otherwise, and for a missing region, the
    parameter set keeps its value and a one-line reason is logged as a WARNING and appended to
    ``warnings`` (cellsim records them in ``sweep.json`` as ``microstructure_warnings``).

    Args:
        ms: the parsed ``microstructure.json`` (schema ``batterytwin.microstructure/1``).
        path: shown in messages and recorded as the source of each substitution.
        transport: ``"bruggeman"`` (measured tau -> Bruggeman exponent) or
            ``"tortuosity_factor"`` (measured tau itself, PyBaMM's ``"transport efficiency":
            "tortuosity factor"``; see :func:`_tortuosity_substitution`).

    Returns:
        substitutions in a fixed order (positive electrode, then separator).
    """
    cell = ms["cell"]
    subs: list[Substitution] = []
    warned = warnings if warnings is not None else []

    def warn(message: str) -> None:
        log.warning("%s", message)
        warned.append(message)

    for region, table in (("positive_electrode", _POSITIVE), ("separator", _SEPARATOR)):
        block = cell.get(region)
        if block is None:
            why = cell.get("separator_flag" if region == "separator" else "flag")
            warn(f"{path}: cell.{region} missing" + (f" ({why})" if why else "")
                 + ": keeping the parameter set's values")
            continue
        if not isinstance(block, dict):
            raise InputError(f"{path}: cell.{region} must be an object")
        for key, name, scale in table:
            where = f"{path}: cell.{region}.{key}"
            x = _number(block.get(key), where)
            if x is None:
                log.info("%s not measured (null): keeping the parameter set's %r", where, name)
                continue
            if key.endswith("fraction") and not (0.0 < x < 1.0 or (region == "separator" and x == 1.0)):
                raise InputError(f"{where}: a volume fraction must be in (0, 1), got {x}")
            if key.endswith("_um") and not LENGTH_RANGE_UM[0] <= x <= LENGTH_RANGE_UM[1]:
                raise InputError(f"{where}: {x:g} micrometres is outside the plausible range {LENGTH_RANGE_UM[0]:g}.."
                                 f"{LENGTH_RANGE_UM[1]:g} um (check the labels' voxel_size_um)")
            subs.append(Substitution(name, x / scale, f"{path}: cell.{region}.{key}"))
        problem = untrusted_tortuosity(block, f"{path}: cell.{region}")
        if problem is not None:
            kept = _TORTUOSITY[region] if transport == "tortuosity_factor" else _BRUGGEMAN[region]
            warn(f"{path}: cell.{region}: {problem}: keeping the parameter set's {kept!r}")
            continue
        if transport == "tortuosity_factor":
            sub = _tortuosity_substitution(block, region, path)
            if sub is not None:
                subs.append(sub)
            continue
        b = _number(block.get("bruggeman"), f"{path}: cell.{region}.bruggeman")
        source = f"{path}: cell.{region}.bruggeman"
        if b is None and block.get("bruggeman_flag"):
            # the microstructure stage found b undetermined (eps near 1): keep the set's value
            log.info("%s: cell.%s.bruggeman %s", path, region, block["bruggeman_flag"])
        elif b is None:  # derive it when eps and tau are there but b is not
            eps = _number(block.get("electrolyte_volume_fraction"), f"{path}: cell.{region}")
            tau = _number(block.get("tortuosity_electrolyte"), f"{path}: cell.{region}.tortuosity_electrolyte")
            if eps is not None and tau is not None:
                b = bruggeman(eps, tau)
                source = f"{path}: 1 - ln(tau)/ln(eps) from cell.{region}.tortuosity_electrolyte and electrolyte_volume_fraction"
                if b is None:
                    raise InputError(f"{source}: need 0 < eps < 1 and tau > 0, got eps={eps}, tau={tau}")
        if b is not None:
            if not 0.0 < b < 50.0:
                raise InputError(f"{source}: Bruggeman exponent {b} is outside (0, 50)")
            subs.append(Substitution(_BRUGGEMAN[region], b, source))
    return subs


def load_parameter_set(name: str):
    """A fresh ``pybamm.ParameterValues`` for a named set; unknown names raise InputError."""
    import pybamm

    available = sorted(pybamm.parameter_sets.keys())
    if name not in available:
        hint = difflib.get_close_matches(str(name), available, n=3)
        raise InputError(f"cellsim.parameter_set: unknown PyBaMM parameter set {name!r}"
                         + (f" (did you mean {', '.join(hint)}?)" if hint else f"; available: {', '.join(available)}"))
    return pybamm.ParameterValues(name)


def check_parameter_name(pv, name: str, where: str) -> None:
    """InputError naming ``where`` when ``name`` is not a parameter of the set ``pv``."""
    if name not in pv.keys():
        hint = difflib.get_close_matches(name, list(pv.keys()), n=3, cutoff=0.6)
        raise InputError(f"{where}: unknown PyBaMM parameter name {name!r}"
                         + (f" (did you mean {hint}?)" if hint else ""))


def _plain(value: Any) -> Any:
    """A JSON-friendly view of a parameter value (numbers stay numbers, functions by name)."""
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value.value)  # pybamm.Scalar
    except AttributeError:
        return getattr(value, "__name__", type(value).__name__)


def build_parameter_values(set_name: str, substitutions: list[Substitution],
                           overrides: dict[str, Any] | None = None, rescale_capacity: bool = True,
                           transport: str = "bruggeman"):
    """Parameter set + microstructure substitutions + config overrides (config wins).

    Args:
        set_name: PyBaMM parameter set, e.g. ``"OKane2022"`` or ``"Chen2020"``.
        substitutions: from :func:`microstructure_substitutions`.
        overrides: ``{PyBaMM name: number}`` from ``cellsim.parameters``.
        rescale_capacity: scale "Nominal cell capacity [A.h]" by the change in positive
            thickness x active fraction, so that C-rates stay relative to this cell.
        transport: ``"tortuosity_factor"`` adds the five tortuosity factors PyBaMM's
            ``"transport efficiency": "tortuosity factor"`` needs: measured ones from
            ``substitutions``, the others equivalent to the set's Bruggeman exponents at the
            final porosities (:func:`add_tortuosity_equivalents`), all recorded.

    Returns:
        ``(pybamm.ParameterValues, [Substitution, ...])`` with ``old`` filled in.
    """
    pv = load_parameter_set(set_name)
    if transport not in TRANSPORTS:
        raise InputError(f"cellsim.transport: one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if transport == "tortuosity_factor":
        add_tortuosity_equivalents(pv)  # so that names check and "old" values exist
    applied: list[Substitution] = []
    for s in substitutions:
        check_parameter_name(pv, s.name, s.source)
        s.old = _plain(pv[s.name])
        applied.append(s)
    if rescale_capacity:
        new = {s.name: s.new for s in applied}
        L, f = "Positive electrode thickness [m]", "Positive electrode active material volume fraction"
        if L in new or f in new:
            ratio = (new.get(L, pv[L]) / pv[L]) * (new.get(f, pv[f]) / pv[f])
            old_cap = float(pv[NOMINAL_CAPACITY])
            applied.append(Substitution(NOMINAL_CAPACITY, old_cap * ratio,
                                        "derived: x (thickness x active fraction) ratio of the positive electrode",
                                        old_cap))
    for name, value in (overrides or {}).items():
        check_parameter_name(pv, name, "cellsim.parameters")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"cellsim.parameters[{name!r}]: expected a number, got {value!r}")
        applied.append(Substitution(name, float(value), "config: cellsim.parameters", _plain(pv[name])))
    for s in applied:
        log.info("parameter %r: %s -> %s (%s)", s.name, s.old, s.new, s.source)
        pv[s.name] = s.new
    if transport == "tortuosity_factor":  # the unmeasured ones follow the final porosities
        given = {s.name for s in applied}
        derived = add_tortuosity_equivalents(pv, [n for n in TORTUOSITY_EQUIVALENTS if n not in given])
        applied.extend(derived)
    return pv, applied


LITHIUM_METAL_SET = "Xu2019"  # PyBaMM's lithium-metal half-cell set (Xu et al., 2019)


def add_lithium_metal_counter_electrode(pv) -> list[Substitution]:
    """Add (in place) the lithium-metal counter-electrode parameters ``pv`` lacks, from Xu2019.

    PyBaMM's ``"working electrode": "positive"`` models need e.g. "Exchange-current density for
    lithium metal electrode [A.m-2]", which full-cell sets such as OKane2022 do not carry.

    Returns:
        one :class:`Substitution` per added parameter (``old`` None).
    """
    import pybamm

    ref = pybamm.ParameterValues(LITHIUM_METAL_SET)
    added = []
    for name in ref.keys():
        if name not in pv.keys() and "lithium metal" in name:
            pv.update({name: ref[name]}, check_already_exists=False)
            added.append(Substitution(name, _plain(ref[name]),
                                      f"{LITHIUM_METAL_SET} (lithium-metal counter electrode)"))
    return added


def charge_half_cell(pv, upper_voltage_V: float | None = None) -> Substitution:
    """Start a lithium-metal half cell charged: positive stoichiometry at the upper cut-off vs Li.

    A full-cell set's initial positive concentration is its charged state *against graphite*;
    against lithium metal that is above the upper cut-off, and the first discharge would deliver
    lithium the later charges (to the cut-off) never put back, a cycle-1 "fade" artefact. Uses
    PyBaMM's ``get_initial_stoichiometry_half_cell(1, pv)`` (SOC 1 = the upper cut-off).
    """
    import pybamm

    name = "Initial concentration in positive electrode [mol.m-3]"
    ref = pv.copy()
    if upper_voltage_V is not None:
        ref["Upper voltage cut-off [V]"] = float(upper_voltage_V)
    y = pybamm.lithium_ion.get_initial_stoichiometry_half_cell(1.0, ref, options={"working electrode": "positive"})
    y = float(y["x"] if isinstance(y, dict) else y)  # 26.10 returns {"x": stoichiometry}
    c_max = float(pv["Maximum concentration in positive electrode [mol.m-3]"])
    sub = Substitution(name, y * c_max, "derived: charged to the upper cut-off vs Li "
                       "(pybamm get_initial_stoichiometry_half_cell(1))", _plain(pv[name]))
    pv[name] = sub.new
    return sub

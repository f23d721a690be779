"""The cell PyBaMM simulates: parameter values from a parsed ``microstructure.json`` (the measured
substitutions, the cell form, the model options they imply and the N/P balance), shared by the
ageing sweep (:mod:`.driver`) and the rate experiment (:mod:`.rate`)."""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .balance import NEG_THICKNESS, balance_negative
from .params import (Substitution, add_lithium_metal_counter_electrode, build_parameter_values,
                     charge_half_cell, microstructure_substitutions)


LITHIUM_METAL_CLASSES = ("lithium_metal", "lithium", "li_metal")


def resolve_cell_form(setting: str, ms: dict[str, Any]) -> tuple[str, str]:
    """``(form, reason)``: ``full_cell`` or ``lithium_metal`` from ``cellsim.cell_form``.

    ``auto`` picks ``lithium_metal`` when a class of the sample (``microstructure.json``
    ``classes``) is a lithium-metal phase (``lithium_metal``), else ``full_cell``.
    """
    if setting != "auto":
        return setting, f"cellsim.cell_form: {setting}"
    classes = [str(c) for c in (ms.get("classes") or {}).values()]
    found = [c for c in classes if c in LITHIUM_METAL_CLASSES]
    if found:
        return "lithium_metal", f"auto: class {found[0]!r} in microstructure.json classes"
    return "full_cell", f"auto: no lithium-metal class among {classes}"


def _model_options(cfg: dict[str, Any], form: str) -> dict[str, Any]:
    """``model_options`` plus what ``cell_form`` and ``transport`` imply (conflicts rejected)."""
    options = dict(cfg["model_options"])
    implied = {}
    if form == "lithium_metal":
        implied["working electrode"] = "positive"
    if cfg["transport"] == "tortuosity_factor":
        implied["transport efficiency"] = "tortuosity factor"
    for key, value in implied.items():
        if key in options and options[key] != value:
            raise InputError(f"cellsim.model_options[{key!r}] = {options[key]!r} contradicts "
                             f"cell_form/transport (which need {value!r})")
        options[key] = value
    return options


def _cell_balance(cfg: dict[str, Any], form: str, pv, ms: dict[str, Any], applied) -> dict[str, Any]:
    """Balance the negative electrode of a full cell (:mod:`.balance`); record it in ``applied``."""
    if form == "lithium_metal":
        return {"n_to_p_after": None, "note": "lithium-metal counter electrode: an unlimited lithium "
                "reservoir, the measured cathode limits capacity (no N/P balance)"}
    b = cfg["balance"]
    thickness = (ms["cell"].get("positive_electrode") or {}).get("thickness_um")
    old = float(pv[NEG_THICKNESS])
    rec = balance_negative(pv, cfg["parameter_set"], b["n_to_p"], b["enabled"], tuple(b["range"]),
                           b["allow_outside_range"], thickness_um=thickness,
                           locked=NEG_THICKNESS in cfg["parameters"])
    if rec["rescaled"]:
        applied.append(Substitution(NEG_THICKNESS, float(pv[NEG_THICKNESS]),
                                    f"derived: balance to N/P {rec['target']:.4f} (was {rec['n_to_p_before']:.4f})",
                                    old))
    return rec


def cell_parameters(ms: dict[str, Any], source: str, cfg: dict[str, Any],
                    overrides: dict[str, Any] | None = None, measured: bool = True):
    """The cell's parameter values from a parsed ``microstructure.json`` (all ranks).

    Args:
        ms: the parsed microstructure (its ``classes`` pick the cell form, its ``cell`` block the
            substitutions); ``measured`` False keeps the parameter set's own electrode.
        source: shown in messages and recorded as the source of each substitution.
        overrides: ``{PyBaMM name: number}`` applied last (default ``cellsim.parameters``).

    Returns:
        ``(pv, applied, options, cell)``: parameter values, substitutions, the model options
        ``cell_form``/``transport`` imply, and the ``cell`` record (form, transport, balance).
    """
    form, reason = resolve_cell_form(cfg["cell_form"], ms)
    options = _model_options(cfg, form)
    ms_warnings: list[str] = []  # untrusted tau, missing regions: recorded in sweep.zarr/sweep.json
    subs = microstructure_substitutions(ms, source, cfg["transport"], ms_warnings) if measured else []
    pv, applied = build_parameter_values(cfg["parameter_set"], subs,
                                         dict(cfg["parameters"]) if overrides is None else overrides,
                                         rescale_capacity=bool(cfg["rescale_nominal_capacity"]),
                                         transport=cfg["transport"])
    if form == "lithium_metal":
        applied.extend(add_lithium_metal_counter_electrode(pv))
        applied.append(charge_half_cell(pv, cfg["protocol"]["upper_voltage_V"]))
    cell = {"cell_form": form, "cell_form_reason": reason, "transport": cfg["transport"],
            "balance": _cell_balance(cfg, form, pv, ms if measured else {"cell": {}}, applied),
            "microstructure_warnings": ms_warnings}
    return pv, applied, options, cell

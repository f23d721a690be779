"""The ``cellsim`` config section (PyBaMM sweeps): the only place its defaults live (see docs/cellsim.md)."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from ..config import Section

MODELS = ("SPM", "SPMe", "DFN")
CELL_FORMS = ("full_cell", "lithium_metal", "auto")
TRANSPORTS = ("tortuosity_factor", "bruggeman")


class AxisRangeSettings(Section):
    """A Latin-hypercube range of one swept quantity."""

    low: float = Field(description="lower end")
    high: float = Field(description="upper end")
    scale: Literal["linear", "log"] = Field("linear", description="sampling scale")


Axis = Union[float, list[float], AxisRangeSettings]


class VoltageGridSettings(Section):
    """Voltage grid of the Q(V) curves stored per early cycle."""

    points: int = Field(64, ge=2, description="points of the voltage grid")
    low_V: float | None = Field(None, description="lower end (null: the protocol's lower cut-off)")
    high_V: float | None = Field(None, description="upper end (null: the protocol's upper cut-off)")


class ProtocolSettings(Section):
    """One cycle: CC discharge, rest, CC-CV charge, rest."""

    rest_minutes: float = Field(5.0, ge=0, description="rest after charge and discharge")
    cv_cutoff_c_rate: float | None = Field(0.02, gt=0, description="CV phase ends below this C-rate (null: no CV)")
    lower_voltage_V: float | None = Field(None, description="discharge cut-off (null: the parameter set's)")
    upper_voltage_V: float | None = Field(None, description="charge cut-off (null: the parameter set's)")


class SweepSettings(Section):
    """The swept conditions: a grid or a Latin hypercube over operating conditions and parameters."""

    method: Literal["grid", "lhs"] = Field("lhs", description="grid: every combination; lhs: Latin hypercube")
    n_samples: int = Field(8, ge=1, description="lhs: number of conditions")
    seed: int = Field(0, ge=0, description="lhs: seed of the design")
    axes: dict[str, Axis] = Field(
        {"discharge_c_rate": [0.5, 2.0], "charge_c_rate": [0.3, 1.0], "ambient_temperature_C": [15.0, 40.0],
         "SEI kinetic rate constant [m.s-1]": AxisRangeSettings(low=1e-15, high=1e-13, scale="log")},
        description="discharge_c_rate, charge_c_rate, ambient_temperature_C, depth_of_discharge and any PyBaMM "
        "parameter name: a number (fixed), a list (grid values, or [low, high] for lhs) or {low, high, scale}")


class BalanceSettings(Section):
    """Electrode balance when the measured positive electrode replaces the parameter set's."""

    enabled: bool = Field(True, description="rescale the negative electrode thickness to the N/P target")
    n_to_p: float | None = Field(None, gt=0, description="N/P capacity ratio to meet; null: the parameter set's")
    range: list[float] = Field([1.0, 2.0], min_length=2, max_length=2,
                               description="sane N/P range [low, high], checked on the final cell")
    allow_outside_range: bool = Field(False, description="an N/P outside range is a warning instead of an error")

    @field_validator("range")
    @classmethod
    def _ordered(cls, value: list[float]) -> list[float]:
        if not 0 < value[0] < value[1]:
            raise ValueError("must be [low, high] with 0 < low < high")
        return value


PLATING = ("irreversible", "reversible", "partially reversible")


def _positive_rates(value: list[float]) -> list[float]:
    if any(not (c > 0 and c < 1e3) for c in value):
        raise ValueError("C-rates must be in (0, 1000)")
    return value


class PerturbationSettings(Section):
    """Factors on the measured positive electrode for the rate experiment's sensitivity (1.0 is
    the measured electrode itself, always run)."""

    tortuosity: list[float] = Field([0.8, 1.2], description="factors on the measured tau (held: porosity)")
    porosity: list[float] = Field([0.9, 1.1], description="factors on the measured electrolyte volume "
                                  "fraction (held: tau)")
    thickness: list[float] = Field([0.9, 1.1], description="factors on the measured thickness (the "
                                   "negative electrode is balanced to it like the measured one)")

    @field_validator("tortuosity", "porosity", "thickness")
    @classmethod
    def _factors(cls, value: list[float]) -> list[float]:
        if any(not f > 0 for f in value):
            raise ValueError("factors must be > 0")
        return value


class RateCapabilitySettings(Section):
    """Rate capability (discharge capacity vs C-rate) and fast-charge lithium plating of the
    fresh cell, for the measured electrode, the parameter set's own and perturbations of the
    measured tau, porosity and thickness (docs/cellsim.md)."""

    enabled: bool = Field(False, description="run the rate experiment (results: sweep.json rate_capability)")
    model: Literal[MODELS] = Field("DFN", description="PyBaMM model (DFN: valid at high C-rates)")
    model_options: dict[str, Any] = Field({}, description="PyBaMM options of the fresh cell (not the sweep's "
                                          "ageing ones; cell_form/transport add theirs, the charges 'lithium plating')")
    c_rates: list[float] = Field([0.1, 0.5, 1.0, 2.0, 3.0, 5.0], min_length=1,
                                 description="constant-current discharges from SOC 1 to the lower cut-off")
    charge_c_rates: list[float] = Field([0.5, 1.0, 2.0, 3.0], description="CC-CV charges from SOC 0 "
                                        "with lithium plating (empty: no plating runs)")
    plating: Literal[PLATING] = Field("irreversible", description="PyBaMM option 'lithium plating' of the "
                                      "charges (plating parameters: OKane2022)")
    cv_cutoff_c_rate: float = Field(0.05, gt=0, description="CV phase of the charges ends below this C-rate")
    sensitivity_c_rate: float = Field(3.0, gt=0, description="C-rate of the sensitivity table (added to "
                                      "c_rates if missing)")
    perturbations: PerturbationSettings = Field(default_factory=PerturbationSettings, description="sensitivity factors")
    var_pts: dict[str, int] | None = Field(None, description="PyBaMM mesh points (null: PyBaMM's defaults; "
                                           "the builds, not the mesh, dominate the cost)")

    _rates = field_validator("c_rates", "charge_c_rates")(_positive_rates)


class CellsimConfig(Section):
    """The ``cellsim`` section."""

    parameter_set: str = Field("OKane2022", description="PyBaMM parameter set (OKane2022 carries degradation "
                               "parameters; Chen2020 also works)")
    model: Literal[MODELS] = Field("SPMe", description="PyBaMM lithium-ion model")
    model_options: dict[str, Any] = Field({"SEI": "ec reaction limited"},
                                          description="PyBaMM model options, e.g. {SEI: ec reaction limited}")
    parameters: dict[str, float] = Field({}, description="overrides by PyBaMM parameter name (applied after the "
                                         "microstructure)")
    rescale_nominal_capacity: bool = Field(True, description="rescale the nominal capacity to the measured geometry")
    cell_form: Literal[CELL_FORMS] = Field("full_cell", description="full_cell: graphite full cell with the measured "
                                           "cathode; lithium_metal: the measured cathode against lithium metal "
                                           "(PyBaMM working electrode: positive); auto: from the sample's classes")
    transport: Literal[TRANSPORTS] = Field("tortuosity_factor", description="tortuosity_factor: the measured tau "
                                           "goes to PyBaMM directly; bruggeman: as a Bruggeman exponent")
    balance: BalanceSettings = Field(default_factory=BalanceSettings, description="electrode balance (N/P)")
    n_cycles: int = Field(10, ge=1, description="cycles per condition")
    n_early: int = Field(3, ge=0, description="early cycles whose Q(V) curves are stored (capped at n_cycles)")
    voltage_grid: VoltageGridSettings = Field(default_factory=VoltageGridSettings, description="Q(V) grid")
    protocol: ProtocolSettings = Field(default_factory=ProtocolSettings, description="cycling protocol")
    sweep: SweepSettings = Field(default_factory=SweepSettings, description="swept conditions")
    time_limit_s: float | None = Field(1800, gt=0, description="wall-time limit per condition (null: none)")
    stop_below_soh_percent: float | None = Field(None, gt=0, le=100, description="stop a condition below this SOH")
    solver: dict[str, Any] = Field({}, description="keyword arguments of pybamm.IDAKLUSolver: rtol, atol, options")
    compile: bool = Field(False, description="compile the model's casadi functions to C once per parameter set "
                          "(PyBaMM IDAKLU option compile: gcc -O3, cached in PyBaMM's AOT cache; ~2x faster "
                          "cycling for a one-off compile of tens of seconds; casadi's interpreter if no compiler)")
    var_pts: dict[str, int] | None = Field(None, description="PyBaMM mesh points per spatial variable")
    rate_capability: RateCapabilitySettings = Field(default_factory=RateCapabilitySettings,
                                            description="rate capability and fast-charge plating experiment")

    @model_validator(mode="before")
    @classmethod
    def _no_options(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model_options" in data and data["model_options"] is None:
            data = {**data, "model_options": {}}
        return data

    @model_validator(mode="after")
    def _early_within_run(self) -> "CellsimConfig":
        if self.n_early > self.n_cycles:
            self.__dict__["n_early"] = self.n_cycles  # capped (no re-validation loop)
        return self

"""The ``twin`` config section (hybrid digital twin of real cells): the only place its defaults live.

See ``docs/twin.md`` for the models behind the settings.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ..config import Name, Section
from ..cycling.life import DEFAULT_THRESHOLD


class EmpiricalSettings(Section):
    """Semi-empirical fade ``SOH = 100 q0 (1 - a S (N/1000)^z)`` (docs/twin.md)."""

    z_prior: float = Field(1.0, gt=0, description="centre of the Gaussian prior on the exponent z (MAP fit)")
    z_prior_sd: float = Field(0.5, gt=0, description="width of the prior on z (large: plain least squares)")
    z_bounds: list[Annotated[float, Field(gt=0)]] = Field([0.3, 4.0], min_length=2, max_length=2,
                                                          description="bounds of the exponent z")
    stress: bool = Field(True, description="scale a by the Xu et al. (2016) temperature stress factor of the "
                         "cell (DiffBatt aux temperature; 25 C when unknown)")


class PybammSettings(Section):
    """PyBaMM SPM + SEI physics: a surrogate of SOH vs cycle over the SEI rate constant (docs/twin.md)."""

    parameter_set: str = Field("OKane2022", description="PyBaMM parameter set")
    sei: str = Field("ec reaction limited", description="PyBaMM SEI option")
    c_rate: float = Field(1.0, gt=0, le=10, description="CC discharge and charge C-rate of the simulated cycles")
    simulated_cycles: int = Field(40, ge=4, le=500, description="PyBaMM cycles per surrogate run")
    cycles_per_simulated_cycle: float = Field(64.0, ge=1, description="real cycles one simulated cycle stands for "
                                              "(SEI kinetic constant and EC diffusivity scaled by it)")
    log10_k_range: list[float] = Field([-17.0, -13.0], min_length=2, max_length=2,
                                       description="log10 of the SEI kinetic rate constant [m/s] covered")
    grid_points: int = Field(9, ge=3, le=64, description="PyBaMM runs of the surrogate over log10 k")


class CorrectionSettings(Section):
    """The learned correction: an MLP on the physics residual, trained across training cells."""

    hidden: list[Annotated[int, Field(ge=1)]] = Field([32, 32], min_length=1, description="hidden widths")
    steps: int = Field(1500, ge=1, description="optimiser steps")
    batch_size: int = Field(256, ge=1, description="points per step")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate")
    warmup: int = Field(50, ge=0, description="learning-rate warm-up steps")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    ema_decay: float = Field(0.99, ge=0, le=1, description="EMA decay of the used weights")
    seed: int = Field(0, ge=0, description="seed of weights and batches")
    threads: int = Field(1, ge=0, description="torch CPU threads (0: the harness policy; the network is tiny, "
                         "one thread is fastest)")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints (when a checkpoint is given)")


class SeriesSettings(Section):
    """The twin over time: refits of one cell as more of its cycles are observed."""

    enabled: bool = Field(True, description="compute the time series of one cell")
    cell: int = Field(0, ge=0, description="index of the cell (among the evaluated cells)")
    windows: int = Field(5, ge=1, le=50, description="observation windows (fit_cycles, then evenly up to the record)")


class TwinConfig(Section):
    """The ``twin`` section."""

    enabled: bool = Field(True, description="run the twin on the real-data evaluations")
    data_dir: str | None = Field(None, description="directory of the DiffBatt .npz splits (null: "
                                 "degradation.real_data.dir)")
    evaluations: list[Name] | None = Field(
        None, description="names of degradation.real_data.evaluations to run (null: all)")
    physics: Literal["empirical", "pybamm"] = Field("empirical", description="reduced ageing model fitted per cell")
    fit_cycles: int = Field(100, ge=2, description="early cycles observed and fitted per cell")
    min_fit_points: int = Field(4, ge=3, description="curve points the fit needs inside fit_cycles (fewer: "
                                "the cell is excluded and recorded)")
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, lt=100, description="SOH percent of the threshold end-of-life "
                             "rule (equal to degradation's real-data sample.threshold: checked in the workflow config)")
    eol_rule: Literal["end_of_record", "threshold"] | None = Field(
        None, description="end-of-life rule; null: end_of_record for MATR splits, threshold otherwise")
    horizon_cycles: int | None = Field(None, ge=1, description="forecast horizon (null: the curve length)")
    level: float = Field(0.9, gt=0, lt=1, description="central interval level")
    calibration_fraction: float = Field(0.25, gt=0, lt=1, description="training cells held out for split "
                                        "conformal calibration")
    param_draws: int = Field(64, ge=2, le=4096, description="parameter draws from the fit covariance per cell")
    correction_enabled: bool = Field(True, description="train and apply the learned correction")
    seed: int = Field(0, ge=0, description="seed of the calibration split and the parameter draws")
    folds: int = Field(5, ge=2, description="cross-validation folds when no test split is given")
    empirical: EmpiricalSettings = Field(default_factory=EmpiricalSettings, description="semi-empirical model")
    pybamm: PybammSettings = Field(default_factory=PybammSettings, description="PyBaMM SPM+SEI model")
    correction: CorrectionSettings = Field(default_factory=CorrectionSettings, description="learned correction")
    series: SeriesSettings = Field(default_factory=SeriesSettings, description="time series of one cell")

    @model_validator(mode="after")
    def _ranges(self) -> "TwinConfig":
        lo, hi = self.empirical.z_bounds
        if not lo < hi or not lo <= self.empirical.z_prior <= hi:
            raise ValueError("empirical: z_bounds must be increasing and hold z_prior")
        a, b = self.pybamm.log10_k_range
        if not a < b:
            raise ValueError("pybamm.log10_k_range must be increasing")
        return self

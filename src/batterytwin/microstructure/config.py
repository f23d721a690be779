"""The ``microstructure`` config section: the only place its defaults live (see docs/microstructure.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config import Section


class WalkSettings(Section):
    """One random-walk tortuosity run (the ``microstructure.walk`` sub-section)."""

    model: Literal["lattice", "offlattice"] = Field("lattice", description="lattice (pytrax-like, rejection of "
                                                    "moves into other phases) or offlattice (specular reflection)")
    boundary: Literal["mirror", "periodic"] = Field("mirror", description="outer faces: mirrored tiling or periodic")
    n_walkers: int = Field(16384, ge=1, description="walkers in total (rounded up to a multiple of n_batches)")
    n_steps: int = Field(4000, ge=4, description="steps per walker")
    n_records: int = Field(40, ge=4, description="MSD records (evenly spaced in time) after t = 0")
    n_batches: int = Field(16, ge=1, description="walker batches: unit of MPI work, checkpointing and bootstrap")
    step_length: float = Field(0.5, gt=0, le=1, description="off-lattice step, in smallest voxel edges")
    fit_start: float = Field(0.5, ge=0, le=0.9, description="the Einstein fit uses t in [fit_start*T, T]")
    n_bootstrap: int = Field(400, ge=1, description="bootstrap resamples for the uncertainties")
    linear_tolerance: float = Field(0.05, ge=0, description="relative slope change between the fit window's "
                                    "halves that still counts as linear")
    max_box_traversals: float = Field(20.0, gt=0, description="refuse walks whose free-space RMS displacement "
                                      "exceeds this many box lengths")
    seed: int = Field(0, ge=0, description="seed of every random choice (walker starts and steps)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="walk device")
    backend: Literal["auto", "c", "torch", "triton"] = Field("auto", description="auto: C kernel on CPU, Triton "
                                                            "(lattice) or torch on GPU")

    @model_validator(mode="after")
    def _records(self) -> "WalkSettings":
        if self.n_steps < self.n_records:
            raise ValueError(f"needs n_steps >= n_records, got {self.n_steps} < {self.n_records}")
        return self


class MicrostructureConfig(Section):
    """The ``microstructure`` section."""

    phases: list[str] = Field(["pore", "solid_electrolyte"], min_length=1, description="transport phases (class "
                              "names of labels.zarr) whose tortuosity is measured over the whole volume")
    electrolyte_phase: str = Field("solid_electrolyte", description="electrolyte class of the cell block")
    active_phase: str = Field("cathode_active", description="marks the positive electrode (z slices where present)")
    anode_phase: str = Field("lithium_metal", description="marks the anode (the separator ends there)")
    redeposited_phase: str = Field("redeposited_lithium", description="redeposited lithium (dendrites, agglomerates)")
    layer_min_fraction: float = Field(0.01, ge=0, le=1, description="a z slice belongs to a layer when the class "
                                      "covers at least this fraction of it")
    surface_area: bool = Field(True, description="interface areas by marching cubes")
    absent_phase: Literal["error", "skip"] = Field("error", description="a configured phase with no voxel: stop "
                                                   "with an error, or record tau null with a flag")
    walk: WalkSettings = Field(default_factory=WalkSettings, description="random walk")

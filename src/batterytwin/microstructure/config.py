"""The ``microstructure`` config section: the only place its defaults live (see docs/microstructure.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictBool, model_validator

from ..config import Section


class WalkSettings(Section):
    """One random-walk tortuosity run (the ``microstructure.walk`` sub-section).

    The walk is adaptive (:func:`~batterytwin.microstructure.tortuosity.converge`): it starts with
    ``n_walkers`` walkers for ``n_steps`` steps, then extends the steps while tau drifts between the
    last two fit windows or the walkers have not yet travelled ``min_travel`` structure periods, and
    adds walker batches while tau's bootstrap error is above ``target_rel_std``, within ``max_steps``
    and ``max_walkers``. ``max_steps = n_steps`` and ``max_walkers = n_walkers`` give a fixed walk
    (still assessed).
    """

    model: Literal["lattice", "offlattice"] = Field("lattice", description="lattice (pytrax-like, rejection of "
                                                    "moves into other phases) or offlattice (specular reflection)")
    boundary: Literal["mirror", "periodic"] = Field("mirror", description="outer faces: mirrored tiling or periodic")
    n_walkers: int = Field(16384, ge=1, description="walkers of the first round (rounded up to whole batches)")
    n_steps: int = Field(2000, ge=4, description="steps of the first block (extended when tau drifts)")
    n_records: int = Field(40, ge=4, description="MSD records per n_steps steps (the spacing is kept when extending)")
    n_batches: int = Field(16, ge=1, description="walker batches of the first round: unit of MPI work, "
                           "checkpointing and bootstrap; walkers are added in batches of the same size")
    max_steps: int = Field(64000, ge=1, description="step budget (below n_steps: the first block only); also "
                           "capped by max_box_traversals")
    max_walkers: int = Field(131072, ge=1, description="walker budget (below n_walkers: no growth)")
    target_rel_std: float = Field(0.01, gt=0, lt=1, description="bootstrap relative error of tau to reach on "
                                  "every percolating axis")
    drift_sigma: float = Field(2.5, gt=0, description="tau of the fit window and of the window before it agree "
                               "within this many bootstrap standard deviations of their difference")
    drift_floor: float = Field(0.005, ge=0, lt=1, description="relative drift always accepted")
    min_travel: float = Field(1.5, ge=0, description="RMS displacement at the fit window's start, in structure "
                              "periods (6 N / F: mean chord of the phase plus of the rest)")
    step_length: float = Field(0.5, gt=0, le=1, description="off-lattice step, in smallest voxel edges")
    fit_start: float = Field(0.5, ge=0.2, le=0.8, description="the Einstein fit uses t in [fit_start*T, T]")
    n_bootstrap: int = Field(400, ge=1, description="bootstrap resamples for the uncertainties")
    linear_tolerance: float = Field(0.05, ge=0, description="unused (the drift check replaced it); kept so that "
                                    "older configs load")
    max_box_traversals: float = Field(20.0, gt=0, description="the free-space RMS displacement may reach at most "
                                      "this many box lengths (caps the step budget)")
    seed: int = Field(0, ge=0, description="seed of every random choice (walker starts and steps)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="walk device")
    backend: Literal["auto", "c", "torch", "triton"] = Field("auto", description="auto: C kernel on CPU, Triton "
                                                            "(lattice) or torch on GPU")

    @model_validator(mode="after")
    def _records(self) -> "WalkSettings":
        if self.n_steps < self.n_records:
            raise ValueError(f"needs n_steps >= n_records, got {self.n_steps} < {self.n_records}")
        return self

    @property
    def per_batch(self) -> int:
        """Walkers per batch."""
        return -(-self.n_walkers // self.n_batches)


class MicrostructureConfig(Section):
    """The ``microstructure`` section."""

    phases: list[str] = Field(["pore", "solid_electrolyte"], min_length=1, description="transport phases (class "
                              "names of labels.zarr) whose tortuosity is measured over the whole volume")
    electrolyte_phase: str = Field("solid_electrolyte", description="electrolyte class of the cell block")
    active_phase: str = Field("cathode_active", description="marks the positive electrode (z slices where present)")
    anode_phase: str | None = Field("lithium_metal", description="marks the anode (the separator ends there); "
                                    "null for a scan without an anode (an electrode alone): no separator region")
    redeposited_phase: str = Field("redeposited_lithium", description="redeposited lithium (dendrites, agglomerates)")
    layer_min_fraction: float = Field(0.01, ge=0, le=1, description="a z slice belongs to a layer when the class "
                                      "covers at least this fraction of it")
    layer_relative_fraction: float = Field(0.3, ge=0, le=1, description="cell regions: a class's layer is the "
                                           "longest run of z slices where it covers at least this share of its "
                                           "largest slice fraction (and layer_min_fraction); stray voxels do not "
                                           "move a boundary")
    transport_trim_fraction: float = Field(0.5, ge=0, le=1, description="cell regions: boundary slices whose "
                                           "electrolyte fraction is below this share of the region's median are "
                                           "left out of the through-plane walk (0: keep all slices that hold any)")
    surface_area: bool = Field(True, description="interface areas by marching cubes")
    absent_phase: Literal["error", "skip"] = Field("error", description="a configured phase with no voxel: stop "
                                                   "with an error, or record tau null with a flag")
    crosscheck_taufactor: StrictBool = Field(False, description="also solve each whole-volume phase with TauFactor and "
                                       "record both taus side by side")
    crosscheck_max_voxels: int = Field(128 ** 3, ge=1, description="largest volume the TauFactor cross-check solves")
    walk: WalkSettings = Field(default_factory=WalkSettings, description="random walk")


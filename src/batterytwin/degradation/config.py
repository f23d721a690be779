"""The ``degradation`` config section (DiffBatt-style diffusion model): the only place its defaults live.

``train`` holds the model and training hyper-parameters (saved in every checkpoint), ``sample``
the sampling and scoring settings, ``real_data`` the evaluations on real cycling data.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ..config import Name, Section, validate_settings
from ..cycling.life import DEFAULT_THRESHOLD
from ..cycling.loaders import SHIPPED_DATA
from ..errors import InputError

Device = Literal["auto", "cpu", "cuda"]


class ModelTrainSettings(Section):
    """The model's and its training's hyper-parameters: what a model file saves (``degradation.train`` less the
    runtime settings of :class:`TrainSettings`)."""

    steps: int = Field(500, ge=1, description="optimiser steps (500: chosen by cross-validation on matr_1_train, docs/degradation.md)")
    batch_size: int = Field(32, ge=1, description="global batch (divided evenly over the ranks)")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    warmup: int = Field(100, ge=0, description="linear learning-rate warm-up steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="gradient-norm clip")
    p_uncond: float = Field(0.1, ge=0, lt=1, description="condition dropout for classifier-free guidance")
    ema_decay: float = Field(0.995, ge=0, le=1, description="EMA decay of the saved weights")
    seed: int = Field(0, ge=0, description="seed of weights, batches and noise")
    checkpoint_every: int = Field(250, ge=1, description="steps between checkpoints")
    timesteps: int = Field(1000, ge=2, description="diffusion steps T")
    schedule: Literal["cosine", "linear"] = Field("cosine", description="noise schedule")
    soh_center: float = Field(90.0, description="curve scaling: (SOH - center) / scale")
    soh_scale: float = Field(10.0, gt=0, description="curve scaling: (SOH - center) / scale")
    widths: list[Annotated[int, Field(ge=1)]] = Field([32, 64, 64], min_length=1, description="U-Net channels per level")
    attention: list[bool] = Field([False, True, True], min_length=1, description="self-attention per U-Net level")
    blocks: int = Field(1, ge=1, description="residual blocks per U-Net level")
    emb_dim: int = Field(128, ge=2, description="time/condition embedding width")
    cond_dim: int = Field(64, ge=1, description="transformer width of the condition encoder")
    cond_layers: int = Field(2, ge=1, description="transformer layers of the condition encoder")
    cond_heads: int = Field(4, ge=1, description="attention heads of the condition encoder")
    patch: int = Field(4, ge=1, description="curve points per U-Net input patch")
    rows_per_token: int = Field(5, ge=1, description="capacity-matrix rows per transformer token")
    variance_feature: bool = Field(
        True, description="add the variance baseline's log-variance feature (standardised) to the transformer's "
        "condition vector")
    representation: Literal["basis", "unet"] = Field(
        "basis", description="basis: diffusion over the PCA coefficients of the curves + log record length "
        "(smooth, monotone samples; an MLP denoiser); unet: over the curve points (1-D U-Net)")
    prediction: Literal["eps", "x0", "v"] = Field("eps", description="network target: noise, clean curve or v")
    basis_components: int = Field(8, ge=1, description="basis: principal components of the curves")
    monotone: bool = Field(True, description="basis: decoded curves never rise (running minimum)")
    mlp_width: int = Field(256, ge=8, description="basis: width of the MLP denoiser")
    mlp_blocks: int = Field(3, ge=1, description="basis: residual blocks of the MLP denoiser")
    calibration_fraction: float = Field(
        0.35, ge=0, lt=1, description="training cells held out of training to calibrate the life interval "
        "(split conformal); 0: raw sampled interval, not calibrated")
    calibration_min_cells: int = Field(
        9, ge=1, description="hold calibration cells out only if there are at least this many (9: the fewest "
        "that calibrate a 90 % interval); fewer: every cell trains and the raw sampled interval is used")

    @model_validator(mode="after")
    def _levels(self) -> "ModelTrainSettings":
        if len(self.widths) != len(self.attention):
            raise ValueError("'attention' needs one flag per entry of 'widths'")
        return self

    @classmethod
    def from_dict(cls, values: dict, where: str = "degradation.train") -> "ModelTrainSettings":
        """Validated settings (one-line InputError naming the key); keys of other runs are errors."""
        return validate_settings(cls, values, where)

    def check(self, world_size: int) -> None:
        """What depends on the run: the global batch is split evenly over the ranks."""
        if self.batch_size % world_size:
            raise InputError(f"degradation.train.batch_size: {self.batch_size} must be divisible by the number "
                             f"of ranks {world_size}")


class TrainSettings(ModelTrainSettings):
    """``degradation.train``: the model's hyper-parameters plus where this run trains."""

    threads: int = Field(0, ge=0, description="torch CPU threads per rank (0: OMP_NUM_THREADS, else "
                         "SLURM_CPUS_PER_TASK, else the node's cores shared by its ranks)")
    device: Device = Field("auto", description="torch device")


class LifeModelSettings(Section):
    """``degradation.sample.life_model``: the stack of :class:`batterytwin.cycling.life_model.LifeModel`.

    Its defaults live in ``cycling/life_model.py`` (null here: that default), so the stack is tuned in one
    place; names are checked against that module when ``predict-degradation`` starts.
    """

    members: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1, description="regressors of the stack, distinct names of "
        "batterytwin.cycling.life_model.AVAILABLE (variance, forest, extra_trees, boosting, ridge, residual, "
        "*_cycles variants); null: LifeModel's default (life_model.MEMBERS)")
    combine: str | None = Field(None, min_length=1, description="how the members' log lives are weighted, one of "
                                "life_model.COMBINE (mean, stack, shrunk); null: LifeModel's default")
    folds: int | None = Field(None, ge=2, description="cross-validation folds of the weights and of the "
                              "cross-conformal interval; null: LifeModel's default (5)")


class SampleSettings(Section):
    """Sampling, intervals and scoring of ``predict-degradation``."""

    predictor: Literal["stack", "diffusion"] = Field(
        "stack", description="the default RUL predictor, metrics entry 'model': stack (LifeModel, a cross-validated "
        "stack of regressors on the capacity matrix of the model file's training cells, cross-conformal interval; "
        "falls back to the diffusion model, with a stated reason, for model files without train.qmatrix or too "
        "few uncensored training cells) or diffusion (the median of the sampled lives); the diffusion model is "
        "always scored as 'diffusion'")
    life_model: LifeModelSettings = Field(default_factory=LifeModelSettings,
                                          description="the stack (predictor: stack)")

    samples: int = Field(32, ge=1, description="sampled curves per cell")
    sampler: Literal["ddim", "ancestral"] = Field("ddim", description="ddim (few steps) or ancestral (T steps)")
    ddim_steps: int = Field(50, ge=1, description="DDIM steps")
    guidance: float = Field(1.0, ge=0, description="classifier-free guidance weight (1: conditional model)")
    seed: int = Field(0, ge=0, description="sampling seed")
    batch: int = Field(512, ge=1, description="curves per network call")
    level: float = Field(0.9, gt=0, lt=1, description="central prediction interval")
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, lt=100, description="SOH percent of the threshold end-of-life "
                             "rule (the twin's twin.threshold must equal it: checked in the workflow config)")
    synthetic: int = Field(0, ge=0, description="also generate this many unconditional curves")
    threads: int = Field(0, ge=0, description="torch CPU threads per rank (0: torch default)")
    device: Device = Field("auto", description="torch device")


class EvaluationSettings(Section):
    """One real-data evaluation: a model trained on ``train_set``, scored on the ``test`` split."""

    train_set: Name = Field(description="name of a degradation.real_data.train_sets entry")
    test: str = Field(min_length=1, description="test split .npz (relative to real_data.dir)")



class RealDataSettings(Section):
    """DiffBatt benchmark splits of real cells."""

    enabled: bool = Field(True, description="train and evaluate on real cycling data (enabled and missing data "
                          "is an error)")
    dir: str = Field(SHIPPED_DATA, description="directory of the DiffBatt .npz splits (+ SHA256SUMS, checked on "
                     "loading); relative: to the working directory, else to the repository (the shipped data)")
    train_sets: dict[Name, list[str]] = Field(
        {}, description="name -> training .npz files (relative to dir)")
    evaluations: dict[Name, EvaluationSettings] = Field(
        {}, description="name -> {train_set, test}; one output store + JSON each")
    train: dict = Field({}, description="overrides of degradation.train for the real-data models")
    sample: dict = Field({}, description="overrides of degradation.sample for the real-data evaluations")

    @model_validator(mode="after")
    def _known(self) -> "RealDataSettings":
        for key, section in (("train", TrainSettings), ("sample", SampleSettings)):
            unknown = set(getattr(self, key)) - set(section.model_fields)
            if unknown:
                raise ValueError(f"{key}: unknown key(s) {sorted(unknown)}")
        for name, ev in self.evaluations.items():
            if ev.train_set not in self.train_sets:
                raise ValueError(f"evaluations.{name}.train_set: {ev.train_set!r} is not in train_sets")
        return self


class DegradationConfig(Section):
    """The ``degradation`` section."""

    curve_length: int = Field(256, ge=2, description="points per SOH curve built from a sweep or user data "
                              "(multiple of patch * 2**(levels-1))")
    cycles_per_point: int = Field(10, ge=1, description="cycles between curve points")
    base_row: int = Field(0, ge=0, description="0-based early cycle subtracted to form the capacity matrix")
    n_early: int | None = Field(None, ge=1, description="user data: early cycles (rows) of the capacity matrix "
                                "(null: every Q(V) cycle in the file)")
    eol_rule: Literal["end_of_record", "threshold"] | None = Field(
        None, description="end-of-life rule; null: end_of_record for MATR splits, threshold otherwise")
    test_fraction: float = Field(0.25, ge=0, lt=1, description="sweeps: conditions held out of training and scored")
    split_seed: int = Field(0, ge=0, description="seed of the sweep held-out split")
    train: TrainSettings = Field(default_factory=TrainSettings, description="model and training")
    sample: SampleSettings = Field(default_factory=SampleSettings, description="sampling and scoring")
    real_data: RealDataSettings = Field(default_factory=RealDataSettings, description="real cycling data")

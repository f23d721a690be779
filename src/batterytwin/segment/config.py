"""The ``segment`` config section (batteryNET training and inference): the only place its defaults live.

``batterytwin train-seg``/``segment`` read it with ``--config``/``--config-json``; the workflow
schema is generated from :class:`SegmentConfig`. The stage code reads the typed models (a mapping given
to it is validated first); :func:`merge_config` gives the validated section as a plain mapping, for
callers that edit a configuration as a dict.

Example::

    cfg = SegmentConfig.model_validate({"train": {"steps": 50}})
    cfg.model.arch, cfg.train.steps                      # ('unet', 50)
    merge_config({"train": {"steps": 50}})["train"]["steps"]   # 50
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import Section, validate_settings
from ..contracts import CLASSES

AXIS_NAMES = {"z": 0, "y": 1, "x": 2}
Device = Literal["auto", "cpu", "cuda"]
Edge = Annotated[int, Field(ge=8)]


def _triple(value: Any) -> Any:
    """One patch edge or three (z, y, x)."""
    return [value] * 3 if isinstance(value, int) else value


class ModelSettings(Section):
    """The network (batteryNET: MONAI UNet with residual units, or SegResNet / SwinUNETR)."""

    arch: Literal["unet", "segresnet", "swinunetr"] = Field("unet", description="network architecture")
    channels: list[Annotated[int, Field(ge=1)]] = Field([16, 32, 64, 128], description="unet: channels per level")
    strides: list[Annotated[int, Field(ge=1)]] = Field([2, 2, 2], description="unet: down-sampling per level")
    num_res_units: int = Field(1, ge=0, description="unet: residual units per block")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout probability (needed by infer.uncertainty_method "
                           "mc_dropout; unet: after every convolution)")
    init_filters: int = Field(16, ge=1, description="segresnet: filters of the first level")
    feature_size: int = Field(24, ge=12, multiple_of=12, description="swinunetr: feature size (multiple of 12)")

    @model_validator(mode="after")
    def _levels(self) -> "ModelSettings":
        if self.arch == "unet" and len(self.channels) != len(self.strides) + 1:
            raise ValueError(f"needs len(channels) == len(strides) + 1, got {len(self.channels)} channels "
                             f"and {len(self.strides)} strides")
        return self


class AugmentSettings(Section):
    """Random augmentation of training patches."""

    flip: bool = Field(True, description="random flips along each axis")
    rot90: bool = Field(True, description="random 90-degree rotations in the y-x plane")
    intensity_scale: float = Field(0.1, ge=0, description="random intensity scale 1 +- this")
    intensity_shift: float = Field(0.1, ge=0, description="random intensity shift +- this (normalised units)")
    noise_std: float = Field(0.03, ge=0, description="Gaussian noise std (normalised units)")


Span = Annotated[list[float], Field(min_length=2, max_length=2)]


def _check_spans(model: "Section") -> None:
    """Every ``[low, high]`` range of ``model`` has ``low <= high``."""
    for name, value in model:
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value) \
                and value[0] > value[1]:
            raise ValueError(f"{name}: range [{value[0]}, {value[1]}] has low > high")


class RandomiseSettings(Section):
    """Domain-randomised training phantoms (the SynthSeg idea): contrast, artefacts and geometry drawn anew.

    Every ``[low, high]`` pair is a uniform range drawn per generated volume. Lengths are in voxels
    and are multiplied by a per-volume ``length_scale`` (the voxel size drawn relative to the
    microstructure). Attenuations are relative (a collector near 1); ``order`` lists classes whose
    drawn attenuations must increase, at least ``min_contrast`` apart (the physical order; the
    ranges themselves may overlap).
    """

    fraction: float = Field(0.0, ge=0, le=1, description="share of training patches drawn from randomised "
                            "phantoms (the rest from the label stores); 1 = randomised phantoms only")
    volume_size: list[Edge] = Field([48, 48, 48], min_length=3, max_length=3,
                                    description="edge of each generated cell (one value or three), >= patch_size")
    patches_per_volume: int = Field(8, ge=1, description="patches cut from each generated cell before the next")
    # contrast
    attenuation: dict[str, Span] = Field(
        {"pore": [0.0, 0.12], "solid_electrolyte": [0.22, 0.65], "lithium_metal": [0.04, 0.32],
         "cathode_active": [0.5, 1.1], "redeposited_lithium": [0.06, 0.45], "current_collector": [0.6, 1.8]},
        description="class name -> [low, high] relative attenuation")
    order: list[str] = Field(["pore", "lithium_metal", "redeposited_lithium", "solid_electrolyte",
                              "cathode_active"], description="classes whose attenuations increase in this order")
    min_contrast: float = Field(0.03, ge=0, description="smallest attenuation step between consecutive classes "
                                "of order")
    # image formation
    blur_sigma: Span = Field([0.3, 1.3], description="partial-volume (Gaussian point-spread) sigma, voxels")
    noise: dict[Literal["gaussian", "poisson", "correlated"], Annotated[float, Field(ge=0)]] = Field(
        {"gaussian": 1.0, "poisson": 1.0, "correlated": 1.0}, description="noise type -> relative probability")
    noise_level: Span = Field([0.0, 0.12], description="noise std relative to the attenuation span")
    ring_probability: float = Field(0.4, ge=0, le=1, description="chance of ring artefacts in a volume")
    ring_amplitude: Span = Field([0.0, 0.05], description="ring amplitude relative to the attenuation span")
    streak_probability: float = Field(0.3, ge=0, le=1, description="chance of streak artefacts in a volume")
    streak_amplitude: Span = Field([0.0, 0.06], description="streak amplitude relative to the attenuation span")
    cupping: Span = Field([0.0, 0.15], description="beam-hardening cupping: relative drop at the slice centre")
    bias_field: Span = Field([0.0, 0.12], description="smooth multiplicative bias field, relative amplitude")
    length_scale: Span = Field([0.6, 1.5], description="voxel size: multiplier of every drawn length")
    # geometry (layers along z: collector, cathode composite, separator, lithium anode)
    collector_fraction: Span = Field([0.03, 0.14], description="collector thickness / z extent")
    cathode_fraction: Span = Field([0.25, 0.5], description="cathode thickness / z extent")
    separator_fraction: Span = Field([0.12, 0.32], description="separator thickness / z extent")
    interface_roughness: Span = Field([0.0, 2.5], description="anode surface height std, voxels")
    particle_shapes: dict[Literal["sphere", "ellipsoid", "irregular"], Annotated[float, Field(ge=0)]] = Field(
        {"sphere": 1.0, "ellipsoid": 1.0, "irregular": 1.0}, description="particle shape -> relative probability")
    particle_radius: Span = Field([2.0, 6.0], description="median cathode particle radius, voxels")
    particle_radius_sigma: Span = Field([0.1, 0.45], description="log-normal spread of the particle radii")
    active_fraction: Span = Field([0.35, 0.7], description="cathode active volume fraction (packing)")
    cathode_pore_fraction: Span = Field([0.0, 0.1], description="pore fraction of the cathode composite")
    separator_pore_fraction: Span = Field([0.0, 0.03], description="pore fraction of the separator")
    pore_radius: Span = Field([0.8, 2.5], description="pore radius, voxels")
    pits_per_10k_vox2: Span = Field([0.0, 8.0], description="anode pits per 10^4 voxels of y-x area")
    pit_depth: Span = Field([0.1, 0.6], description="pit depth / anode thickness")
    dendrites_per_10k_vox2: Span = Field([2.0, 30.0], description="dendrites per 10^4 voxels of y-x area")
    dendrite_length: Span = Field([0.2, 1.0], description="dendrite length / separator thickness")
    dendrite_radius: Span = Field([0.6, 2.0], description="dendrite radius, voxels (0.6: 1 voxel thick)")
    dendrite_branching: Span = Field([0.0, 0.3], description="chance per step that a dendrite branches")
    agglomerates_per_10k_vox2: Span = Field([4.0, 50.0], description="mossy agglomerates per 10^4 voxels of area")
    agglomerate_radius: Span = Field([1.0, 4.5], description="agglomerate lump radius, voxels")

    _size = field_validator("volume_size", mode="before")(_triple)

    @model_validator(mode="after")
    def _ranges(self) -> "RandomiseSettings":
        _check_spans(self)
        for name, span in self.attenuation.items():
            if span[0] > span[1]:
                raise ValueError(f"attenuation.{name}: range {span} has low > high")
        unknown = [n for n in [*self.attenuation, *self.order] if n not in CLASSES.values()]
        if unknown:
            raise ValueError(f"unknown class name(s) {unknown} (the phantom's classes: {list(CLASSES.values())})")
        missing = [n for n in CLASSES.values() if n not in self.attenuation]
        if missing:
            raise ValueError(f"attenuation: needs a range for every class, missing {missing}")
        if not sum(self.noise.values()) > 0 or not sum(self.particle_shapes.values()) > 0:
            raise ValueError("noise and particle_shapes need at least one positive probability")
        return self


class TrainSettings(Section):
    """Optimisation, sampling, validation and checkpoints of ``train-seg``."""

    steps: int = Field(300, ge=1, description="optimiser steps (global)")
    batch_size: int = Field(4, ge=1, description="global batch: split evenly over ranks")
    patch_size: list[Edge] = Field([32, 32, 32], min_length=3, max_length=3,
                                   description="training patch edge, one value or three (z, y, x)")
    lr: float = Field(3.0e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(1.0e-5, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up, then cosine decay to lr * min_lr_ratio")
    min_lr_ratio: float = Field(0.02, ge=0, le=1, description="final learning rate / lr")
    dice_weight: float = Field(1.0, ge=0, description="weight of the Dice loss")
    ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy loss")
    tversky_weight: float = Field(0.0, ge=0, description="weight of MONAI's Tversky loss (0 = off)")
    tversky_alpha: float = Field(0.3, ge=0, le=1, description="Tversky: weight of false positives")
    tversky_beta: float = Field(0.7, ge=0, le=1, description="Tversky: weight of false negatives (recall)")
    class_weights: list[Annotated[float, Field(ge=0)]] | None = Field(
        None, description="per-class cross-entropy weights, or null")
    class_balance: float = Field(1.0, ge=0, le=1, description="share of patches centred on a voxel of a "
                                 "uniformly drawn class")
    augment: AugmentSettings = Field(default_factory=AugmentSettings, description="patch augmentation")
    randomise: RandomiseSettings = Field(default_factory=RandomiseSettings,
                                         description="domain-randomised training phantoms")
    val_axis: Literal["z", "y", "x"] = Field("x", description="region split: a slab along this axis is held out")
    val_fraction: float = Field(0.2, ge=0, lt=0.9, description="region split: held-out fraction of each volume")
    val_every: int = Field(100, ge=1, description="steps between validations")
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints")
    checkpoint_dir: str = Field("work/models/segment", description="checkpoint folder (outside the outputs)")
    seed: int = Field(0, ge=0, description="seed of weights, patches and augmentation")
    num_workers: int = Field(0, ge=0, description="DataLoader workers per rank (patch reading)")
    device: Device = Field("auto", description="auto: one GPU per local rank if CUDA is visible, else CPU")
    amp: bool = Field(True, description="bf16 autocast on GPU (never on CPU)")
    threads: int = Field(0, ge=0, description="torch CPU threads per rank; 0 = torch default")
    init_from: str | None = Field("pretrained", description="model to start from (fine-tuning, e.g. on the sparse "
                                  "hand labels of a scan): 'pretrained' = the shipped batteryNET (docs/models.md), or "
                                  "a model.pt path; same architecture as segment.model; null = random weights")
    new_head: bool = Field(True, description="with init_from: when the training classes differ from the model's, "
                           "keep its encoder and decoder body and start a new output head; false: such a class set "
                           "is an error")

    _patch = field_validator("patch_size", mode="before")(_triple)


class InferSettings(Section):
    """Sliding-window inference of ``segment``."""

    patch_size: list[Edge] | None = Field(None, min_length=3, max_length=3,
                                          description="window edge, one value or three; null = the training patch")
    overlap: float = Field(0.25, ge=0, lt=1, description="window overlap (fraction of the window)")
    sw_batch_size: int = Field(4, ge=1, description="windows per forward pass")
    sigma_scale: float = Field(0.125, gt=0, description="Gaussian blending weight, in units of the window size")
    device: Device = Field("auto", description="auto: one GPU per local rank if CUDA is visible, else CPU")
    threads: int = Field(0, ge=0, description="torch CPU threads per rank; 0 = OMP_NUM_THREADS or cores / ranks")
    amp: bool = Field(True, description="bf16 autocast on GPU")
    chunk: int | None = Field(None, ge=8, description="output chunk edge; null = store.chunk of the run (or 64)")
    shard: int | None = Field(None, ge=8, description="output shard edge; null = store.shard of the run (or 256)")
    uncertainty_method: Literal["entropy", "mc_dropout"] = Field(
        "entropy", description="entropy: softmax entropy of one pass; mc_dropout: entropy of the mean softmax of "
        "mc_samples passes with dropout on (needs model.dropout > 0), which also gives the labels")
    mc_samples: int = Field(8, ge=2, le=256, description="mc_dropout: stochastic passes per window")
    seed: int = Field(0, ge=0, description="mc_dropout: seed of the dropout masks (each window's masks depend only "
                      "on the seed and its position)")

    _patch = field_validator("patch_size", mode="before")(_triple)


class GmmSettings(Section):
    """Label-free segmentation (``method: gmm``): a Gaussian mixture of intensities, then clean-up.

    ``classes`` maps the mixture's components, ordered by mean intensity (increasing attenuation),
    to class names of the run's class map (:data:`batterytwin.contracts.CLASSES`): a list gives one
    component per name in that order; a mapping ``{component: name}`` may send several components
    to one class. The default suits the run's synthetic cell: its pores (1 % of the voxels, small and
    blurred) and its redeposited lithium have no intensity mode of their own, and the collector's
    (0.98) merges with the cathode's (0.90); lithium metal, electrolyte and cathode are separated.
    """

    classes: list[str] | dict[int, str] = Field(
        ["lithium_metal", "solid_electrolyte", "cathode_active"], min_length=1,
        description="class name of each component, components ordered by mean intensity (increasing), or "
                    "{component: class name}; names from the run's class map")
    max_samples: int = Field(250_000, ge=1000, le=100_000_000,
                             description="voxels sampled (chunk-wise, uniformly) to fit the mixture")
    seed: int = Field(0, ge=0, description="seed of the voxel sample and of the EM initialisation")
    max_iter: int = Field(200, ge=1, description="EM iterations at most")
    n_init: int = Field(1, ge=1, le=20, description="EM restarts; the best likelihood is kept")
    clean_radius: int = Field(1, ge=0, le=4, description="ball radius (voxels) of the per-class opening and "
                              "closing that removes speckles; 0 = no clean-up")

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, value: list[str] | dict[int, str]) -> list[str] | dict[int, str]:
        names = list(value.values()) if isinstance(value, dict) else list(value)
        unknown = [n for n in names if n not in CLASSES.values()]
        if unknown:
            raise ValueError(f"unknown class name(s) {unknown} (the run's classes: {list(CLASSES.values())})")
        if isinstance(value, dict) and sorted(value) != list(range(len(value))):
            raise ValueError(f"components must be numbered 0..{len(value) - 1}, got {sorted(value)}")
        return value

    def component_classes(self) -> list[str]:
        """Class name of each component, in mean order."""
        return [self.classes[k] for k in sorted(self.classes)] if isinstance(self.classes, dict) else list(self.classes)


class SegmentConfig(Section):
    """The ``segment`` section: pipeline wiring, network, training and inference."""

    input: Literal["denoised", "volume"] = Field("denoised", description="which store of each sample is segmented")
    method: Literal["network", "pretrained", "gmm"] = Field(
        "network", description="network: the batteryNET trained (fine-tuned) by the workflow; pretrained: the "
        "shipped batteryNET as it is (zero-shot, no training); gmm: label-free Gaussian mixture + morphological "
        "clean-up (no training)")
    pseudo_labels: Literal["none", "gmm"] = Field("none", description="gmm: training samples without labels "
                                                  "train on their GMM label store (results/{sample}/gmm_labels.zarr)")
    train_samples: list[str] = Field([], description="samples to train on; [] = samples with role train/both "
                                     "that have labels")
    label_stores: dict[str, str] = Field({}, description="sample -> label store (hand labels; 255 = unlabelled)")
    val_samples: list[str] = Field([], description="held-out validation samples; [] = synthetic samples with "
                                   "role analyse (else a slab of each training volume)")
    uncertainty: bool = Field(True, description="also write uncertainty.zarr (entropy, float16; "
                              "infer.uncertainty_method)")
    model: ModelSettings = Field(default_factory=ModelSettings, description="network")
    train: TrainSettings = Field(default_factory=TrainSettings, description="training")
    infer: InferSettings = Field(default_factory=InferSettings, description="inference")
    gmm: GmmSettings = Field(default_factory=GmmSettings, description="label-free Gaussian-mixture segmentation")
    classes: dict[str, Annotated[int, Field(ge=0, le=254)]] = Field(
        {name: cid for cid, name in CLASSES.items()},
        description="class name -> label id (ids 0..n-1) of the run: the class map of imported hand labels "
        "(samples.<name>.labels); default the phantom's classes")

    @field_validator("classes")
    @classmethod
    def _unique_ids(cls, value: dict[str, int]) -> dict[str, int]:
        ids: dict[int, str] = {}
        for name, cid in value.items():
            if cid in ids:
                raise ValueError(f"id {cid} is given to '{ids[cid]}' and '{name}'")
            ids[cid] = name
        if not value:
            raise ValueError("needs at least one class")
        if sorted(ids) != list(range(len(ids))):  # the network's outputs are the ids 0..n-1
            raise ValueError(f"ids must be 0..{len(ids) - 1} (one per class), got {sorted(ids)}")
        return value


def merge_config(user: dict | None = None, where: str = "segment") -> dict:
    """Defaults updated by ``user`` (the ``segment`` section), validated, as a plain mapping.

    Raises:
        InputError: unknown key, wrong type or value out of range (one line naming the key).
    """
    return validate_settings(SegmentConfig, user or {}, where).model_dump()

"""Samples and store settings of a run: where each volume comes from (the ``samples`` section).

A sample is either the built-in phantom (``source: synthetic``) or a file (any other ``source``):
the two are a discriminated union on ``source``, so each branch gets only its own defaults
(a file sample never receives the phantom's ``shape`` or ``seed``). The phantom's own defaults
live in :class:`~batterytwin.ingest.phantom.PhantomParams`.

Example::

    sample = parse_sample({"source": "data/scan.npy", "voxel_size_um": 0.65})
    sample.format, sample.role               # ('auto', 'analyse')
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, TypeAdapter, ValidationError, field_validator

from ..config import Section, describe_error
from ..errors import InputError
from .phantom import PhantomParams
from .readers import DXCHANGE_DATASET, FORMATS

Role = Literal["train", "analyse", "both"]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SyntheticSampleSettings(Section):
    """The built-in phantom of a solid-state lithium-metal cell (CT image, clean image, labels)."""

    source: Literal["synthetic"] = Field(description="the built-in synthetic phantom")
    shape: list[Annotated[int, Field(ge=16)]] = Field(list(PhantomParams.shape), min_length=3, max_length=3,
                                                      description="volume shape (z, y, x) in voxels")
    seed: int = Field(PhantomParams.seed, ge=0, description="geometry and noise seed")
    frames: int = Field(1, ge=1, description=">1: a time series, one sample per frame (name_t000 ...), dendrites grow")
    voxel_size_um: Positive = Field(PhantomParams.voxel_size_um, description="voxel edge in micrometres")
    params: dict[str, Any] = Field({}, description="any other PhantomParams field (src/batterytwin/ingest/phantom.py)")
    role: Role = Field("both", description="train: segmentation training only; analyse: the whole chain; both")

    @field_validator("params")
    @classmethod
    def _phantom_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = {"shape", "seed", "frame", "n_frames", "voxel_size_um"} & set(value)
        if reserved:
            raise ValueError(f"{sorted(reserved)} are sample keys, not params")
        try:
            PhantomParams.from_dict(value)  # unknown names and impossible values are errors here
        except InputError as exc:
            raise ValueError(str(exc).removeprefix("phantom: ")) from None
        return value


class FileSampleSettings(Section):
    """A tomography file or TIFF folder, streamed into a volume store by ``batterytwin ingest``."""

    source: str = Field(min_length=1, description="TIFF folder, multi-page .tif, .h5 (DXchange), .npy or raw file",
                        json_schema_extra={"not": {"const": "synthetic"}})
    voxel_size_um: Positive | list[Positive] = Field(description="voxel size in micrometres: one value or three "
                                                     "(z, y, x)")
    format: Literal[FORMATS] = Field("auto", description="input format (auto: from the name)")
    dataset: str = Field(DXCHANGE_DATASET, description="HDF5 dataset path")
    shape: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=3, max_length=3,
                                                            description="raw input: volume shape (z, y, x)")
    dtype: str | None = Field(None, description="raw input: sample type, e.g. uint16")
    byte_order: Literal["little", "big"] | None = Field(
        None, description="raw input: byte order (null: the one in dtype, e.g. '>u2', else little)")
    header_bytes: int = Field(0, ge=0, description="raw input: bytes to skip at the start")
    crop: str | None = Field(None, pattern=r"^(?:[0-9]*:[0-9]*)?,(?:[0-9]*:[0-9]*)?,(?:[0-9]*:[0-9]*)?$",
                             description="source-space crop 'z0:z1,y0:y1,x0:x1' (empty range = whole axis)")
    bin: int = Field(1, ge=1, description="bin factor (mean over bin^3 voxels; output float32)")
    output_dtype: str = Field("auto", description="output sample type (auto: the source type)")
    nan_fill: float | None = Field(None, allow_inf_nan=False,
                                   description="replace NaN/Inf with this finite value (null: reject them)")
    clip: bool = Field(False, description="clip values outside the range of output_dtype (false: refuse them)")
    channel: int | None = Field(None, ge=0, description="multi-page TIFF with channels (ImageJ hyperstack, "
                                "OME-TIFF, RGB): the channel to read")
    timepoint: int | None = Field(None, ge=0, description="multi-page TIFF with time points: the one to read")
    labels: str | None = Field(None, description="hand labels for training: a label image in any input format "
                               "(imported to results/<sample>/hand_labels.zarr) or a label store (.zarr, used as "
                               "is); integer class ids of segment.classes, 255 = unlabelled")
    val_labels: str | None = Field(None, description="held-out hand labels (e.g. labelled slices kept out of "
                                   "training) for validation Dice; imported to results/<sample>/val_labels.zarr")
    labels_format: Literal[FORMATS] = Field("auto", description="format of labels/val_labels (auto: from the name)")
    labels_dataset: str | None = Field(None, description="HDF5 dataset of labels/val_labels (null: dataset)")
    labels_unlabelled: int = Field(255, ge=0, description="id of the label images meaning 'not labelled' "
                                   "(written as 255), e.g. 0 for tools that use 0 as background")
    role: Role = Field("analyse", description="train: segmentation training only; analyse: the whole chain; both")

    @field_validator("voxel_size_um")
    @classmethod
    def _three(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) != 3:
            raise ValueError(f"one value or three (z, y, x), got {len(value)}")
        return value

    @field_validator("source")
    @classmethod
    def _not_synthetic(cls, value: str) -> str:
        if value == "synthetic":
            raise ValueError("'synthetic' names the built-in phantom")
        return value


def _sample_kind(value: Any) -> str:
    source = value.get("source") if isinstance(value, dict) else getattr(value, "source", None)
    return "synthetic" if source == "synthetic" else "file"


Sample = Annotated[Union[Annotated[SyntheticSampleSettings, Tag("synthetic")],
                         Annotated[FileSampleSettings, Tag("file")]],
                   Discriminator(_sample_kind)]


def parse_sample(spec: dict, where: str = "sample") -> SyntheticSampleSettings | FileSampleSettings:
    """One sample spec, validated (raises InputError naming the key)."""
    try:
        return TypeAdapter(Sample).validate_python(spec)
    except ValidationError as exc:
        raise InputError(describe_error(exc, where)) from None


class StoreSettings(Section):
    """Chunk and shard edges of every volume store the run writes."""

    chunk: int = Field(64, ge=8, description="chunk edge in voxels (the unit of reading)")
    shard: int = Field(256, ge=8, description="shard edge in voxels (the unit of writing and of work per rank)")


class IngestConfig(Section):
    """``batterytwin ingest`` settings shared by every file sample."""

    max_memory_mb: float = Field(2048, gt=0, description="memory budget for one slab")

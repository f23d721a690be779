"""The whole run's configuration (``config.yaml``): one typed model composed of the stage models.

``workflow/schemas/config.schema.json`` is generated from :class:`PipelineConfig`; regenerate it
after changing any settings model with::

    python -m batterytwin.workflow_config workflow/schemas/config.schema.json

``workflow/rules/common.smk`` validates ``config`` with :func:`complete_config` (one line naming
the key on a problem) and then with the generated schema, so rules read complete sections; it then
builds the run's :class:`WorkflowPlan` with :func:`plan_workflow`: which samples each stage
processes, the segmentation's training and validation sets, the real-data evaluations, and the
checks of input files that need only their metadata (so ``snakemake -n`` reports them).
Every problem is an :class:`~batterytwin.errors.InputError` of one line naming the key.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Mapping

from pydantic import Field, StringConstraints, model_validator

from .cellsim.config import CellsimConfig
from .config import Section, validate_settings
from .degradation.config import DegradationConfig
from .denoise.config import DenoiseConfig
from .errors import InputError
from .inputfile import regular_file
from .ingest.config import SAMPLE_NAME, IngestSettings, Sample, StoreSettings
from .microstructure.config import MicrostructureConfig
from .report.config import ReportConfig
from .segment.config import SegmentConfig
from .twin.config import TwinConfig

SampleName = Annotated[str, StringConstraints(pattern=SAMPLE_NAME)]
# An MPI launcher is pasted unquoted into rule shell commands (``{resources.mpi} -n N batterytwin ...``),
# so it comes only from the trusted config and must be a program name followed by options/values:
# letters, digits and ``_ . / + - , : @ % =``, words separated by spaces; no quotes, ``;``, ``|``,
# ``&``, ``$``, backticks, redirections or globbing. Examples: ``mpiexec``, ``srun --cpus-per-task=8``.
MPI_LAUNCHER = r"^[A-Za-z0-9_./+][A-Za-z0-9_./+-]*(?: +[A-Za-z0-9_.,:/@%+=-]+)*$"
Launcher = Annotated[str, StringConstraints(pattern=MPI_LAUNCHER)]


class Resources(Section):
    """Slurm/local resources of a rule (``resources.default`` applies to every rule)."""

    tasks: int | None = Field(None, ge=1, description="MPI ranks")
    cpus_per_task: int | None = Field(None, ge=1, description="cores per rank (also the rule's threads)")
    nodes: int | None = Field(None, ge=1, description="nodes of the job")
    gpu: int | None = Field(None, ge=0, description="GPUs per node")
    mem_mb: int | None = Field(None, ge=1, description="memory in MB")
    runtime: int | None = Field(None, ge=1, description="wall-time limit in minutes")
    constraint: str | None = Field(None, description="Slurm constraint, e.g. gpu")
    slurm_account: str | None = Field(None, description="Slurm account")
    slurm_partition: str | None = Field(None, description="Slurm partition")
    qos: str | None = Field(None, description="Slurm QOS")
    slurm_extra: str | None = Field(None, description="extra sbatch options")
    tasks_per_gpu: int | None = Field(None, ge=0, description="ranks per GPU")
    mpi: Launcher | None = Field(None, description="MPI launcher of this rule (else the top-level mpi): a program "
                                 "and its options, no shell syntax (pasted into the rule's command)")


RULE_DEFAULTS = {"tasks": 1, "cpus_per_task": 1}  # what a rule gets when resources.default leaves it out


class PipelineConfig(Section):
    """``config.yaml``: samples, stores, resources and one section per stage."""

    samples: dict[SampleName, Sample] = Field(min_length=1, description="sample name -> where its volume comes from",
                                              json_schema_extra={"propertyNames": {"pattern": SAMPLE_NAME}})
    store: StoreSettings = Field(default_factory=StoreSettings, description="chunk/shard edges of volume stores")
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="ingest of file samples")
    mpi: Launcher = Field("mpiexec", description="MPI launcher for MPI rules (mpiexec locally, srun on Slurm), "
                          "from the trusted config: a program and its options, no shell syntax")
    resources: dict[str, Resources] = Field({"default": Resources()}, description="per-rule resources (Slurm "
                                            "sizes are config, not code); 'default' applies to every rule")
    denoise: DenoiseConfig = Field(default_factory=DenoiseConfig, description="NLM denoising")
    segment: SegmentConfig = Field(default_factory=SegmentConfig, description="segmentation")
    microstructure: MicrostructureConfig = Field(default_factory=MicrostructureConfig, description="microstructure")
    cellsim: CellsimConfig = Field(default_factory=CellsimConfig, description="PyBaMM sweeps")
    degradation: DegradationConfig = Field(default_factory=DegradationConfig, description="degradation model")
    twin: TwinConfig = Field(default_factory=TwinConfig, description="hybrid digital twin of real cells")
    report: ReportConfig = Field(default_factory=ReportConfig, description="report figures")

    @model_validator(mode="after")
    def _phases_are_classes(self) -> "PipelineConfig":
        """The phases microstructure measures are classes of the run's class map (``segment.classes``)
        when a sample goes through microstructure (role analyse/both): a misspelt name would find no
        voxel and the cell block would fall back to the parameter set's geometry."""
        if any(getattr(s, "role", "analyse") in ("analyse", "both") for s in self.samples.values()):
            check_phase_names(self.microstructure, list(self.segment.classes))
        return self

    @model_validator(mode="after")
    def _one_end_of_life_rule(self) -> "PipelineConfig":
        """The diffusion model and the twin score the same real cells against each other: one end-of-life
        rule, one threshold and one data directory (``twin`` may leave them to ``degradation``, or repeat
        them; it may not differ)."""
        deg, twin = self.degradation, self.twin
        if twin.eol_rule != deg.eol_rule:
            raise ValueError(f"twin.eol_rule: {twin.eol_rule!r} differs from degradation.eol_rule {deg.eol_rule!r} "
                             "(one end-of-life rule for both stages)")
        threshold = deg.real_data.sample.get("threshold", deg.sample.threshold)
        if not isinstance(threshold, (int, float)) or float(threshold) != float(twin.threshold):
            raise ValueError(f"twin.threshold: {twin.threshold:g} differs from the degradation real-data threshold "
                             f"{threshold!r} (degradation.real_data.sample.threshold, else degradation.sample.threshold): "
                             "one end-of-life threshold for both stages")
        if twin.data_dir is not None and twin.data_dir != deg.real_data.dir:
            raise ValueError(f"twin.data_dir: {twin.data_dir!r} differs from degradation.real_data.dir "
                             f"{deg.real_data.dir!r} (one data directory for both stages: leave twin.data_dir null)")
        unknown = sorted(set(twin.evaluations or []) - set(deg.real_data.evaluations))
        if unknown:
            raise ValueError(f"twin.evaluations: {unknown} not in degradation.real_data.evaluations "
                             f"({', '.join(deg.real_data.evaluations) or 'none'})")
        return self


# microstructure settings naming a class: required ones must be classes of the run; an optional one
# (absent from some class maps) is refused only when it looks like a misspelt class
REQUIRED_PHASES = ("electrolyte_phase", "active_phase", "anode_phase")
OPTIONAL_PHASES = ("redeposited_phase",)


def check_phase_names(micro: MicrostructureConfig, classes: list[str]) -> None:
    """Raise ``ValueError`` (one line, with a did-you-mean) for a phase name that is not in ``classes``."""
    named = [(f"microstructure.phases[{i}]", n) for i, n in enumerate(micro.phases)]
    named += [(f"microstructure.{k}", getattr(micro, k)) for k in REQUIRED_PHASES]
    for key, name in named + [(f"microstructure.{k}", getattr(micro, k)) for k in OPTIONAL_PHASES]:
        if name in classes:
            continue
        close = difflib.get_close_matches(name, classes, n=1, cutoff=0.6)
        if key.rsplit(".", 1)[-1] in OPTIONAL_PHASES and not close:
            continue
        hint = f"did you mean {close[0]!r}? one of the two settings is misspelt; " if close else ""
        raise ValueError(f"{key}: {name!r} is not a class of segment.classes ({hint}classes: {', '.join(classes)})")


def complete_config(config: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """``config`` validated and completed with every default, as plain JSON-like data.

    Raises:
        InputError: one line naming the key path, e.g. ``config: segment.train.lr: must be > 0, got -1``.
    """
    done = validate_settings(PipelineConfig, config, where).model_dump(mode="json")
    done["resources"] = {rule: {k: v for k, v in res.items() if v is not None}
                         for rule, res in done["resources"].items()}
    done["resources"]["default"] = {**RULE_DEFAULTS, **done["resources"].get("default", {})}
    return done


# --- the run's plan: samples per stage, the segmentation's data, the real-data evaluations ---------

# hand-label images imported per file sample: label store name -> sample key
LABEL_IMPORTS = {"hand_labels": "labels", "val_labels": "val_labels"}


def sample_dir(sample: str) -> str:
    """Where a sample's results go."""
    return f"results/{sample}"


def expand_samples(samples: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Sample name -> spec (completed by :func:`complete_config`); a synthetic time series becomes one
    sample per frame (``name_t000``, ...) with ``frame``, ``n_frames`` and ``series``."""
    out = {}
    for name, spec in samples.items():
        frames = spec["frames"] if spec["source"] == "synthetic" else 1
        if frames == 1:
            out[name] = dict(spec, frame=0, n_frames=1)
        else:
            for t in range(frames):
                out[f"{name}_t{t:03d}"] = dict(spec, frame=t, n_frames=frames, series=name)
    return out


def is_store(path: str) -> bool:
    """A ``.zarr`` path: a store used as is (not an image to import)."""
    return os.path.normpath(path).endswith(".zarr")


def label_store(sample: str, spec: Mapping[str, Any], key: str) -> str | None:
    """The label store of ``samples.<sample>.<key>`` (``labels`` / ``val_labels``): the path itself when
    it is a ``.zarr`` store, else ``results/<sample>/<hand_labels|val_labels>.zarr`` imported from the
    label image; None without that key."""
    path = spec.get(key)
    if not path:
        return None
    if is_store(path):
        return path
    name = {v: k for k, v in LABEL_IMPORTS.items()}[key]
    return f"{sample_dir(sample)}/{name}.zarr"


@dataclass(frozen=True)
class SegmentPlan:
    """The segmentation stage of a run: its input store, method, and training/validation data."""

    input: str  #: the store segmented per sample: denoised.zarr or volume.zarr
    uncertainty: bool  #: write uncertainty.zarr next to labels.zarr
    method: str  #: network (trained here), pretrained (shipped batteryNET, zero-shot) or gmm (label-free)
    labels: dict[str, str]  #: sample -> its label store
    train: list[str]  #: training samples
    val: list[str]  #: validation samples (scored against their whole label store)
    pseudo: list[str]  #: training samples without labels that train on their GMM label store
    val_labels: dict[str, str]  #: sample -> held-out hand labels (samples.<name>.val_labels)

    def pairs(self) -> list[tuple[str, str, str, str]]:
        """``(volume flag, labels flag, sample, label store)`` per training and validation store."""
        return ([("--volume", "--labels", s, self.labels[s]) for s in self.train]
                + [("--val-volume", "--val-labels", s, self.labels[s]) for s in self.val]
                + [("--val-volume", "--val-labels", s, path) for s, path in self.val_labels.items()])

    def data_args(self) -> list[str]:
        """The ``train-seg`` arguments naming every volume and label store."""
        return [arg for fv, fl, s, lab in self.pairs() for arg in (fv, f"{sample_dir(s)}/{self.input}", fl, lab)]

    def volume_inputs(self) -> list[str]:
        return sorted({f"{sample_dir(s)}/{self.input}" for _, _, s, _ in self.pairs()})

    def label_inputs(self) -> list[str]:
        return sorted({lab for _, _, _, lab in self.pairs()})


def plan_segment(seg: Mapping[str, Any], specs: Mapping[str, Mapping[str, Any]]) -> SegmentPlan:
    """The segmentation data of a run from the ``segment`` section and the sample table.

    Label store per sample: ``segment.label_stores``, else ``samples.<name>.labels``, else the
    phantom's truth. Training: ``segment.train_samples``, else the samples of role train/both that
    have labels. Validation: ``segment.val_samples``, else the synthetic samples of role analyse
    (they have truth), plus every sample's ``val_labels``. ``segment.pseudo_labels: gmm``: training
    samples without labels (not synthetic, no label store) train on their GMM label store.
    """
    synthetic = [s for s, spec in specs.items() if spec["source"] == "synthetic"]
    truth = {s: f"{sample_dir(s)}/truth.zarr" for s in specs}
    labels = {s: seg["label_stores"].get(s) or label_store(s, spec, "labels") or truth[s] for s, spec in specs.items()}
    trainable = [s for s, spec in specs.items() if spec["role"] in ("train", "both")]
    train = list(seg["train_samples"]) or [
        s for s in trainable if s in synthetic or specs[s].get("labels") or s in seg["label_stores"]]
    val = list(seg["val_samples"]) or [s for s in synthetic if specs[s]["role"] == "analyse"]
    pseudo = []
    if seg["pseudo_labels"] == "gmm":
        pseudo = [s for s in (list(seg["train_samples"]) or trainable) if s not in synthetic and labels[s] == truth[s]]
        labels.update({s: f"{sample_dir(s)}/gmm_labels.zarr" for s in pseudo})
        train += [s for s in pseudo if s not in train]
    val_labels = {s: path for s, spec in specs.items() if (path := label_store(s, spec, "val_labels"))}
    return SegmentPlan(input="denoised.zarr" if seg["input"] == "denoised" else "volume.zarr",
                       uncertainty=bool(seg["uncertainty"]), method=seg["method"], labels=labels, train=train,
                       val=val, pseudo=pseudo, val_labels=val_labels)


def real_data_dir(directory: str, repo: os.PathLike | str) -> str:
    """``degradation.real_data.dir`` as read: a relative folder from the working directory when it is
    there, else from the repository ``repo`` (the shipped data/cycling)."""
    if os.path.isabs(directory) or os.path.isdir(directory):
        return directory
    in_repo = os.path.join(repo, directory)
    return in_repo if os.path.isdir(in_repo) else directory


def check_real_data(real: Mapping[str, Any], directory: str) -> None:
    """Every DiffBatt split the real-data evaluations read is in ``directory`` and matches its SHA256SUMS.

    Raises:
        InputError: one line naming ``degradation.real_data`` and the file.
    """
    from .cycling.loaders import verify_checksum

    if not os.path.isdir(directory):
        raise InputError(f"degradation.real_data.dir: real cycling data directory {real['dir']!r} not found (the "
                         "shipped data is data/cycling; set enabled: false to skip real-data evaluation)")
    needed = {f for files in real["train_sets"].values() for f in files} | {e["test"] for e in real["evaluations"].values()}
    for name in sorted(needed):
        path = os.path.join(directory, name)
        try:
            regular_file(path, "file")
            verify_checksum(path)
        except InputError as exc:
            raise InputError(f"degradation.real_data: {exc}") from None


def _check_input_path(path: str, fmt: str, key: str) -> None:
    """``path`` exists, its format is known, and it is a folder (tiff-stack) or a regular file."""
    from .ingest.readers import guess_format

    p = Path(path)
    try:
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        fmt = guess_format(p) if fmt == "auto" else fmt
        if fmt == "tiff-stack":
            if not p.is_dir():
                raise InputError(f"{p}: format tiff-stack needs a folder of TIFF slices")
        else:
            regular_file(p, f"{fmt} file")
    except InputError as exc:
        raise InputError(f"{key}: {exc}") from None


def _check_label_shape(name: str, spec: Mapping[str, Any], key: str) -> None:
    """The label image ``samples.<name>.<key>`` has the shape of the volume ingest writes from the scan
    (both read from their headers). Labels are drawn on the source scan: the sample's crop applies to
    them unless the scan is binned, where they must have the binned volume's shape."""
    from .ingest.driver import ingested_shape
    from .ingest.readers import open_reader

    where = f"samples.{name}.{key}"
    label_crop = spec["crop"] if spec["bin"] == 1 else None
    try:
        scan = open_reader(spec["source"], spec["format"], dataset=spec["dataset"], shape=spec["shape"],
                           dtype=spec["dtype"], byte_order=spec["byte_order"], header_bytes=spec["header_bytes"],
                           channel=spec["channel"], timepoint=spec["timepoint"])
        expected = ingested_shape(scan.shape, spec["crop"], spec["bin"], f"{spec['source']}: crop")
    except InputError as exc:
        raise InputError(f"samples.{name}.source: {exc}") from None
    try:
        labels = open_reader(spec[key], spec["labels_format"], dataset=spec["labels_dataset"] or spec["dataset"],
                             shape=spec["shape"], dtype="uint8" if spec["shape"] is not None else None)
        got = ingested_shape(labels.shape, label_crop, 1, f"{spec[key]}: crop")
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    if got != expected:
        what = "cropped label image" if label_crop else "label image"
        scan_what = "scan" if spec["crop"] is None and spec["bin"] == 1 else "scan after crop/bin"
        raise InputError(f"{where}: {spec[key]}: {what} shape {list(got)} differs from the {scan_what} "
                         f"{spec['source']} shape {list(expected)}")


def check_sample_inputs(specs: Mapping[str, Mapping[str, Any]]) -> None:
    """The checks of file samples that need only metadata (run by ``snakemake -n``): every source and
    label image exists, has a known format and is a regular file (a folder for tiff-stack), and each
    label image has the scan's shape (read from both headers).

    Raises:
        InputError: one line naming the key, the file and the problem.
    """
    for name, spec in specs.items():
        if spec["source"] == "synthetic":
            continue
        _check_input_path(spec["source"], spec["format"], f"samples.{name}.source")
        for key in LABEL_IMPORTS.values():
            if spec.get(key) and not is_store(spec[key]):
                _check_input_path(spec[key], spec["labels_format"], f"samples.{name}.{key}")
                _check_label_shape(name, spec, key)


@dataclass(frozen=True)
class WorkflowPlan:
    """What a run does, derived from its completed config (:func:`plan_workflow`)."""

    specs: dict[str, dict[str, Any]]  #: sample -> spec, time series expanded to frames
    samples: list[str]  #: every sample, in config order
    synthetic: list[str]  #: built-in phantoms
    from_files: list[str]  #: ingested from files
    analyse: list[str]  #: carried through microstructure, cell simulation, degradation (role analyse/both)
    segment: SegmentPlan
    real_data_dir: str  #: folder of the DiffBatt splits as read
    real_evaluations: dict[str, dict[str, Any]]  #: degradation real-data evaluations run (none when disabled)
    twin_evaluations: dict[str, dict[str, Any]]  #: those the twin runs on


def plan_workflow(config: Mapping[str, Any], repo: os.PathLike | str) -> WorkflowPlan:
    """The plan of a run from its completed config (:func:`complete_config`), after the checks that need
    only metadata (input files, label shapes, real-data checksums). ``repo``: the repository of the rules
    (a relative ``degradation.real_data.dir`` absent from the working directory is read from there).

    Raises:
        InputError: one line naming the key and the problem.
    """
    specs = expand_samples(config["samples"])
    check_sample_inputs(specs)
    real = config["degradation"]["real_data"]
    directory = real_data_dir(real["dir"], repo)
    evaluations = dict(real["evaluations"]) if real["enabled"] else {}
    if evaluations:  # enabled and absent (or corrupt) is an error, not a silent skip
        check_real_data(real, directory)
    twin = config["twin"]
    twin_evaluations = {name: ev for name, ev in evaluations.items()
                        if twin["enabled"] and (twin["evaluations"] is None or name in twin["evaluations"])}
    synthetic = [s for s, spec in specs.items() if spec["source"] == "synthetic"]
    return WorkflowPlan(
        specs=specs, samples=list(specs), synthetic=synthetic, from_files=[s for s in specs if s not in synthetic],
        analyse=[s for s, spec in specs.items() if spec["role"] in ("analyse", "both")],
        segment=plan_segment(config["segment"], specs), real_data_dir=directory,
        real_evaluations=evaluations, twin_evaluations=twin_evaluations)


def json_schema() -> dict[str, Any]:
    """The JSON schema of ``config.yaml`` (draft 2020-12), generated from :class:`PipelineConfig`."""
    schema = PipelineConfig.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    """The schema as checked in: one line per definition (compact, and diffs still show what changed)."""
    schema = json_schema()
    defs = schema.pop("$defs")

    def line(obj: Any) -> str:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))

    body = ['"$defs":{\n' + ",\n".join(f"{json.dumps(k)}:{line(v)}" for k, v in sorted(defs.items())) + "}"]
    body += [f"{json.dumps(k)}:{line(v)}" for k, v in sorted(schema.items())]
    text = "{" + ",\n".join(body) + "}\n"
    assert json.loads(text) == {**schema, "$defs": defs}
    return text


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(schema_text())

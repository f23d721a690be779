"""The run's plan: what a workflow run does, derived from its completed configuration.

``workflow/rules/common.smk`` builds a :class:`WorkflowPlan` with :func:`plan_workflow` from the
config that :func:`batterytwin.workflow_config.complete_config` completed: which samples each stage
processes, the segmentation's training and validation data, the real-data evaluations of the
degradation model and the twin, and the checks of input files that need only their metadata (so
``snakemake -n`` reports them). Every problem is an :class:`~batterytwin.errors.InputError` of one
line naming the config key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import InputError
from .inputfile import regular_file

# hand-label images imported per file sample: label store name -> sample key
LABEL_IMPORTS = {"hand_labels": "labels", "val_labels": "val_labels"}


def sample_dir(sample: str) -> str:
    """Where a sample's results go."""
    return f"results/{sample}"


def expand_samples(samples: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Sample name -> spec (as completed); a synthetic time series becomes one sample per frame
    (``name_t000``, ...) with ``frame``, ``n_frames`` and ``series``."""
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
    needed = {f for files in real["train_sets"].values() for f in files}
    needed |= {e["test"] for e in real["evaluations"].values()}
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
    """The plan of a run from its completed config (:func:`~batterytwin.workflow_config.complete_config`),
    after the checks that need only metadata (input files, label shapes, real-data checksums).
    ``repo``: the repository of the rules (a relative ``degradation.real_data.dir`` absent from the
    working directory is read from there).

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

# Input and parameter functions of ingest.smk (kept apart from the rules, as the Snakemake linter asks).

import os

# hand-label stores imported per sample: store name -> sample key
LABEL_IMPORTS = {"hand_labels": "labels", "val_labels": "val_labels"}


def label_store(sample, key):
    """The label store of samples.<sample>.<key> (labels / val_labels): the path itself when it is a
    .zarr store, else results/<sample>/<hand_labels|val_labels>.zarr imported from the label image."""
    path = SAMPLE_SPECS[sample].get(key)
    if not path:
        return None
    if os.path.normpath(path).endswith(".zarr"):
        return path
    name = {v: k for k, v in LABEL_IMPORTS.items()}[key]
    return f"{sample_dir(sample)}/{name}.zarr"


def _label_image(wildcards):
    return SAMPLE_SPECS[wildcards.sample][LABEL_IMPORTS[wildcards.kind]]


def _label_import_options(wildcards):
    spec = SAMPLE_SPECS[wildcards.sample]
    classes = ",".join(f"{cid}={name}" for name, cid in sorted(config["segment"]["classes"].items(), key=lambda kv: kv[1]))
    args = ["--classes", classes, "--format", spec["labels_format"], "--unlabelled", str(spec["labels_unlabelled"])]
    args += ["--dataset", spec["labels_dataset"] or spec["dataset"]]
    if spec["crop"] is not None and spec["bin"] == 1:  # labels drawn on the source scan
        args += ["--crop", spec["crop"]]
    if spec["shape"] is not None:  # raw label images: the scan's shape, one byte per voxel
        args += ["--shape", *map(str, spec["shape"]), "--dtype", "uint8"]
    return args

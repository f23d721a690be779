# Common to the rule files -- the validated config, the run's plan (samples per stage, segmentation
# data, real-data evaluations), per-rule resources, the logged shell command, and the input and
# parameter functions of the rules (one file, as the Snakemake linter asks).
import json
import os
import re
import sys
from types import SimpleNamespace

from snakemake.utils import format as snakemake_format
from snakemake.utils import validate

from batterytwin.config import check_yaml_files
from batterytwin.contracts import format_class_map
from batterytwin.errors import InputError
from batterytwin.report import targets as report_targets
from batterytwin.workflow_config import complete_config
from batterytwin.workflow_plan import LABEL_IMPORTS, plan_workflow, sample_dir

# The typed models (src/batterytwin/<stage>/config.py) fill every default and name a bad key in one
# line; the schema generated from them (workflow/schemas/config.schema.json) is checked after.
# Snakemake reads the configfiles with a loader that keeps the last of duplicate keys: read them
# again with one that refuses them (file:line). The plan checks what needs only metadata (input
# files, label shapes, real-data checksums), so a dry run reports it.
try:
    check_yaml_files(workflow.configfiles)
    config.update(complete_config(config))
    PLAN = plan_workflow(config, os.path.normpath(os.path.join(workflow.current_basedir, "..", "..")))
except InputError as exc:
    sys.exit(f"batterytwin config: error: {exc}")
validate(config, workflow.source_path("../schemas/config.schema.json"), set_default=False)

SAMPLE_SPECS = PLAN.specs
SAMPLES = PLAN.samples
SYNTHETIC = PLAN.synthetic
FROM_FILES = PLAN.from_files
# Samples carried through microstructure, cell simulation and degradation (role analyse/both);
# training-only phantoms stop at segmentation.
ANALYSE = PLAN.analyse
SEG = config["segment"]
DEG = config["degradation"]
DEG_REAL = DEG["real_data"]
TWIN = config["twin"]
REPORT = config["report"]


def logged(command):
    """A rule's shell command with its output in the rule's log. On failure the command's error line
    (the log's last `batterytwin ...: error:` line, else its last line) goes to the console (stderr)
    and the command's exit status is kept."""
    return (
        f"( {command} ) > {{log:q}} 2>&1 || {{{{ status=$?;"
        " line=$(grep -a -E '^batterytwin[^:]*: error:' {log:q} | tail -n 1 || true);"
        ' [ -n "$line" ] || line=$(tail -n 1 {log:q} || true);'
        ' echo "$line" >&2; exit $status; }}'
    )


def _name_regex(names):
    return "|".join(re.escape(n) for n in names) if names else "^$NEVER"


def is_synthetic(sample):
    return sample in SYNTHETIC


def RES(rule_name, mpi=True):
    """Resources of a rule: config resources.default updated by resources.<rule>.

    Kept rather than the Slurm profile's set-resources: local and head-job runs (no profile) need the
    same sizes, and the per-rule launcher is part of the command (docs/slurm.md).

    mpi=False for rules without a `{resources.mpi}` launcher: the Slurm executor plugin treats any
    job with an `mpi` resource as an MPI job (it refuses tasks == 1 and does not wrap it in srun).

    The launcher is pasted unquoted into shell commands: it comes from the trusted config only and
    complete_config() has checked it against workflow_config.MPI_LAUNCHER (a program and options,
    no shell syntax).
    """
    res = dict(config["resources"]["default"])
    res.update(config["resources"].get(rule_name, {}))
    launcher = res.pop("mpi", config["mpi"])
    if mpi:
        res["mpi"] = launcher
    return res


def THREADS(rule_name):
    return int(RES(rule_name)["cpus_per_task"])


# --- ingest -----------------------------------------------------------------------------------------


def _phantom_params(wildcards):
    spec = SAMPLE_SPECS[wildcards.sample]
    args = []
    for key, value in spec["params"].items():
        args.extend(["--param", f"{key}={json.dumps(value)}"])
    return args


def _ingest_options(wildcards):
    spec = SAMPLE_SPECS[wildcards.sample]
    voxel = spec["voxel_size_um"]
    args = ["--format", spec["format"], "--voxel-size-um", *map(str, voxel if isinstance(voxel, list) else [voxel])]
    for key in ("dataset", "dtype", "byte_order", "header_bytes", "crop", "bin", "output_dtype", "nan_fill",
                "channel", "timepoint"):
        if spec.get(key) is not None:
            args.extend([f"--{key.replace('_', '-')}", str(spec[key])])
    if spec.get("clip"):
        args.append("--clip")
    if spec["shape"] is not None:
        args.extend(["--shape", *map(str, spec["shape"])])
    return args


def _label_image(wildcards):
    return SAMPLE_SPECS[wildcards.sample][LABEL_IMPORTS[wildcards.kind]]


def _label_import_options(wildcards):
    spec = SAMPLE_SPECS[wildcards.sample]
    classes = format_class_map({cid: name for name, cid in SEG["classes"].items()})
    args = ["--classes", classes, "--format", spec["labels_format"],
            "--unlabelled", str(spec["labels_unlabelled"])]
    args += ["--dataset", spec["labels_dataset"] or spec["dataset"]]
    if spec["crop"] is not None and spec["bin"] == 1:  # labels drawn on the source scan
        args += ["--crop", spec["crop"]]
    if spec["shape"] is not None:  # raw label images: the scan's shape, one byte per voxel
        args += ["--shape", *map(str, spec["shape"]), "--dtype", "uint8"]
    return args


# --- denoise ----------------------------------------------------------------------------------------


def _denoise_inputs(wildcards):
    inputs = {"volume": f"{sample_dir(wildcards.sample)}/volume.zarr"}
    if config["denoise"]["reference"] and is_synthetic(wildcards.sample):
        inputs["reference"] = f"{sample_dir(wildcards.sample)}/clean.zarr"
    return inputs


# --- microstructure ---------------------------------------------------------------------------------


def _previous_frame(wildcards):
    """Frame t > 0 of a synthetic time series also reads frame t-1's result (lithium growth)."""
    spec = SAMPLE_SPECS[wildcards.sample]
    if spec.get("series") and spec["frame"] > 0:
        return {"previous": f"results/{spec['series']}_t{int(spec['frame']) - 1:03d}/microstructure.json"}
    return {}


# --- degradation and twin (real cycling data) -------------------------------------------------------


def _real_data_files(files):
    return [os.path.join(PLAN.real_data_dir, f) for f in files]


def _real_train_files(wildcards):
    return _real_data_files(DEG_REAL["train_sets"][wildcards.trainset])


def _real_test_file(wildcards):
    return _real_data_files([DEG_REAL["evaluations"][wildcards.evaluation]["test"]])[0]


def _real_train_set_files(wildcards):
    """The training cells of an evaluation's training set."""
    return _real_data_files(DEG_REAL["train_sets"][DEG_REAL["evaluations"][wildcards.evaluation]["train_set"]])


# --- report -----------------------------------------------------------------------------------------


def _report_sample_inputs(files, **kw):
    """Named inputs of a per-sample figure: `files` under results/{sample}/ (+ a phantom's truth/clean)."""
    return lambda w: report_targets.sample_inputs(sample_dir(w.sample), files, is_synthetic(w.sample), **kw)


def _report_command(row):
    """A params function: the `args` of a figure row formatted as a rule's shell command is: {input.x:q},
    {wildcards.x:q}, {params.x} of the row's params, and {params.flags}, `--key path` for each of the
    row's `flags` among the inputs (`PREFIX key=path` with `flags_prefix`). A rule made in a loop cannot
    name the loop's row in its shell command: Snakemake evaluates that again when the job runs."""

    def command(wildcards, input):
        params = {k: v(wildcards) if callable(v) else v for k, v in row.get("params", {}).items()}
        params["flags"] = report_targets.flags(input, row.get("flags", []), row.get("flags_prefix"))
        return snakemake_format(row["args"], input=input, wildcards=wildcards, params=SimpleNamespace(**params))

    return command


def _report_output(row):
    """A figure row's output: the figure in the HTML report (caption, category, subcategory, label),
    or a directory for a row without `fig` (the OME-Zarr export)."""
    if "fig" not in row:
        return directory(row["output"])
    return report(
        row["output"],
        caption=f"../report/{row['fig']}.rst",
        category=row["category"],
        subcategory=row["subcategory"],
        labels={"figure": row["label"]},
    )

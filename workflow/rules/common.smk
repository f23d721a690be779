# Shared helpers: config validation, the sample table, per-rule resources.
import json
import re
import sys

from snakemake.utils import validate

from batterytwin.config import check_yaml_files
from batterytwin.errors import InputError
from batterytwin.workflow_config import complete_config

# The typed models (src/batterytwin/<stage>/config.py) fill every default and name a bad key in one
# line; the schema generated from them (workflow/schemas/config.schema.json) is checked after.
# Snakemake reads the configfiles with a loader that keeps the last of duplicate keys: read them
# again with one that refuses them (file:line).
try:
    check_yaml_files(workflow.configfiles)
    config.update(complete_config(config))
except InputError as exc:
    sys.exit(f"batterytwin config: error: {exc}")
validate(config, workflow.source_path("../schemas/config.schema.json"), set_default=False)


def _expand_samples(samples):
    """Sample name -> spec; a synthetic time series becomes one sample per frame (name_t000, ...)."""
    out = {}
    for name, spec in samples.items():
        frames = spec["frames"] if spec["source"] == "synthetic" else 1
        if frames == 1:
            out[name] = dict(spec, frame=0, n_frames=1)
        else:
            for t in range(frames):
                out[f"{name}_t{t:03d}"] = dict(spec, frame=t, n_frames=frames, series=name)
    return out


SAMPLE_SPECS = _expand_samples(config["samples"])
SAMPLES = list(SAMPLE_SPECS)
SYNTHETIC = [s for s, spec in SAMPLE_SPECS.items() if spec["source"] == "synthetic"]
FROM_FILES = [s for s in SAMPLES if s not in SYNTHETIC]
# Samples carried through microstructure, cell simulation and degradation (role analyse/both);
# training-only phantoms stop at segmentation.
ANALYSE = [s for s, spec in SAMPLE_SPECS.items() if spec["role"] in ("analyse", "both")]


def _name_regex(names):
    return "|".join(re.escape(n) for n in names) if names else "^$NEVER"


def sample_dir(sample):
    return f"results/{sample}"


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

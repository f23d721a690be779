# Degradation (DiffBatt-style diffusion model of capacity fade):
#  1. degradation_train: train on the cellsim sweeps of all samples (held-out conditions excluded)
#     -> results/models/degradation/sweep_model.pt, DDP over MPI ranks, checkpoints in work/models/degradation/.
#  2. degradation_predict: per sample, sample SOH curves and cycle-life intervals for every condition of
#     results/{sample}/sweep.zarr, score the held-out ones next to the baselines
#     -> results/{sample}/degradation.zarr + degradation.json.
#  3. Real cycling data (DiffBatt splits, config degradation.real_data): train per training set, evaluate
#     per test split -> results/degradation_real/{evaluation}.zarr + .json. Default data: the splits
#     shipped in data/cycling (checked against its SHA256SUMS); enabled with the data absent or corrupt
#     is an error (set degradation.real_data.enabled: false to skip).
import json
import os
import sys

DEG = config["degradation"]
DEG_REAL = DEG["real_data"]
DEG_REAL_ON = DEG_REAL["enabled"] and bool(DEG_REAL["evaluations"])
# a relative dir is read from the working directory, else from the repository (the shipped data/cycling)
DEG_REAL_DIR = DEG_REAL["dir"]
if not os.path.isabs(DEG_REAL_DIR) and not os.path.isdir(DEG_REAL_DIR):
    _in_repo = os.path.join(workflow.basedir, DEG_REAL_DIR)
    DEG_REAL_DIR = _in_repo if os.path.isdir(_in_repo) else DEG_REAL_DIR
if DEG_REAL_ON:  # enabled and absent (or corrupt) is an error, not a silent skip
    from batterytwin.cycling.loaders import verify_checksum

    if not os.path.isdir(DEG_REAL_DIR):
        sys.exit(
            f"batterytwin config: error: degradation.real_data.dir: real cycling data directory {DEG_REAL['dir']!r} "
            "not found (the shipped data is data/cycling; set enabled: false to skip real-data evaluation)"
        )
    _needed = {f for files in DEG_REAL["train_sets"].values() for f in files} | {
        e["test"] for e in DEG_REAL["evaluations"].values()
    }
    for _name in sorted(_needed):
        _path = os.path.join(DEG_REAL_DIR, _name)
        if not os.path.isfile(_path):
            sys.exit(f"batterytwin config: error: degradation.real_data: {_path}: no such file")
        try:
            verify_checksum(_path)
        except InputError as exc:
            sys.exit(f"batterytwin config: error: degradation.real_data: {exc}")
DEG_REAL_EVALS = DEG_REAL["evaluations"] if DEG_REAL_ON else {}

DEGRADATION_TARGETS = expand("results/{sample}/degradation.{ext}", sample=ANALYSE, ext=("zarr", "json")) + expand(
    "results/degradation_real/{evaluation}.{ext}", evaluation=list(DEG_REAL_EVALS), ext=("zarr", "json")
)


include: "degradation_functions.smk"


rule degradation_train:
    input:
        sweeps=expand("results/{sample}/sweep.zarr", sample=ANALYSE),
    output:
        model="results/models/degradation/sweep_model.pt",
        metrics="results/models/degradation/sweep_model.json",
    params:
        settings=json.dumps(DEG),
        checkpoint="work/models/degradation/sweep_model.ckpt.pt",
    log:
        "logs/models/degradation_train.log",
    message:
        "Train the degradation diffusion model on the sweeps of {SAMPLES}"
    conda:
        "../../envs/gpu.yaml"
    threads: THREADS("degradation_train")
    resources:
        **RES("degradation_train"),
    shell:
        "{resources.mpi} -n {resources.tasks} batterytwin train-degradation --sweep {input.sweeps:q}"
        " --config-json {params.settings:q} --checkpoint {params.checkpoint:q}"
        " --out {output.model:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule degradation_predict:
    input:
        model=rules.degradation_train.output.model,
        sweep="results/{sample}/sweep.zarr",
    output:
        store=directory("results/{sample}/degradation.zarr"),
        metrics="results/{sample}/degradation.json",
    params:
        settings=json.dumps(DEG),
    log:
        "logs/{sample}/degradation_predict.log",
    message:
        "Degradation curves, cycle-life intervals and metrics for {wildcards.sample}"
    conda:
        "../../envs/gpu.yaml"
    threads: THREADS("degradation_predict")
    resources:
        **RES("degradation_predict"),
    shell:
        "{resources.mpi} -n {resources.tasks} batterytwin predict-degradation --model {input.model:q}"
        " --sweep {input.sweep:q} --config-json {params.settings:q}"
        " --out {output.store:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule degradation_real_train:
    input:
        npz=_real_train_files,
    output:
        model="results/models/degradation/real_{trainset}.pt",
        metrics="results/models/degradation/real_{trainset}.json",
    params:
        settings=json.dumps(dict(DEG, train={**DEG["train"], **DEG_REAL["train"]})),
        checkpoint="work/models/degradation/real_{trainset}.ckpt.pt",
    log:
        "logs/models/degradation_real_train_{trainset}.log",
    message:
        "Train the degradation diffusion model on real cycling data: {input.npz}"
    conda:
        "../../envs/gpu.yaml"
    threads: THREADS("degradation_train")
    resources:
        **RES("degradation_train"),
    shell:
        "{resources.mpi} -n {resources.tasks} batterytwin train-degradation --npz {input.npz:q}"
        " --config-json {params.settings:q} --checkpoint {params.checkpoint:q}"
        " --out {output.model:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule degradation_real_predict:
    input:
        model=lambda w: f"results/models/degradation/real_{DEG_REAL_EVALS[w.evaluation]['train_set']}.pt",
        npz=lambda w: os.path.join(DEG_REAL_DIR, DEG_REAL_EVALS[w.evaluation]["test"]),
    output:
        store=directory("results/degradation_real/{evaluation}.zarr"),
        metrics="results/degradation_real/{evaluation}.json",
    params:
        settings=json.dumps(dict(DEG, sample={**DEG["sample"], **DEG_REAL["sample"]})),
    log:
        "logs/degradation_real/{evaluation}.log",
    message:
        "Evaluate the real-data degradation model on {input.npz} (RUL, intervals, baselines)"
    conda:
        "../../envs/gpu.yaml"
    threads: THREADS("degradation_predict")
    resources:
        **RES("degradation_predict"),
    shell:
        "{resources.mpi} -n {resources.tasks} batterytwin predict-degradation --model {input.model:q}"
        " --npz {input.npz:q} --config-json {params.settings:q}"
        " --out {output.store:q} --metrics {output.metrics:q} > {log:q} 2>&1"

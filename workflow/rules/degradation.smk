# Degradation (DiffBatt-style diffusion model of capacity fade):
#  1. degradation_train: train on the cellsim sweeps of all samples (held-out conditions excluded)
#     -> results/models/degradation/sweep_model.pt, DDP over MPI ranks, checkpoints in work/models/degradation/.
#  2. degradation_predict: per sample, sample SOH curves and cycle-life intervals for every condition of
#     results/{sample}/sweep.zarr, score the held-out ones next to the baselines
#     -> results/{sample}/degradation.zarr + degradation.json.
#  3. Real cycling data (DiffBatt splits, config degradation.real_data): train per training set, evaluate
#     per test split -> results/degradation_real/{evaluation}.zarr + .json. Default data: the splits
#     shipped in data/cycling (checked against its SHA256SUMS); enabled with the data absent or corrupt
#     is an error (set degradation.real_data.enabled: false to skip; checked by the run's plan).
import json

DEGRADATION_TARGETS = expand("results/{sample}/degradation.{ext}", sample=ANALYSE, ext=("zarr", "json")) + expand(
    "results/degradation_real/{evaluation}.{ext}", evaluation=list(PLAN.real_evaluations), ext=("zarr", "json")
)


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
        logged(
            "{resources.mpi} -n {resources.tasks} batterytwin train-degradation --sweep {input.sweeps:q}"
            " --config-json {params.settings:q} --checkpoint {params.checkpoint:q}"
            " -o {output.model:q} --metrics {output.metrics:q}"
        )


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
        logged(
            "{resources.mpi} -n {resources.tasks} batterytwin predict-degradation --model {input.model:q}"
            " --sweep {input.sweep:q} --config-json {params.settings:q}"
            " -o {output.store:q} --metrics {output.metrics:q}"
        )


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
        logged(
            "{resources.mpi} -n {resources.tasks} batterytwin train-degradation --npz {input.npz:q}"
            " --config-json {params.settings:q} --checkpoint {params.checkpoint:q}"
            " -o {output.model:q} --metrics {output.metrics:q}"
        )


rule degradation_real_predict:
    input:
        model=lambda w: f"results/models/degradation/real_{DEG_REAL['evaluations'][w.evaluation]['train_set']}.pt",
        npz=_real_test_file,
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
        logged(
            "{resources.mpi} -n {resources.tasks} batterytwin predict-degradation --model {input.model:q}"
            " --npz {input.npz:q} --config-json {params.settings:q}"
            " -o {output.store:q} --metrics {output.metrics:q}"
        )

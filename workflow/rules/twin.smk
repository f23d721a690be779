# Hybrid digital twin of real cells (issue 17, docs/twin.md): for each real-data evaluation of
# degradation.real_data (or those named in twin.evaluations), fit the reduced ageing model per cell,
# train the residual correction across the training cells, forecast SOH/RUL with intervals and
# score physics, hybrid, the diffusion model (its prediction store of the same evaluation), the
# variance model and the random forest on the same cells and end-of-life rule
# -> results/twin/{evaluation}.zarr + .json. Include after degradation.smk (reads DEG_REAL_*).
import json
import os

TWIN = config["twin"]
TWIN_DIR = DEG_REAL_DIR  # twin.data_dir is null or equal to it (checked by the workflow config)
_twin_unknown = sorted(set(TWIN["evaluations"] or []) - set(DEG_REAL["evaluations"]))
if _twin_unknown:
    raise ValueError(f"config: twin.evaluations: {_twin_unknown} not in degradation.real_data.evaluations")
TWIN_EVALS = {
    name: ev
    for name, ev in DEG_REAL_EVALS.items()
    if TWIN["enabled"] and (TWIN["evaluations"] is None or name in TWIN["evaluations"])
}

TWIN_TARGETS = expand("results/twin/{evaluation}.{ext}", evaluation=list(TWIN_EVALS), ext=("zarr", "json"))


rule twin:
    input:
        train=lambda w: [
            os.path.join(TWIN_DIR, f) for f in DEG_REAL["train_sets"][TWIN_EVALS[w.evaluation]["train_set"]]
        ],
        test=lambda w: os.path.join(TWIN_DIR, TWIN_EVALS[w.evaluation]["test"]),
        diffusion="results/degradation_real/{evaluation}.zarr",
    output:
        store=directory("results/twin/{evaluation}.zarr"),
        metrics="results/twin/{evaluation}.json",
    params:
        settings=json.dumps(TWIN),
        checkpoint="work/models/twin/{evaluation}.ckpt.pt",
    log:
        "logs/twin/{evaluation}.log",
    message:
        "Hybrid digital twin of the real cells of {wildcards.evaluation}: physics fit, learned correction, RUL"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("twin")
    resources:
        **RES("twin", mpi=False),
    shell:
        "batterytwin twin --train {input.train:q} --test {input.test:q} --diffusion {input.diffusion:q}"
        " --config-json {params.settings:q} --checkpoint {params.checkpoint:q}"
        " --out {output.store:q} --metrics {output.metrics:q} > {log:q} 2>&1"

# Hybrid digital twin of real cells (docs/twin.md): for each real-data evaluation of
# degradation.real_data (or those named in twin.evaluations), fit the reduced ageing model per cell,
# train the residual correction across the training cells, forecast SOH/RUL with intervals and
# score physics, hybrid, the diffusion model (its prediction store of the same evaluation), the
# variance model and the random forest on the same cells and end-of-life rule
# -> results/twin/{evaluation}.zarr + .json.
import json

TWIN_TARGETS = expand(
    "results/twin/{evaluation}.{ext}", evaluation=list(PLAN.twin_evaluations), ext=("zarr", "json")
)


rule twin:
    input:
        train=_real_train_set_files,
        test=_real_test_file,
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
        logged(
            "batterytwin twin --train {input.train:q} --test {input.test:q} --diffusion {input.diffusion:q}"
            " --config-json {params.settings:q} --checkpoint {params.checkpoint:q}"
            " -o {output.store:q} --metrics {output.metrics:q}"
        )

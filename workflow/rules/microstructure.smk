# Microstructure: results/{sample}/labels.zarr -> microstructure.json (tortuosity tensor, cell block
# for cellsim, volume fractions, interfaces, percolation, lithium/dendrite statistics) + msd.npz.
# Walker batches run over MPI ranks; finished batches are checkpointed in work/{sample}/microstructure
# (outside the declared outputs), so a rerun after a time-out only walks the missing batches.
import json


MICROSTRUCTURE_TARGETS = expand("results/{sample}/microstructure.json", sample=ANALYSE)


rule microstructure:
    input:
        unpack(_previous_frame),
        labels="results/{sample}/labels.zarr",
    output:
        metrics="results/{sample}/microstructure.json",
        msd="results/{sample}/msd.npz",
    params:
        settings=json.dumps(config["microstructure"]),
        work="work/{sample}/microstructure",
        previous=lambda w, input: input.get("previous", ""),
    log:
        "logs/{sample}/microstructure.log",
    message:
        "Random-walk tortuosity and morphology of {wildcards.sample}: {input.labels} -> {output.metrics}"
    conda:
        "../../envs/gpu.yaml"
    threads: THREADS("microstructure")
    resources:
        **RES("microstructure"),
    shell:
        logged(
            "{resources.mpi} -n {resources.tasks} batterytwin microstructure"
            " -i {input.labels:q} -o {output.metrics:q} --msd {output.msd:q}"
            " --checkpoint-dir {params.work:q} --previous={params.previous:q}"
            " --config-json {params.settings:q}"
        )

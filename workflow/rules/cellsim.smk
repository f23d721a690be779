# Cell simulation: results/{sample}/microstructure.json -> PyBaMM cycling sweep
# results/{sample}/sweep.zarr (+ sweep.json), run over MPI ranks; per-condition results in
# work/{sample}/cellsim/ survive a failed job, so a rerun computes only the missing conditions.
import json


CELLSIM_TARGETS = expand("results/{sample}/sweep.zarr", sample=ANALYSE)


rule simulate:
    input:
        microstructure="results/{sample}/microstructure.json",
    output:
        sweep=directory("results/{sample}/sweep.zarr"),
        summary="results/{sample}/sweep.json",
    params:
        settings=json.dumps(config["cellsim"]),
        work="work/{sample}/cellsim",
    log:
        "logs/{sample}/simulate.log",
    message:
        "PyBaMM sweep for {wildcards.sample}: {input.microstructure} -> {output.sweep}"
    conda:
        "../../envs/pybamm.yaml"
    threads: THREADS("simulate")
    resources:
        **RES("simulate"),
    shell:
        logged(
            "{resources.mpi} -n {resources.tasks} batterytwin simulate"
            " -i {input.microstructure:q} -o {output.sweep:q} --summary {output.summary:q}"
            " --work-dir {params.work:q} --config-json {params.settings:q}"
        )

# Ingest: tomography files or the built-in phantom -> results/{sample}/volume.zarr
# (synthetic samples also get clean.zarr, the noise-free image, and truth.zarr, the labels).
# Hand labels of file samples (samples.<name>.labels / val_labels: a label image in any input format)
# -> results/{sample}/hand_labels.zarr / val_labels.zarr, checked against segment.classes and volume.zarr.

INGEST_TARGETS = expand("results/{sample}/volume.zarr", sample=SAMPLES)


rule phantom:
    output:
        volume=directory("results/{sample}/volume.zarr"),
        clean=directory("results/{sample}/clean.zarr"),
        truth=directory("results/{sample}/truth.zarr"),
    wildcard_constraints:
        sample=_name_regex(SYNTHETIC),
    params:
        shape=lambda w: SAMPLE_SPECS[w.sample]["shape"],
        seed=lambda w: SAMPLE_SPECS[w.sample]["seed"],
        frame=lambda w: SAMPLE_SPECS[w.sample]["frame"],
        n_frames=lambda w: SAMPLE_SPECS[w.sample]["n_frames"],
        voxel=lambda w: SAMPLE_SPECS[w.sample]["voxel_size_um"],
        extra=_phantom_params,
        chunk=config["store"]["chunk"],
        shard=config["store"]["shard"],
    log:
        "logs/{sample}/phantom.log",
    message:
        "Synthetic cell phantom {wildcards.sample}"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("phantom")
    resources:
        **RES("phantom"),
    shell:
        logged(
            "{resources.mpi} -n {resources.tasks} batterytwin phantom -o {output.volume:q}"
            " --clean {output.clean:q} --labels {output.truth:q} --shape {params.shape:q}"
            " --seed {params.seed:q} --frame {params.frame:q} --n-frames {params.n_frames:q}"
            " --voxel-size-um {params.voxel:q} {params.extra:q}"
            " --chunk {params.chunk:q} --shard {params.shard:q}"
        )


rule ingest:
    input:
        lambda w: SAMPLE_SPECS[w.sample]["source"],
    output:
        volume=directory("results/{sample}/volume.zarr"),
    wildcard_constraints:
        sample=_name_regex(FROM_FILES),
    params:
        options=_ingest_options,
        chunk=config["store"]["chunk"],
        shard=config["store"]["shard"],
        memory=config["ingest"]["max_memory_mb"],
    log:
        "logs/{sample}/ingest.log",
    message:
        "Ingest {input} -> {output.volume}"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("ingest")
    resources:
        **RES("ingest", mpi=False),
    shell:
        logged(
            "batterytwin ingest -i {input:q} -o {output.volume:q} {params.options:q}"
            " --chunk {params.chunk:q} --shard {params.shard:q} --max-memory-mb {params.memory:q}"
        )


rule import_labels:
    input:
        labels=_label_image,
        like="results/{sample}/volume.zarr",
    output:
        store=directory("results/{sample}/{kind}.zarr"),
    wildcard_constraints:
        sample=_name_regex(FROM_FILES),
        kind="|".join(LABEL_IMPORTS),
    params:
        options=_label_import_options,
        chunk=config["store"]["chunk"],
        shard=config["store"]["shard"],
        memory=config["ingest"]["max_memory_mb"],
    log:
        "logs/{sample}/import_{kind}.log",
    message:
        "Import hand labels {input.labels} -> {output.store}"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("ingest")
    resources:
        **RES("ingest", mpi=False),
    shell:
        logged(
            "batterytwin ingest -i {input.labels:q} -o {output.store:q} --labels --like {input.like:q}"
            " {params.options:q} --chunk {params.chunk:q} --shard {params.shard:q} --max-memory-mb {params.memory:q}"
        )

# Denoise: fast 3-D non-local means, results/{sample}/volume.zarr -> results/{sample}/denoised.zarr
# (float32) + denoise.json (noise sigma, h, PSNR/SSIM against clean.zarr for synthetic samples).
# Shards are split over MPI ranks; finished shards survive a restart in work/{sample}/denoise/.

import json

DENOISE_TARGETS = expand("results/{sample}/denoised.zarr", sample=SAMPLES)


rule denoise:
    input:
        unpack(_denoise_inputs),
    output:
        volume=directory("results/{sample}/denoised.zarr"),
        metrics="results/{sample}/denoise.json",
    params:
        settings=json.dumps(config["denoise"]),
        reference=lambda w, input: ["--reference", input.reference] if "reference" in input.keys() else [],
        work="work/{sample}/denoise",
    log:
        "logs/{sample}/denoise.log",
    message:
        "NLM denoising of {wildcards.sample}: {input.volume} -> {output.volume}"
    conda:
        "../../envs/gpu.yaml" if RES("denoise").get("gpu") else "../../envs/cpu.yaml"
    threads: THREADS("denoise")
    resources:
        **RES("denoise"),
    shell:
        logged(
            "{resources.mpi} -n {resources.tasks} batterytwin denoise -i {input.volume:q} -o {output.volume:q}"
            " --config-json {params.settings:q} {params.reference:q} --threads {threads:q}"
            " --metrics {output.metrics:q} --work-dir {params.work:q}"
        )

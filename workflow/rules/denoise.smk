# Denoise: fast 3-D non-local means, results/{sample}/volume.zarr -> results/{sample}/denoised.zarr
# (float32) + denoise.json (noise sigma, h, PSNR/SSIM against clean.zarr for synthetic samples).
# Shards are split over MPI ranks; finished shards survive a restart in work/{sample}/denoise/.

validate(config, workflow.source_path("../schemas/denoise.schema.yaml"))

DENOISE = config.get("denoise", {})
DENOISE_TARGETS = expand("results/{sample}/denoised.zarr", sample=SAMPLES)


def _denoise_inputs(wildcards):
    inputs = {"volume": f"{sample_dir(wildcards.sample)}/volume.zarr"}
    if DENOISE.get("reference", True) and is_synthetic(wildcards.sample):
        inputs["reference"] = f"{sample_dir(wildcards.sample)}/clean.zarr"
    return inputs


def _denoise_options(wildcards, input):
    d = DENOISE
    args = ["--patch-size", d.get("patch_size", 5), "--search-radius", d.get("search_radius", 6),
            "--backend", d.get("backend", "auto"), "--device", d.get("device", "auto"),
            "--sigma-max-voxels", d.get("sigma_max_voxels", 16777216),
            "--chunk", d.get("chunk", 0), "--shard", d.get("shard", 0)]
    if d.get("h") is not None:
        args += ["--h", d["h"]]
    else:
        args += ["--h-factor", d.get("h_factor", 1.2)]
    if d.get("subtract_sigma", False):
        args.append("--subtract-sigma")
    if d.get("compat"):
        args += ["--compat", d["compat"]]
    if "reference" in input.keys():
        args += ["--reference", input.reference]
    return [str(a) for a in args]


rule denoise:
    input:
        unpack(_denoise_inputs),
    output:
        volume=directory("results/{sample}/denoised.zarr"),
        metrics="results/{sample}/denoise.json",
    params:
        options=_denoise_options,
        work="work/{sample}/denoise",
    log:
        "logs/{sample}/denoise.log",
    message:
        "NLM denoising of {wildcards.sample}: {input.volume} -> {output.volume}"
    conda:
        "../../envs/gpu.yaml" if RES("denoise").get("gpu", 0) else "../../envs/cpu.yaml"
    threads: THREADS("denoise")
    resources:
        **RES("denoise"),
    shell:
        "{resources.mpi} -n {resources.tasks} batterytwin denoise {input.volume:q} {output.volume:q}"
        " {params.options:q} --threads {threads:q} --metrics {output.metrics:q}"
        " --work-dir {params.work:q} > {log:q} 2>&1"

# Input and parameter functions of denoise.smk (kept apart from the rules, as the Snakemake linter asks).


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

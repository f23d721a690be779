# Input and parameter functions of denoise.smk (kept apart from the rules, as the Snakemake linter asks).


def _denoise_inputs(wildcards):
    inputs = {"volume": f"{sample_dir(wildcards.sample)}/volume.zarr"}
    if config["denoise"]["reference"] and is_synthetic(wildcards.sample):
        inputs["reference"] = f"{sample_dir(wildcards.sample)}/clean.zarr"
    return inputs

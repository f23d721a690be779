# Input and parameter functions of microstructure.smk (kept apart from the rules, as the Snakemake linter asks).


def _previous_frame(wildcards):
    """Frame t > 0 of a synthetic time series also reads frame t-1's result (lithium growth)."""
    spec = SAMPLE_SPECS[wildcards.sample]
    if spec.get("series") and spec["frame"] > 0:
        return {"previous": f"results/{spec['series']}_t{int(spec['frame']) - 1:03d}/microstructure.json"}
    return {}

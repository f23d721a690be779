# batterytwin: X-ray micro-CT of lithium batteries -> digital twin.
# `snakemake --cores 2` runs the whole chain on the built-in synthetic phantom (config.yaml);
# `snakemake --profile slurm/profile --configfile config.cluster.yaml` runs it on a Slurm cluster.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"


rule all:
    input:
        INGEST_TARGETS,
    default_target: True

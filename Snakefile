# batterytwin: X-ray micro-CT of lithium batteries -> digital twin.
# `snakemake --cores 2` runs the whole chain on the built-in synthetic phantom (config.yaml);
# on a Slurm cluster see docs/slurm.md (config.cluster.yaml, slurm/). The rule files share
# workflow/rules/common.smk (included first): the validated config and the run's plan.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/denoise.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/microstructure.smk"
include: "workflow/rules/cellsim.smk"
include: "workflow/rules/degradation.smk"
include: "workflow/rules/twin.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        INGEST_TARGETS,
        DENOISE_TARGETS,
        SEGMENT_TARGETS,
        MICROSTRUCTURE_TARGETS,
        CELLSIM_TARGETS,
        DEGRADATION_TARGETS,
        TWIN_TARGETS,
        REPORT_TARGETS(),
    default_target: True

# Report: paper-style figures of every stage's outputs for `snakemake --report results/report.html`
# (grouped by stage: category = stage, subcategory = sample) and the OME-Zarr export for napari.
# Include this file AFTER the stage rule files: it reads their *_TARGETS / SEGMENT_* variables to
# draw figures for exactly the samples each stage processes.
#
# For `rule all`: REPORT_FIGURES is {stage: [targets]}; REPORT_TARGETS(*stages) flattens the stages
# asked for (all stages when none is named), e.g. `REPORT_TARGETS("ingest", "denoise")`.
from batterytwin.report import targets as report_targets

REPORT = config["report"]
_SEG_INPUT = globals().get("SEGMENT_INPUT", "denoised.zarr")
_SEG_UNCERTAINTY = bool(globals().get("SEGMENT_UNCERTAINTY", False))
_DEG_REAL_EVALS = list(globals().get("DEG_REAL_EVALS", {}))
_REPORT_SAMPLES = {
    stage: report_targets.stage_samples(globals().get(variable), filename, SAMPLES)
    for stage, variable, filename in (
        ("denoise", "DENOISE_TARGETS", "denoised.zarr"),
        ("segment", "SEGMENT_TARGETS", "labels.zarr"),
        ("microstructure", "MICROSTRUCTURE_TARGETS", "microstructure.json"),
        ("cellsim", "CELLSIM_TARGETS", "sweep.zarr"),
        ("degradation", "DEGRADATION_TARGETS", "degradation.zarr"),
    )
}
_SERIES = report_targets.series_frames(_REPORT_SAMPLES["microstructure"], SAMPLE_SPECS)

REPORT_FIGURES = {
    "ingest": expand("results/{sample}/figures/ingest_slices.png", sample=SAMPLES),
    "denoise": expand("results/{sample}/figures/denoise_nlm.png", sample=_REPORT_SAMPLES["denoise"]),
    "segment": ["results/figures/segment_training.png"]
    + expand("results/{sample}/figures/segment_slices.png", sample=_REPORT_SAMPLES["segment"])
    + expand("results/{sample}/ome/volume.ome.zarr", sample=_REPORT_SAMPLES["segment"]),
    "microstructure": expand(
        "results/{sample}/figures/{fig}.png",
        sample=_REPORT_SAMPLES["microstructure"],
        fig=["microstructure_tortuosity", "microstructure_table"],
    )
    + expand("results/figures/series_{series}_lithium.png", series=list(_SERIES)),
    "cellsim": expand(
        "results/{sample}/figures/{fig}.png",
        sample=_REPORT_SAMPLES["cellsim"],
        fig=["cellsim_voltage", "cellsim_fade"],
    ),
    "degradation": expand(
        "results/{sample}/figures/{fig}.png",
        sample=_REPORT_SAMPLES["degradation"],
        fig=["degradation_predictions", "degradation_rul"],
    )
    + expand(
        "results/figures/degradation_real_{evaluation}_{fig}.png",
        evaluation=_DEG_REAL_EVALS,
        fig=["predictions", "rul"],
    ),
}
REPORT_TARGETS = lambda *stages: report_targets.flatten(REPORT_FIGURES, stages)


rule report_slices_ingest:
    input:
        unpack(
            lambda w: report_targets.sample_inputs(
                sample_dir(w.sample), {"raw": "volume.zarr"}, is_synthetic(w.sample)
            )
        ),
    output:
        report(
            "results/{sample}/figures/ingest_slices.png",
            caption="../report/ingest_slices.rst",
            category="1 Ingest",
            subcategory="{sample}",
            labels={"figure": "orthogonal slices: raw CT"},
        ),
    params:
        truth=lambda w, input: report_targets.flags(input, ["truth"]),
        dpi=REPORT["dpi"],
    log:
        "logs/{sample}/report_slices_ingest.log",
    message:
        "Figure: orthogonal slices of {wildcards.sample} (raw CT)"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("report")
    resources:
        **RES("report"),
    shell:
        "batterytwin report slices --raw {input.raw:q} {params.truth:q} --title {wildcards.sample:q}"
        " --dpi {params.dpi:q} --out {output:q} > {log:q} 2>&1"


rule report_nlm:
    input:
        unpack(
            lambda w: report_targets.sample_inputs(
                sample_dir(w.sample),
                {"noisy": "volume.zarr", "denoised": "denoised.zarr", "metrics": "denoise.json"},
                is_synthetic(w.sample),
                truth=False,
                clean=True,
            )
        ),
    output:
        report(
            "results/{sample}/figures/denoise_nlm.png",
            caption="../report/denoise_nlm.rst",
            category="2 Denoise",
            subcategory="{sample}",
            labels={"figure": "NLM before/after"},
        ),
    params:
        clean=lambda w, input: report_targets.flags(input, ["clean"]),
        dpi=REPORT["dpi"],
    log:
        "logs/{sample}/report_nlm.log",
    message:
        "Figure: NLM denoising of {wildcards.sample}"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("report")
    resources:
        **RES("report"),
    shell:
        "batterytwin report nlm --noisy {input.noisy:q} --denoised {input.denoised:q} {params.clean:q}"
        " --metrics {input.metrics:q} --dpi {params.dpi:q} --out {output:q} > {log:q} 2>&1"


rule report_slices_segment:
    input:
        unpack(
            lambda w: report_targets.sample_inputs(
                sample_dir(w.sample),
                {"raw": "volume.zarr", "labels": "labels.zarr"},
                is_synthetic(w.sample),
                optional={
                    k: v
                    for k, v, use in (
                        ("denoised", "denoised.zarr", _SEG_INPUT == "denoised.zarr"),
                        ("uncertainty", "uncertainty.zarr", _SEG_UNCERTAINTY),
                    )
                    if use
                },
            )
        ),
    output:
        report(
            "results/{sample}/figures/segment_slices.png",
            caption="../report/segment_slices.rst",
            category="3 Segmentation",
            subcategory="{sample}",
            labels={"figure": "orthogonal slices: raw, denoised, segmented"},
        ),
    params:
        extra=lambda w, input: report_targets.flags(input, ["denoised", "truth", "uncertainty"]),
        dpi=REPORT["dpi"],
    log:
        "logs/{sample}/report_slices_segment.log",
    message:
        "Figure: orthogonal slices of {wildcards.sample} (raw, denoised, segmented)"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("report")
    resources:
        **RES("report"),
    shell:
        "batterytwin report slices --raw {input.raw:q} --labels {input.labels:q} {params.extra:q}"
        " --title {wildcards.sample:q} --dpi {params.dpi:q} --out {output:q} > {log:q} 2>&1"


rule report_training:
    input:
        metrics="results/models/segment/metrics.json",
    output:
        report(
            "results/figures/segment_training.png",
            caption="../report/segment_training.rst",
            category="3 Segmentation",
            subcategory="model",
            labels={"figure": "training loss and Dice"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        "logs/report/segment_training.log",
    message:
        "Figure: segmentation training loss and per-class Dice"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("report")
    resources:
        **RES("report"),
    shell:
        "batterytwin report training {input.metrics:q} --dpi {params.dpi:q} --out {output:q} > {log:q} 2>&1"


rule report_ome:
    input:
        unpack(
            lambda w: report_targets.sample_inputs(
                sample_dir(w.sample), {"volume": "volume.zarr", "labels": "labels.zarr"}, is_synthetic(w.sample)
            )
        ),
    output:
        directory("results/{sample}/ome/volume.ome.zarr"),
    params:
        truth=lambda w, input: report_targets.flags(input, ["truth"], label_prefix="--labels"),
        levels=REPORT["ome_levels"],
        chunk=REPORT["ome_chunk"],
    log:
        "logs/{sample}/report_ome.log",
    message:
        "OME-Zarr export of {wildcards.sample} (volume + labels, {params.levels} extra levels)"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("report_ome")
    resources:
        **RES("report_ome"),
    shell:
        "batterytwin report ome --volume {input.volume:q} --labels segmentation={input.labels:q} {params.truth:q}"
        " --levels {params.levels:q} --chunk {params.chunk:q} --out {output:q} > {log:q} 2>&1"


rule report_tortuosity:
    input:
        microstructure="results/{sample}/microstructure.json",
        msd="results/{sample}/msd.npz",
    output:
        report(
            "results/{sample}/figures/microstructure_tortuosity.png",
            caption="../report/microstructure_tortuosity.rst",
            category="4 Microstructure",
            subcategory="{sample}",
            labels={"figure": "MSD curves and tortuosity"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        "logs/{sample}/report_tortuosity.log",
    message:
        "Figure: tortuosity of {wildcards.sample}"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("report")
    resources:
        **RES("report"),
    shell:
        "batterytwin report tortuosity {input.microstructure:q} --msd {input.msd:q}"
        " --dpi {params.dpi:q} --out {output:q} > {log:q} 2>&1"


rule report_microstructure_table:
    input:
        microstructure="results/{sample}/microstructure.json",
    output:
        report(
            "results/{sample}/figures/microstructure_table.png",
            caption="../report/microstructure_table.rst",
            category="4 Microstructure",
            subcategory="{sample}",
            labels={"figure": "microstructure table"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        "logs/{sample}/report_microstructure_table.log",
    message:
        "Figure: microstructure table of {wildcards.sample}"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("report")
    resources:
        **RES("report"),
    shell:
        "batterytwin report microstructure {input.microstructure:q}"
        " --dpi {params.dpi:q} --out {output:q} > {log:q} 2>&1"


rule report_series:
    input:
        lambda wildcards: [f"{sample_dir(s)}/microstructure.json" for s in _SERIES[wildcards.series]],
    output:
        report(
            "results/figures/series_{series}_lithium.png",
            caption="../report/series_lithium.rst",
            category="4 Microstructure",
            subcategory="{series} (time series)",
            labels={"figure": "lithium growth over frames"},
        ),
    params:
        names=lambda wildcards: _SERIES[wildcards.series],
        dpi=REPORT["dpi"],
    log:
        "logs/report/series_{series}.log",
    message:
        "Figure: lithium growth over the frames of {wildcards.series}"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("report")
    resources:
        **RES("report"),
    shell:
        "batterytwin report series {input:q} --names {params.names:q}"
        " --dpi {params.dpi:q} --out {output:q} > {log:q} 2>&1"


rule report_voltage:
    input:
        sweep="results/{sample}/sweep.zarr",
    output:
        report(
            "results/{sample}/figures/cellsim_voltage.png",
            caption="../report/cellsim_voltage.rst",
            category="5 Cell simulation",
            subcategory="{sample}",
            labels={"figure": "discharge voltage curves"},
        ),
    params:
        n=REPORT["max_conditions"],
        dpi=REPORT["dpi"],
    log:
        "logs/{sample}/report_voltage.log",
    message:
        "Figure: PyBaMM voltage curves of {wildcards.sample}"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("report")
    resources:
        **RES("report"),
    shell:
        "batterytwin report voltage {input.sweep:q} --max-conditions {params.n:q}"
        " --dpi {params.dpi:q} --out {output:q} > {log:q} 2>&1"


rule report_fade:
    input:
        sweep="results/{sample}/sweep.zarr",
    output:
        report(
            "results/{sample}/figures/cellsim_fade.png",
            caption="../report/cellsim_fade.rst",
            category="5 Cell simulation",
            subcategory="{sample}",
            labels={"figure": "capacity fade"},
        ),
    params:
        n=REPORT["max_conditions"],
        dpi=REPORT["dpi"],
    log:
        "logs/{sample}/report_fade.log",
    message:
        "Figure: capacity fade across the sweep of {wildcards.sample}"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("report")
    resources:
        **RES("report"),
    shell:
        "batterytwin report fade {input.sweep:q} --max-conditions {params.n:q}"
        " --dpi {params.dpi:q} --out {output:q} > {log:q} 2>&1"


rule report_degradation:
    input:
        predictions="results/{sample}/degradation.zarr",
    output:
        report(
            "results/{sample}/figures/degradation_predictions.png",
            caption="../report/degradation_predictions.rst",
            category="6 Degradation",
            subcategory="{sample}",
            labels={"figure": "SOH predictions with intervals"},
        ),
    params:
        n=REPORT["max_cells"],
        dpi=REPORT["dpi"],
    log:
        "logs/{sample}/report_degradation.log",
    message:
        "Figure: degradation-model predictions for the sweep of {wildcards.sample}"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("report")
    resources:
        **RES("report"),
    shell:
        "batterytwin report degradation {input.predictions:q} --max-cells {params.n:q}"
        " --dpi {params.dpi:q} --out {output:q} > {log:q} 2>&1"


rule report_rul:
    input:
        predictions="results/{sample}/degradation.zarr",
    output:
        report(
            "results/{sample}/figures/degradation_rul.png",
            caption="../report/degradation_rul.rst",
            category="6 Degradation",
            subcategory="{sample}",
            labels={"figure": "predicted vs true life"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        "logs/{sample}/report_rul.log",
    message:
        "Figure: predicted vs true cycle life for the sweep of {wildcards.sample}"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("report")
    resources:
        **RES("report"),
    shell:
        "batterytwin report rul {input.predictions:q} --dpi {params.dpi:q} --out {output:q} > {log:q} 2>&1"


rule report_degradation_real:
    input:
        predictions="results/degradation_real/{evaluation}.zarr",
    output:
        predictions=report(
            "results/figures/degradation_real_{evaluation}_predictions.png",
            caption="../report/degradation_predictions.rst",
            category="6 Degradation",
            subcategory="{evaluation} (real cycling data)",
            labels={"figure": "SOH predictions with intervals"},
        ),
        rul=report(
            "results/figures/degradation_real_{evaluation}_rul.png",
            caption="../report/degradation_rul.rst",
            category="6 Degradation",
            subcategory="{evaluation} (real cycling data)",
            labels={"figure": "predicted vs true life"},
        ),
    params:
        n=REPORT["max_cells"],
        dpi=REPORT["dpi"],
    log:
        "logs/report/degradation_real_{evaluation}.log",
    message:
        "Figures: degradation-model predictions on real cycling data ({wildcards.evaluation})"
    conda:
        "../../envs/cpu.yaml"
    threads: THREADS("report")
    resources:
        **RES("report"),
    shell:
        "(batterytwin report degradation {input.predictions:q} --max-cells {params.n:q}"
        " --dpi {params.dpi:q} --out {output.predictions:q}"
        " && batterytwin report rul {input.predictions:q} --dpi {params.dpi:q} --out {output.rul:q})"
        " > {log:q} 2>&1"

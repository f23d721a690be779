# Report: paper-style figures of every stage's outputs for `snakemake --report results/report.html`
# (grouped by stage: category = stage, subcategory = sample) and the OME-Zarr export for napari.
# Figures are drawn for exactly the samples each stage processes (the run's plan, common.smk).
#
# For `rule all`: REPORT_FIGURES is {stage: [targets]}; REPORT_TARGETS(*stages) flattens the stages
# asked for (all stages when none is named), e.g. `REPORT_TARGETS("ingest", "denoise")`.
import os

from batterytwin.report.scaling import latest_bench

_STAGE_SAMPLES = {"ingest": SAMPLES, "denoise": SAMPLES, "segment": SAMPLES,
                  "microstructure": ANALYSE, "cellsim": ANALYSE, "degradation": ANALYSE}
_SERIES = report_targets.series_frames(ANALYSE, SAMPLE_SPECS)  # time series -> its frames
_CATEGORY = {"ingest": "1 Ingest", "denoise": "2 Denoise", "segment": "3 Segmentation",
             "microstructure": "4 Microstructure", "cellsim": "5 Cell simulation", "degradation": "6 Degradation",
             "twin": "7 Digital twin", "scaling": "8 Scaling"}
_SEGMENT_OPTIONAL = ({"denoised": "denoised.zarr"} if PLAN.segment.input == "denoised.zarr" else {}) | (
    {"uncertainty": "uncertainty.zarr"} if PLAN.segment.uncertainty else {})
_REAL = dict(subcategory="{evaluation} (real cycling data)",
             input=lambda w: {"predictions": f"results/degradation_real/{w.evaluation}.zarr"})

# The figures: one row, one rule (the key) running `batterytwin report <args> --dpi DPI -o {output}`.
# `args` is formatted like a rule's shell command ({input.x}, {params.x}, {wildcards.x}) when the job
# is made; `flags` names optional inputs passed as `--key path` when present ({params.flags}).
# Defaults: output results/{sample}/figures/<fig>.png, caption workflow/report/<fig>.rst, category the
# stage's, subcategory {sample}, log logs/{sample}/<rule>.log, resources "report".
# A row without `fig` (the OME-Zarr export) is a directory output, not part of the HTML report.
REPORT_RULES = {
    "report_slices_ingest": dict(
        stage="ingest", fig="ingest_slices", label="orthogonal slices: raw CT",
        input=_report_sample_inputs({"raw": "volume.zarr"}), flags=["truth"],
        args="slices --raw {input.raw:q} {params.flags:q} --title {wildcards.sample:q}",
        message="Figure: orthogonal slices of {wildcards.sample} (raw CT)"),
    "report_nlm": dict(
        stage="denoise", fig="denoise_nlm", label="NLM before/after",
        input=_report_sample_inputs({"noisy": "volume.zarr", "denoised": "denoised.zarr", "metrics": "denoise.json"},
                                    truth=False, clean=True), flags=["clean"],
        args="nlm --noisy {input.noisy:q} --denoised {input.denoised:q} {params.flags:q} --metrics {input.metrics:q}",
        message="Figure: NLM denoising of {wildcards.sample}"),
    "report_training": dict(
        stage="segment", fig="segment_training", label="training loss and Dice",
        output="results/figures/segment_training.png", subcategory="model", log="logs/report/segment_training.log",
        input=lambda w: {"metrics": "results/models/segment/metrics.json"},
        args="training -i {input.metrics:q}",
        message="Figure: segmentation training loss and per-class Dice"),
    "report_slices_segment": dict(
        stage="segment", fig="segment_slices", label="orthogonal slices: raw, denoised, segmented",
        input=_report_sample_inputs({"raw": "volume.zarr", "labels": "labels.zarr"}, optional=_SEGMENT_OPTIONAL),
        flags=["denoised", "truth", "uncertainty"],
        args="slices --raw {input.raw:q} --labels {input.labels:q} {params.flags:q} --title {wildcards.sample:q}",
        message="Figure: orthogonal slices of {wildcards.sample} (raw, denoised, segmented)"),
    "report_ome": dict(
        stage="segment", output="results/{sample}/ome/volume.ome.zarr", resources="report_ome",
        input=_report_sample_inputs({"volume": "volume.zarr", "labels": "labels.zarr"}),
        flags=["truth"], flags_prefix="--labels",
        params={"levels": REPORT["ome_levels"], "chunk": REPORT["ome_chunk"]},
        args="ome -i {input.volume:q} --labels segmentation={input.labels:q} {params.flags:q}"
             " --levels {params.levels} --chunk {params.chunk}",
        message="OME-Zarr export of {wildcards.sample} (volume + labels, {params.levels} extra levels)"),
    "report_tortuosity": dict(
        stage="microstructure", fig="microstructure_tortuosity", label="MSD curves and tortuosity",
        input=_report_sample_inputs({"microstructure": "microstructure.json", "msd": "msd.npz"}, truth=False),
        args="tortuosity -i {input.microstructure:q} --msd {input.msd:q}",
        message="Figure: tortuosity of {wildcards.sample}"),
    "report_microstructure_table": dict(
        stage="microstructure", fig="microstructure_table", label="microstructure table",
        input=_report_sample_inputs({"microstructure": "microstructure.json"}, truth=False),
        args="microstructure -i {input.microstructure:q}",
        message="Figure: microstructure table of {wildcards.sample}"),
    "report_series": dict(
        stage="microstructure", fig="series_lithium", label="lithium growth over frames",
        output="results/figures/series_{series}_lithium.png", subcategory="{series} (time series)",
        log="logs/report/series_{series}.log",
        input=lambda w: [f"{sample_dir(s)}/microstructure.json" for s in _SERIES[w.series]],
        params={"names": lambda w: _SERIES[w.series]},
        args="series -i {input:q} --names {params.names:q}",
        message="Figure: lithium growth over the frames of {wildcards.series}"),
    "report_voltage": dict(
        stage="cellsim", fig="cellsim_voltage", label="discharge voltage curves",
        input=_report_sample_inputs({"sweep": "sweep.zarr"}, truth=False),
        params={"max_conditions": REPORT["max_conditions"]},
        args="voltage -i {input.sweep:q} --max-conditions {params.max_conditions}",
        message="Figure: PyBaMM voltage curves of {wildcards.sample}"),
    "report_fade": dict(
        stage="cellsim", fig="cellsim_fade", label="capacity fade",
        input=_report_sample_inputs({"sweep": "sweep.zarr"}, truth=False),
        params={"max_conditions": REPORT["max_conditions"]},
        args="fade -i {input.sweep:q} --max-conditions {params.max_conditions}",
        message="Figure: capacity fade across the sweep of {wildcards.sample}"),
    "report_degradation": dict(
        stage="degradation", fig="degradation_predictions", label="SOH predictions with intervals",
        input=_report_sample_inputs({"predictions": "degradation.zarr"}, truth=False),
        params={"max_cells": REPORT["max_cells"]},
        args="degradation -i {input.predictions:q} --max-cells {params.max_cells}",
        message="Figure: degradation-model predictions for the sweep of {wildcards.sample}"),
    "report_rul": dict(
        stage="degradation", fig="degradation_rul", label="predicted vs true life",
        input=_report_sample_inputs({"predictions": "degradation.zarr"}, truth=False),
        args="rul -i {input.predictions:q}",
        message="Figure: predicted vs true cycle life for the sweep of {wildcards.sample}"),
    "report_degradation_real": dict(
        stage="degradation", fig="degradation_predictions", label="SOH predictions with intervals", **_REAL,
        output="results/figures/degradation_real_{evaluation}_predictions.png",
        log="logs/report/degradation_real_{evaluation}_predictions.log",
        params={"max_cells": REPORT["max_cells"]},
        args="degradation -i {input.predictions:q} --max-cells {params.max_cells}",
        message="Figure: degradation-model predictions on real cycling data ({wildcards.evaluation})"),
    "report_rul_real": dict(
        stage="degradation", fig="degradation_rul", label="predicted vs true life", **_REAL,
        output="results/figures/degradation_real_{evaluation}_rul.png",
        log="logs/report/degradation_real_{evaluation}_rul.log",
        args="rul -i {input.predictions:q}",
        message="Figure: predicted vs true cycle life on real cycling data ({wildcards.evaluation})"),
    "report_twin": dict(
        stage="twin", fig="twin", label="measured vs physics vs hybrid SOH, error table",
        output="results/figures/twin_{evaluation}.png", log="logs/report/twin_{evaluation}.log",
        subcategory="{evaluation} (real cycling data)",
        input=lambda w: {"twin": f"results/twin/{w.evaluation}.zarr"},
        params={"max_cells": REPORT["max_cells"]},
        args="twin -i {input.twin:q} --max-cells {params.max_cells}",
        message="Figure: hybrid digital twin of the real cells of {wildcards.evaluation}"),
}
if config["cellsim"]["rate_capability"]["enabled"]:
    REPORT_RULES["report_rate"] = dict(
        stage="cellsim", fig="cellsim_rate", label="capacity vs C-rate",
        input=_report_sample_inputs({"sweep": "sweep.zarr"}, truth=False),
        args="rate -i {input.sweep:q}",
        message="Figure: rate capability and plating of {wildcards.sample}")
# The scaling figure of bench/chain.py, when the repository of these rules holds its result
_SCALING_BENCH = latest_bench(os.path.normpath(os.path.join(str(workflow.current_basedir), "../../bench/results")))
if REPORT["benchmark"] and _SCALING_BENCH is not None:
    REPORT_RULES["report_scaling"] = dict(
        stage="scaling", fig="scaling", label="cost and memory vs voxels",
        output="results/figures/scaling.png", subcategory="bench/chain.py", log="logs/report/scaling.log",
        input=lambda w: {"bench": str(_SCALING_BENCH)},
        args="scaling -i {input.bench:q}",
        message="Figure: scaling of each stage (bench/chain.py)")
if PLAN.segment.method in ("gmm", "pretrained"):
    REPORT_RULES.pop("report_training")  # segment.method gmm or pretrained trains no network
for _name, _row in REPORT_RULES.items():
    _row.setdefault("output", f"results/{{sample}}/figures/{_row.get('fig')}.png")
    _row.setdefault("subcategory", "{sample}")
    _row.setdefault("log", f"logs/{{sample}}/{_name}.log")
    _row["category"] = _CATEGORY[_row["stage"]]

# For `rule all`: every row's output over the samples its stage processes (the series, the evaluations)
REPORT_FIGURES = report_targets.figure_targets(
    REPORT_RULES,
    {"sample": _STAGE_SAMPLES, "series": list(_SERIES),
     "evaluation": {"degradation": list(PLAN.real_evaluations), "twin": list(PLAN.twin_evaluations)}},
)
REPORT_TARGETS = lambda *stages: report_targets.flatten(REPORT_FIGURES, stages)


for _name, _row in REPORT_RULES.items():

    rule:
        name:
            _name
        input:
            unpack(_row["input"]),
        output:
            _report_output(_row),
        params:
            command=_report_command(_row),
            dpi=["--dpi", REPORT["dpi"]] if "fig" in _row else [],
            **_row.get("params", {}),
        log:
            _row["log"],
        message:
            _row["message"]
        conda:
            "../../envs/cpu.yaml"
        threads: THREADS(_row.get("resources", "report"))
        resources:
            **RES(_row.get("resources", "report")),
        shell:
            logged("batterytwin report {params.command} {params.dpi:q} -o {output:q}")

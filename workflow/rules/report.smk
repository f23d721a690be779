# Report: paper-style figures of every stage's outputs for `snakemake --report results/report.html`
# (grouped by stage: category = stage, subcategory = sample) and the OME-Zarr export for napari.
# Include this file AFTER the stage rule files: it reads their *_TARGETS / SEGMENT_* variables to
# draw figures for exactly the samples each stage processes.
#
# For `rule all`: REPORT_FIGURES is {stage: [targets]}; REPORT_TARGETS(*stages) flattens the stages
# asked for (all stages when none is named), e.g. `REPORT_TARGETS("ingest", "denoise")`.
import os

from batterytwin.report import targets as report_targets
from batterytwin.report.scaling import latest_bench as _latest_bench

REPORT = config["report"]
_SEG_INPUT = globals().get("SEGMENT_INPUT", "denoised.zarr")
_SEG_UNCERTAINTY = bool(globals().get("SEGMENT_UNCERTAINTY", False))
_DEG_REAL_EVALS = list(globals().get("DEG_REAL_EVALS", {}))
_TWIN_EVALS = list(globals().get("TWIN_EVALS", {}))
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


include: "report_functions.smk"


_SEG_OPTIONAL = {"denoised": "denoised.zarr"} if _SEG_INPUT == "denoised.zarr" else {}
_SEG_OPTIONAL.update({"uncertainty": "uncertainty.zarr"} if _SEG_UNCERTAINTY else {})
_CATEGORY = {"ingest": "1 Ingest", "denoise": "2 Denoise", "segment": "3 Segmentation",
             "microstructure": "4 Microstructure", "cellsim": "5 Cell simulation", "degradation": "6 Degradation",
             "twin": "7 Digital twin", "scaling": "8 Scaling"}
_flags = report_targets.flags  # `--key path` for the optional inputs present
_REAL = dict(subcategory="{evaluation} (real cycling data)", input=_real)

# The figures: one row, one rule (the key) running `batterytwin report <args> [--dpi] --out {output}`.
# `args(wildcards, input)` gives the CLI arguments (a params function: the loop's variables are gone
# when a job runs). Defaults: output results/{sample}/figures/<fig>.png, caption workflow/report/<fig>.rst,
# category the stage's (_CATEGORY), subcategory {sample}, log logs/{sample}/<rule>.log, resources "report".
# A row without `fig` (the OME-Zarr export) is a directory output, not part of the HTML report.
REPORT_RULES = {
    "report_slices_ingest": dict(stage="ingest", fig="ingest_slices", label="orthogonal slices: raw CT",
        input=_sample({"raw": "volume.zarr"}), message="Figure: orthogonal slices of {wildcards.sample} (raw CT)",
        args=lambda w, input: ["slices", "--raw", input.raw, *_flags(input, ["truth"]), "--title", w.sample]),
    "report_nlm": dict(stage="denoise", fig="denoise_nlm", label="NLM before/after",
        input=_sample({"noisy": "volume.zarr", "denoised": "denoised.zarr", "metrics": "denoise.json"},
                      truth=False, clean=True),
        message="Figure: NLM denoising of {wildcards.sample}",
        args=lambda w, input: ["nlm", "--noisy", input.noisy, "--denoised", input.denoised, *_flags(input, ["clean"]),
                               "--metrics", input.metrics]),
    "report_training": dict(stage="segment", fig="segment_training", label="training loss and Dice",
        output="results/figures/segment_training.png", subcategory="model", log="logs/report/segment_training.log",
        input=lambda w: {"metrics": "results/models/segment/metrics.json"},
        message="Figure: segmentation training loss and per-class Dice",
        args=lambda w, input: ["training", input.metrics]),
    "report_slices_segment": dict(stage="segment", fig="segment_slices",
        label="orthogonal slices: raw, denoised, segmented",
        input=_sample({"raw": "volume.zarr", "labels": "labels.zarr"}, optional=_SEG_OPTIONAL),
        message="Figure: orthogonal slices of {wildcards.sample} (raw, denoised, segmented)",
        args=lambda w, input: ["slices", "--raw", input.raw, "--labels", input.labels,
                               *_flags(input, ["denoised", "truth", "uncertainty"]), "--title", w.sample]),
    "report_ome": dict(stage="segment", output="results/{sample}/ome/volume.ome.zarr", resources="report_ome",
        input=_sample({"volume": "volume.zarr", "labels": "labels.zarr"}), params={"levels": REPORT["ome_levels"]},
        message="OME-Zarr export of {wildcards.sample} (volume + labels, {params.levels} extra levels)",
        args=lambda w, input: ["ome", "--volume", input.volume, "--labels", f"segmentation={input.labels}",
                               *_flags(input, ["truth"], "--labels"), "--levels", REPORT["ome_levels"],
                               "--chunk", REPORT["ome_chunk"]]),
    "report_tortuosity": dict(stage="microstructure", fig="microstructure_tortuosity",
        label="MSD curves and tortuosity",
        input=_sample({"microstructure": "microstructure.json", "msd": "msd.npz"}, truth=False),
        message="Figure: tortuosity of {wildcards.sample}",
        args=lambda w, input: ["tortuosity", input.microstructure, "--msd", input.msd]),
    "report_microstructure_table": dict(stage="microstructure", fig="microstructure_table",
        label="microstructure table", input=_sample({"microstructure": "microstructure.json"}, truth=False),
        message="Figure: microstructure table of {wildcards.sample}",
        args=lambda w, input: ["microstructure", input.microstructure]),
    "report_series": dict(stage="microstructure", fig="series_lithium", label="lithium growth over frames",
        output="results/figures/series_{series}_lithium.png", subcategory="{series} (time series)",
        log="logs/report/series_{series}.log",
        input=lambda w: [f"{sample_dir(s)}/microstructure.json" for s in _SERIES[w.series]],
        message="Figure: lithium growth over the frames of {wildcards.series}",
        args=lambda w, input: ["series", *input, "--names", *_SERIES[w.series]]),
    "report_voltage": dict(stage="cellsim", fig="cellsim_voltage", label="discharge voltage curves",
        input=_sample({"sweep": "sweep.zarr"}, truth=False), message="Figure: PyBaMM voltage curves of {wildcards.sample}",
        args=lambda w, input: ["voltage", input.sweep, "--max-conditions", REPORT["max_conditions"]]),
    "report_fade": dict(stage="cellsim", fig="cellsim_fade", label="capacity fade",
        input=_sample({"sweep": "sweep.zarr"}, truth=False),
        message="Figure: capacity fade across the sweep of {wildcards.sample}",
        args=lambda w, input: ["fade", input.sweep, "--max-conditions", REPORT["max_conditions"]]),
    "report_degradation": dict(stage="degradation", fig="degradation_predictions",
        label="SOH predictions with intervals", input=_sample({"predictions": "degradation.zarr"}, truth=False),
        message="Figure: degradation-model predictions for the sweep of {wildcards.sample}",
        args=lambda w, input: ["degradation", input.predictions, "--max-cells", REPORT["max_cells"]]),
    "report_rul": dict(stage="degradation", fig="degradation_rul", label="predicted vs true life",
        input=_sample({"predictions": "degradation.zarr"}, truth=False),
        message="Figure: predicted vs true cycle life for the sweep of {wildcards.sample}",
        args=lambda w, input: ["rul", input.predictions]),
    "report_degradation_real": dict(stage="degradation", fig="degradation_predictions",
        label="SOH predictions with intervals", output="results/figures/degradation_real_{evaluation}_predictions.png",
        log="logs/report/degradation_real_{evaluation}_predictions.log", **_REAL,
        message="Figure: degradation-model predictions on real cycling data ({wildcards.evaluation})",
        args=lambda w, input: ["degradation", input.predictions, "--max-cells", REPORT["max_cells"]]),
    "report_rul_real": dict(stage="degradation", fig="degradation_rul", label="predicted vs true life",
        output="results/figures/degradation_real_{evaluation}_rul.png",
        log="logs/report/degradation_real_{evaluation}_rul.log", **_REAL,
        message="Figure: predicted vs true cycle life on real cycling data ({wildcards.evaluation})",
        args=lambda w, input: ["rul", input.predictions]),
    "report_twin": dict(stage="twin", fig="twin", label="measured vs physics vs hybrid SOH, error table",
        output="results/figures/twin_{evaluation}.png", log="logs/report/twin_{evaluation}.log",
        subcategory="{evaluation} (real cycling data)", input=lambda w: {"twin": f"results/twin/{w.evaluation}.zarr"},
        message="Figure: hybrid digital twin of the real cells of {wildcards.evaluation}",
        args=lambda w, input: ["twin", input.twin, "--max-cells", REPORT["max_cells"]]),
}
# The scaling figure of bench/chain.py, when the repository of these rules holds its result (none: no figure)
_SCALING_BENCH = _latest_bench(os.path.normpath(os.path.join(str(workflow.current_basedir), "../../bench/results")))
if _SCALING_BENCH is not None:
    REPORT_RULES["report_scaling"] = dict(stage="scaling", fig="scaling", label="cost and memory vs voxels",
        output="results/figures/scaling.png", subcategory="bench/chain.py", log="logs/report/scaling.log",
        input=lambda w: {"bench": str(_SCALING_BENCH)}, message="Figure: scaling of each stage (bench/chain.py)",
        args=lambda w, input: ["scaling", input.bench])
if ((config.get("cellsim") or {}).get("rate_capability") or {}).get("enabled"):
    REPORT_RULES["report_rate"] = dict(stage="cellsim", fig="cellsim_rate", label="capacity vs C-rate",
        input=_sample({"sweep": "sweep.zarr"}, truth=False),
        message="Figure: rate capability and plating of {wildcards.sample}",
        args=lambda w, input: ["rate", input.sweep])
if globals().get("SEGMENT_METHOD", "network") in ("gmm", "pretrained"):
    REPORT_RULES.pop("report_training")  # segment.method: gmm or pretrained trains no network
for _row in REPORT_RULES.values():
    _row.setdefault("output", f"results/{{sample}}/figures/{_row.get('fig')}.png")

# For `rule all`: every row's output over the samples its stage processes (the series, the evaluations)
REPORT_FIGURES = report_targets.figure_targets(
    REPORT_RULES,
    {"sample": dict(_REPORT_SAMPLES, ingest=SAMPLES), "series": list(_SERIES),
     "evaluation": {"degradation": _DEG_REAL_EVALS, "twin": _TWIN_EVALS}},
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
            args=_report_args(_row),
            **_row.get("params", {}),
        log:
            _row.get("log", f"logs/{{sample}}/{_name}.log"),
        message:
            _row["message"]
        conda:
            "../../envs/cpu.yaml"
        threads: THREADS(_row.get("resources", "report"))
        resources:
            **RES(_row.get("resources", "report")),
        shell:
            "batterytwin report {params.args:q} --out {output:q} > {log:q} 2>&1"

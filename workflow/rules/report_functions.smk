# Input, output and shell functions of report.smk's figure table (kept apart from the rules, as the
# Snakemake linter asks).


def _sample(files, **kw):
    """Named inputs of a per-sample figure: ``files`` under results/{sample}/ (+ a phantom's truth/clean)."""
    return lambda w: report_targets.sample_inputs(sample_dir(w.sample), files, is_synthetic(w.sample), **kw)


def _real(w):
    return {"predictions": f"results/degradation_real/{w.evaluation}.zarr"}


def _report_output(row):
    if "fig" not in row:
        return directory(row["output"])
    return report(
        row["output"],
        caption=f"../report/{row['fig']}.rst",
        category=_CATEGORY[row["stage"]],
        subcategory=row.get("subcategory", "{sample}"),
        labels={"figure": row["label"]},
    )


def _report_args(row):
    """The params function of a row: its CLI arguments, then `--dpi` for a figure."""
    dpi = ["--dpi", REPORT["dpi"]] if "fig" in row else []
    return lambda w, input: [*row["args"](w, input), *dpi]

# Input, output and shell functions of report.smk's figure table (kept apart from the rules, as the
# Snakemake linter asks).


def _sample(files, **kw):
    """Named inputs of a per-sample figure: ``files`` under results/{sample}/ (+ a phantom's truth/clean)."""
    return lambda w: report_targets.sample_inputs(sample_dir(w.sample), files, is_synthetic(w.sample), **kw)


def _flags(keys, label_prefix=None):
    """A params function: `--key path` for each of ``keys`` among the job's inputs (optional inputs)."""
    return lambda w, input: report_targets.flags(input, keys, label_prefix)


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


def _report_shell(row):
    """`batterytwin report <cli> [--dpi] --out {output} > {log} 2>&1`: one CLI call a rule."""
    dpi = " --dpi {params.dpi:q}" if "fig" in row else ""
    return f"batterytwin report {row['cli']}{dpi} --out {{output:q}} > {{log:q}} 2>&1"

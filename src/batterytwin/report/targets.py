"""Helpers of ``workflow/rules/report.smk``: which samples get which figure, and rule inputs.

Plain functions (no snakemake import): the rule file passes its sample table and variables in.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Mapping, Sequence


def series_frames(samples: Sequence[str], specs: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Time series name -> its frame samples in order (samples whose spec names a ``series``)."""
    out: dict[str, list[str]] = {}
    for s in samples:
        series = specs[s].get("series")
        if series:
            out.setdefault(series, []).append(s)
    return out


def flatten(figures: Mapping[str, Sequence[str]], stages: Sequence[str]) -> list[str]:
    """Targets of the named stages (all stages when none is named)."""
    unknown = [s for s in stages if s not in figures]
    if unknown:
        raise ValueError(f"REPORT_TARGETS: unknown stage(s) {unknown}; known: {list(figures)}")
    return [t for s in (stages or list(figures)) for t in figures[s]]


def sample_inputs(sample_dir: str, files: Mapping[str, str], synthetic: bool, truth: bool = True,
                  clean: bool = False, optional: Mapping[str, str] | None = None) -> dict[str, str]:
    """Named inputs ``{key: <sample_dir>/<file>}``, plus truth.zarr/clean.zarr for phantoms and the
    ``optional`` files (already filtered by the caller)."""
    out = {k: f"{sample_dir}/{v}" for k, v in {**files, **(optional or {})}.items()}
    if synthetic and truth:
        out["truth"] = f"{sample_dir}/truth.zarr"
    if synthetic and clean:
        out["clean"] = f"{sample_dir}/clean.zarr"
    return out


def flags(input: Any, keys: Sequence[str], label_prefix: str | None = None) -> list[str]:
    """``--key path`` for each key present in a rule's ``input`` (``--labels NAME=path`` style when
    ``label_prefix`` is given)."""
    out: list[str] = []
    for k in keys:
        if k in input.keys():
            out += [label_prefix, f"{k}={input[k]}"] if label_prefix else [f"--{k}", str(input[k])]
    return out


def figure_targets(rules: Mapping[str, Mapping[str, Any]],
                   values: Mapping[str, Mapping[str, Sequence[str]] | Sequence[str]]) -> dict[str, list[str]]:
    """``{stage: [targets]}`` of a figure table: each rule's ``output`` pattern expanded over the values
    of its wildcards, in table order.

    Args:
        rules: ``{rule name: {"stage": ..., "output": pattern with {sample}/{series}/...}}``.
        values: wildcard -> its values, or -> ``{stage: values}`` where they depend on the stage
            (e.g. the samples each stage processes).

    Example: ``figure_targets({"r": {"stage": "ingest", "output": "results/{sample}/a.png"}},
    {"sample": {"ingest": ["s1", "s2"]}})`` -> ``{"ingest": ["results/s1/a.png", "results/s2/a.png"]}``
    """
    out: dict[str, list[str]] = {}
    for row in rules.values():
        stage, pattern = row["stage"], row["output"]
        names = list(dict.fromkeys(re.findall(r"{(\w+)}", pattern)))
        choices = []
        for name in names:
            v = values[name]
            choices.append(list(v[stage] if isinstance(v, Mapping) else v))
        targets = out.setdefault(stage, [])
        for combo in itertools.product(*choices):
            target = pattern.format(**dict(zip(names, combo)))
            if target not in targets:
                targets.append(target)
    return out

"""The whole run's configuration (``config.yaml``): one typed model composed of the stage models.

``workflow/schemas/config.schema.json`` is generated from :class:`PipelineConfig`; regenerate it
after changing any settings model with::

    python -m batterytwin.workflow_config workflow/schemas/config.schema.json

``workflow/rules/common.smk`` validates ``config`` with :func:`complete_config` (one line naming
the key on a problem) and then with the generated schema, so rules read complete sections
(what the run then does: :mod:`batterytwin.workflow_plan`).
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, StringConstraints, model_validator

from .cellsim.config import CellsimConfig
from .config import NAME_PATTERN, Name, Section, validate_settings
from .degradation.config import DegradationConfig
from .denoise.config import DenoiseConfig
from .ingest.config import IngestConfig, Sample, StoreSettings
from .microstructure.config import MicrostructureConfig
from .report.config import ReportConfig
from .segment.config import SegmentConfig
from .twin.config import TwinConfig

# An MPI launcher is pasted unquoted into rule shell commands (``{resources.mpi} -n N batterytwin ...``),
# so it comes only from the trusted config and must be a program name followed by options/values:
# letters, digits and ``_ . / + - , : @ % =``, words separated by spaces; no quotes, ``;``, ``|``,
# ``&``, ``$``, backticks, redirections or globbing. Examples: ``mpiexec``, ``srun --cpus-per-task=8``.
MPI_LAUNCHER = r"^[A-Za-z0-9_./+][A-Za-z0-9_./+-]*(?: +[A-Za-z0-9_.,:/@%+=-]+)*$"
Launcher = Annotated[str, StringConstraints(pattern=MPI_LAUNCHER)]


class ResourceSettings(Section):
    """Slurm/local resources of a rule (``resources.default`` applies to every rule)."""

    tasks: int | None = Field(None, ge=1, description="MPI ranks")
    cpus_per_task: int | None = Field(None, ge=1, description="cores per rank (also the rule's threads)")
    nodes: int | None = Field(None, ge=1, description="nodes of the job")
    gpu: int | None = Field(None, ge=0, description="GPUs per node")
    mem_mb: int | None = Field(None, ge=1, description="memory in MB")
    runtime: int | None = Field(None, ge=1, description="wall-time limit in minutes")
    constraint: str | None = Field(None, description="Slurm constraint, e.g. gpu")
    slurm_account: str | None = Field(None, description="Slurm account")
    slurm_partition: str | None = Field(None, description="Slurm partition")
    qos: str | None = Field(None, description="Slurm QOS")
    slurm_extra: str | None = Field(None, description="extra sbatch options")
    tasks_per_gpu: int | None = Field(None, ge=0, description="ranks per GPU")
    mpi: Launcher | None = Field(None, description="MPI launcher of this rule (else the top-level mpi): a program "
                                 "and its options, no shell syntax (pasted into the rule's command)")


RULE_DEFAULTS = {"tasks": 1, "cpus_per_task": 1}  # what a rule gets when resources.default leaves it out


class PipelineConfig(Section):
    """``config.yaml``: samples, stores, resources and one section per stage."""

    samples: dict[Name, Sample] = Field(min_length=1, description="sample name -> where its volume comes from",
                                              json_schema_extra={"propertyNames": {"pattern": NAME_PATTERN}})
    store: StoreSettings = Field(default_factory=StoreSettings, description="chunk/shard edges of volume stores")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="ingest of file samples")
    mpi: Launcher = Field("mpiexec", description="MPI launcher for MPI rules (mpiexec locally, srun on Slurm), "
                          "from the trusted config: a program and its options, no shell syntax")
    resources: dict[str, ResourceSettings] = Field(
        {"default": ResourceSettings()},
        description="per-rule resources (Slurm sizes are config, not code); 'default' applies to every rule")
    denoise: DenoiseConfig = Field(default_factory=DenoiseConfig, description="NLM denoising")
    segment: SegmentConfig = Field(default_factory=SegmentConfig, description="segmentation")
    microstructure: MicrostructureConfig = Field(default_factory=MicrostructureConfig, description="microstructure")
    cellsim: CellsimConfig = Field(default_factory=CellsimConfig, description="PyBaMM sweeps")
    degradation: DegradationConfig = Field(default_factory=DegradationConfig, description="degradation model")
    twin: TwinConfig = Field(default_factory=TwinConfig, description="hybrid digital twin of real cells")
    report: ReportConfig = Field(default_factory=ReportConfig, description="report figures")

    @model_validator(mode="after")
    def _phases_are_classes(self) -> "PipelineConfig":
        """The phases microstructure measures are classes of the run's class map (``segment.classes``)
        when a sample goes through microstructure (role analyse/both): a misspelt name would find no
        voxel and the cell block would fall back to the parameter set's geometry."""
        if any(getattr(s, "role", "analyse") in ("analyse", "both") for s in self.samples.values()):
            check_phase_names(self.microstructure, list(self.segment.classes))
        return self

    @model_validator(mode="after")
    def _one_end_of_life_rule(self) -> "PipelineConfig":
        """The diffusion model and the twin score the same real cells against each other: one end-of-life
        rule, one threshold and one data directory (``twin`` may leave them to ``degradation``, or repeat
        them; it may not differ)."""
        deg, twin = self.degradation, self.twin
        if twin.eol_rule != deg.eol_rule:
            raise ValueError(f"twin.eol_rule: {twin.eol_rule!r} differs from degradation.eol_rule {deg.eol_rule!r} "
                             "(one end-of-life rule for both stages)")
        threshold = deg.real_data.sample.get("threshold", deg.sample.threshold)
        if not isinstance(threshold, (int, float)) or float(threshold) != float(twin.threshold):
            raise ValueError(f"twin.threshold: {twin.threshold:g} differs from the degradation real-data threshold "
                             f"{threshold!r} (degradation.real_data.sample.threshold, else degradation.sample.threshold): "
                             "one end-of-life threshold for both stages")
        if twin.data_dir is not None and twin.data_dir != deg.real_data.dir:
            raise ValueError(f"twin.data_dir: {twin.data_dir!r} differs from degradation.real_data.dir "
                             f"{deg.real_data.dir!r} (one data directory for both stages: leave twin.data_dir null)")
        unknown = sorted(set(twin.evaluations or []) - set(deg.real_data.evaluations))
        if unknown:
            raise ValueError(f"twin.evaluations: {unknown} not in degradation.real_data.evaluations "
                             f"({', '.join(deg.real_data.evaluations) or 'none'})")
        return self


# microstructure settings naming a class: required ones must be classes of the run; an optional one
# (absent from some class maps) is refused only when it looks like a misspelt class
REQUIRED_PHASES = ("electrolyte_phase", "active_phase", "anode_phase")  # anode_phase may be null: no anode
OPTIONAL_PHASES = ("redeposited_phase",)


def check_phase_names(micro: MicrostructureConfig, classes: list[str]) -> None:
    """Raise ``ValueError`` (one line, with a did-you-mean) for a phase name that is not in ``classes``."""
    named = [(f"microstructure.phases[{i}]", n) for i, n in enumerate(micro.phases)]
    named += [(f"microstructure.{k}", getattr(micro, k)) for k in REQUIRED_PHASES if getattr(micro, k) is not None]
    for key, name in named + [(f"microstructure.{k}", getattr(micro, k)) for k in OPTIONAL_PHASES]:
        if name in classes:
            continue
        close = difflib.get_close_matches(name, classes, n=1, cutoff=0.6)
        if key.rsplit(".", 1)[-1] in OPTIONAL_PHASES and not close:
            continue
        hint = f"did you mean {close[0]!r}? one of the two settings is misspelt; " if close else ""
        raise ValueError(f"{key}: {name!r} is not a class of segment.classes ({hint}classes: {', '.join(classes)})")


def complete_config(config: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """``config`` validated and completed with every default, as plain JSON-like data.

    Raises:
        InputError: one line naming the key path, e.g. ``config: segment.train.lr: must be > 0, got -1``.
    """
    done = validate_settings(PipelineConfig, config, where).model_dump(mode="json")
    done["resources"] = {rule: {k: v for k, v in res.items() if v is not None}
                         for rule, res in done["resources"].items()}
    done["resources"]["default"] = {**RULE_DEFAULTS, **done["resources"].get("default", {})}
    return done


def json_schema() -> dict[str, Any]:
    """The JSON schema of ``config.yaml`` (draft 2020-12), generated from :class:`PipelineConfig`."""
    schema = PipelineConfig.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    """The schema as checked in: one line per definition (compact, and diffs still show what changed)."""
    schema = json_schema()
    defs = schema.pop("$defs")

    def line(obj: Any) -> str:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))

    body = ['"$defs":{\n' + ",\n".join(f"{json.dumps(k)}:{line(v)}" for k, v in sorted(defs.items())) + "}"]
    body += [f"{json.dumps(k)}:{line(v)}" for k, v in sorted(schema.items())]
    text = "{" + ",\n".join(body) + "}\n"
    assert json.loads(text) == {**schema, "$defs": defs}
    return text


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(schema_text())

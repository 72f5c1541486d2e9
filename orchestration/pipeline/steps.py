"""The curation steps of a pipeline file: their fingerprints, completeness and how they run.

- curate: the sources listing (uri, size, modification time) + the curation config (+ platform version);
  it reruns whenever it runs again (`orchestration.pipeline.outputs` says when its output is complete).
- filter: the curate step's fingerprint (the clips table it wrote) + the thresholds (what they mean, as
  hashed in the curation report) + the shard settings (+ platform version); it reruns whenever the curate
  step runs. It runs the re-filter (`curation.refilter`), which publishes the folder: the curate step
  only scores (sources and clips tables), so the shards are written once per pipeline run.

Each record (`OUT/.svp-steps/<step>.json`) is removed before its step (or the step upstream) rewrites the
output and written last, atomically, once the step finished, with a summary of its output; a step is
skipped only when its record's fingerprint matches and the files still match that summary. So a step
stopped halfway, or finished with failed sources, is never taken for a finished one. Curation itself
resumes per source (`OUT/.svp-work`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_text, fsync_dir
from core.digest import digest
from orchestration.pipeline.outputs import describe_output, output_problem
from orchestration.pipeline.spec import STEP_CURATE, STEP_ENCODE, STEP_FILTER, PipelineSpec
from training.driver.fingerprints import platform_version
from training.driver.step_engine import Decision, Facts, runs

RECORDS_DIR = ".svp-steps"


@dataclass(frozen=True)
class StepInputs:
    step: str
    values: dict[str, Any]  # what determines the output, by name (compared key by key to say what changed)

    @property
    def fingerprint(self) -> str:
        return digest(self.values)

    def record(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "inputs": self.values}


def _curation_config(spec: PipelineSpec) -> Any:
    from curation.config import load_config

    return load_config(spec.path(spec.curate.config) if spec.curate.config else None)


def curate_inputs(spec: PipelineSpec) -> StepInputs:
    from curation.sources import list_sources

    cfg = _curation_config(spec)
    listing = list_sources(spec.path(spec.curate.input), cfg.extensions, exclude=str(spec.curated))
    sources = digest([(e.uri, e.bytes, e.mtime, e.caption, e.sidecar) for e in listing])
    config = cfg.model_dump(mode="json", exclude={"ray"})  # where it runs does not change what it writes
    return StepInputs(
        STEP_CURATE, {"sources": sources, "config": digest(config), "platform": platform_version()}
    )


def filter_inputs(spec: PipelineSpec, curate_fingerprint: str | None) -> StepInputs:
    from curation.thresholds import load_thresholds, thresholds_hash

    thresholds = thresholds_hash(load_thresholds(spec.path(spec.filter.thresholds)))
    shards = _curation_config(spec).shards.model_dump(mode="json")
    values = {
        "clips": curate_fingerprint,
        "thresholds": thresholds,
        "shards": digest(shards),
        "platform": platform_version(),
    }
    return StepInputs(STEP_FILTER, values)


def _record_path(spec: PipelineSpec, step: str) -> Path:
    return spec.curated / RECORDS_DIR / f"{step}.json"


def read_record(spec: PipelineSpec, step: str) -> dict[str, Any] | None:
    """The step's record as written when it finished (None if there is none); whether its output is still
    complete is `check_record`'s question."""
    try:
        record = json.loads(_record_path(spec, step).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_record(spec: PipelineSpec, step: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the step's record, why its output is not complete or None): a record is trusted only while the
    files it describes are all there."""
    record = read_record(spec, step)
    if record is None:
        return None, None
    return record, output_problem(spec.curated, step, record)


def forget_records(spec: PipelineSpec, *steps: str) -> None:
    """Remove the records of `steps` before one of them rewrites the output: a step stopped halfway (or a
    rerun of the upstream step) must never leave a record that still matches."""
    folder = spec.curated / RECORDS_DIR
    for step in steps:
        _record_path(spec, step).unlink(missing_ok=True)
    if folder.is_dir():
        fsync_dir(folder)


def write_record(spec: PipelineSpec, inputs: StepInputs, output: dict[str, Any] | None = None) -> None:
    """Written last, once the step's output is complete, atomically (the old record or the new one).
    `output`: the summary of what the step wrote (default: `describe_output` of the curated folder)."""
    output = output if output is not None else describe_output(spec.curated, inputs.step)
    record = inputs.record() | {"output": output}
    atomic_write_text(_record_path(spec, inputs.step), json.dumps(record, indent=2, sort_keys=True))


def changed_inputs(old: dict[str, Any], new: StepInputs) -> str:
    """Which inputs differ from the record's: `thresholds 1a2b… -> 3c4d…`."""
    recorded = old.get("inputs", {})
    changed = [
        f"{key} {recorded.get(key)} -> {value}"
        for key, value in new.values.items()
        if recorded.get(key) != value
    ]
    return "; ".join(changed) or "scheme"


@dataclass(frozen=True)
class CurationStep:
    """A curation step as a `training.driver.step_engine.Step`: its inputs, its record, and the step whose run
    rewrites its input (the filter step's: curate), which makes it run too."""

    spec: PipelineSpec
    inputs: StepInputs
    runner: Callable[[PipelineSpec, StepInputs], object]
    upstream: str | None = None

    @property
    def name(self) -> str:
        return self.inputs.step

    def facts(self, earlier: Mapping[str, Decision]) -> Facts:
        record, problem = check_record(self.spec, self.name)
        pending = ""
        if self.upstream is not None and runs(earlier.get(self.upstream)):
            pending = f"step {self.upstream} runs first (it rewrites the clips table)"
        return Facts(
            fingerprint=self.inputs.fingerprint,
            recorded=record.get("fingerprint") if record is not None else None,
            exists=record is not None,
            problem=problem or "",
            pending=pending,
            changed=lambda: changed_inputs(record or {}, self.inputs),
        )

    def execute(self, decision: Decision) -> object:
        """Run the step unless the decision skips it; None when it did not run."""
        return None if not runs(decision) else self.runner(self.spec, self.inputs)


def run_curate(spec: PipelineSpec, inputs: StepInputs) -> dict:
    from curation.pipeline import run_curation

    forget_records(spec, STEP_CURATE, STEP_FILTER, STEP_ENCODE)  # a new clips table: publish, encode again
    # Scores only: the filter step publishes the shards once, with its own thresholds (`curation.publish`).
    report = run_curation(spec.path(spec.curate.input), spec.curated, _curation_config(spec), publish=False)
    write_record(spec, inputs)
    return report


def run_filter(spec: PipelineSpec, inputs: StepInputs) -> dict:
    from curation.refilter import refilter

    forget_records(spec, STEP_FILTER, STEP_ENCODE)  # new shards: their latents are encoded again
    report = refilter(
        spec.curated, spec.path(spec.filter.thresholds), shard_config=_curation_config(spec).shards
    )
    write_record(spec, inputs)
    return report

"""The curation steps of a pipeline file: their fingerprints, completeness and how they run.

- curate: the sources listing (uri, size, modification time) + the curation config (+ platform version);
  complete when `OUT/sources.parquet` and `OUT/clips.parquet` exist and its record matches.
- filter: the curate step's fingerprint (the clips table it wrote) + the thresholds (what they mean, as
  hashed in the curation report) + the shard settings (+ platform version); complete when the shard index
  exists and its record matches. It runs the existing re-filter (`curation.refilter`).

Each record (`OUT/.svp-steps/<step>.json`) is written after the step finished, so an interrupted step is
never taken for a finished one. Curation itself resumes per source (`OUT/.svp-work`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestration.pipeline.spec import STEP_CURATE, STEP_FILTER, PipelineSpec
from training.fingerprints import digest, platform_version

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
    """The step's record when its output is complete, else None."""
    from curation.format import INDEX_FILE, SHARDS_DIR
    from curation.tables import CLIPS_FILE, SOURCES_FILE

    out = spec.curated
    needed = [out / SOURCES_FILE, out / CLIPS_FILE]
    if step == STEP_FILTER:
        needed.append(out / SHARDS_DIR / INDEX_FILE)
    if not all(p.is_file() for p in needed):
        return None
    try:
        return json.loads(_record_path(spec, step).read_text())
    except (OSError, ValueError):
        return None


def write_record(spec: PipelineSpec, inputs: StepInputs) -> None:
    path = _record_path(spec, inputs.step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(inputs.record(), indent=2, sort_keys=True))
    os.replace(tmp, path)


def explain(old: dict[str, Any] | None, new: StepInputs) -> str:
    if not old:
        return "no finished output yet"
    changed = [
        f"{key} {old.get('inputs', {}).get(key)} -> {value}"
        for key, value in new.values.items()
        if old.get("inputs", {}).get(key) != value
    ]
    return f"fingerprint {old.get('fingerprint')} -> {new.fingerprint}: " + ("; ".join(changed) or "scheme")


def run_curate(spec: PipelineSpec, inputs: StepInputs) -> dict:
    from curation.pipeline import run_curation

    report = run_curation(spec.path(spec.curate.input), spec.curated, _curation_config(spec))
    write_record(spec, inputs)
    return report


def run_filter(spec: PipelineSpec, inputs: StepInputs) -> dict:
    from curation.refilter import refilter

    report = refilter(
        spec.curated, spec.path(spec.filter.thresholds), shard_config=_curation_config(spec).shards
    )
    write_record(spec, inputs)
    return report

"""The encode step of a pipeline file (its optional `encode:` block): `svp encode` of the stages that read the
filter step's output, between the filter step and the training stages, fingerprinted and skipped like the
other steps; the stages then read the latents (`latents: auto` takes a complete, current set).

Its fingerprint: the filter step's (the shards) + each stage's encoding id (VAE, text encoder, buckets, …:
`training.data.latent_store.encoding_identity`) + platform version. Its record (`OUT/.svp-steps/encode.json`)
keeps the sha256 of each latents folder's `encoding.json`, the file `svp encode` writes last: the step is
skipped only while each is still the one it wrote. Where it runs (actors, GPUs) is not in the fingerprint.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from core.errors import UserError
from orchestration.pipeline.outputs import file_sha256
from orchestration.pipeline.spec import STEP_ENCODE, STEP_FILTER, PipelineSpec, reads_curated
from orchestration.pipeline.steps import CurationStep, StepInputs, forget_records, write_record
from training.config.schema import PipelineConfig, StageConfig
from training.driver.fingerprints import platform_version


def encoded_stages(spec: PipelineSpec, training: PipelineConfig) -> list[StageConfig]:
    """The stages the `encode:` block encodes (its `stages`, else every stage reading the curated folder)."""
    assert spec.encode is not None
    if spec.encode.stages is None:
        return [stage for stage in training.stages if reads_curated(spec, stage)]
    unknown = [name for name in spec.encode.stages if name not in training.stage_names]
    if unknown:
        raise UserError(
            f"{spec.source}: encode.stages: no stage {unknown[0]!r}; stages: {', '.join(training.stage_names)}"
        )
    return [training.stage(name) for name in spec.encode.stages]


def encode_inputs(
    spec: PipelineSpec, stages: list[StageConfig], filter_fingerprint: str | None
) -> StepInputs:
    from training.data.latent_store import encoding_id, encoding_identity

    values: dict[str, str | None] = {"data": filter_fingerprint}
    values |= {f"encoding.{stage.name}": encoding_id(encoding_identity(stage)) for stage in stages}
    return StepInputs(STEP_ENCODE, values | {"platform": platform_version()})


def encode_step(spec: PipelineSpec, training: PipelineConfig, filter_fingerprint: str | None) -> CurationStep:
    """The step, run after the filter step (whose run rewrites the shards it encodes)."""
    stages = encoded_stages(spec, training)
    inputs = encode_inputs(spec, stages, filter_fingerprint)
    return CurationStep(spec, inputs, partial(run_encode_step, stages=stages), upstream=STEP_FILTER)


def run_encode_step(spec: PipelineSpec, inputs: StepInputs, *, stages: list[StageConfig]) -> list:
    from training.data.latent_store import ENCODING_FILE
    from training.encode.encode_job import run_encode

    assert spec.encode is not None
    forget_records(spec, STEP_ENCODE)
    settings = spec.encode
    results = run_encode(
        stages, gpus_per_actor=settings.gpus_per_actor, actors=settings.actors, batch_size=settings.batch_size
    )
    curated = spec.curated.resolve()
    folders = {}
    for result in results:
        folder = Path(result.out_dir).resolve()
        name = str(folder.relative_to(curated)) if curated in folder.parents else str(folder)
        folders[name] = file_sha256(folder / ENCODING_FILE)
    write_record(spec, inputs, output={"encodings": folders})
    return results

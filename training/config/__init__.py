"""Training pipeline configuration: YAML → validated `PipelineConfig` of `StageConfig`s.

See `training.config.loader` for variables (`${data_root}`), defaults and overrides, and
`training/presets/*.yaml` for the bundled pipelines.
"""

from training.config.checks import latent_frames
from training.config.loader import (
    PRESET_NAMES,
    build_pipeline,
    load_pipeline,
    load_pipeline_or_preset,
    load_preset,
)
from training.config.schema import (
    AutoencoderSpec,
    BucketConfig,
    CheckpointSpec,
    DeepSpeedSpec,
    EmaSpec,
    EvalSpec,
    FlowConfig,
    InitFromSpec,
    ModelSpec,
    OptimizerConfig,
    PipelineConfig,
    SampleSpec,
    StageConfig,
    TextEncoderSpec,
)

__all__ = [
    "PRESET_NAMES",
    "AutoencoderSpec",
    "BucketConfig",
    "CheckpointSpec",
    "DeepSpeedSpec",
    "EmaSpec",
    "EvalSpec",
    "FlowConfig",
    "InitFromSpec",
    "ModelSpec",
    "OptimizerConfig",
    "PipelineConfig",
    "SampleSpec",
    "StageConfig",
    "TextEncoderSpec",
    "build_pipeline",
    "latent_frames",
    "load_pipeline",
    "load_pipeline_or_preset",
    "load_preset",
]

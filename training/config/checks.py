"""Checks across fields and stages, each reporting the exact dotted key it is about.

Pydantic validates each value on its own; what is checked here needs the model preset (strides, patch size)
or the other stages (`init_from.stage` must name an earlier one).
"""

from __future__ import annotations

from training.config.schema import PipelineConfig, StageConfig


class ConfigKeyError(ValueError):
    """A bad value at a dotted key; the loader prefixes the file name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def latent_frames(num_frames: int, vae_stride_t: int) -> int:
    """Latent frames of a clip of `num_frames` pixel frames.

    Autoencoders with a temporal stride > 1 (Wan2.1, LTX-2) are causal: the first frame is coded alone and
    each further `stride` frames become one latent, so clips have 1 + k·stride frames.
    """
    if vae_stride_t == 1:
        return num_frames
    if (num_frames - 1) % vae_stride_t:
        raise ValueError(
            f"{num_frames} frames do not fit a causal autoencoder of temporal stride {vae_stride_t} "
            f"(need 1 + k·{vae_stride_t})"
        )
    return 1 + (num_frames - 1) // vae_stride_t


def check_pipeline(pipeline: PipelineConfig) -> None:
    seen: list[str] = []
    for i, stage in enumerate(pipeline.stages):
        where = f"stages[{i}]"
        if stage.name in seen:
            raise ConfigKeyError(f"{where}.name", f"duplicate stage name {stage.name!r}")
        source = stage.init_from.stage if stage.init_from is not None else None
        if source is not None and source not in seen:
            earlier = ", ".join(seen) if seen else "none"
            raise ConfigKeyError(
                f"{where}.init_from.stage", f"{source!r} is not an earlier stage (earlier stages: {earlier})"
            )
        check_stage(stage, where)
        seen.append(stage.name)


def check_stage(stage: StageConfig, where: str) -> None:
    try:
        model = stage.model_config()
    except (ValueError, TypeError) as err:
        raise ConfigKeyError(f"{where}.model", str(err)) from None
    st, sh, sw = model.vae_stride
    pt, ph, pw = model.patch_size
    if stage.kind == "image" and stage.chunk_sizes is not None:
        raise ConfigKeyError(f"{where}.chunk_sizes", "block-causal chunks need a video stage")
    for j, bucket in enumerate(stage.buckets):
        at = f"{where}.buckets[{j}]"
        if stage.kind == "image" and bucket.num_frames != 1:
            raise ConfigKeyError(
                f"{at}.num_frames", f"an image stage takes single frames, got {bucket.num_frames}"
            )
        for axis, size, stride, patch in (("height", bucket.height, sh, ph), ("width", bucket.width, sw, pw)):
            if size % (stride * patch):
                raise ConfigKeyError(
                    f"{at}.{axis}",
                    f"{size} is not a multiple of {stride * patch} (autoencoder stride {stride} × patch {patch})",
                )
        try:
            frames = latent_frames(bucket.num_frames, st)
        except ValueError as err:
            raise ConfigKeyError(f"{at}.num_frames", str(err)) from None
        if frames % pt:
            raise ConfigKeyError(
                f"{at}.num_frames", f"{frames} latent frames are not a multiple of patch {pt}"
            )
        if stage.chunk_sizes is not None and sum(stage.chunk_sizes) != frames:
            raise ConfigKeyError(
                f"{where}.chunk_sizes",
                f"chunks sum to {sum(stage.chunk_sizes)} latent frames but bucket {bucket.name} has {frames}",
            )
    if stage.sample is not None:
        try:
            latent_frames(stage.sample.num_frames, st)
        except ValueError as err:
            raise ConfigKeyError(f"{where}.sample.num_frames", str(err)) from None

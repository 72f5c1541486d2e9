"""Checks across fields and stages, each reporting the exact dotted key it is about.

Pydantic validates each value on its own; what is checked here needs the model preset (strides, patch size)
or the other stages (`init_from.stage` must name an earlier one).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from core.errors import UserError
from training.config.schema import PipelineConfig, StageConfig


class ConfigKeyError(UserError):
    """A bad value at a dotted key; the loader prefixes the file name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class OverrideError(UserError):
    """A bad dotted override (`--set KEY=VALUE`): said against the flag, not the file. `bare` is the
    `KEY: what is wrong` for callers that name the override's source themselves (a pipeline file's
    `training.overrides`)."""

    def __init__(self, bare: str) -> None:
        super().__init__(f"--set {bare}")
        self.bare = bare


def latent_frames(num_frames: int, vae_stride_t: int) -> int:
    """Latent frames of a clip of `num_frames` pixel frames.

    Autoencoders with a temporal stride > 1 (Wan2.1, LTX-2) are causal: the first frame is coded alone and
    each further `stride` frames become one latent, so clips have 1 + k·stride frames.
    """
    if vae_stride_t == 1:
        return num_frames
    if (num_frames - 1) % vae_stride_t:
        raise UserError(
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
    if stage.deepspeed.zero_stage == 3:
        # ZeRO-3 partitions the weights: the EMA fold and the sample rendering read rank 0's full module,
        # which would silently see empty shards. Refused until both gather the parameters.
        raise ConfigKeyError(
            f"{where}.deepspeed.zero_stage",
            "ZeRO-3 is not supported yet (EMA and samples need the full weights on rank 0); use 0, 1 or 2",
        )
    try:
        model = stage.model_config()
    except (ValueError, TypeError) as err:
        raise ConfigKeyError(f"{where}.model", str(err)) from None
    frames_of = check_encoders(stage, model, where)
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
            frames = frames_of(bucket.num_frames)
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
            frames_of(stage.sample.num_frames)
        except ValueError as err:
            raise ConfigKeyError(f"{where}.sample.num_frames", str(err)) from None


def check_encoders(stage: StageConfig, model: Any, where: str) -> Callable[[int], int]:
    """Backend names must exist; parameter-free backends are built here (cheap) and must match the model:
    the autoencoder's stride and channels, the text encoder's channels. Returns the pixel→latent frame rule."""
    from model.autoencoders import AUTOENCODERS, build_autoencoder
    from model.text_encoders import TEXT_ENCODERS, build_text_encoder

    ae, te = stage.autoencoder, stage.text_encoder
    if ae.name not in AUTOENCODERS:
        raise ConfigKeyError(
            f"{where}.autoencoder.name", f"unknown autoencoder {ae.name!r}; one of {AUTOENCODERS}"
        )
    if te.name not in TEXT_ENCODERS:
        raise ConfigKeyError(
            f"{where}.text_encoder.name", f"unknown text encoder {te.name!r}; one of {TEXT_ENCODERS}"
        )
    frames_of: Callable[[int], int] = partial(latent_frames, vae_stride_t=model.vae_stride[0])
    if ae.path is None:
        try:
            built = build_autoencoder(ae.name, None, **ae.options)
        except (ValueError, TypeError, FileNotFoundError) as err:
            raise ConfigKeyError(f"{where}.autoencoder", str(err)) from None
        if tuple(built.stride) != tuple(model.vae_stride):
            raise ConfigKeyError(
                f"{where}.autoencoder.options",
                f"stride {list(built.stride)} differs from the model's vae_stride {list(model.vae_stride)}",
            )
        if built.latent_channels != model.in_channels:
            raise ConfigKeyError(
                f"{where}.autoencoder.options",
                f"{built.latent_channels} latent channels but the model takes in_channels={model.in_channels}",
            )
        frames_of = built.latent_frames
    if te.path is None:
        try:
            text = build_text_encoder(te.name, None, max_length=te.max_length, **te.options)
        except (ValueError, TypeError, FileNotFoundError) as err:
            raise ConfigKeyError(f"{where}.text_encoder", str(err)) from None
        if text.caption_channels != model.caption_channels:
            raise ConfigKeyError(
                f"{where}.text_encoder.options",
                f"{text.caption_channels} channels but the model takes caption_channels={model.caption_channels}",
            )
    return frames_of

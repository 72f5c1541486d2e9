"""Our generation beside diffusers' own SanaVideoPipeline: same converted weights, same tiny random Wan VAE
(saved and loaded), same prompt embeddings and masks, same initial noise, 10 steps, shift 8, fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    SanaImageToVideoPipeline,
    SanaVideoPipeline,
)
from model_test_support import one_thread  # noqa: F401  (fixture)

from model.autoencoders import build_autoencoder
from model.config import LinearDiTConfig
from model.convert import to_diffusers
from model.generate import generate_latents, generate_video, video_to_uint8
from model.linear_dit import LinearDiT
from model.text_encoders import build_text_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = {"num_frames": 5, "height": 32, "width": 32}
STEPS, SHIFT, SEED = 10, 8.0, 3
PROMPT, NEGATIVE = "a red fox in the snow", "blurry"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("wan")
    AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        latents_mean=[0.1, -0.2, 0.05, 0.0],
        latents_std=[0.9, 1.2, 1.1, 0.8],
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ours(wan_folder):
    torch.manual_seed(1)
    config = LinearDiTConfig.from_preset("tiny", in_channels=4, out_channels=4, vae_stride=(4, 8, 8))
    model = LinearDiT(config).eval()
    with torch.no_grad():  # zero or constant at init: randomise so every path matters
        for name, param in model.named_parameters():
            if "scale_shift_table" in name or "conv_temp" in name:
                param.normal_(0.0, 0.1)
    autoencoder = build_autoencoder("wan2.1", path=wan_folder)
    text_encoder = build_text_encoder("hashed", channels=64, max_length=8)
    return model, autoencoder, text_encoder


def diffusers_pipeline(ours, wan_folder, scheduler) -> SanaVideoPipeline:
    vae = AutoencoderKLWan.from_pretrained(wan_folder).eval()
    transformer = to_diffusers(ours[0]).eval()
    return SanaVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler
    )


def run_diffusers(pipe, text_encoder, noise, guidance_scale, output_type, **extra):
    text, mask = text_encoder.encode([PROMPT])
    negative, negative_mask = text_encoder.encode([NEGATIVE], instruction=False)
    result = pipe(
        negative_prompt=None,
        prompt_embeds=text,
        prompt_attention_mask=mask,
        negative_prompt_embeds=negative,
        negative_prompt_attention_mask=negative_mask,
        latents=noise,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        frames=SIZE["num_frames"],
        height=SIZE["height"],
        width=SIZE["width"],
        use_resolution_binning=False,
        output_type=output_type,
        **extra,
    )
    return result.frames


SCHEDULERS = {
    "dpm++": lambda: DPMSolverMultistepScheduler(
        flow_shift=SHIFT, use_flow_sigmas=True, prediction_type="flow_prediction"
    ),
    "euler": lambda: FlowMatchEulerDiscreteScheduler(shift=SHIFT),
}


@pytest.mark.parametrize("guidance_scale", [4.5, 1.0, 0.5])
@pytest.mark.parametrize("sampler", ["dpm++", "euler"])
def test_text_to_video_equals_sana_video_pipeline(ours, wan_folder, sampler, guidance_scale):
    kwargs = {"steps": STEPS, "shift": SHIFT, "seed": SEED, "guidance_scale": guidance_scale, **SIZE}
    kwargs |= {"negative_prompt": NEGATIVE, "sampler": sampler}
    latents = generate_latents(*ours, PROMPT, **kwargs)
    pipe = diffusers_pipeline(ours, wan_folder, SCHEDULERS[sampler]())
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(SEED))
    expected = run_diffusers(pipe, ours[2], noise.clone(), guidance_scale, "latent")
    assert _rel(latents, expected) < 1e-4

    if guidance_scale == 4.5:  # decoded frames too (once per sampler: decoding is the slow part)
        frames = generate_video(*ours, PROMPT, **kwargs)
        video = run_diffusers(pipe, ours[2], noise.clone(), guidance_scale, "pt")[0]  # (T, 3, H, W) in [0, 1]
        expected_frames = (video.permute(0, 2, 3, 1) * 255).round()
        assert frames.shape == expected_frames.shape
        assert (frames.float() - expected_frames).abs().max() <= 1


def test_official_numerics_are_the_official_schedule_and_differ_from_diffusers(ours):
    kwargs = {"steps": STEPS, "shift": SHIFT, "seed": SEED, "guidance_scale": 4.5, **SIZE}
    default = generate_latents(*ours, PROMPT, **kwargs)
    official = generate_latents(*ours, PROMPT, numerics="official", **kwargs)
    assert _rel(official, default) > 1e-3
    with pytest.raises(ValueError, match="numerics must be one of"):
        generate_latents(*ours, PROMPT, numerics="mine", **kwargs)


def _test_image(width: int, height: int):
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height) + 60], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def diffusers_i2v_pipeline(ours, wan_folder, scheduler) -> SanaImageToVideoPipeline:
    vae = AutoencoderKLWan.from_pretrained(wan_folder).eval()
    transformer = to_diffusers(ours[0]).eval()
    return SanaImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler
    )


@pytest.mark.parametrize(
    ("sampler", "guidance_scale", "image_size"),
    [(None, 4.5, (32, 32)), ("dpm++", 1.0, (48, 40))],  # (width, height): the second one is resized
)
def test_image_to_video_equals_sana_image_to_video_pipeline(
    ours, wan_folder, sampler, guidance_scale, image_size
):
    image = _test_image(*image_size)
    kwargs = {"steps": STEPS, "shift": SHIFT, "seed": SEED, "guidance_scale": guidance_scale, **SIZE}
    kwargs |= {"negative_prompt": NEGATIVE, "sampler": sampler, "image": image}
    latents = generate_latents(*ours, PROMPT, **kwargs)
    scheduler = SCHEDULERS[sampler or "euler"]()  # the i2v pipeline's default is flow Euler
    pipe = diffusers_i2v_pipeline(ours, wan_folder, scheduler)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(SEED))
    expected = run_diffusers(pipe, ours[2], noise.clone(), guidance_scale, "latent", image=image)
    assert _rel(latents, expected) < 1e-4

    if image_size == (32, 32):  # the first frame is the image as closely as the VAE round trip gives it
        autoencoder = ours[1]
        frames = generate_video(*ours, PROMPT, **kwargs)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1
        round_trip = video_to_uint8(autoencoder.decode(autoencoder.encode(pixels))[0])[0]
        assert (frames[0].int() - round_trip.int()).abs().max() <= 1
        assert (frames[1:].int() - round_trip.int()).abs().float().mean() > 1  # the rest is generated


def test_image_to_video_block_by_block_carries_the_image_in_the_first_block(ours, tmp_path):
    image = _test_image(32, 32)
    kwargs = {"steps": 2, "seed": SEED, "guidance_scale": 1.0, "image": image, "num_frames": 9}
    kwargs |= {"height": 32, "width": 32}
    whole = generate_latents(*ours, PROMPT, **kwargs)
    frames = generate_video(*ours, PROMPT, block_frames=1, **kwargs)  # blocks [0, 1), [1, 2), [2, 3)
    image_only = generate_video(*ours, PROMPT, **{**kwargs, "num_frames": 1})
    assert torch.equal(frames[:1], image_only)
    assert frames.shape == (9, 32, 32, 3) and whole.shape[2] == 3

    path = tmp_path / "image.png"
    image.save(path)
    assert torch.equal(generate_video(*ours, PROMPT, block_frames=1, **{**kwargs, "image": path}), frames)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        generate_video(*ours, PROMPT, **{**kwargs, "image": tmp_path / "broken.png"})

"""`svp generate`: video from a stage export — from text, from a starting image, or continuing a clip.

A stage export (see `training.worker.checkpoints`) carries in `stage.json` the autoencoder, text encoder, frame rate,
resolution and caption template the stage trained with, so generating from it needs only the folder and a
prompt. Next to each mp4 a `<name>.json` records how it was made: the prompt the model got, the device, dtype
and kernel path, the wall time and the conditioning (the image's path and sha256, or the continued clip's
path and the frames kept of it).

Where it runs (`Inference`): `svp generate` takes the GPU when there is one, loads the weights there in bf16
(fp32 on a CPU), and on CUDA compiles the blocks and uses the fused kernels unless told not to.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import UserError
from training.data.caption_template import condition_prompt
from training.worker.checkpoints import EXPORT_STATE_FILE

if TYPE_CHECKING:
    import torch

# `--dtype` names: the transformer's (and a weighted text encoder's) inference dtype. The VAE stays fp32, as in
# diffusers' Sana video pipelines.
DTYPES = ("fp32", "bf16", "fp16")


def default_device(cuda_available: bool) -> str:
    """`svp generate`'s device when `--device` is not given: the GPU when there is one."""
    return "cuda" if cuda_available else "cpu"


def inference_dtype(device: str, dtype: str | None) -> str:
    """The `--dtype` a run takes: the one asked for, else bf16 on CUDA (the model's inference dtype) and fp32
    elsewhere (a CPU run stays as it always was)."""
    if dtype is None:
        import torch

        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


@dataclass(frozen=True)
class Inference:
    """How a video is computed: device, weights' dtype, matmul precision, compiled blocks, fused kernels."""

    device: str
    dtype: str = "fp32"
    precision: str = "native"
    compile: bool = True
    kernels: bool = True

    @classmethod
    def resolve(
        cls,
        device: str | None,
        dtype: str | None,
        cuda_available: bool,
        *,
        precision: str = "native",
        compile: bool = True,
        kernels: bool = True,
    ) -> Inference:
        """The settings of a run: `device` None is CUDA when `cuda_available`, `dtype` None its default."""
        device = device or default_device(cuda_available)
        return cls(device, inference_dtype(device, dtype), precision, compile, kernels)

    def torch_dtype(self) -> torch.dtype:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]

    @contextlib.contextmanager
    def attention_backend(self):
        """The fused kernels where they can run (`model.kernels`' "auto"), or the PyTorch path when turned off."""
        from model import kernels

        before = kernels.attention_backend()
        kernels.set_attention_backend(before if self.kernels else "torch")
        try:
            yield
        finally:
            kernels.set_attention_backend(before)

    def record(self) -> dict:
        """What the `.json` record says about the path taken (`inference` is the line the command prints)."""
        import torch

        from model import kernels

        compiled = self.compile and torch.device(self.device).type == "cuda"
        with self.attention_backend():
            path = kernels.describe_path(self.device, self.torch_dtype())
        return {
            "device": self.device,
            "dtype": self.dtype,
            "precision": self.precision,
            "compile": compiled,
            "kernels": self.kernels,
            "kernel_path": path,
            "inference": f"{path}; matmuls: {self.precision}; compiled: {compiled}",
        }


def load_export(
    export_dir: str | Path, ema: bool = False, device: str = "cpu", dtype: torch.dtype | None = None
) -> tuple[Any, Any, Any, dict]:
    """(model, autoencoder, text encoder, stage.json) of a stage export; the model's (and EMA's) weights are read
    straight onto `device` in `dtype` (None: as saved, fp32)."""
    from model.autoencoders import build_autoencoder
    from model.pretrained import load_pretrained, load_weights
    from model.text_encoders import build_text_encoder

    export_dir = Path(export_dir)
    info_file = export_dir / EXPORT_STATE_FILE
    if not info_file.is_file():
        raise FileNotFoundError(f"{export_dir} is not a stage export (no {EXPORT_STATE_FILE})")
    info = json.loads(info_file.read_text())
    model = load_pretrained(export_dir, device=device, dtype=dtype)
    if ema:
        ema_file = export_dir / "ema.safetensors"
        if not ema_file.is_file():
            raise FileNotFoundError(f"--ema: {export_dir} has no ema.safetensors (the stage kept no EMA)")
        model.load_state_dict(load_weights(ema_file, device, dtype), strict=False)
    ae, te = info["autoencoder"], info["text_encoder"]
    autoencoder = build_autoencoder(ae["name"], ae["path"], device=device, **ae["options"])
    options = dict(te["options"])
    options.setdefault("max_length", te["max_length"])
    if dtype is not None:  # the hashed encoder has no weights; Gemma's come in the transformer's dtype
        options["dtype"] = dtype
    text_encoder = build_text_encoder(te["name"], te["path"], device=device, **options)
    return model, autoencoder, text_encoder, info


def generate_from_export(
    export_dir: str | Path,
    prompt: str,
    seconds: float,
    out: str | Path,
    *,
    block_frames: int | None = None,
    steps: int = 20,
    guidance_scale: float = 6.0,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    ema: bool = False,
    inference: Inference | None = None,
    numerics: str = "diffusers",
    image: str | Path | None = None,
    continue_from: str | Path | None = None,
    motion_score: int | None = None,
) -> Path:
    """Generate `seconds` of video from a stage export and write it as mp4 (block-AR with `block_frames`),
    from `image` (image-to-video) or after the clip `continue_from` (then `seconds` is the new part).

    The prompt is put in the caption template the stage trained with (`training.data.caption_template`: the
    motion-score suffix, `motion_score` or the training clips' median). `inference` (default: the CPU, fp32)
    says where and how: on CUDA the fused linear-attention kernel and, with `compile`, every block compiled
    (`LinearDiT.enable_inference_compile`; a CPU run stays eager); `precision="fp8"` runs the large matmuls in
    float8. The record beside the video says which path was taken and how long it all took (`wall_s`)."""
    started = time.perf_counter()
    if seconds <= 0:
        raise UserError(f"--seconds must be > 0, got {seconds}")
    _check_conditioning(image, continue_from, block_frames, height, width)
    inference = inference or Inference("cpu")
    model, autoencoder, text_encoder, info = load_export(
        export_dir, ema, inference.device, inference.torch_dtype()
    )
    model.enable_inference_compile(inference.compile)
    model_prompt, caption_record = condition_prompt(prompt, info.get("caption"), motion_score)
    fps = float(info["fps"])
    options = {"steps": steps, "guidance_scale": guidance_scale, "seed": seed, "numerics": numerics}
    options["precision"] = inference.precision
    record = {"export": str(Path(export_dir).resolve()), "prompt": prompt, "fps": fps}
    record |= inference.record() | caption_record | options
    loaded = (model, autoencoder, text_encoder)
    frames = max(1, round(seconds * fps))
    with inference.attention_backend():
        if continue_from is not None:
            clip = (continue_from, frames, block_frames)
            path = _continue_clip(loaded, model_prompt, clip, out, fps, options, record)
        else:
            options["num_frames"] = _valid_frames(autoencoder, frames)
            options |= {"height": height or info["height"], "width": width or info["width"], "image": image}
            path = _generate_new(loaded, model_prompt, out, fps, block_frames, options, record)
    return _with_record(path, record | {"wall_s": round(time.perf_counter() - started, 3)})


def _continue_clip(
    loaded: tuple,
    prompt: str,
    continued: tuple[str | Path, int, int],
    out: str | Path,
    fps: float,
    options: dict,
    record: dict,
) -> Path:
    """`frames` new frames after the clip, written after it into `out` (`continued`: the clip, the new frames
    and the latent frames per block); the conditioning goes into `record`."""
    from model.continuation import continue_video_to_file

    clip, frames, block_frames = continued
    path, conditioning = continue_video_to_file(
        *loaded, prompt, clip, out, fps=fps, num_frames=frames, block_frames=block_frames, **options
    )
    record |= {"block_frames": block_frames, **conditioning}
    return path


def _generate_new(
    loaded: tuple,
    prompt: str,
    out: str | Path,
    fps: float,
    block_frames: int | None,
    options: dict,
    record: dict,
) -> Path:
    """A new video from the prompt (and `options["image"]`, when given), written to `out`."""
    from model.generate import generate_video, generate_video_to_file, save_video

    image = options["image"]
    if image is not None:
        from model.conditioning import image_digest, open_image

        open_image(image)  # an unreadable image is one line before anything runs
        record |= {"image": str(Path(image).resolve()), "image_sha256": image_digest(image)}
    record |= {k: options[k] for k in ("num_frames", "height", "width")} | {"block_frames": block_frames}
    if block_frames is not None:
        # Block by block into the mp4: memory stays bounded however many seconds are asked for.
        path = generate_video_to_file(*loaded, prompt, out, fps=fps, block_frames=block_frames, **options)
    else:
        path = save_video(generate_video(*loaded, prompt, **options), out, fps=fps)
    return path


def _check_conditioning(image, continue_from, block_frames, height, width) -> None:
    if continue_from is None:
        return
    if image is not None:
        raise UserError("--continue and --image cannot be combined: a continuation starts from its clip")
    if block_frames is None:
        raise UserError("--continue needs --block-frames: the clip is folded into the block-AR cache")
    if height is not None or width is not None:
        raise UserError("--continue keeps the clip's own size: leave out --height/--width")


def _with_record(path: Path, record: dict) -> Path:
    """Write `record` as `<video>.json` beside the video (how it was made) and return the video's path."""
    Path(path).with_suffix(".json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return Path(path)


def _valid_frames(autoencoder: Any, want: int) -> int:
    """The smallest frame count ≥ `want` that the autoencoder accepts."""
    for frames in range(want, want + 2 * autoencoder.stride[0] + 1):
        try:
            autoencoder.latent_frames(frames)
        except ValueError:
            continue
        return frames
    raise UserError(f"no valid frame count near {want} for the {autoencoder.name} autoencoder")


def write_conditioning_samples(
    export_dir: str | Path,
    out_dir: str | Path,
    prompt: str,
    clip: str | Path,
    *,
    seconds: float,
    block_frames: int,
    **options: Any,
) -> dict[str, Path]:
    """The demo's image-to-video and continuation samples from one export, each with its `.json` record.

    `clip` (an mp4 at the export's frame size: a video it made, or a training clip) gives the starting image —
    its first frame, saved as `start.png` — and is itself continued by `seconds`. Writes `image-to-video.mp4` and
    `continued.mp4` under `out_dir`, both block by block; `options` are `generate_from_export`'s."""
    from PIL import Image

    from model.video_io import read_frames

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = out_dir / "start.png"
    Image.fromarray(read_frames(clip)[0]).save(start)
    common = {"seconds": seconds, "block_frames": block_frames, **options}
    return {
        "start_image": start,
        "image_to_video": generate_from_export(
            export_dir, prompt, out=out_dir / "image-to-video.mp4", image=start, **common
        ),
        "continued": generate_from_export(
            export_dir, prompt, out=out_dir / "continued.mp4", continue_from=clip, **common
        ),
    }

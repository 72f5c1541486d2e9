"""One open_clip loader for every scorer that needs CLIP embeddings (aesthetic score, caption similarity).

Weights come from local files only. `clip_model` names the architecture: a built-in open_clip config name
(`ViT-L-14-quickgelu` for OpenAI's ViT-L/14, which the LAION aesthetic MLP was trained on) or a path to a
JSON file holding an open_clip model config (`{"embed_dim", "vision_cfg", "text_cfg"}`, optionally wrapped
in `{"model_cfg": ...}`). `clip_checkpoint` is a `.safetensors`/`.pt`/`.pth`/`.bin` state dict, or a folder
in open_clip's hub layout (`open_clip_config.json` + weights), in which case the folder's config wins.
Whatever the source, the model is built by `open_clip.create_model` with the checkpoint path, so tiny test
models and real weights go through the same code.
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from core.digest import digest
from core.errors import UserError

DEFAULT_CLIP_MODEL = "ViT-L-14-quickgelu"


class ClipModelSettings(BaseModel):
    """The CLIP fields shared by the aesthetic and caption configs (so both can point at the same files)."""

    model_config = ConfigDict(extra="forbid")

    clip_model: str = DEFAULT_CLIP_MODEL
    clip_checkpoint: Path | None = None
    device: str = "auto"  # "auto" → cuda when available, else cpu
    embed_batch_size: int = 64  # frames per forward pass


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local `.safetensors` file or a torch pickle loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


@functools.cache
def _config_registry_dir() -> str:
    return tempfile.mkdtemp(prefix="svp-open-clip-configs-")


def _architecture_name(clip_model: str) -> str:
    """The open_clip config name for `clip_model`; a JSON file is registered under a name of its own."""
    import open_clip

    if clip_model.endswith(".json"):
        path = Path(clip_model)
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config not found: {path}")
        cfg = json.loads(path.read_text())
        cfg = cfg.get("model_cfg", cfg)
        if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise UserError(f"{path}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
        # open_clip's registry is keyed by file stem: register a copy under a name no built-in uses.
        name = f"svp-local-{digest(cfg)}"
        target = Path(_config_registry_dir()) / f"{name}.json"
        if not target.exists():
            target.write_text(json.dumps(cfg))
            open_clip.add_model_config(target)
        return name
    if open_clip.get_model_config(clip_model) is None:
        raise UserError(
            f"unknown open_clip architecture {clip_model!r}: use a built-in name such as "
            f"{DEFAULT_CLIP_MODEL!r} or a path to a model config .json"
        )
    return clip_model


@dataclass
class ClipEncoder:
    """An open_clip model with its preprocessing, embedding uint8 frames and texts (L2-normalised)."""

    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    image_size: tuple[int, int]
    mean: torch.Tensor
    std: torch.Tensor
    batch_size: int
    embed_dim: int = 0

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """(N, h, w, 3) uint8 RGB → (N, 3, S, S) normalised: resize the short side, centre crop (CLIP's eval
        transform, done batched in torch instead of per frame in PIL)."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
        th, tw = self.image_size
        h, w = x.shape[-2:]
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        if (nh, nw) != (h, w):
            x = torch.nn.functional.interpolate(
                x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top : top + th, left : left + tw]
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed (N, 3, S, S) → (N, D) unit vectors, on CPU in float32."""
        out = []
        for chunk in pixels.split(self.batch_size):
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                emb = self.model.encode_image(chunk.to(self.device))
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts)
        out = []
        for chunk in tokens.split(self.batch_size):
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                emb = self.model.encode_text(chunk.to(self.device))
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out)


def load_clip(settings: ClipModelSettings) -> ClipEncoder:
    """Build the open_clip model of `settings` from its local checkpoint (cached per process)."""
    if settings.clip_checkpoint is None:
        raise UserError("no CLIP checkpoint configured (clip_checkpoint)")
    return _load_clip_cached(
        settings.clip_model, str(settings.clip_checkpoint), settings.device, settings.embed_batch_size
    )


@functools.lru_cache(maxsize=2)
def _load_clip_cached(clip_model: str, checkpoint: str, device: str, batch_size: int) -> ClipEncoder:
    import open_clip

    path = Path(checkpoint)
    dev = resolve_device(device)
    if path.is_dir():
        name = f"local-dir:{path}"
        model = open_clip.create_model(name, device=dev, pretrained_text=False)
    elif path.is_file():
        name = _architecture_name(clip_model)
        model = open_clip.create_model(name, pretrained=str(path), device=dev, pretrained_text=False)
    else:
        raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    pre = model.visual.preprocess_cfg
    size = pre["size"]
    image_size = (size, size) if isinstance(size, int) else tuple(size)
    encoder = ClipEncoder(
        model=model,
        tokenizer=tokenizer,
        device=dev,
        image_size=image_size,
        mean=torch.tensor(pre["mean"]).view(1, 3, 1, 1),
        std=torch.tensor(pre["std"]).view(1, 3, 1, 1),
        batch_size=batch_size,
    )
    # Towers differ in where they keep their output width; one forward pass is the reliable way to know it.
    encoder.embed_dim = int(encoder.embed_images(torch.zeros(1, 3, *image_size)).shape[1])
    return encoder


def frames_of_batch(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The `frames` column of a Ray Data numpy batch as one (K, h, w, 3) uint8 array per row.

    Ray gives a single (B, K, h, w, 3) array when every row has the same shape and an object array of
    per-row arrays otherwise (clips of different aspect ratios)."""
    frames = batch["frames"]
    return [np.asarray(f, dtype=np.uint8) for f in frames]


def embed_frame_sets(encoder: ClipEncoder, frame_sets: list[np.ndarray]) -> list[torch.Tensor]:
    """Embed several clips' frames in shared forward passes; one (K_i, D) tensor per clip."""
    pixels = [encoder.preprocess(f) if len(f) else None for f in frame_sets]
    present = [p for p in pixels if p is not None]
    if not present:
        return [torch.zeros(0, 0) for _ in frame_sets]
    flat = encoder.embed_images(torch.cat(present))
    out, pos = [], 0
    for p in pixels:
        n = 0 if p is None else len(p)
        out.append(flat[pos : pos + n])
        pos += n
    return out

"""The consolidated checkpoint folder: `config.json` (LinearDiTConfig) + `model.safetensors` (our key names).

Training exports one at the end of every stage; `svp generate` and the next stage load it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from core.atomic import atomic_write
from core.errors import UserError
from model.config import LinearDiTConfig
from model.linear_dit import LinearDiT

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def model_from_state_dict(
    config: LinearDiTConfig, state_dict: dict[str, torch.Tensor], source: str
) -> LinearDiT:
    """A model whose parameters are exactly `state_dict`, validated key by key against `config`.

    Built on the meta device and assigned, so a 2B model costs no random init and no second copy.
    """
    with torch.device("meta"):
        model = LinearDiT(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing:
        raise UserError(f"{source}: missing key {missing[0]} ({len(missing)} missing)")
    if unexpected:
        raise UserError(f"{source}: unexpected key {unexpected[0]} ({len(unexpected)} unexpected)")
    for key, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise UserError(
                f"{source}: key {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model


def save_pretrained(model: LinearDiT, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    state = {key: tensor.detach().contiguous().cpu() for key, tensor in model.state_dict().items()}
    metadata = {"format": "pt", "layout": "svp.LinearDiT"}
    # Through the atomic writer: safetensors writes 0600, the weights get the umask's mode like every file.
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return folder


def load_config(folder: str | Path) -> LinearDiTConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"model config not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from err
    return LinearDiTConfig.from_dict(data)


def load_weights(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, read straight onto `device` one by one and each floating tensor cast to
    `dtype` as it arrives: a bf16 load of fp32 weights holds one fp32 tensor at a time, never a whole fp32
    copy of the model (on the CPU or the GPU)."""
    out = {}
    with safe_open(str(path), framework="pt", device=str(device)) as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensor = weights.get_tensor(key)
            out[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return out


def load_pretrained(
    folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> LinearDiT:
    """The model saved by `save_pretrained`, loaded onto `device` in `dtype` when given (`load_weights`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    config = load_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"model weights not found: {weights}")
    model = model_from_state_dict(config, load_weights(weights, device, dtype), str(weights))
    return model.to(device=device, dtype=dtype)  # buffers the file does not hold

"""Weights-only initialisation of a stage from the previous stage's export or a path.

This is the stage hand-off, distinct from resuming a stage (`training.worker.checkpoints`): only module weights
move; optimizer, schedule, step and data position start fresh, so the world size, ZeRO stage, autoencoder
and patch size may all change between stages. Keys can be dropped (`drop_keys`, e.g. the patch embedding and
output head when the latent space changes) or kept at their fresh init (`reinit_keys`); the Mix-FFN can grow
(`pad_ffn`, when `mlp_ratio` grows). Anything else whose shape does not fit is a `ShapeMismatchError` that
names the keys — never a silent partial load.

FFN growth keeps the function unchanged: the new hidden channels' *input side* (inverted 1×1 conv, depthwise
conv, their biases) keeps the target's fresh init, and their *output side* (the point conv's new input
columns) is zero. All-zero padding would also preserve the function but leaves the new channels with zero
gradient forever. The inverted and depthwise convs carry the GLU's value half and gate half stacked along
the channel axis, so each half is padded separately: [value_old, value_new, gate_old, gate_new].
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from training.errors import ShapeMismatchError

WEIGHTS_FILE = "model.safetensors"


@dataclass
class InitReport:
    """What happened to every key; logged to MLflow and the worker log."""

    source: str
    loaded: list[str] = field(default_factory=list)
    padded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the source: fresh init
    unexpected: list[str] = field(default_factory=list)  # in the source, not in the model: ignored

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"init_from {self.source}: {len(self.loaded)} loaded, {len(self.padded)} padded, "
            f"{len(self.dropped)} dropped, {len(self.reinitialized)} re-initialised, "
            f"{len(self.missing)} missing {self.missing[:5]}, {len(self.unexpected)} unexpected {self.unexpected[:5]}"
        )


def weights_path(source: Path) -> Path:
    """The safetensors file of an export folder (or the file itself)."""
    source = Path(source)
    path = source / WEIGHTS_FILE if source.is_dir() else source
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no {WEIGHTS_FILE} at {source}")
    return path


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def _ffn_hidden_sizes(source: Path, model: torch.nn.Module) -> tuple[int, int] | None:
    """(source hidden, target hidden) of the Mix-FFN, from the export's config.json and the model's config."""
    from model.pretrained import CONFIG_FILE, load_config

    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    config = getattr(model, "config", None)
    if not (folder / CONFIG_FILE).is_file() or config is None:
        return None
    return load_config(folder).ffn_hidden_size, config.ffn_hidden_size


def _ffn_prefixes(model: torch.nn.Module) -> list[str]:
    from model.ffn import MixFFN

    return [f"{name}." for name, module in model.named_modules() if isinstance(module, MixFFN)]


def pad_ffn_tensor(src: torch.Tensor, fresh: torch.Tensor, hidden: tuple[int, int]) -> torch.Tensor:
    """Grow `src` to `fresh`'s shape along the FFN hidden axes (see the module docstring for the rule)."""
    old, new = hidden
    if new < old:
        raise ShapeMismatchError(
            f"cannot pad a Mix-FFN down from hidden {old} to {new}; only growth is supported"
        )
    out = src.to(fresh.dtype)
    for dim in range(src.dim()):
        have, want = out.shape[dim], fresh.shape[dim]
        if have == want:
            continue
        if (have, want) == (2 * old, 2 * new):
            pieces = [(0, old, 0, new), (old, 2 * old, new, 2 * new)]  # value half, gate half
        elif (have, want) == (old, new):
            pieces = [(0, old, 0, new)]
        else:
            raise ShapeMismatchError(f"cannot pad {have} -> {want} on axis {dim} (FFN hidden {old} -> {new})")
        # Output channels (axis 0) keep the fresh init; input channels (axis >= 1) of the point conv are zero.
        grown_shape = list(out.shape)
        grown_shape[dim] = want
        if dim == 0 and tuple(grown_shape) == tuple(fresh.shape):
            grown = fresh.detach().clone()
        else:
            grown = torch.zeros(grown_shape, dtype=out.dtype)
        for src_start, src_end, dst_start, _ in pieces:
            grown.narrow(dim, dst_start, src_end - src_start).copy_(
                out.narrow(dim, src_start, src_end - src_start)
            )
        out = grown
    return out


def init_from_weights(
    model: torch.nn.Module,
    source: Path,
    *,
    drop_keys: Sequence[str] = (),
    reinit_keys: Sequence[str] = (),
    pad_ffn: bool = False,
) -> InitReport:
    """Load `source`'s weights into `model` under the rules above and report every key."""
    path = weights_path(source)
    incoming = load_file(str(path))
    target = model.state_dict()
    report = InitReport(source=str(path))
    hidden = _ffn_hidden_sizes(Path(source), model) if pad_ffn else None
    ffn_prefixes = _ffn_prefixes(model) if pad_ffn else []

    new_state: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, value in sorted(incoming.items()):
        if _matches(key, drop_keys):
            report.dropped.append(key)
        elif key not in target:
            report.unexpected.append(key)
        elif _matches(key, reinit_keys):
            report.reinitialized.append(key)
        elif value.shape == target[key].shape:
            new_state[key] = value.to(target[key].dtype)
            report.loaded.append(key)
        elif hidden is not None and any(key.startswith(p) for p in ffn_prefixes):
            try:
                new_state[key] = pad_ffn_tensor(value, target[key], hidden)
            except ShapeMismatchError as err:
                raise ShapeMismatchError(f"init_from {path}: {key}: {err}") from None
            report.padded.append(key)
        else:
            mismatched.append(f"{key} {tuple(value.shape)} -> {tuple(target[key].shape)}")
    if mismatched:
        hint = "" if pad_ffn else " (set init_from.pad_ffn when mlp_ratio grew)"
        raise ShapeMismatchError(
            f"init_from {path}: {len(mismatched)} weights do not fit the model: {'; '.join(mismatched[:6])}"
            f"{' …' if len(mismatched) > 6 else ''} — list them in init_from.drop_keys or reinit_keys{hint}"
        )
    loaded_or_skipped = set(new_state) | set(report.reinitialized)
    report.missing = sorted(k for k in target if k not in loaded_or_skipped)
    model.load_state_dict(new_state, strict=False)
    return report

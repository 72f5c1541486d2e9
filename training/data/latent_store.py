"""Precomputed latents (`svp encode`): what identifies them, where they live, how a sample is stored, and how
the training loader finds and reads them.

Companion shards, next to the curation shards and never inside them:

    <shards folder>/latents/<encoding id>/
        <shard name>                  one tar per curation shard; member <key>.latent.safetensors per sample
        index.parquet                 shard, key, bucket, offset, length, reason ('' when encoded)
        empty_caption.safetensors     the empty caption's text embedding and mask (caption dropout)
        encoding.json                 what the id stands for + the source index digest; written last
        .work/<shard name>.json       per-shard completion records (resume)

Why companion shards rather than a `.latent.safetensors` member inside the curation tars: the curation shards
are curation's output (byte-identical on rerun, fingerprinted by the pipeline); latents depend on the stage
(its buckets, its VAE and text encoder), so one curation output has several latent sets, and a different VAE
must never overwrite or reuse another's. Companion tars keep everything else of the shard contract: the
same ranged-read `ShardReader`, the same `offset`/`length` index, local or fsspec storage.

The encoding id hashes the autoencoder and text encoder (name, options, weights fingerprint), the compute
dtype, the stage's bucket sizes, target fps and kind, and the window rule: a stage whose id differs never
reads these latents. Each clip is encoded once, at its bucket, from one fixed window (`ENCODE_WINDOW_SEED`):
with latents every epoch sees that window (with pixels, each epoch draws one).
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from training.data.shard_reader import ShardReader, is_remote, join_uri
from training.data.video_clips import BadClip

if TYPE_CHECKING:
    from training.config.schema import StageConfig

log = logging.getLogger("svp.training")

LATENTS_DIR = "latents"
LATENT_MEMBER = "latent.safetensors"  # curation.format.LATENT_MEMBER: the contract's member name
INDEX_FILE = "index.parquet"
ENCODING_FILE = "encoding.json"
EMPTY_CAPTION_FILE = "empty_caption.safetensors"
WORK_DIR = ".work"
FORMAT_VERSION = 1
ENCODE_WINDOW_SEED = 0  # the window of each clip: `clip_rng(ENCODE_WINDOW_SEED, 0, key)`
STORED_DTYPE = torch.float32  # latents and text embeddings on disk (what the pixel path hands the model)
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def encoding_identity(stage: StageConfig, compute_dtype: str = "float32") -> dict[str, Any]:
    """What determines a stage's latents (see the module docstring); `encoding_id` hashes it."""
    from training.driver.fingerprints import weights_fingerprint

    def weights(path: str | None) -> str | None:
        # Missing weights: no latents match (the pixel path, or `svp encode`, reports the missing folder).
        if not path or not Path(path).expanduser().exists():
            return None
        return weights_fingerprint(Path(path).expanduser())

    ae, te = stage.autoencoder, stage.text_encoder
    return {
        "format": FORMAT_VERSION,
        "autoencoder": {"name": ae.name, "options": ae.options, "weights": weights(ae.path)},
        "text_encoder": {
            "name": te.name,
            "options": te.options,
            "max_length": te.max_length,
            "weights": weights(te.path),
        },
        "compute_dtype": compute_dtype,
        "stored_dtype": str(STORED_DTYPE).removeprefix("torch."),
        "kind": stage.kind,
        "target_fps": stage.target_fps if stage.kind == "video" else None,
        "buckets": [b.name for b in stage.buckets],
        "window_seed": ENCODE_WINDOW_SEED,
    }


def encoding_id(identity: dict[str, Any]) -> str:
    from core.digest import digest

    return digest(identity)


def latents_folder(shard_folder: str, eid: str) -> str:
    return join_uri(join_uri(shard_folder, LATENTS_DIR), eid)


# ---- one sample ---------------------------------------------------------------------------------------


@dataclass
class EncodedSample:
    latents: torch.Tensor  # (C, F, H', W')
    text: torch.Tensor  # (L, C_text)
    mask: torch.Tensor  # (L,) long
    caption: str


def pack_sample(latents: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, caption: str) -> bytes:
    """One sample as safetensors bytes (deterministic: safetensors sorts its header)."""
    tensors = {
        "latents": latents.to(STORED_DTYPE).contiguous().cpu(),
        "text": text.to(STORED_DTYPE).contiguous().cpu(),
        "mask": mask.to(torch.int64).contiguous().cpu(),
    }
    return save_safetensors(tensors, metadata={"caption": caption})


def unpack_sample(data: bytes) -> EncodedSample:
    tensors = load_safetensors(data)
    (header_len,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    return EncodedSample(tensors["latents"], tensors["text"], tensors["mask"], metadata.get("caption", ""))


# ---- the training side ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataEntry:
    """One data folder of a stage as the loader sees it: its shards folder, its index digest, its keys."""

    folder: str
    digest: str
    keys: np.ndarray


class LatentSource:
    """The precomputed latents of every sample of a stage, in the loader's sample order."""

    def __init__(self, eid: str, uris: list[str], rows: pd.DataFrame, empty: tuple[torch.Tensor, ...]):
        self.eid = eid
        self.uris = uris
        self.uri_id = rows["uri_id"].to_numpy(np.int64)
        self.offset = rows["offset"].to_numpy(np.int64)
        self.length = rows["length"].to_numpy(np.int64)
        self.reason = rows["reason"].astype(str).to_numpy(object)
        self.empty_text, self.empty_mask = empty

    def read(self, reader: ShardReader, index: int, key: str) -> EncodedSample:
        if self.reason[index]:
            raise BadClip(str(self.reason[index]), f"svp encode could not encode {key}")
        uri = self.uris[self.uri_id[index]]
        try:
            members = reader.read_sample(uri, key, (int(self.offset[index]), int(self.length[index])))
        except OSError as err:
            raise BadClip("read_error", f"{uri}: {err}") from None
        if LATENT_MEMBER not in members:
            raise BadClip("read_error", f"{uri}: no {key}.{LATENT_MEMBER}")
        return unpack_sample(members[LATENT_MEMBER])


def open_latents(stage: StageConfig, entries: list[DataEntry]) -> LatentSource | None:
    """The stage's latents when `stage.latents` allows them and every data folder has a complete, current
    set; None otherwise (`auto` says why in the log, `required` raises ValueError)."""
    if stage.latents == "off":
        return None
    eid = encoding_id(encoding_identity(stage))
    parts, uris, problem = [], [], None
    for entry in entries:
        folder = latents_folder(entry.folder, eid)
        problem = _why_unusable(folder, entry)
        if problem:
            break
        table = pd.read_parquet(join_uri(folder, INDEX_FILE))
        names = sorted(table["shard"].unique())
        ids = {name: len(uris) + i for i, name in enumerate(names)}
        uris += [join_uri(folder, name) for name in names]
        table = table.assign(uri_id=table["shard"].map(ids)).set_index("key")
        rows = table.reindex(pd.Index(entry.keys, name="key"))
        rows["reason"] = rows["reason"].fillna("not_encoded")  # fits no bucket: never planned
        parts.append(rows.fillna({"uri_id": 0, "offset": -1, "length": -1}))
    if problem:
        if stage.latents == "required":
            raise ValueError(f"stage {stage.name!r}: latents: required, but {problem}")
        # Said at INFO only where `svp encode` left something this stage cannot use; a stage never encoded
        # (the default, and every stage of the demo) trains from the clips without a word.
        said = log.debug if problem.startswith(NEVER_ENCODED) else log.info
        said(f"stage {stage.name}: encoding clips while training ({problem})")
        return None
    empty = load_safetensors(_read(join_uri(latents_folder(entries[0].folder, eid), EMPTY_CAPTION_FILE)))
    log.info(f"stage {stage.name}: using precomputed latents {eid}")
    rows = pd.concat(parts, ignore_index=True)
    return LatentSource(eid, uris, rows, (empty["text"], empty["mask"]))


NEVER_ENCODED = "nothing was encoded for this stage"


def _why_unusable(folder: str, entry: DataEntry) -> str | None:
    try:
        record = json.loads(_read(join_uri(folder, ENCODING_FILE)))
    except FileNotFoundError:
        if not is_remote(folder) and not Path(folder.removeprefix("file://")).exists():
            return f"{NEVER_ENCODED} in {entry.folder} (`svp encode` does it)"
        return f"{folder} has no complete encoding (run `svp encode` for this stage)"
    if record.get("source_digest") != entry.digest:
        return (
            f"{folder} was encoded from other shards than {entry.folder} holds now (run `svp encode` again)"
        )
    return None


def _read(uri: str) -> bytes:
    if not is_remote(uri):
        return Path(uri.removeprefix("file://")).read_bytes()
    import fsspec

    with fsspec.open(uri, "rb") as f:
        return f.read()

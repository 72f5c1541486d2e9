"""Text encoders behind one interface: prompts → (embeddings (B, L, C) float32, mask (B, L) long).

Backends (`build_text_encoder(name, path, ...)`):
- `hashed`: a deterministic hashed-token embedding for tiny runs with no weights. Same prompt → bit-identical
  tensor on every machine and in every process (blake2b, integer arithmetic; no RNG, no Python `hash`).
- `gemma2`: SANA-Video's Gemma-2 (`gemma-2-2b-it`, C = 2304) through transformers, from a local folder,
  prompted exactly as diffusers' `SanaVideoPipeline.encode_prompt` does (reference notes §1.4): the
  lower-cased prompt after the complex-human-instruction (CHI) prefix, right padding to len(CHI) + L − 2
  tokens, then BOS + the last L − 1 positions of the last hidden state, L = 300. Negative prompts are
  encoded without the prefix (`instruction=False`), also as in diffusers.

The motion-score suffix (" motion score: N.") is the caller's business.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError

# diffusers' SanaVideoPipeline default (video-oriented) complex human instruction, joined with "\n".
COMPLEX_HUMAN_INSTRUCTION = (
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for video generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, motion, and temporal relationships to create vivid and dynamic scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat slowly settling into a curled position, peacefully falling asleep on a warm sunny windowsill, with gentle sunlight filtering through surrounding pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps gradually lighting up, a diverse crowd of people in colorful clothing walking past, and a double-decker bus smoothly passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",
    "User Prompt: ",
)

DEFAULT_MAX_LENGTH = 300


class TextEncoder(ABC):
    """The text-encoder interface the trainer and the generator use."""

    name: str
    caption_channels: int
    max_length: int

    @abstractmethod
    def encode(self, prompts: list[str], *, instruction: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts → (embeddings (B, max_length, caption_channels) float32, mask (B, max_length) long).

        `instruction=False` encodes without a prompt prefix (how negative prompts are encoded)."""


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a list of strings")
    if not prompts:
        raise ValueError("prompts must not be empty")
    return list(prompts)


# ---------------------------------------------------------------------------------------------- hashed

_TOKEN = re.compile(r"\w+|[^\w\s]")
_BOS = "<bos>"
# IEEE sqrt is correctly rounded, so these constants are the same everywhere.
_SQRT3 = math.sqrt(3.0)
_SQRT_HALF = np.float32(math.sqrt(0.5))


@lru_cache(maxsize=65536)
def _hashed_vector(key: str, channels: int) -> np.ndarray:
    """A unit-variance vector uniform in [−√3, √3]^C from blake2b(key); only exactly rounded float ops, so
    the bits do not depend on the machine's libm."""
    words = []
    for block in range(math.ceil(channels / 16)):
        digest = hashlib.blake2b(
            key.encode("utf-8"), digest_size=64, person=b"svp-hashed-txt", salt=block.to_bytes(16, "little")
        ).digest()
        words.append(np.frombuffer(digest, dtype="<u4"))
    ints = np.concatenate(words)[:channels].astype(np.float64)
    unit = (ints + 0.5) / 2.0**32
    return (unit * (2.0 * _SQRT3) - _SQRT3).astype(np.float32)


class HashedTextEncoder(TextEncoder):
    """Each token (lower-cased words and punctuation, after a BOS) maps to (unigram + bigram)/√2 of two
    unit-variance hashed vectors, the bigram keyed by (previous token, token) so word order matters; positions past the tokens are zero with
    mask 0. Prompts longer than max_length − 1 tokens keep their first max_length − 1 tokens."""

    name = "hashed"

    def __init__(self, channels: int = 64, max_length: int = DEFAULT_MAX_LENGTH):
        if channels < 1 or max_length < 1:
            raise UserError(
                f"hashed text encoder needs channels >= 1 and max_length >= 1, got {channels}, {max_length}"
            )
        self.caption_channels = int(channels)
        self.max_length = int(max_length)

    def tokens(self, prompt: str) -> list[str]:
        return [_BOS, *_TOKEN.findall(prompt.lower())][: self.max_length]

    def encode(self, prompts: list[str], *, instruction: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = _check_prompts(prompts)
        emb = np.zeros((len(prompts), self.max_length, self.caption_channels), dtype=np.float32)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens = self.tokens(prompt)
            for pos, token in enumerate(tokens):
                previous = tokens[pos - 1] if pos else ""
                unigram = _hashed_vector("1:" + token, self.caption_channels)
                bigram = _hashed_vector("2:" + previous + "\x00" + token, self.caption_channels)
                emb[row, pos] = (unigram + bigram) * _SQRT_HALF
            mask[row, : len(tokens)] = 1
        return torch.from_numpy(emb), mask


# ---------------------------------------------------------------------------------------------- gemma2


def _hf_folders(path: str | os.PathLike | None) -> tuple[Path, str | None, str | None]:
    """(root, model subfolder, tokenizer subfolder): a model folder itself, or a diffusers pipeline folder
    with text_encoder/ and tokenizer/."""
    if path is None:
        raise UserError(
            "the gemma2 text encoder needs path=<local folder with the Gemma-2 model and tokenizer>"
        )
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"gemma2 text encoder folder not found: {root}")
    if (root / "config.json").is_file():
        return root, None, None
    if (root / "text_encoder" / "config.json").is_file() and (root / "tokenizer").is_dir():
        return root, "text_encoder", "tokenizer"
    raise FileNotFoundError(f"no Gemma-2 model (config.json or text_encoder/config.json) in {root}")


class Gemma2TextEncoder(TextEncoder):
    """Gemma-2 decoder's last hidden state (after the final norm), prompted as SANA-Video does."""

    name = "gemma2"

    def __init__(
        self,
        path: str | os.PathLike | None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int = DEFAULT_MAX_LENGTH,
        instruction: tuple[str, ...] | list[str] = COMPLEX_HUMAN_INSTRUCTION,
    ):
        from transformers import AutoTokenizer, Gemma2Model

        root, model_sub, tok_sub = _hf_folders(path)
        tok_kwargs = {"subfolder": tok_sub} if tok_sub else {}
        self.tokenizer = AutoTokenizer.from_pretrained(root, **tok_kwargs)
        self.tokenizer.padding_side = "right"
        model_kwargs = {"subfolder": model_sub} if model_sub else {}
        model = Gemma2Model.from_pretrained(root, dtype=dtype, **model_kwargs)
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.caption_channels = int(model.config.hidden_size)
        if max_length < 2:
            raise UserError(f"gemma2 max_length must be >= 2, got {max_length}")
        self.max_length = int(max_length)
        self.instruction = "\n".join(instruction)

    @torch.no_grad()
    def encode(self, prompts: list[str], *, instruction: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [p.lower().strip() for p in _check_prompts(prompts)]
        length = self.max_length
        if instruction and self.instruction:
            texts = [self.instruction + t for t in texts]
            length = len(self.tokenizer.encode(self.instruction)) + self.max_length - 2
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            max_length=length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.device)
        mask = tokens.attention_mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        # BOS plus the last L − 1 positions: the end of the CHI prefix and the prompt (notes §1.4).
        keep = torch.tensor([0, *range(length - self.max_length + 1, length)], device=self.device)
        return hidden[:, keep].float(), mask[:, keep].long()


TEXT_ENCODERS = ("hashed", "gemma2")


def build_text_encoder(
    name: str,
    path: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    **options,
) -> TextEncoder:
    """Build a text encoder by name. `hashed` takes `channels` and `max_length` and no path; `gemma2`
    loads from the local folder `path` and takes `max_length` and `instruction`."""
    if name == "hashed":
        if path is not None:
            raise UserError("the hashed text encoder has no weights; do not pass a path")
        return HashedTextEncoder(**options)
    if name == "gemma2":
        return Gemma2TextEncoder(path, device=device, dtype=dtype, **options)
    raise UserError(f"unknown text encoder {name!r}; choose one of {TEXT_ENCODERS}")

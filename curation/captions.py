"""Captions: where a clip's caption comes from, whether it is any good, and how well it matches the frames.

Backends: `sidecar` (default) keeps the caption the ingest stage found next to the video or in a manifest;
`vlm` generates one with a vision-language model (e.g. Qwen2.5-VL) loaded through transformers from a
local folder, for clips without a caption (or for all of them with `vlm_regenerate`). Every caption then
goes through quality checks (empty, too short/long, repeated n-grams, refusal boilerplate) and, when CLIP
weights are configured, gets a CLIP text–frame similarity score (cosine × 100, floored at 0, as CLIPScore).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from core.errors import UserError
from curation.clip_model import ClipModelSettings, embed_frame_sets, frames_of_batch, load_clip

log = logging.getLogger(__name__)

CAPTION_SOURCES = ("sidecar", "manifest", "vlm", "none")
ISSUES = ("empty", "too_short", "too_long", "repeated_ngrams", "refusal")

DEFAULT_REFUSALS = (
    r"\bi(?:'m| am) (?:sorry|unable)\b",
    r"\bi (?:cannot|can't|can not)\b",
    r"\bas an ai\b",
    r"\b(?:unable|not able) to (?:see|view|watch|process|analy[sz]e|describe)\b",
    r"\bno (?:video|image|frames?) (?:was|were|is|are)? ?(?:provided|attached|shown)\b",
)
DEFAULT_PROMPT = (
    "Describe this video in one detailed paragraph: the subjects, their actions, the setting, the camera "
    "motion and the visual style. Describe only what is visible."
)


class CaptionConfig(ClipModelSettings):
    """`caption:` section of the curation config (the CLIP fields drive the optional similarity score)."""

    backend: Literal["sidecar", "vlm"] = "sidecar"
    vlm_path: Path | None = None
    vlm_prompt: str = DEFAULT_PROMPT
    vlm_max_new_tokens: int = Field(256, ge=1)
    vlm_num_frames: int = Field(8, ge=1)
    vlm_batch_size: int = Field(4, ge=1)
    vlm_regenerate: bool = False  # also replace captions found next to the video
    min_words: int = Field(3, ge=0)
    max_words: int = Field(300, ge=1)
    ngram_size: int = Field(3, ge=1)
    max_repeated_ngram_ratio: float = Field(0.3, ge=0.0, le=1.0)
    refusal_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))
    clip_similarity: bool = True

    @model_validator(mode="after")
    def _check(self) -> CaptionConfig:
        if self.backend == "vlm" and self.vlm_path is None:
            raise UserError("vlm_path is required when backend is 'vlm'")
        if self.min_words > self.max_words:
            raise UserError(f"min_words ({self.min_words}) is larger than max_words ({self.max_words})")
        for pattern in self.refusal_patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise UserError(f"refusal_patterns: bad regular expression {pattern!r}: {err}") from None
        return self


def availability(config: CaptionConfig) -> str | None:
    """The caption stage always runs (its quality checks need no weights); this returns None, or raises
    FileNotFoundError for a configured path that does not exist."""
    if config.backend == "vlm" and not Path(config.vlm_path).is_dir():
        raise FileNotFoundError(f"caption.vlm_path: model folder not found: {config.vlm_path}")
    if config.clip_checkpoint is not None and not Path(config.clip_checkpoint).exists():
        raise FileNotFoundError(f"caption.clip_checkpoint: not found: {config.clip_checkpoint}")
    return None


def similarity_availability(config: CaptionConfig) -> str | None:
    """None when `caption_score` will be computed, else why the column stays null."""
    if not config.clip_similarity:
        return "caption similarity skipped: disabled (caption.clip_similarity: false)"
    if config.clip_checkpoint is None:
        return "caption similarity skipped: no weights configured (caption.clip_checkpoint)"
    return None


def _words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def repeated_ngram_ratio(text: str, n: int) -> float:
    """Share of the word n-grams that repeat an earlier one (0 for a text shorter than 2n words): high for
    the loops a captioner falls into ("a man walks a man walks a man walks …")."""
    words = _words(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(words) < 2 * n or not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def caption_issues(caption: str | None, config: CaptionConfig) -> list[str]:
    """The quality problems of one caption, in the fixed order of ISSUES; empty means it passes."""
    text = (caption or "").strip()
    if not text:
        return ["empty"]
    issues = []
    words = _words(text)
    if len(words) < config.min_words:
        issues.append("too_short")
    if len(words) > config.max_words:
        issues.append("too_long")
    if repeated_ngram_ratio(text, config.ngram_size) > config.max_repeated_ngram_ratio:
        issues.append("repeated_ngrams")
    lowered = text.lower()
    if any(re.search(p, lowered) for p in config.refusal_patterns):
        issues.append("refusal")
    return issues


def _text(value: object) -> str | None:
    # Ray Data hands a column that is null in every row of a batch over as float32 NaN (not a Python
    # float): it must stay a missing caption, never become the caption "nan".
    if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


class VlmCaptioner:
    """A transformers vision-language model from a local folder, loaded on first use."""

    def __init__(self, config: CaptionConfig):
        self.config = config
        self.processor = None
        self.model = None

    def _load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(self.config.vlm_path)
        if not path.is_dir():
            raise FileNotFoundError(f"caption.vlm_path: model folder not found: {path}")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        # Left padding so that every prompt of a batch ends where generation starts.
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True)
        self.model.to(device).eval()

    def _pick(self, frames: np.ndarray) -> np.ndarray:
        k = min(self.config.vlm_num_frames, len(frames))
        return frames[np.linspace(0, len(frames) - 1, k).round().astype(int)]

    @torch.inference_mode()
    def caption(self, frame_sets: list[np.ndarray]) -> list[str]:
        if self.model is None:
            self._load()
        messages = [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": self.config.vlm_prompt}]}
        ]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out: list[str] = []
        for start in range(0, len(frame_sets), self.config.vlm_batch_size):
            videos = [self._pick(f) for f in frame_sets[start : start + self.config.vlm_batch_size]]
            inputs = self.processor(
                text=[prompt] * len(videos), videos=videos, return_tensors="pt", padding=True
            ).to(self.model.device)
            generated = self.model.generate(
                **inputs, max_new_tokens=self.config.vlm_max_new_tokens, do_sample=False
            )
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]
            out.extend(t.strip() for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True))
        return out


class CaptionStage:
    """Ray Data callable class: fills `caption`, `caption_source`, `caption_issues`, `caption_score`."""

    def __init__(self, config: CaptionConfig):
        availability(config)
        self.config = config
        self.captioner = VlmCaptioner(config) if config.backend == "vlm" else None
        self.encoder = None
        reason = similarity_availability(config)
        if reason:
            log.info(reason)
        else:
            self.encoder = load_clip(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["frames"])
        captions = [_text(c) for c in batch.get("caption", [None] * n)]
        given = batch.get("caption_source")
        sources = [
            (str(given[i]) if given is not None and _text(given[i]) else "sidecar") if captions[i] else "none"
            for i in range(n)
        ]
        frame_sets = frames_of_batch(batch)
        if self.captioner is not None:
            todo = [
                i for i in range(n) if len(frame_sets[i]) and (self.config.vlm_regenerate or not captions[i])
            ]
            if todo:
                for i, text in zip(todo, self.captioner.caption([frame_sets[i] for i in todo]), strict=True):
                    captions[i], sources[i] = (text or None), ("vlm" if text else "none")
        batch["caption"] = np.array(captions, dtype=object)
        batch["caption_source"] = np.array(sources, dtype=object)
        issues = np.empty(n, dtype=object)
        for i, c in enumerate(captions):
            issues[i] = caption_issues(c, self.config)
        batch["caption_issues"] = issues
        batch["caption_score"] = self._similarity(captions, frame_sets)
        return batch

    def _similarity(self, captions: list[str | None], frame_sets: list[np.ndarray]) -> np.ndarray:
        scores = np.full(len(captions), np.nan, dtype=np.float64)
        if self.encoder is None:
            return scores
        rows = [i for i, c in enumerate(captions) if c and len(frame_sets[i])]
        if not rows:
            return scores
        images = embed_frame_sets(self.encoder, [frame_sets[i] for i in rows])
        texts = self.encoder.embed_texts([captions[i] for i in rows])
        for j, i in enumerate(rows):
            cosine = float((images[j] @ texts[j]).mean())
            scores[i] = 100.0 * max(cosine, 0.0)
        return scores

"""Tiny random open_clip and aesthetic-MLP checkpoints for the curation scorer tests.

They are saved to files and loaded back through the production loaders (curation.clip_model,
curation.aesthetic), exactly as real ViT-L/14 and improved-aesthetic-predictor weights would be.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_tiny_clip(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a random tiny CLIP: (config .json, weights .safetensors)."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIP(**TINY_CLIP_CFG)
    cfg_path = folder / "tiny_clip.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CFG))
    weights = folder / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return cfg_path, weights


def save_tiny_aesthetic_mlp(path: Path, input_size: int = 32, seed: int = 0) -> Path:
    from curation.aesthetic import AestheticMLP

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = AestheticMLP(input_size).state_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


_VLM_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_VLM_WORDS = "a the red car drives along road camera pans left man walks in park dog runs snowy sky blue"
# Qwen2.5-VL's chat layout, reduced to what a user turn with one video and a text needs.
_VLM_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'video' %}<|vision_start|><|video_pad|>"
    "<|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def _save_tiny_vlm_processor(folder: Path) -> dict[str, int]:
    """A word-level tokenizer over _VLM_WORDS with Qwen2.5-VL's processors, saved; returns its vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    vocab = {w: i for i, w in enumerate([*_VLM_SPECIAL, *sorted(set(_VLM_WORDS.split())), "<unk>"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"<\|[a-z_]+\|>|\w+|[^\w\s]"), behavior="isolated")
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=list(_VLM_SPECIAL[1:]),
    )
    pixels = {"min_pixels": 28 * 28, "max_pixels": 56 * 56}
    Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=_VLM_TEMPLATE,
    ).save_pretrained(folder)
    return vocab


def _tiny_qwen2_5_vl_config(vocab: dict[str, int]):
    """One text layer and one vision block, 32 wide, with the special tokens' ids from `vocab`."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: vocab[t] for t in _VLM_SPECIAL}
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [0],
            "window_size": 56,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def save_tiny_qwen2_5_vl(folder: Path, seed: int = 0) -> Path:
    """A random two-layer Qwen2.5-VL with a word-level tokenizer, saved with save_pretrained (offline)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    vocab = _save_tiny_vlm_processor(folder)
    config = _tiny_qwen2_5_vl_config(vocab)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = vocab["<|im_end|>"]
    model.generation_config.pad_token_id = vocab["<|endoftext|>"]
    model.save_pretrained(folder)
    return folder

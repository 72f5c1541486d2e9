"""Random-weight models in the folder layouts the real loaders read, for benchmarks/two_gpu_training.py.

- `write_wan_vae(folder)`: diffusers' `AutoencoderKLWan` with its default config (= the Wan2.1 VAE), random
  weights, `save_pretrained` (config.json + safetensors), read back by `model.autoencoders` (`wan2.1`).
- `write_gemma2(folder, size)`: a random `Gemma2Model` (size "2b": the Gemma-2-2B config; "tiny": 2 layers)
  and a word-level tokenizer built offline (no hub), read back by `model.text_encoders` (`gemma2`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from model.text_encoders import COMPLEX_HUMAN_INSTRUCTION

# Words of the synthetic captions (curation.synth) besides the instruction's; others map to <unk>.
_CAPTION_WORDS = (
    "a red kite waves on lake busy street forest path clouds city skyline drifting slowly seen from moving car "
    "in soft morning light under grey sky small square disc moves right left motion score orange yellow green "
    "cyan blue purple background"
)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    text = " ".join(COMPLEX_HUMAN_INSTRUCTION) + " " + _CAPTION_WORDS
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for word in sorted(set(re.findall(r"\w+|[^\w\s]", text.lower()))):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def write_gemma2(folder: Path, size: str, device: str = "cpu") -> Path:
    """A random Gemma-2 text encoder folder (config.json, model.safetensors, tokenizer files), bf16 for "2b"."""
    from transformers import Gemma2Config, Gemma2Model

    if size == "2b":  # transformers' Gemma2Config defaults are google/gemma-2-2b's shapes
        config, dtype = Gemma2Config(), torch.bfloat16
    else:
        config, dtype = (
            Gemma2Config(
                vocab_size=512,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                query_pre_attn_scalar=16,
                max_position_embeddings=512,
                sliding_window=64,
            ),
            torch.float32,
        )
    torch.manual_seed(0)
    with torch.device(device):
        model = Gemma2Model(config).to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    _tokenizer().save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def write_wan_vae(folder: Path, device: str = "cpu") -> Path:
    """diffusers' AutoencoderKLWan (default config = Wan2.1), random weights, fp32 files."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    with torch.device(device):
        vae = AutoencoderKLWan()
    vae.save_pretrained(folder)
    return folder

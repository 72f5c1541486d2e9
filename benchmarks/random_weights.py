"""Random-weight models of the real architectures, in the folder layouts the real loaders read (the GPU
recipes in benchmarks/ and the curation tests: nothing can be downloaded, and a random model costs what the
real one costs).

- `write_wan_vae(folder)`: diffusers' `AutoencoderKLWan` with its default config (= the Wan2.1 VAE), random
  weights, `save_pretrained` (config.json + safetensors), read back by `model.autoencoders` (`wan2.1`).
- `write_gemma2(folder, size)`: a random `Gemma2Model` (size "2b": the Gemma-2-2B config; "tiny": 2 layers)
  and a word-level tokenizer built offline (no hub), read back by `model.text_encoders` (`gemma2`).
- `write_clip(folder, "vit-l-14")`: open_clip's ViT-L/14 (QuickGELU, as OpenAI's) as a safetensors file, read
  back by `curation.clip_model` with `clip_model: ViT-L-14-quickgelu`; "tiny" writes a 1-layer CLIP and its
  model config .json.
- `write_aesthetic_mlp(path, input_size)`: the LAION improved-aesthetic-predictor head (`curation.aesthetic`).
- `write_qwen2_5_vl(folder, size)`: Qwen2.5-VL ("3b": the 3B model's text and vision shapes; "tiny": one
  layer each) with a word-level tokenizer and Qwen2.5-VL's processors, read back by `curation.captions`.
  `new_tokens` (3b) makes every caption exactly that long (`min_new_tokens` in its generation config): a
  random model would stop at a random end token, a real one writes ~120 tokens.
"""

from __future__ import annotations

import json
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


TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_clip(folder: Path, size: str, seed: int = 0, device: str = "cpu") -> tuple[str, Path]:
    """A random CLIP: (the `clip_model` to configure, the weights .safetensors)."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if size == "tiny":
        from open_clip.model import CLIP

        name = str(folder / "tiny_clip.json")
        Path(name).write_text(json.dumps(TINY_CLIP_CFG))
        model = CLIP(**TINY_CLIP_CFG)
    else:  # OpenAI's ViT-L/14 layout, which the LAION aesthetic MLP reads the embeddings of
        name = "ViT-L-14-quickgelu"
        model = open_clip.create_model(name, pretrained=None, device=device)
    weights = folder / f"{Path(name).stem}.safetensors"
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(weights))
    return name, weights


def write_aesthetic_mlp(path: Path, input_size: int = 768, seed: int = 0) -> Path:
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
QWEN2_5_VL_3B_VOCAB = 151_936


def _save_vlm_processor(folder: Path, vocab_size: int | None, pixels: dict[str, int]) -> dict[str, int]:
    """A word-level tokenizer with Qwen2.5-VL's processors, saved; returns its vocabulary. With `vocab_size`,
    filler words `w<id>` cover every id the model can generate, so a random model's captions decode to text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    words = [*_VLM_SPECIAL, *sorted(set(_VLM_WORDS.split())), "<unk>"]
    if vocab_size:
        words += [f"w{i}" for i in range(len(words), vocab_size)]
    vocab = {w: i for i, w in enumerate(words)}
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
    Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=_VLM_TEMPLATE,
    ).save_pretrained(folder)
    return vocab


# (text_config, vision_config) of each size; the 3B's are Qwen/Qwen2.5-VL-3B-Instruct's config.json.
_VLM_SHAPES = {
    "tiny": (
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=512,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
             fullatt_block_indexes=[0], window_size=56),
    ),
    "3b": (
        dict(vocab_size=QWEN2_5_VL_3B_VOCAB, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
             num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
             tie_word_embeddings=True,
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
        dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
             fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14, spatial_merge_size=2,
             temporal_patch_size=2),
    ),
}  # fmt: skip


def write_qwen2_5_vl(
    folder: Path, size: str, seed: int = 0, new_tokens: int = 120, device: str = "cpu"
) -> Path:
    """A random Qwen2.5-VL with a word-level tokenizer, saved with save_pretrained (offline); bf16 for "3b"."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text, vision = _VLM_SHAPES[size]
    pixels = {"min_pixels": 28 * 28, "max_pixels": 56 * 56} if size == "tiny" else {}
    vocab = _save_vlm_processor(folder, text.get("vocab_size"), pixels)
    ids = {t: vocab[t] for t in _VLM_SPECIAL}
    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(vocab), **text, "eos_token_id": eos, "pad_token_id": pad},
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=eos,
        pad_token_id=pad,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config)
    if size != "tiny":
        model = model.to(torch.bfloat16)
        model.generation_config.min_new_tokens = new_tokens
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.save_pretrained(folder)
    return folder

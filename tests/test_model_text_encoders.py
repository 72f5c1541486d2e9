"""model.text_encoders: the deterministic hashed encoder, and Gemma-2 loaded from a tiny random model and an
offline-built tokenizer saved to a folder, checked against diffusers' SanaVideoPipeline.encode_prompt."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from model_test_support import one_thread  # noqa: F401  (fixture)

from model.text_encoders import COMPLEX_HUMAN_INSTRUCTION, build_text_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_hashed_encoder_shapes_mask_and_padding():
    enc = build_text_encoder("hashed", channels=16, max_length=10)
    assert (enc.name, enc.caption_channels, enc.max_length) == ("hashed", 16, 10)
    emb, mask = enc.encode(
        ["A red fox jumps.", "", "one two three four five six seven eight nine ten eleven"]
    )
    assert emb.shape == (3, 10, 16) and emb.dtype == torch.float32
    assert mask.dtype == torch.long
    # BOS + tokens (words and punctuation), truncated to max_length; padding is zero with mask 0.
    assert mask.sum(1).tolist() == [6, 1, 10]
    assert torch.equal(emb[0, 6:], torch.zeros(4, 16)) and torch.equal(emb[1, 1:], torch.zeros(9, 16))
    assert (emb[0, :6].abs().sum(-1) > 0).all()
    # Unit variance: (u + b)/√2 of two vectors uniform in [−√3, √3].
    values = build_text_encoder("hashed", channels=512).encode(["many different words to average over"])[0]
    values = values[values != 0]
    assert values.abs().max() <= 6**0.5 and 0.85 < values.var().item() < 1.15


def test_hashed_encoder_is_deterministic_and_order_sensitive():
    enc = build_text_encoder("hashed", channels=8, max_length=6)
    a, _ = enc.encode(["A red fox."])
    assert torch.equal(a, enc.encode(["a  RED fox ."])[0])  # case and spacing do not matter
    assert not torch.equal(a, enc.encode(["A fox red."])[0])  # order does
    # Pinned: these bits are what every machine must produce (blake2b + exactly rounded arithmetic).
    assert a[0, 1, :4].tolist() == [
        0.5580623149871826,
        -1.8043612241744995,
        0.6018145084381104,
        0.07950796186923981,
    ]


def test_hashed_encoder_is_identical_in_another_process():
    code = (
        "import sys; from model.text_encoders import build_text_encoder;"
        "e, m = build_text_encoder('hashed', channels=24, max_length=12).encode(['a cat on a mat']);"
        "sys.stdout.buffer.write(e.numpy().tobytes() + m.numpy().tobytes())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # Python's own str hash changes; ours must not
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env, check=True, timeout=120
    ).stdout
    emb, mask = build_text_encoder("hashed", channels=24, max_length=12).encode(["a cat on a mat"])
    assert out == emb.numpy().tobytes() + mask.numpy().tobytes()


def _tiny_gemma(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import Gemma2Config, Gemma2Model, PreTrainedTokenizerFast

    text = " ".join(COMPLEX_HUMAN_INSTRUCTION) + " a red fox jumps over the lazy dog in the snow"
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text.lower())))
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    config = Gemma2Config(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        max_position_embeddings=512,
        sliding_window=64,
    )
    torch.manual_seed(0)
    tokenizer.save_pretrained(folder)
    Gemma2Model(config).save_pretrained(folder)


def test_gemma2_encoder_matches_diffusers_sana_video_prompting(tmp_path):
    from diffusers import SanaVideoPipeline

    _tiny_gemma(tmp_path)
    enc = build_text_encoder("gemma2", path=tmp_path)
    assert (enc.name, enc.caption_channels, enc.max_length) == ("gemma2", 32, 300)
    prompts = ["A red fox jumps over the lazy dog", "the snow"]
    emb, mask = enc.encode(prompts)
    neg, neg_mask = enc.encode([""] * 2, instruction=False)
    assert emb.shape == (2, 300, 32) and mask.shape == (2, 300)
    # BOS, the instruction's last token, then the prompt's tokens, then padding.
    assert mask.sum(1).tolist() == [2 + 8, 2 + 2] and mask[0, 0] == 1 and neg_mask.sum(1).tolist() == [1, 1]

    pipe = SanaVideoPipeline(
        tokenizer=enc.tokenizer, text_encoder=enc.model, vae=None, transformer=None, scheduler=None
    )
    ref, ref_mask, ref_neg, ref_neg_mask = pipe.encode_prompt(
        prompts,
        do_classifier_free_guidance=True,
        negative_prompt="",
        device=torch.device("cpu"),
        complex_human_instruction=list(COMPLEX_HUMAN_INSTRUCTION),
    )
    torch.testing.assert_close(emb, ref.float(), rtol=0, atol=0)
    assert torch.equal(mask, ref_mask.long())
    torch.testing.assert_close(neg, ref_neg.float(), rtol=0, atol=0)
    assert torch.equal(neg_mask, ref_neg_mask.long())


def test_gemma2_from_a_pipeline_folder_and_missing_weights(tmp_path):
    _tiny_gemma(tmp_path / "text_encoder")
    (tmp_path / "tokenizer").mkdir()
    for name in os.listdir(tmp_path / "text_encoder"):
        if "token" in name:
            os.replace(tmp_path / "text_encoder" / name, tmp_path / "tokenizer" / name)
    enc = build_text_encoder("gemma2", path=tmp_path, max_length=16)
    emb, mask = enc.encode(["a red fox"])
    assert emb.shape == (1, 16, 32) and mask.sum().item() == 1 + 1 + 3
    with pytest.raises(FileNotFoundError, match="no-gemma"):
        build_text_encoder("gemma2", path=tmp_path / "no-gemma")
    with pytest.raises(ValueError, match="needs path"):
        build_text_encoder("gemma2")
    with pytest.raises(ValueError, match="unknown text encoder"):
        build_text_encoder("t5")

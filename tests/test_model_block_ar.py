"""Block-causal training mode and the constant-memory block-AR cache of `LinearDiT`."""

from __future__ import annotations

import pytest
import torch
from model_test_support import one_thread  # noqa: F401  (fixture)

from model import LinearDiT, LinearDiTConfig

# Tiny tensors: one intra-op thread avoids synchronisation costs on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _random_tiny(seed: int = 0) -> LinearDiT:
    """The tiny preset with every parameter random (non-zero temporal conv and modulation tables)."""
    torch.manual_seed(seed)
    model = LinearDiT(LinearDiTConfig.from_preset("tiny")).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or "caption_norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 1.0 / max(1, param[0].numel()) ** 0.5)
    return model


@pytest.fixture(scope="module")
def model() -> LinearDiT:
    return _random_tiny()


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 48, 5, 8, 8, generator=generator)
    text = torch.randn(2, 7, 64, generator=generator)
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0  # second caption is 4 tokens long
    return latents, text, mask


@pytest.mark.parametrize("chunks", [[3, 2], [1, 2, 2], [2, 2, 1], [1, 1, 1, 1, 1]])
def test_block_causal_last_chunk_equals_cached_block(model, inputs, chunks):
    latents, text, mask = inputs
    last = sum(chunks[:-1])
    t_last = torch.tensor([730.0, 215.5])
    timesteps = torch.zeros(2, latents.shape[2])
    timesteps[:, last:] = t_last[:, None]  # earlier chunks clean (t=0), the last one noisy
    with torch.no_grad():
        full = model(latents, text, timesteps, mask, chunk_sizes=chunks)
        cache = model.new_cache(2)
        start = 0
        for size in chunks[:-1]:
            model.update_cache(latents[:, :, start : start + size], text, cache, start, mask)
            start += size
        before = [t.clone() for t in cache.tensors()]
        block = model.forward_block(latents[:, :, last:], text, t_last, cache, last, mask)
        empty = model.forward_block(latents[:, :, last:], text, t_last, model.new_cache(2), 0, mask)
    assert cache.num_frames == last
    assert all(torch.equal(a, b) for a, b in zip(before, cache.tensors(), strict=True))  # read only
    assert _rel(block, full[:, :, last:]) < 1e-5
    # The cache carries real information: without it the block's output is different.
    assert _rel(empty, full[:, :, last:]) > 1e-3


def test_block_causal_differs_from_bidirectional_only_by_the_future(model, inputs):
    latents, text, mask = inputs
    t = torch.tensor([400.0, 900.0])
    with torch.no_grad():
        bidirectional = model(latents, text, t, mask)
        one_chunk = model(latents, text, t, mask, chunk_sizes=[5])
        causal = model(latents, text, t, mask, chunk_sizes=[2, 3])
        first_alone = model(latents[:, :, :2], text, t, mask)
    assert _rel(one_chunk, bidirectional) < 1e-5
    # The first chunk sees nothing of the second: it is the 2-frame video on its own.
    assert _rel(causal[:, :, :2], first_alone) < 1e-5
    assert _rel(causal[:, :, :2], bidirectional[:, :, :2]) > 1e-3


def test_per_frame_timesteps_equal_scalar_when_constant(model, inputs):
    latents, text, mask = inputs
    t = torch.tensor([123.0, 877.0])
    with torch.no_grad():
        scalar = model(latents, text, t, mask)
        per_frame = model(latents, text, t[:, None].expand(2, 5), mask)
        varied = model(latents, text, torch.linspace(0, 1000, 5).expand(2, 5), mask)
    assert _rel(per_frame, scalar) < 1e-6
    assert _rel(varied, scalar) > 1e-3


def test_cache_size_is_constant_over_1000_blocks():
    model = _random_tiny(seed=3)
    text = torch.randn(1, 3, 64)
    cache = model.new_cache(1)
    block = torch.randn(1, 48, 1, 4, 4)  # one latent frame of 2x2 tokens
    model.update_cache(block, text, cache, 0)
    shapes = [tuple(t.shape) for t in cache.tensors()]
    nbytes = cache.nbytes()
    pointers = [t.data_ptr() for t in cache.tensors()]
    kv_after_one = cache.kv[0].clone()
    for frame in range(1, 1000):
        model.update_cache(torch.randn(1, 48, 1, 4, 4), text, cache, frame)
    assert cache.num_frames == 1000
    assert [tuple(t.shape) for t in cache.tensors()] == shapes
    assert [t.data_ptr() for t in cache.tensors()] == pointers
    assert cache.nbytes() == nbytes
    # kv (2x32x32) + k_sum (2x32) fp32 per layer, plus one 64-channel frame of 4 tokens, for 2 layers.
    assert nbytes == 2 * (2 * 32 * 32 * 4 + 2 * 32 * 4 + 64 * 1 * 4 * 4)
    assert all(torch.isfinite(t).all() for t in cache.tensors())
    assert not torch.equal(cache.kv[0], kv_after_one)


def test_new_cache_with_grid_is_allocated_upfront(model):
    cache = model.new_cache(2, latent_hw=(8, 8))
    before = cache.nbytes()
    model.update_cache(torch.randn(2, 48, 2, 8, 8), torch.randn(2, 5, 64), cache, 0)
    assert cache.nbytes() == before
    with pytest.raises(ValueError, match="frame_offset 0 does not follow the 2 latent frames"):
        model.forward_block(torch.randn(2, 48, 1, 8, 8), torch.randn(2, 5, 64), 500.0, cache, 0)
    with pytest.raises(ValueError, match="token grid"):
        model.update_cache(torch.randn(2, 48, 1, 4, 8), torch.randn(2, 5, 64), cache, 2)


def test_bf16_forward_and_fp32_attention_state(model, inputs):
    latents, text, mask = inputs
    model_bf16 = _random_tiny().to(torch.bfloat16)
    t = torch.tensor([300.0, 600.0])
    with torch.no_grad():
        reference = model(latents, text, t, mask, chunk_sizes=[3, 2])
        out = model_bf16(latents.bfloat16(), text.bfloat16(), t, mask, chunk_sizes=[3, 2])
        cache = model_bf16.new_cache(2)
        model_bf16.update_cache(latents[:, :, :3].bfloat16(), text.bfloat16(), cache, 0, mask)
        block = model_bf16.forward_block(latents[:, :, 3:].bfloat16(), text.bfloat16(), t, cache, 3, mask)
    assert out.dtype == torch.bfloat16 and block.dtype == torch.bfloat16
    assert torch.isfinite(out).all() and torch.isfinite(block).all()
    assert _rel(out, reference) < 5e-2
    assert all(kv.dtype == torch.float32 for kv in cache.kv)
    assert all(k.dtype == torch.float32 for k in cache.k_sum)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_gradient_checkpointing_gives_the_same_gradients(inputs, fraction):
    latents, text, mask = inputs
    grads = []
    for checkpointing in (False, True):
        model = _random_tiny(seed=5).train()
        model.config.gradient_checkpointing = checkpointing
        model.config.checkpoint_fraction = fraction  # 0.5: one block recomputed, one keeping activations
        loss = model(latents, text, torch.tensor([10.0, 990.0]), mask, chunk_sizes=[2, 3]).square().mean()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0
    assert _rel(grads[1], grads[0]) < 1e-5


def test_bad_inputs_name_the_problem(model, inputs):
    latents, text, mask = inputs
    with pytest.raises(ValueError, match="sum to the 5 latent frames"):
        model(latents, text, 1.0, mask, chunk_sizes=[2, 2])
    with pytest.raises(ValueError, match=r"latents must be \(B, 48"):
        model(latents[:, :16], text, 1.0)
    with pytest.raises(ValueError, match="timesteps must be"):
        model(latents, text, torch.zeros(2, 3))
    cache = model.new_cache(2)
    cache.num_frames = 1023  # the last frame RoPE covers: still fine
    model.forward_block(latents[:, :, :1], text, 1.0, cache, 1023)
    cache.num_frames = 1024
    with pytest.raises(ValueError, match="exceeds rope_max_seq_len=1024"):
        model.forward_block(latents[:, :, :1], text, 1.0, cache, 1024)

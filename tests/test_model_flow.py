"""model.flow: noising, the flow shift, timestep sampling (per sample and per chunk) and the loss."""

from __future__ import annotations

import pytest
import torch
from model_test_support import one_thread  # noqa: F401  (fixture)

from core.errors import UserError
from model.config import LinearDiTConfig
from model.flow import (
    add_noise,
    flow_matching_loss,
    flow_target,
    sample_chunk_sigmas,
    sample_sigmas,
    shift_sigma,
    sigma_to_timestep,
    velocity_from_sample,
)
from model.linear_dit import LinearDiT

pytestmark = pytest.mark.usefixtures("one_thread")


def _unshift(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    # Inverse of σ' = sσ/(1+(s−1)σ).
    return sigma / (shift - (shift - 1) * sigma)


def test_add_noise_endpoints_and_broadcasting():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 5, 6, generator=g)
    noise = torch.randn(2, 3, 4, 5, 6, generator=g)
    assert torch.equal(add_noise(x0, noise, torch.zeros(2)), x0)
    assert torch.equal(add_noise(x0, noise, torch.ones(2)), noise)
    sigma = torch.tensor([0.25, 0.5])
    expected = torch.stack([0.75 * x0[0] + 0.25 * noise[0], 0.5 * x0[1] + 0.5 * noise[1]])
    torch.testing.assert_close(add_noise(x0, noise, sigma), expected)
    per_frame = torch.tensor([[0.0, 0.2, 0.4, 1.0], [1.0, 1.0, 0.0, 0.5]])
    out = add_noise(x0, noise, per_frame)
    for b in range(2):
        for f in range(4):
            s = per_frame[b, f]
            torch.testing.assert_close(out[b, :, f], (1 - s) * x0[b, :, f] + s * noise[b, :, f])
    # The target is the velocity of the straight path: d x_σ / dσ.
    eps = 1e-3
    numeric = (add_noise(x0, noise, sigma + eps) - add_noise(x0, noise, sigma)) / eps
    torch.testing.assert_close(numeric, flow_target(x0, noise), atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match=r"\(B,\) or \(B, F\)"):
        add_noise(x0, noise, torch.zeros(3))


def test_shift_sigma_and_timesteps():
    sigma = torch.linspace(0, 1, 11)
    torch.testing.assert_close(shift_sigma(sigma, 1.0), sigma)
    assert shift_sigma(0.5, 3.0) == pytest.approx(0.75)
    shifted = shift_sigma(sigma, 8.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and bool((shifted.diff() > 0).all())
    assert bool((shifted[1:-1] > sigma[1:-1]).all())  # a shift > 1 moves every level towards noise
    assert sigma_to_timestep(0.25) == 250
    with pytest.raises(ValueError, match="shift"):
        shift_sigma(sigma, 0.0)


def test_sample_sigmas_is_shifted_logit_normal():
    n = 40_000
    sigma = sample_sigmas(n, torch.Generator().manual_seed(1), mean=0.5, std=0.8, shift=3.0)
    assert sigma.shape == (n,) and bool(((sigma > 0) & (sigma < 1)).all())
    logits = torch.logit(_unshift(sigma.double(), 3.0))
    # Standard errors of the sample mean/std are 0.8/√n ≈ 0.004; 0.02 is 5σ.
    assert logits.mean().item() == pytest.approx(0.5, abs=0.02)
    assert logits.std().item() == pytest.approx(0.8, abs=0.02)
    again = sample_sigmas(n, torch.Generator().manual_seed(1), mean=0.5, std=0.8, shift=3.0)
    assert torch.equal(sigma, again)


def test_sample_chunk_sigmas_uniform():
    sizes = [3, 2, 4]
    sigma = sample_chunk_sigmas(5000, sizes, "uniform", torch.Generator().manual_seed(2), shift=1.0)
    assert sigma.shape == (5000, 9)
    chunks = torch.stack([sigma[:, 0], sigma[:, 3], sigma[:, 5]], dim=1)
    assert torch.equal(sigma, chunks.repeat_interleave(torch.tensor(sizes), dim=1))
    # Independent per chunk: every chunk is logit-normal(0, 1) and the chunks are uncorrelated.
    logits = torch.logit(chunks.double())
    assert logits.mean(0).abs().max().item() < 0.06
    assert (logits.std(0) - 1).abs().max().item() < 0.05
    corr = torch.corrcoef(logits.T)
    assert (corr - torch.eye(3, dtype=corr.dtype)).abs().max().item() < 0.06


def test_sample_chunk_sigmas_incremental():
    sizes = [11, 10, 10]
    sigma = sample_chunk_sigmas(5000, sizes, "incremental", torch.Generator().manual_seed(3), shift=3.0)
    chunks = sigma[:, [0, 11, 21]]
    # Noise increases along the video: the first chunk is the cleanest.
    assert bool((chunks.diff(dim=1) >= 0).all())
    assert bool((chunks[:, 0] < chunks[:, 2]).float().mean() > 0.99)
    # The last chunk carries the logit-normal level; the ones before are uniform below their successor.
    last = torch.logit(_unshift(chunks[:, 2].double(), 3.0))
    assert last.mean().item() == pytest.approx(0.0, abs=0.06)
    ratio = _unshift(chunks[:, 1].double(), 3.0) / _unshift(chunks[:, 2].double(), 3.0)
    assert ratio.mean().item() == pytest.approx(0.5, abs=0.02)  # U(0, 1) has mean 0.5, s.e. 0.004


def test_sample_chunk_sigmas_rejects_bad_input():
    with pytest.raises(ValueError, match="strategy"):
        sample_chunk_sigmas(2, [2, 2], "random")
    with pytest.raises(ValueError, match="chunk_sizes"):
        sample_chunk_sigmas(2, [2, 0])


def test_flow_matching_loss_and_frame_mask():
    g = torch.Generator().manual_seed(4)
    x0, noise, out = (torch.randn(2, 3, 4, 2, 2, generator=g) for _ in range(3))
    err = (out - (noise - x0)).square()
    torch.testing.assert_close(flow_matching_loss(out, x0, noise), err.mean())
    mask = torch.ones(2, 4)
    mask[:, 0] = 0  # a conditioning frame is not trained on
    torch.testing.assert_close(flow_matching_loss(out, x0, noise, mask), err[:, :, 1:].mean())
    per_sample = torch.tensor([1.0, 0.0])
    torch.testing.assert_close(flow_matching_loss(out, x0, noise, per_sample), err[0].mean())
    zero = flow_matching_loss(out, x0, noise, torch.zeros(2, 4))
    assert zero.item() == 0.0
    with pytest.raises(ValueError, match="one shape"):
        flow_matching_loss(out[:, :2], x0, noise)


def test_training_step_on_tiny_model_learns_a_fixed_batch():
    """sample σ → add_noise → LinearDiT(x_t, 1000σ) → loss: the pieces fit together and the loss falls."""
    torch.manual_seed(0)
    model = LinearDiT(LinearDiTConfig.from_preset("tiny"))
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(2, 48, 4, 8, 8, generator=g)
    noise = torch.randn(2, 48, 4, 8, 8, generator=g)
    text = torch.randn(2, 6, 64, generator=g)
    sigma = sample_chunk_sigmas(2, [2, 2], "incremental", g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        x_t = add_noise(x0, noise, sigma)
        v = model(x_t, text, sigma_to_timestep(sigma), chunk_sizes=[2, 2])
        loss = flow_matching_loss(v, x0, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0]


def test_sample_prediction_returns_the_velocity_of_its_x0():
    """prediction="sample": the head's output is read as x0 and returned as the velocity (x_σ − x0)/σ (σ
    clipped at 0.05), on the bidirectional and the block-AR path; a sampler's x_σ − σ·v gives that x0 back."""
    torch.manual_seed(0)
    velocity_model = LinearDiT(LinearDiTConfig.from_preset("tiny"))
    sample_model = LinearDiT(LinearDiTConfig.from_preset("tiny", prediction="sample"))
    sample_model.load_state_dict(velocity_model.state_dict())
    g = torch.Generator().manual_seed(6)
    x_t, text = torch.randn(1, 48, 4, 8, 8, generator=g), torch.randn(1, 6, 64, generator=g)
    sigma = torch.tensor([[0.9, 0.5, 0.2, 0.01]])
    with torch.no_grad():
        x0 = velocity_model(x_t, text, sigma_to_timestep(sigma))  # same weights: the raw head output
        v = sample_model(x_t, text, sigma_to_timestep(sigma))
        block_x0 = velocity_model.forward_block(x_t[:, :, :2], text, 400.0, velocity_model.new_cache(1), 0)
        block_v = sample_model.forward_block(x_t[:, :, :2], text, 400.0, sample_model.new_cache(1), 0)
    clipped = torch.tensor([0.9, 0.5, 0.2, 0.05]).view(1, 1, 4, 1, 1)
    torch.testing.assert_close(v, (x_t - x0) / clipped)
    torch.testing.assert_close(x_t - clipped * v, x0)
    torch.testing.assert_close(v, velocity_from_sample(x_t, x0, sigma_to_timestep(sigma)))
    torch.testing.assert_close(block_v, (x_t[:, :, :2] - block_x0) / 0.4)
    with pytest.raises(UserError, match="prediction must be one of velocity, sample, got 'eps'"):
        LinearDiTConfig.from_preset("tiny", prediction="eps")

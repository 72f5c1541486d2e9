"""model.samplers against a known answer: Gaussian data, whose flow velocity is linear in x in closed form.

For x0 ~ N(μ, Σ) and x_σ = (1−σ)x0 + σε, x_σ ~ N((1−σ)μ, C_σ) with C_σ = (1−σ)²Σ + σ²I, and the exact
velocity is E[ε − x0 | x_σ] = σ·r − (μ + (1−σ)·Σ·r) with r = C_σ⁻¹(x − (1−σ)μ). Integrating it from
N(0, I) at σ = 1 must give N(μ, Σ) at σ = 0; what is left is the sampler's discretisation error.
"""

from __future__ import annotations

import pytest
import torch
from model_test_support import one_thread  # noqa: F401  (fixture)

from model.config import LinearDiTConfig
from model.linear_dit import LinearDiT
from model.samplers import (
    autoregressive_segments,
    block_ar_sample,
    guided_field,
    model_velocity,
    sample,
)
from model.schedules import flow_sigmas, sigmas_from_timesteps

DIM = 4
pytestmark = pytest.mark.usefixtures("one_thread")


EIGVALS = torch.tensor([0.25, 0.5, 1.0, 2.0], dtype=torch.float64)
Q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
SIGMA = Q @ torch.diag(EIGVALS) @ Q.T
MU = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
NO_TEXT = torch.zeros(1, 1, 1)


def gaussian_velocity(x, timesteps, text, text_mask):
    s = float(timesteps[0]) / 1000
    # In Σ's eigenbasis C_σ is diagonal: (1−σ)²λ + σ².
    r = ((x - (1 - s) * MU) @ Q) / ((1 - s) ** 2 * EIGVALS + s**2) @ Q.T
    return s * r - (MU + (1 - s) * r @ SIGMA)


def pushed_covariance_error(sampler: str, steps: int, shift: float) -> float:
    """Relative Frobenius error of the covariance the sampler maps N(0, I) to, with no Monte-Carlo noise:
    the field is affine, so the sampler is an affine map x ↦ Ax + b and its output covariance is AAᵀ."""
    b = sample(
        gaussian_velocity,
        torch.zeros(1, DIM, dtype=torch.float64),
        NO_TEXT,
        sampler=sampler,
        steps=steps,
        shift=shift,
    )
    eye = torch.eye(DIM, dtype=torch.float64)
    a = (sample(gaussian_velocity, eye, NO_TEXT, sampler=sampler, steps=steps, shift=shift) - b).T
    return ((a @ a.T - SIGMA).norm() / SIGMA.norm()).item()


@pytest.mark.parametrize(("sampler", "steps", "shift"), [("dpm++", 50, 8.0), ("euler", 100, 1.0)])
def test_samples_match_target_mean_and_covariance(sampler, steps, shift):
    n = 20_000
    noise = torch.randn(n, DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = sample(gaussian_velocity, noise, NO_TEXT, sampler=sampler, steps=steps, shift=shift)
    # Tolerances: the Monte-Carlo standard error of a mean is √(Σ_ii/n) ≤ 0.01 and of a covariance entry
    # √((Σ_ii Σ_jj + Σ_ij²)/n) ≤ 0.02; the discretisation error at these step counts is ≤ 0.02 (see
    # pushed_covariance_error). 0.05 and 0.1 leave about 4σ of room over both together.
    assert (out.mean(0) - MU).abs().max().item() < 0.05
    assert (torch.cov(out.T) - SIGMA).abs().max().item() < 0.1


@pytest.mark.parametrize(("steps", "shift"), [(6, 1.0), (10, 1.0), (8, 3.0), (10, 3.0), (20, 8.0)])
def test_dpm_solver_beats_euler_at_the_same_step_count(steps, shift):
    euler = pushed_covariance_error("euler", steps, shift)
    dpm = pushed_covariance_error("dpm++", steps, shift)
    assert dpm < 0.5 * euler, (dpm, euler)


def test_dpm_solver_is_second_order_and_euler_first_order():
    # Doubling the steps divides the error by ~4 for a second-order method and by ~2 for a first-order one.
    dpm = [pushed_covariance_error("dpm++", n, 1.0) for n in (10, 20)]
    euler = [pushed_covariance_error("euler", n, 1.0) for n in (10, 20)]
    assert dpm[0] / dpm[1] > 3.0
    assert 1.6 < euler[0] / euler[1] < 2.4


def test_dpm_solver_matches_diffusers_multistep_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        flow_shift=8.0, use_flow_sigmas=True, prediction_type="flow_prediction"
    )
    scheduler.set_timesteps(12)
    x = torch.randn(6, DIM, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = x.clone()
    for i, t in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[i])
        v = gaussian_velocity(ref, torch.tensor([sigma * 1000]), None, None)
        ref = scheduler.step(v, t, ref).prev_sample
    ours = sample(gaussian_velocity, x, NO_TEXT, sampler="dpm++", sigmas=scheduler.sigmas.double())
    # diffusers steps in fp32; agreement to fp32 rounding.
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)


def test_point_mass_data_is_reached_exactly_by_every_sampler():
    # x0 = c always: the x0 prediction x − σv is exactly c at every step, and the paths are straight lines.
    c = torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=torch.float64)

    def velocity(x, timesteps, text, mask):
        s = float(timesteps[0]) / 1000
        return (x - c) / s

    noise = torch.randn(3, DIM, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for name in ("euler", "dpm++", "renoise"):
        out = sample(
            velocity, noise, NO_TEXT, sampler=name, steps=4, generator=torch.Generator().manual_seed(0)
        )
        torch.testing.assert_close(out, c.expand(3, -1))


def test_schedules():
    sig = flow_sigmas(4, shift=1.0)
    torch.testing.assert_close(sig, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    shifted = flow_sigmas(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and shifted[2] == pytest.approx(0.75)
    few = sigmas_from_timesteps([1000, 960, 889, 727], shift=1.0)
    torch.testing.assert_close(few, torch.tensor([1.0, 0.96, 0.889, 0.727, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="descending"):
        sigmas_from_timesteps([500, 900])
    with pytest.raises(ValueError, match="sampler"):
        sample(gaussian_velocity, torch.zeros(1, DIM), NO_TEXT, sampler="heun", steps=2)
    with pytest.raises(ValueError, match="end at 0"):
        sample(gaussian_velocity, torch.zeros(1, DIM), NO_TEXT, sigmas=torch.tensor([1.0, 0.5]))


def _text_dependent_velocity(calls):
    def velocity(x, timesteps, text, mask):
        calls.append(x.shape[0])
        # A field that depends on the (masked) text, so conditional and unconditional branches differ.
        weight = (text * mask[..., None]).sum(dim=(1, 2)) if mask is not None else text.sum(dim=(1, 2))
        return x * weight[:, None] + timesteps[:, None] / 1000

    return velocity


def test_classifier_free_guidance():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, DIM, generator=g)
    text, neg = torch.randn(2, 3, 5, generator=g), torch.randn(1, 4, 5, generator=g)
    mask, neg_mask = torch.tensor([[1, 1, 0], [1, 1, 1]]), torch.tensor([[1, 1, 1, 0]])
    calls: list[int] = []
    fn = _text_dependent_velocity(calls)
    t = torch.full((2,), 300.0)
    cond, uncond = fn(x, t, text, mask), fn(x, t, neg.expand(2, -1, -1), neg_mask.expand(2, -1))
    assert not torch.allclose(cond, uncond)
    calls.clear()

    def field(scale):
        return guided_field(fn, text, mask, guidance_scale=scale, negative_text=neg, negative_mask=neg_mask)

    torch.testing.assert_close(field(1.0)(x, 0.3), cond)
    assert calls == [2]  # scale 1 is the conditional field: the negative branch is not evaluated
    calls.clear()
    torch.testing.assert_close(field(0.0)(x, 0.3), uncond)
    torch.testing.assert_close(field(4.5)(x, 0.3), uncond + 4.5 * (cond - uncond))
    assert calls == [4, 4]  # both branches in one batched call (texts of length 3 and 4 padded to 4)
    with pytest.raises(ValueError, match="negative"):
        guided_field(fn, text, mask, guidance_scale=3.0)


# ----------------------------------------------------------------------------- block-autoregressive


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = LinearDiT(LinearDiTConfig.from_preset("tiny")).eval()
    with torch.no_grad():
        for block in model.blocks:  # zero-initialised like the official model; exercise the boundary path
            block.ff.conv_temp.weight.normal_(0, 0.05)
    return model


def _inputs():
    g = torch.Generator().manual_seed(5)
    text, neg = torch.randn(1, 8, 64, generator=g), torch.randn(1, 8, 64, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    noise = torch.randn(1, 48, 5, 4, 4, generator=g)
    return text, mask, neg, noise


def test_autoregressive_segments_give_the_first_block_the_remainder():
    assert autoregressive_segments(21, 10) == [(0, 11), (11, 21)]
    assert autoregressive_segments(20, 10) == [(0, 10), (10, 20)]
    assert autoregressive_segments(7, 3) == [(0, 4), (4, 7)]
    assert autoregressive_segments(5, 10) == [(0, 5)]
    with pytest.raises(ValueError):
        autoregressive_segments(5, 0)


def test_block_ar_with_one_block_equals_the_bidirectional_sampler(tiny_model):
    text, mask, neg, noise = _inputs()
    kwargs = {"sampler": "dpm++", "steps": 5, "guidance_scale": 3.0, "negative_text": neg}
    blocks = block_ar_sample(tiny_model, text, mask, 5, 5, (4, 4), noise=noise, **kwargs)
    with torch.no_grad():
        whole = sample(model_velocity(tiny_model), noise, text, mask, **kwargs)
    assert ((blocks - whole).norm() / whole.norm()).item() < 1e-5


def test_block_ar_blocks_follow_the_block_causal_model(tiny_model):
    text, mask, _, noise = _inputs()
    out = block_ar_sample(tiny_model, text, mask, 5, 2, (4, 4), sampler="euler", steps=3, noise=noise)
    (_, e0), (s1, e1) = autoregressive_segments(5, 2)  # [0, 3), [3, 5)
    # The first block does not see the future: alone it gives the same latents.
    first = block_ar_sample(
        tiny_model, text, mask, e0, e0, (4, 4), sampler="euler", steps=3, noise=noise[:, :, :e0]
    )
    torch.testing.assert_close(out[:, :, :e0], first, rtol=0, atol=0)

    # The second block equals sampling with the block-causal forward, the first block clean at t = 0.
    def chunked(x, timesteps, txt, msk):
        full = torch.cat([out[:, :, :e0], x], dim=2)
        t = torch.cat([torch.zeros(1, e0), timesteps[:, None].expand(1, e1 - s1)], dim=1)
        return tiny_model(full, txt, t, text_mask=msk, chunk_sizes=[e0, e1 - s1])[:, :, e0:]

    with torch.no_grad():
        ref = sample(chunked, noise[:, :, s1:e1], text, mask, sampler="euler", steps=3)
    assert ((out[:, :, s1:e1] - ref).norm() / ref.norm()).item() < 1e-5


def test_block_ar_renoise_default_is_seeded(tiny_model):
    text, mask, _, _ = _inputs()

    def run(seed):
        return block_ar_sample(
            tiny_model, text, mask, 5, 2, (4, 4), generator=torch.Generator().manual_seed(seed)
        )

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (1, 48, 5, 4, 4) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.allclose(a, c)

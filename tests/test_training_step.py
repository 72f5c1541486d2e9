"""The guarded training step with a real DeepSpeed engine (one process, gloo, CPU): a finite batch updates
the weights, a batch with a NaN is skipped without touching weights or optimizer state."""

from __future__ import annotations

import socket

import pytest
import torch

from model import LinearDiT
from training.config import load_preset
from training.data.buckets import DataPosition
from training.data.stage_data import Batch
from training.worker.step import StageStep, build_engine, guarded_step, step_generator


@pytest.fixture(scope="module")
def single_process_group():
    # One process group for the module: DeepSpeed caches its groups, so engines of several tests must share it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as monkeypatch:
        for key, value in {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
        }.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("MASTER_PORT", str(port))
        # The process group outlives the module, on purpose: DeepSpeed caches its groups process-wide, so the
        # next module's engines (test_training_float8 shares this fixture) must find the same world alive.
        yield


def _batch(video: torch.Tensor, captions: list[str]) -> Batch:
    return Batch(video, captions, [f"k{i}" for i in range(len(captions))], "b", DataPosition())


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_nan_batch_is_skipped_and_finite_batch_is_applied(single_process_group, tmp_path):
    stage = load_preset("tiny", variables={"data_root": str(tmp_path)}).stage("image")
    torch.manual_seed(0)
    step_math = StageStep(stage, torch.device("cpu"), torch.float32)
    engine = build_engine(
        stage, LinearDiT(stage.model_config()), world_size=1, use_gpu=False, universal=False
    )
    g = torch.Generator().manual_seed(1)
    video = torch.rand(4, 3, 1, 32, 32, generator=g) * 2 - 1
    captions = ["a red square"] * 4

    before = _weights(engine.module)
    poisoned = video.clone()
    poisoned[1, :, 0, 5, 5] = float("nan")
    totals, applied = guarded_step(engine, step_math, _batch(poisoned, captions), step_generator(0, 0, 1))
    assert not applied and totals.nonfinite == 1.0
    after_skip = _weights(engine.module)
    assert all(torch.equal(before[k], after_skip[k]) for k in before)
    # DeepSpeed's own overflow skip (decided on the device, see guarded_step) counts the step as skipped.
    assert engine.skipped_steps == 1 and engine.optimizer.optimizer.state == {}

    totals, applied = guarded_step(
        engine, step_math, _batch(video, captions), step_generator(0, 0, 2), data_wait_s=0.5
    )
    assert applied and totals.nonfinite == 0.0
    assert (
        totals.samples == 4
        and totals.tokens == 4 * 1 * 4 * 4
        and totals.flops > 0
        and totals.data_wait_s == 0.5
    )
    assert totals.loss > 0 and engine.global_steps - engine.skipped_steps == 1
    # DeepSpeed's WarmupLR gives lr 0 to the first two steps (warmup_min_lr 0), so the weights move from the
    # third applied step on.
    for step in (3, 4):
        assert guarded_step(engine, step_math, _batch(video, captions), step_generator(0, 0, step))[1]
    after_step = _weights(engine.module)
    assert any(not torch.equal(before[k], after_step[k]) for k in before)


def test_ema_folds_every_k_steps_with_the_matching_decay(tmp_path):
    from training.worker.ema import EMA

    module = torch.nn.Linear(3, 2)
    with torch.no_grad():
        module.weight.fill_(0.0)
        module.bias.fill_(0.0)
    ema = EMA(module, decay=0.9, update_every=2)
    with torch.no_grad():
        module.weight.fill_(1.0)
    assert not ema.maybe_update(module, step=1)  # off-cadence steps cost nothing
    assert ema.maybe_update(module, step=2)
    # One fold stands for two per-step updates: 0 -> 1 - 0.9**2.
    torch.testing.assert_close(ema.state_dict()["weight"], torch.full((2, 3), 1 - 0.9**2))
    ema.save(tmp_path / "ema.safetensors")
    restored = EMA(torch.nn.Linear(3, 2), decay=0.9, update_every=2)
    restored.load(tmp_path / "ema.safetensors")
    assert all(torch.equal(restored.state_dict()[k], ema.state_dict()[k]) for k in ema.state_dict())
    ema.close()
    restored.close()


def test_image_conditioned_first_frame_is_clean_and_out_of_the_loss(single_process_group, tmp_path):
    stage = load_preset("tiny", variables={"data_root": str(tmp_path)}).stage("video")
    assert stage.image_condition_prob == 0.5  # the tiny video stages train image-to-video jointly
    torch.manual_seed(0)
    step_math = StageStep(stage, torch.device("cpu"), torch.float32)
    engine = build_engine(
        stage, LinearDiT(stage.model_config()), world_size=1, use_gpu=False, universal=False
    )
    seen = {}

    def capture(module, args, kwargs, output):
        seen["noisy"], seen["timesteps"] = args[0].detach(), args[2].detach()
        output.register_hook(lambda grad: seen.__setitem__("grad", grad.detach()))

    engine.module.register_forward_hook(capture, with_kwargs=True)
    video = torch.rand(4, 3, 9, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    totals, applied = guarded_step(
        engine, step_math, _batch(video, ["a red square"] * 4), step_generator(0, 0, 2)
    )
    assert applied and totals.loss > 0

    clean = step_math.autoencoder.encode(video)
    conditioned = seen["timesteps"][:, 0] == 0
    assert 0 < int(conditioned.sum()) < 4  # this step draws both kinds of sample
    # Conditioned samples: the first frame is fed exactly clean, at timestep 0, and gets no gradient.
    assert torch.equal(seen["noisy"][conditioned, :, 0], clean[conditioned, :, 0])
    assert torch.all(seen["grad"][conditioned, :, 0] == 0)
    # Everything else is noised and trained on.
    assert torch.all(seen["timesteps"][:, 1:] > 0) and torch.all(seen["timesteps"][~conditioned, 0] > 0)
    assert not torch.equal(seen["noisy"][~conditioned, :, 0], clean[~conditioned, :, 0])
    assert (
        seen["grad"][conditioned, :, 1:].abs().min() >= 0 and seen["grad"][conditioned, :, 1:].abs().sum() > 0
    )
    assert seen["grad"][~conditioned, :, 0].abs().sum() > 0


def test_fused_adamw_takes_the_same_steps_as_the_unfused_one(single_process_group, tmp_path):
    """`optimizer.fused` hands torch's fused AdamW to DeepSpeed (auto: on GPU only); torch has it on the CPU
    too, so the same ZeRO-2 steps can be compared here."""
    from training.worker.step import forward_loss, noise_latents

    base = load_preset("tiny", variables={"data_root": str(tmp_path)}).stage("image")
    assert not base.optimizer.fused_enabled(use_gpu=False) and base.optimizer.fused_enabled(use_gpu=True)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, base.model_config().in_channels, 1, 8, 8, generator=g)
    text = torch.randn(2, 5, base.model_config().caption_channels, generator=g)
    weights = []
    for fused in (False, True):
        optimizer = base.optimizer.model_copy(
            update={"fused": fused, "warmup_steps": 0, "weight_decay": 0.01}
        )
        stage = base.replace(optimizer=optimizer)
        torch.manual_seed(0)
        engine = build_engine(stage, LinearDiT(stage.model_config()), 1, use_gpu=False, universal=False)
        initial = _weights(engine.module)
        assert engine.basic_optimizer.defaults.get("fused") is (True if fused else None)
        for step in range(3):
            noisy, t, noise, w = noise_latents(
                stage, latents, torch.Generator().manual_seed(step), torch.float32
            )
            engine.backward(forward_loss(engine, stage, latents, noisy, text, None, t, noise, w))
            engine.step()
        weights.append(_weights(engine.module))
    unfused, fused_weights = weights
    assert any(not torch.equal(unfused[k], initial[k]) for k in unfused)  # the steps moved the weights
    for key in unfused:
        torch.testing.assert_close(fused_weights[key], unfused[key], rtol=1e-5, atol=1e-6)


def test_log_window_sums_steps_on_the_device_and_leaves_skipped_losses_out():
    from training.tracking.metrics import StepTotals, StepWindow, step_metrics

    window = StepWindow(torch.device("cpu"))
    # Two ranks' totals of three steps; the second had a NaN on one rank (skipped everywhere).
    for loss, nonfinite in ((2.0, 0.0), (0.7, 1.0), (1.0, 0.0)):
        window.add(StepTotals(torch.tensor([loss, nonfinite, 8.0, 64.0, 1e9, 0.5], dtype=torch.float64)))
    sums, elapsed = window.read()
    assert sums["steps"] == 3 and sums["applied_steps"] == 2 and sums["samples"] == 24
    metrics = step_metrics(sums, world_size=2, elapsed_s=2.0, lr=1e-3, grad_norm=None, peak=1e11)
    assert metrics["train/loss"] == (2.0 + 1.0) / 2 / 2  # mean over applied steps of the mean over ranks
    assert metrics["perf/samples_per_s"] == 12 and metrics["perf/step_time_s"] == 2.0 / 3
    assert metrics["data/wait_share"] == 1.5 / 2 / 2.0 and metrics["perf/mfu"] == 3e9 / 2.0 / 2e11
    assert window.read()[0]["steps"] == 0  # reading starts a new window

    nan = StepTotals.local(torch.tensor(float("nan")), samples=4, tokens=16.0, flops=1.0, data_wait_s=0.0)
    assert nan.values.tolist() == [0.0, 1.0, 4.0, 16.0, 1.0, 0.0]

"""The fused linear-attention kernel (model.kernels): the backend switch and fallback on CPU, the kernel itself
under Triton's CPU interpreter (a subprocess, since the interpreter is chosen at import; forward, the fused
backward and a training step through it), and on a GPU the fp64 checks (forward and gradients) at several
shapes plus the compiled inference path."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from model_test_support import tiny_model

import model.linear_dit as linear_dit
from model import LinearDiT, LinearDiTConfig, kernels

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")


@pytest.fixture
def backend():
    before = kernels.attention_backend()
    yield kernels.set_attention_backend
    kernels.set_attention_backend(before)


def test_backend_switch_and_cpu_fallback(backend):
    q = torch.rand(1, 4, 2, 8)
    backend("auto")
    assert not kernels.use_fused(q, q, q)
    assert not kernels.use_fused(q.requires_grad_(), q, q, backward=True)  # training on the CPU: PyTorch path
    assert kernels.describe_path("cpu", torch.float32).startswith("linear attention: PyTorch path")
    backend("torch")
    assert not kernels.use_fused(q, q, q)
    if os.environ.get("TRITON_INTERPRET") != "1":
        backend("fused")
        with pytest.raises(RuntimeError, match="'fused' cannot run here: .*cpu"):
            kernels.use_fused(q, q, q)
    with pytest.raises(ValueError, match="attention backend must be one of auto, torch, fused"):
        backend("cuda")


def test_stage_switch_reaches_the_attention_layers():
    from pydantic import TypeAdapter

    from training.config import StageConfig

    stage = {
        "name": "s",
        "data": ["d"],
        "kind": "image",
        "buckets": [{"height": 32, "width": 32, "num_frames": 1, "batch_size": 1}],
        "autoencoder": {"name": "a"},
        "text_encoder": {"name": "t"},
        "model": {"preset": "tiny"},
        "optimizer": {"lr": 1e-4},
        "steps": 1,
        "checkpoint": {"every": 1},
    }
    on = TypeAdapter(StageConfig).validate_python(stage).model_config()
    stage["deepspeed"] = {"fused_attention_backward": False}
    off = TypeAdapter(StageConfig).validate_python(stage).model_config()
    assert on.fused_attention_backward and not off.fused_attention_backward
    assert not LinearDiT(off).blocks[0].attn1.fused_backward


def test_inference_compile_leaves_a_cpu_run_eager_and_identical():
    torch.manual_seed(0)
    model = LinearDiT(LinearDiTConfig.from_preset("tiny")).eval()
    latents, text = torch.randn(1, 48, 3, 8, 8), torch.randn(1, 5, 64)
    with torch.no_grad():
        plain = model(latents, text, torch.tensor([300.0]))
        before = len(linear_dit._COMPILED)
        compiled = model.enable_inference_compile()(latents, text, torch.tensor([300.0]))
    assert len(linear_dit._COMPILED) == before
    assert torch.equal(plain, compiled)


_INTERPRETED = textwrap.dedent(
    """
    import torch
    from model import LinearDiT, LinearDiTConfig, kernels
    from model.kernels.checks import Case, run_checks

    cases = [Case(1, (3, 5, 7), 2, 112), Case(2, (3, 3, 5), 2, 64, chunk_frames=[2, 1], cached=True)]
    rows = run_checks(torch.device("cpu"), cases)
    assert all(row["pass"] for row in rows), rows

    # The whole model through the kernel: bidirectional, block-causal, cached block and cache update.
    torch.manual_seed(0)
    model = LinearDiT(LinearDiTConfig.from_preset("tiny")).eval()
    latents, text, t = torch.randn(1, 48, 4, 8, 8), torch.randn(1, 5, 64), torch.tensor([300.0])

    def run():
        cache = model.new_cache(1, latent_hw=(8, 8))
        model.update_cache(latents[:, :, :2], text, cache, 0)
        return [
            model(latents, text, t),
            model(latents, text, t, chunk_sizes=[1, 3]),
            model.forward_block(latents[:, :, 2:], text, t, cache, 2),
            cache.kv[0],
        ]

    with torch.no_grad():
        kernels.set_attention_backend("torch")
        reference = run()
        kernels.set_attention_backend("fused")
        fused = run()
    for a, b in zip(fused, reference):
        assert ((a - b).norm() / b.norm()).item() < 1e-5

    # The fused backward against fp64: bidirectional and block-causal with an uneven first chunk.
    grad_cases = [Case(1, (3, 4, 5), 2, 112, chunk_frames=[1, 2]), Case(2, (2, 3, 7), 2, 32)]
    rows = run_checks(torch.device("cpu"), grad_cases, gradients=True)
    assert len(rows) == 4 and all(row["pass"] for row in rows), rows

    # Training through it: every parameter's gradient of the tiny model (block-causal) as the PyTorch path's.
    def grads():
        model.zero_grad(set_to_none=True)
        model(latents, text, t, chunk_sizes=[1, 3]).square().mean().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    # Where the fused backward is allowed, and why not elsewhere.
    x = torch.rand(1, 4, 2, 8, requires_grad=True)
    assert kernels.use_fused(x, x, x, backward=True)
    for args, why in (((), "the fused backward is off"), ((True, True), "gradients through a cache state")):
        try:
            kernels.use_fused(x, x, x, *args)
            raise AssertionError("no error")
        except RuntimeError as error:
            assert why in str(error), error

    model.train()
    kernels.set_attention_backend("torch")
    reference = grads()
    kernels.set_attention_backend("fused")
    fused = grads()
    assert ((fused - reference).norm() / reference.norm()).item() < 1e-5
    print("ok")
    """
)


@needs_triton
def test_kernel_under_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.getcwd()}
    result = subprocess.run(
        [sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@needs_cuda
@needs_triton
def test_kernel_matches_fp64_on_the_gpu():
    from model.kernels.checks import run_checks

    rows = run_checks(torch.device("cuda")) + run_checks(torch.device("cuda"), gradients=True)
    failed = [row for row in rows if not row["pass"]]
    assert not failed, failed


@needs_cuda
@needs_triton
def test_compiled_fused_inference_matches_eager_pytorch_on_the_gpu(backend):
    torch.manual_seed(0)
    model = LinearDiT(LinearDiTConfig.from_preset("tiny")).cuda().eval()
    latents = torch.randn(2, 48, 3, 16, 16, device="cuda")
    text = torch.randn(2, 5, 64, device="cuda")
    with torch.no_grad():
        backend("torch")
        reference = model(latents, text, torch.tensor([300.0, 600.0], device="cuda"))
        backend("auto")
        compiled = model.enable_inference_compile()(
            latents, text, torch.tensor([300.0, 600.0], device="cuda")
        )
    assert ((compiled - reference).norm() / reference.norm()).item() < 1e-4


@needs_cuda
@needs_triton
def test_compiled_training_through_the_fused_backward_matches_eager_pytorch_on_the_gpu(backend):
    """compile_blocks with checkpointed and budgeted blocks, bidirectional and block-causal: every parameter's
    gradient as the eager PyTorch path's (fp32). Checked on the CPU too, under the interpreter with the
    blocks' compile forced on, while writing it: 2e-7."""
    torch.manual_seed(0)
    latents, text = torch.randn(1, 48, 4, 16, 16, device="cuda"), torch.randn(1, 5, 64, device="cuda")
    t = torch.tensor([[300.0, 300.0, 600.0, 600.0]], device="cuda")
    for fraction, chunks in ((1.0, None), (1.0, [1, 3]), (0.0, [1, 3])):
        grads = {}
        for name, compiled in (("torch", False), ("auto", True)):
            backend(name)
            config = LinearDiTConfig.from_preset(
                "tiny", gradient_checkpointing=True, checkpoint_fraction=fraction, compile_blocks=compiled
            )
            torch.manual_seed(0)
            model = LinearDiT(config).cuda().train()
            model(latents, text, t, chunk_sizes=chunks).square().mean().backward()
            grads[name] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        assert ((grads["auto"] - grads["torch"]).norm() / grads["torch"].norm()).item() < 1e-4


def test_generate_takes_a_precision_and_logs_its_path(caplog):
    from model.autoencoders import build_autoencoder
    from model.generate import generate_video
    from model.text_encoders import build_text_encoder

    parts = (
        tiny_model(),
        build_autoencoder("space_to_depth", stride=(1, 4, 4)),
        build_text_encoder("hashed", channels=64, max_length=16),
    )
    size = {"num_frames": 2, "height": 32, "width": 32, "steps": 2}
    with caplog.at_level("INFO", logger="model.generate"):
        native = generate_video(*parts, "a fox", **size)
        fp8 = generate_video(*parts, "a fox", precision="fp8", **size)
    assert "linear attention: PyTorch path" in caplog.text and "matmuls: fp8" in caplog.text
    assert native.shape == fp8.shape and not torch.equal(native, fp8)
    with pytest.raises(ValueError, match="precision must be one of native, fp8, got 'fp16'"):
        generate_video(*parts, "a fox", precision="fp16", **size)

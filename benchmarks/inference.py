"""Inference speed in one run: checks the fused linear-attention kernel, then times it and the 2B transformer
beside diffusers' `SanaVideoTransformer3DModel` (same random weights), a Wan2.1 VAE decode and block-AR.

    python -m benchmarks.inference --out inference.json             # one GPU, ~5 min, 2B at 480p × 81
    TRITON_INTERPRET=1 python -m benchmarks.inference --quick       # plumbing on a CPU, tiny sizes

One JSON line per measurement, a table at the end; `--out` is rewritten after each section (a run stopped by
its time box keeps what it measured). 50-step figures are the median CFG step (batch 2) × 50, as the table
says. Sections that would not fit `--budget-s` are skipped and listed as such.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import time
import traceback

import torch

from benchmarks.common import parser as common_parser
from benchmarks.common import stopwatch, sync
from benchmarks.inference_parts import (
    attention_inputs,
    bandwidth_row,
    diffusers_attention_core,
    kernel_variants,
    print_table,
    summary,
    timed_median,
)
from model import LinearDiT, LinearDiTConfig, kernels
from model.attention import linear_attention
from model.info import latent_shape
from model.kernels.precision import precision_context
from model.samplers import iter_block_ar_sample, model_velocity, sample
from model.schedules import flow_sigmas


class Run:
    """Rows measured so far, the time box, and the JSON file they go to."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device, self.rows, self.start = args, device, [], time.perf_counter()

    def add(self, section: str, **row) -> dict:
        row = {"section": section, **row}
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    def fits(self, section: str, seconds: float) -> bool:
        left = self.args.budget_s - (time.perf_counter() - self.start)
        if left < seconds:
            self.add(section, skipped=f"needs ~{seconds:.0f} s, {left:.0f} s left in --budget-s")
            return False
        return True

    def guarded(self, section: str, fn, *args, **kwargs):
        """Run one section; a failure becomes an `error` row and the run goes on to the next section."""
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - one broken section must not lose the others' figures
            traceback.print_exc()
            self.add(section, error=f"{type(error).__name__}: {str(error)[:300]}")
            return None
        finally:
            self.save()

    def save(self) -> None:
        if self.args.out is not None:
            self.args.out.write_text(json.dumps(self.rows, indent=1) + "\n")


def environment(run: Run) -> None:
    device = run.device
    info = {"torch": torch.__version__, "date_utc": datetime.datetime.now(datetime.UTC).isoformat()[:16]}
    info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    with contextlib.suppress(ImportError):
        import triton

        info["triton"] = triton.__version__
    with contextlib.suppress(ImportError):
        import diffusers

        info["diffusers"] = diffusers.__version__
    if device.type == "cuda":
        src = torch.empty(2**30, dtype=torch.uint8, device=device)  # 1 GiB, far past L2
        seconds = timed_median(lambda: src.clone(), device, repeats=10)
        info["copy_TBs"] = round(2 * src.numel() / seconds / 1e12, 3)  # read + write
    run.add("environment", **info)


def check_kernels(run: Run) -> None:
    from model.kernels.checks import run_checks

    path = kernels.describe_path(run.device, run.dtype)
    if "fused" not in path:
        run.add("kernel_check", skipped=path)
        return
    cases = None
    if run.args.quick:
        from model.kernels.checks import CASES

        cases = CASES[:3]
    for row in run_checks(run.device, *([cases] if cases else [])):
        run.add("kernel_check", **row)


def attention_core(run: Run, batch: int) -> None:
    """The linear-attention core at the 480p token grid (or --quick's), four ways."""
    args, device = run.args, run.device
    grid, heads, dim = args.token_grid, 20, 112
    q, k, v, rope = attention_inputs(batch, grid, heads, dim, device)
    eps = 1e-15
    ways = {"ours PyTorch": lambda: linear_attention(q, k, v, rope, eps)[0].to(q.dtype)}
    if kernels.use_fused(q, k, v):
        from model.kernels.linear_attention import fused_linear_attention

        ways["ours fused"] = lambda: fused_linear_attention(q, k, v, rope, eps)[0]
        if q.dtype == torch.bfloat16:
            ways["ours fused, plain bf16 dots"] = lambda: fused_linear_attention(
                q, k, v, rope, eps, fast_bf16=True
            )[0]
    ways["diffusers processor"] = diffusers_attention_core(q, k, v, grid, device)
    if device.type == "cuda":
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        ways["SDPA (softmax)"] = lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
    copy_tbs = next((r.get("copy_TBs") for r in run.rows if r["section"] == "environment"), None)
    for name, fn in ways.items():
        seconds = timed_median(fn, device, repeats=args.attention_repeats)
        row = bandwidth_row(name, seconds, batch, grid, heads, dim, copy_tbs)
        run.add("attention_core", **row)


def _random_model(preset: str, device: torch.device, dtype: torch.dtype) -> LinearDiT:
    config = LinearDiTConfig.from_preset(preset)
    with torch.device(device):
        model = LinearDiT(config)
    return model.to(dtype).eval()


def _inputs(model: LinearDiT, args, batch: int, device: torch.device, dtype: torch.dtype):
    shape = latent_shape(model.config, args.frames, args.height, args.width)
    gen = torch.Generator(device).manual_seed(0)
    latents = torch.randn(batch, *shape, device=device, dtype=dtype, generator=gen)
    text = torch.randn(batch, args.text_len, model.config.caption_channels, device=device, generator=gen)
    mask = torch.ones(batch, args.text_len, dtype=torch.long, device=device)
    timesteps = torch.full((batch,), 700.0, device=device)
    return latents, text.to(dtype), mask, timesteps


def _time_forward(run: Run, label: str, forward, steps: int) -> torch.Tensor:
    """First call (compile, autotune) timed alone, then the median of `--step-repeats` calls."""
    device = run.device
    elapsed = stopwatch(device)
    with torch.no_grad():
        out = forward()
    first = elapsed()
    with torch.no_grad():
        step = timed_median(forward, device, repeats=run.args.step_repeats, warmup=False)
    run.add(
        "transformer",
        variant=label,
        first_call_s=round(first, 3),
        step_s=round(step, 4),
        steps=steps,
        loop_s=round(step * steps, 2),
        loop_is="median CFG step (batch 2) x steps",
    )
    return out


def transformer_loop(run: Run) -> dict:
    """The 50-step CFG loop's transformer time (batch 2 per step): ours torch / fused / compiled, diffusers
    eager / compiled; output differences between them on the same inputs."""
    args, device, dtype = run.args, run.device, run.dtype
    model = _random_model(args.preset, device, dtype)
    latents, text, mask, t = _inputs(model, args, 2, device, dtype)

    def ours():
        return model(latents, text, t, text_mask=mask)

    outputs = {}
    kernels.set_attention_backend("torch")
    outputs["ours eager, PyTorch attention"] = _time_forward(
        run, "ours eager, PyTorch attention", ours, args.steps
    )
    kernels.set_attention_backend("auto")
    if device.type == "cuda":
        outputs["ours eager, fused"] = _time_forward(run, "ours eager, fused", ours, args.steps)
        model.enable_inference_compile()
        outputs["ours compiled, fused"] = _time_forward(run, "ours compiled, fused", ours, args.steps)
        with precision_context(model, "fp8"):
            outputs["ours compiled, fused, FP8"] = _time_forward(
                run, "ours compiled, fused, FP8", ours, args.steps
            )
        model.enable_inference_compile(False)
    outputs.update(diffusers_loop(run, model, (latents, text, mask, t)))
    reference = outputs["ours eager, PyTorch attention"].float()
    for name, out in outputs.items():
        rel = ((out.float() - reference).norm() / reference.norm()).item()
        run.add("transformer_agreement", variant=name, rel_l2_vs_ours_pytorch=f"{rel:.2e}")
    return {"model": model}


def diffusers_loop(run: Run, model: LinearDiT, inputs: tuple) -> dict[str, torch.Tensor]:
    """diffusers' `SanaVideoTransformer3DModel` converted from `model`'s weights, timed on the same inputs:
    eager, and on CUDA with each block compiled (as a diffusers user would)."""
    from model.convert import to_diffusers

    args, device = run.args, run.device
    latents, text, mask, t = inputs
    theirs = to_diffusers(model).eval()

    def diffusers_forward():
        return theirs(latents, text, t, encoder_attention_mask=mask, return_dict=False)[0]

    outputs = {"diffusers eager": _time_forward(run, "diffusers eager", diffusers_forward, args.steps)}
    if device.type == "cuda" and run.fits("transformer", 90):
        for block in theirs.transformer_blocks:
            block.compile(dynamic=False)
        outputs["diffusers compiled"] = _time_forward(
            run, "diffusers compiled", diffusers_forward, args.steps
        )
    return outputs


def fp8_error(run: Run, model: LinearDiT, precision: str = "fp8") -> None:
    """FP8 (`precision`) against bf16 (both compiled, fused attention) at a fixed seed, `--error-steps` DPM++
    steps with CFG 6: the FP8 velocity at every input of the bf16 trajectory (per-step rel-L2), and the final
    latents of the two trajectories run separately (rel-L2)."""
    args, device, dtype = run.args, run.device, run.dtype
    latents, text, mask, _ = _inputs(model, args, 2, device, dtype)
    noise, (positive, negative), (pos_mask, neg_mask) = latents[:1].float(), text.chunk(2), mask.chunk(2)
    velocity = model_velocity(model)
    per_step = []

    def paired(x, t, txt, msk):
        v = velocity(x, t, txt, msk)
        with precision_context(model, precision):
            v8 = velocity(x, t, txt, msk)
        per_step.append(((v8.float() - v.float()).norm() / v.float().norm()).item())
        return v

    def final(fn):
        options = {"guidance_scale": 6.0, "negative_text": negative, "negative_mask": neg_mask}
        sigmas = flow_sigmas(args.error_steps)
        return sample(fn, noise, positive, pos_mask, sampler="dpm++", sigmas=sigmas, **options)

    model.enable_inference_compile()
    with torch.no_grad():
        bf16 = final(paired)
        with precision_context(model, precision):
            fp8 = final(velocity)
    model.enable_inference_compile(False)
    rel = ((fp8 - bf16).norm() / bf16.norm()).item()
    run.add(
        "fp8_error",
        precision=precision,
        steps=args.error_steps,
        velocity_rel_l2_per_step=[round(e, 4) for e in per_step],
        velocity_rel_l2_max=round(max(per_step), 4),
        final_latent_rel_l2=round(rel, 4),
    )


def profile_step(run: Run, model: LinearDiT, precision: str = "native") -> None:
    """Where a compiled CFG step's GPU time goes (torch.profiler, kernels by total CUDA time)."""
    args, device, dtype = run.args, run.device, run.dtype
    latents, text, mask, t = _inputs(model, args, 2, device, dtype)
    model.enable_inference_compile()
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with (
        torch.no_grad(),
        precision_context(model, precision),
        torch.profiler.profile(activities=activities) as prof,
    ):
        model(latents, text, t, text_mask=mask)
        sync(device)
    model.enable_inference_compile(False)
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    for e in sorted(events, key=lambda e: -e.device_time_total)[:14]:
        share = e.device_time_total / total
        name = ("bf16" if precision == "native" else precision) + " " + e.key[:90]
        run.add("profile", kernel=name, ms=round(e.device_time_total / 1e3, 2), share=round(share, 3))


def vae_decode(run: Run) -> None:
    """Wan2.1 VAE (diffusers `AutoencoderKLWan`, its default = Wan2.1 config, random init) decode of the
    480p × 81 latent, bf16."""
    from diffusers import AutoencoderKLWan

    args, device = run.args, run.device
    with torch.device(device):
        vae = AutoencoderKLWan(**({"base_dim": 8} if args.quick else {}))
    vae = vae.to(run.dtype).eval()
    shape = latent_shape(LinearDiTConfig.from_preset(args.preset), args.frames, args.height, args.width)
    latents = torch.randn(1, vae.config.z_dim, *shape[1:], device=device, dtype=run.dtype)
    with torch.no_grad():
        seconds = timed_median(lambda: vae.decode(latents).sample, device, repeats=1)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    run.add("vae_decode", seconds=round(seconds, 3), peak_GiB=peak and round(peak, 2))


def block_ar(run: Run, model: LinearDiT, compiled: bool, blocks: int, precision: str = "native") -> None:
    """Block-AR 480p: `blocks` blocks of 10 latent frames, 4 re-noising steps each (LongSANA), batch 1,
    no CFG; seconds per block, video frames/s and memory after blocks 2 and the last."""
    args, device, dtype = run.args, run.device, run.dtype
    hw = latent_shape(model.config, args.frames, args.height, args.width)[2:]
    text = torch.randn(1, args.text_len, model.config.caption_channels, device=device, dtype=dtype)
    model.enable_inference_compile(compiled)
    frames = args.block_frames * blocks
    stream = iter_block_ar_sample(
        model, text, None, frames, args.block_frames, hw, generator=torch.Generator(device).manual_seed(0)
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, memory = [], {}
    elapsed = stopwatch(device)
    with precision_context(model, precision):
        for index, _ in enumerate(stream, start=1):
            times.append(elapsed())
            elapsed = stopwatch(device)
            if device.type == "cuda" and index in (2, 12, blocks):
                peak = torch.cuda.max_memory_allocated(device) / 2**30
                memory[f"peak_GiB_after_block_{index}"] = round(peak, 3)
    model.enable_inference_compile(False)
    steady = sorted(times[2:] or times)[len(times[2:] or times) // 2]
    video_frames = args.block_frames * model.config.vae_stride[0]
    run.add(
        "block_ar",
        variant=("compiled, fused" if compiled else "eager, fused")
        + ("" if precision == "native" else f", {precision}"),
        blocks=blocks,
        first_block_s=round(times[0], 3),
        median_block_s=round(steady, 4),
        video_frames_per_s=round(video_frames / steady, 1),
        **memory,
    )


def main() -> None:
    parser = common_parser(__doc__, preset="sana-video-2b-480p", shape=(81, 480, 832), steps=50, out=True)
    parser.add_argument("--text-len", type=int, default=300)
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--attention-repeats", type=int, default=20)
    parser.add_argument("--block-frames", type=int, default=10)
    parser.add_argument("--ar-blocks", type=int, default=24)
    parser.add_argument(
        "--error-steps", type=int, default=10, help="DPM++ steps of the FP8-vs-bf16 error run"
    )
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip sections that would not fit")
    parser.add_argument("--variants", action="store_true", help="also check and time the kernel's variants")
    parser.add_argument("--quick", action="store_true", help="tiny preset and sizes (CPU plumbing check)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.preset, args.frames, args.height, args.width, args.text_len = "tiny", 9, 32, 64, 8
        args.step_repeats, args.attention_repeats, args.ar_blocks, args.block_frames = 1, 2, 3, 1
        args.token_grid = (3, 4, 6)
    else:
        args.token_grid = (21, 30, 52)  # 480p × 81 frames through the Wan VAE and patch 1×2×2: 32,760 tokens
    run = Run(args, device)
    run.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sections = [
        ("environment", 5, environment, ()),
        ("kernel_check", 60, check_kernels, ()),
        ("attention_core", 15, attention_core, (1,)),
        ("attention_core", 10, attention_core, (2,)),
    ]
    if (
        args.variants
    ):  # several minutes on a fresh machine: each variant autotunes and compiles its own kernels
        sections.insert(1, ("kernel_variants", 240, kernel_variants, ()))
    for name, seconds, fn, extra in sections:
        if run.fits(name, seconds):
            run.guarded(name, fn, run, *extra)
    state = run.guarded("transformer", transformer_loop, run) if run.fits("transformer", 150) else None
    model = (state or {}).get("model")
    for precision in ("native", "fp8"):
        if model is not None and device.type == "cuda" and run.fits("profile", 20):
            run.guarded("profile", profile_step, run, model, precision)
    if model is not None and device.type == "cuda" and run.fits("fp8_error", 40):
        run.guarded("fp8_error", fp8_error, run, model)
    if run.fits("vae_decode", 20):
        run.guarded("vae_decode", vae_decode, run)
    if model is not None:
        if run.fits("block_ar", 20):
            run.guarded("block_ar", block_ar, run, model, False, min(4, args.ar_blocks))
        if device.type == "cuda" and run.fits("block_ar", 90):
            run.guarded("block_ar", block_ar, run, model, True, args.ar_blocks)
        if device.type == "cuda" and run.fits("block_ar", 45):
            run.guarded("block_ar", block_ar, run, model, True, min(8, args.ar_blocks), "fp8")
    run.guarded("summary", summary, run)
    print_table(run.rows)


if __name__ == "__main__":
    main()

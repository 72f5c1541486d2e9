"""Float8 side by side (issue 23): bf16 and torchao's float8 (`--precision fp8`) for inference, bf16 and
torchao float8 training from the same init and data order.

    python -m benchmarks.fp8_compare inference --out fp8_inference.json        # one GPU (sm89+), 2B 480p × 81
    python -m benchmarks.fp8_compare train --float8 off --out train_bf16.json  # 300 steps each, one call each
    python -m benchmarks.fp8_compare train --float8 rowwise --out train_fp8.json
    python -m benchmarks.fp8_compare losses train_bf16.json train_fp8.json
    python -m benchmarks.fp8_compare all --tiny                                # the same code on a CPU, tiny

Inference (random weights, compiled blocks on CUDA), every row from one run: the 50-step CFG loop's transformer
time per precision (median CFG step, batch 2, × 50, as benchmarks/inference.py) beside diffusers'
`SanaVideoTransformer3DModel` with the same weights, the rel-L2 of one velocity against bf16, for float8
the per-step velocity rel-L2 along the bf16 DPM++ trajectory and the final-latent rel-L2
(`benchmarks.inference.fp8_error`), the float8 step's profile, the Wan2.1 decode (end to end = loop + decode),
block-AR per precision, and a `goals` row per precision. Training (`benchmarks.train_step.Bench`: the trainer's DeepSpeed engine and
step; arguments after `train`'s own go to train_step, e.g. `--compile-blocks --checkpoint-fraction 0.5`):
fresh random latents each step from a fixed seed, so both runs see the same data in the same order and start
from the same weights; per-step losses, step time and MFU. `losses` compares two such files.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks import train_step
from benchmarks.fp8_goals_table import loop_times
from benchmarks.inference import (
    Run,
    _inputs,
    _random_model,
    _time_forward,
    block_ar,
    diffusers_loop,
    fp8_error,
    profile_step,
    vae_decode,
)
from benchmarks.inference_parts import print_table
from model.kernels.precision import PRECISIONS, precision_context


def inference(args: argparse.Namespace) -> list[dict]:
    """The issue's inference rows from one run: the 50-step CFG loop per precision beside diffusers compiled
    (same weights, same inputs), float8's error along the bf16 trajectory, where the float8 step's
    GPU time goes, the Wan2.1 decode for end to end, and block-AR per precision."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    run = Run(args, device)
    run.dtype = torch.bfloat16 if cuda else torch.float32
    model = _random_model(args.preset, device, run.dtype)
    inputs = _inputs(model, args, 2, device, run.dtype)
    latents, text, mask, t = inputs
    model.enable_inference_compile()  # a CPU run stays eager

    def forward():
        return model(latents, text, t, text_mask=mask)

    outputs, mode = {}, "compiled" if cuda else "eager"
    for precision in PRECISIONS:
        with precision_context(model, precision):
            outputs[precision] = run.guarded(
                "transformer", _time_forward, run, f"{mode}, {precision}", forward, args.steps
            )
    model.enable_inference_compile(False)
    outputs.update(run.guarded("transformer", diffusers_loop, run, model, inputs) or {})
    bf16 = outputs.get("native")  # None when the bf16 forward failed: its error row says why
    reference = bf16.float() if bf16 is not None else None
    for name, out in outputs.items():
        if name != "native" and out is not None and reference is not None:
            rel = ((out.float() - reference).norm() / reference.norm()).item()
            run.add("velocity_vs_bf16", variant=name, rel_l2=float(f"{rel:.3g}"))
    for precision in PRECISIONS[1:]:
        if run.fits("fp8_error", 40):
            run.guarded("fp8_error", fp8_error, run, model, precision)
    if cuda and run.fits("profile", 20):
        run.guarded("profile", profile_step, run, model, "fp8")
    if run.fits("vae_decode", 20):
        run.guarded("vae_decode", vae_decode, run)
    for precision in ("native", "fp8"):
        if run.fits("block_ar", 45):
            run.guarded("block_ar", block_ar, run, model, cuda, args.ar_blocks, precision)
    run.guarded("goals", goals, run)
    return run.rows


def goals(run: Run) -> None:
    """The issue's inference goals from this run's rows: the fp8 loop, its speed-up over diffusers compiled
    (eager on a CPU), end to end with the decode, and the final-latent error."""
    loops = loop_times(run.rows)
    mode = "compiled" if run.device.type == "cuda" else "eager"
    decode = next((r["seconds"] for r in run.rows if r["section"] == "vae_decode" and "seconds" in r), None)
    final = {r["precision"]: r["final_latent_rel_l2"] for r in run.rows if r["section"] == "fp8_error"}
    theirs = loops.get(f"diffusers {mode}")
    for precision in PRECISIONS:
        ours = loops.get(f"{mode}, {precision}")
        if ours is None:
            continue
        run.add(
            "goals",
            precision=precision,
            loop_s=ours,
            vs_diffusers=theirs and round(theirs / ours, 2),
            end_to_end_s=decode and round(ours + decode, 2),
            final_latent_rel_l2=final.get(precision),
        )


def train(args: argparse.Namespace, bench_args: list[str]) -> dict:
    """`args.train_steps` steps of the trainer's step on fresh latents from a fixed seed; losses and timing."""
    size = [
        "--preset",
        "tiny",
        "--frames",
        "9",
        "--height",
        "32",
        "--width",
        "32",
        "--text-len",
        "8",
        "--cpu",
    ]
    size += ["--float8-min-dim", "16"]  # the tiny model is 64 wide
    options = train_step.parser().parse_args(
        [*(size if args.tiny else []), "--float8", args.float8, *bench_args]
    )
    bench = train_step.Bench(options)
    data = torch.Generator().manual_seed(1)  # the data order, the same in every run
    losses, times = [], []
    for step in range(1, args.train_steps + 1):
        latents = torch.randn(bench.shape, generator=data).to(bench.device)
        if bench.use_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        losses.append(float(bench.step(latents).detach()))
        if bench.use_gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if step % 25 == 0 or step == args.train_steps:  # a run stopped by its time box keeps its losses
            _write(args.out, [_train_row(args, options, bench, losses, times)])
    row = _train_row(args, options, bench, losses, times)
    if options.profile and args.out is not None:  # where the step's time goes, beside the losses
        args.out.with_suffix(".profile.log").write_text(bench.profile(options.profile))
    return row


def _train_row(
    args: argparse.Namespace,
    options: argparse.Namespace,
    bench: train_step.Bench,
    losses: list[float],
    times: list[float],
) -> dict:
    warm = times[min(3, len(times) - 1) :]
    return {
        "section": "train",
        "float8": args.float8,
        "preset": options.preset,
        "latent": list(bench.shape[1:]),
        "compile_blocks": options.compile_blocks,
        "device": torch.cuda.get_device_name(bench.device) if bench.use_gpu else "cpu",
        "first_step_s": round(times[0], 3),
        **bench.figures(warm),
        "losses": [round(loss, 5) for loss in losses],
    }


def _write(out: Path | None, rows: list[dict]) -> None:
    if out is not None:
        out.write_text(json.dumps(rows, indent=1) + "\n")


def compare_losses(a: dict, b: dict) -> dict:
    """b's loss against a's: the mean over the last third of the steps (at most 100), the first step (same
    init and data: float8 rounding only) and the largest per-step gap of a 20-step running mean. A run its
    time box stopped early (its file is rewritten every 25 steps) is compared over the steps both ran."""
    steps = min(len(a["losses"]), len(b["losses"]))
    if steps == 0:
        raise SystemExit("a run has no losses to compare")
    la, lb = a["losses"][:steps], b["losses"][:steps]
    tail = max(1, min(100, len(la) // 3))
    mean_a, mean_b = statistics.fmean(la[-tail:]), statistics.fmean(lb[-tail:])
    window = min(20, len(la))
    smooth = [
        abs(statistics.fmean(lb[i - window : i]) / statistics.fmean(la[i - window : i]) - 1)
        for i in range(window, len(la) + 1)
    ]
    return {
        "section": "loss_gap",
        "runs": f"{a['float8']} -> {b['float8']}",
        "steps": steps,
        "steps_run": [len(a["losses"]), len(b["losses"])],
        f"mean_last_{tail}": [round(mean_a, 5), round(mean_b, 5)],
        "gap_last": round(mean_b / mean_a - 1, 5),
        "gap_first_step": round(lb[0] / la[0] - 1, 5),
        f"max_gap_running_mean_{window}": round(max(smooth), 5),
        "step_s": [a.get("step_s_median"), b.get("step_s_median")],
        "mfu": [a.get("mfu"), b.get("mfu")],
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["inference", "train", "losses", "all"])
    parser.add_argument("files", nargs="*", type=Path, help="losses: the two train outputs (baseline first)")
    parser.add_argument("--tiny", action="store_true", help="tiny preset and sizes (the CPU plumbing check)")
    parser.add_argument("--float8", default="rowwise", choices=["off", "rowwise", "tensorwise"])
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=50, help="sampling steps the loop time is for")
    parser.add_argument("--error-steps", type=int, default=10, help="DPM++ steps of the error runs")
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--ar-blocks", type=int, default=8, help="block-AR blocks per precision")
    parser.add_argument("--block-frames", type=int, default=10, help="latent frames per block-AR block")
    parser.add_argument("--budget-s", type=float, default=560.0)
    parser.add_argument("--out", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args, bench_args = _parser().parse_known_args(argv)
    args.preset, args.frames, args.height, args.width, args.text_len = "sana-video-2b-480p", 81, 480, 832, 300
    if args.tiny:
        args.preset, args.frames, args.height, args.width, args.text_len = "tiny", 9, 32, 64, 8
        args.step_repeats, args.error_steps, args.train_steps = 1, 3, min(args.train_steps, 6)
        args.ar_blocks, args.block_frames = 3, 1
    args.quick = args.tiny
    rows: list[dict] = []  # --out is rewritten as sections finish (a run stopped by its time box keeps them)
    if args.part in ("inference", "all"):
        rows += inference(args)
    if args.part == "train":
        rows.append(train(args, bench_args))
    if args.part == "all":
        out, args.out, runs = args.out, None, []
        for recipe in ("off", args.float8):
            args.float8 = recipe
            runs.append(train(args, bench_args))
        rows += [*runs, compare_losses(*runs)]
        args.out = out
    if args.part == "losses":
        a, b = (json.loads(Path(f).read_text())[-1] for f in args.files)
        rows.append(compare_losses(a, b))
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
    _write(args.out, rows)
    print_table([{k: v for k, v in row.items() if k != "losses"} for row in rows])
    return rows


if __name__ == "__main__":
    main()

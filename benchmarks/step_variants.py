"""Check the fast paths of the Linear DiT against an fp32 reference, then time training-step variants.

    python -m benchmarks.step_variants --variants eager:1.0 compile:1.0 compile:0.5

Part 1 (GPU): a 2-block model of the 2B width at a small grid; forward output and every parameter's gradient
of eager bf16 and compiled (`compile_blocks`) bf16/fp32 runs, with a partial `checkpoint_fraction`, against
eager fp32 (TF32 off), bidirectional and block-causal. Prints ‖out − ref‖ / ‖ref‖ per case; compiled fp32
must match eager fp32 to fp32 rounding, bf16 runs must land where bf16 rounding puts them.

Part 2: each variant `MODE:FRACTION[:BUDGET]` (MODE eager or compile; BUDGET the compile memory budget) runs `benchmarks.train_step` in a fresh
process (clean memory; an out-of-memory variant is reported, not fatal) and the JSON lines end in a table.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from benchmarks.common import parser as common_parser


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _run_case(model, inputs, chunk_sizes) -> tuple[torch.Tensor, torch.Tensor]:
    latents, text, timesteps = inputs
    model.zero_grad(set_to_none=True)
    out = model(latents, text, timesteps, chunk_sizes=chunk_sizes)
    out.float().square().mean().backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
    return out.detach().float(), grads


def check(device: torch.device) -> list[dict[str, object]]:
    from model import LinearDiT, LinearDiTConfig

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch._dynamo.config.cache_size_limit = 64
    base = LinearDiTConfig.from_preset("sana-video-2b-480p", depth=2, gradient_checkpointing=True)
    torch.manual_seed(0)
    reference_model = LinearDiT(base).to(device)
    with torch.no_grad():  # the temporal conv is zero at init; give it weight so its path is checked
        for block in reference_model.blocks:
            block.ff.conv_temp.weight.normal_(std=0.02)
    state = reference_model.state_dict()
    gen = torch.Generator(device=device).manual_seed(1)
    latents = torch.randn(1, 16, 6, 30, 52, device=device, generator=gen)
    text = torch.randn(1, 64, base.caption_channels, device=device, generator=gen)
    timesteps = torch.tensor([[100.0] * 3 + [700.0] * 3], device=device)

    rows = []
    for chunk_sizes in (None, [3, 3]):
        ref_out, ref_grad = _run_case(reference_model, (latents, text, timesteps), chunk_sizes)
        for compiled, dtype in ((True, torch.float32), (False, torch.bfloat16), (True, torch.bfloat16)):
            config = LinearDiTConfig.from_dict(
                {**base.to_dict(), "checkpoint_fraction": 0.5, "compile_blocks": compiled}
            )
            model = LinearDiT(config).to(device)
            model.load_state_dict(state)
            model.to(dtype)
            out, grad = _run_case(model, (latents.to(dtype), text.to(dtype), timesteps), chunk_sizes)
            rows.append(
                {
                    "case": "block-causal" if chunk_sizes else "bidirectional",
                    "compiled": compiled,
                    "dtype": str(dtype).removeprefix("torch."),
                    "out_rel": _rel(out, ref_out),
                    "grad_rel": _rel(grad, ref_grad),
                    "finite": bool(torch.isfinite(out).all() and torch.isfinite(grad).all()),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        # TF32 for the fp32 state contractions of the bf16 run (`train_step --tf32`), against the same ref.
        torch.backends.cuda.matmul.allow_tf32 = True
        out, grad = _run_case(model, (latents.to(dtype), text.to(dtype), timesteps), chunk_sizes)
        torch.backends.cuda.matmul.allow_tf32 = False
        rows.append(
            {**rows[-1], "tf32": True, "out_rel": _rel(out, ref_out), "grad_rel": _rel(grad, ref_grad)}
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def time_variants(variants: list[str], extra: list[str], timeout: float) -> list[dict[str, object]]:
    rows = []
    for variant in variants:
        mode, fraction, *budget = variant.split(":")
        cmd = [sys.executable, "-m", "benchmarks.train_step", "--checkpoint-fraction", fraction, *extra]
        cmd += ["--compile-memory-budget", budget[0]] if budget else []
        if mode == "compile":
            cmd.append("--compile-blocks")
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            rows.append({"variant": variant, "error": f"timeout {timeout:.0f} s"})
            print(json.dumps(rows[-1]), flush=True)
            continue
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            rows.append({"variant": variant, "error": " | ".join(tail)[-400:]})
        else:
            rows.append({"variant": variant, **json.loads(lines[-1])})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = common_parser(__doc__, warmup=2, steps=5)
    parser.add_argument("--variants", nargs="*", default=["eager:1.0", "compile:1.0"])
    parser.add_argument("--no-check", dest="check", action="store_false")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per variant")
    args, extra = parser.parse_known_args()
    if args.check:
        check(torch.device("cuda"))
    extra += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    rows = time_variants(args.variants, extra, args.timeout)
    print("variant          step_s   MFU    peak_GiB  first_step_s  graphs")
    for row in rows:
        if "error" in row:
            print(f"{row['variant']:<16} error: {row['error']}")
            continue
        print(
            f"{row['variant']:<16} {row['step_s_median']:.3f}  {100 * row['mfu']:.1f}%  "
            f"{row['max_memory_gib']:.1f}      {row['first_step_s']:.1f}          {row.get('compiled_graphs')}"
        )


if __name__ == "__main__":
    main()

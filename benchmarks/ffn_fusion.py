"""What Inductor makes of one compiled Mix-FFN forward: the depthwise conv as nine taps (the compiled default,
`model/ffn.py`) against cuDNN's conv (`ffn.conv_when_compiled()`), kernel by kernel.

    python -m benchmarks.ffn_fusion            # the 2B preset's FFN on a GPU, the tiny preset's on a CPU

Prints, for each arm, the kernels Inductor generated (their names list the ops each fused) and the library
calls it left outside them (`mm`, `addmm`, `convolution`). With the taps, the SiLU before the conv, the nine
shifted multiply-adds and the gating after it should be one generated kernel; with the conv they are a kernel,
the library conv, and another kernel. Which is faster is for the timed A/B rows of `benchmarks.fp8_compare`.
"""

from __future__ import annotations

import argparse
import contextlib
import re

import torch
from torch._inductor.utils import run_and_get_code

from model import ffn
from model.config import LinearDiTConfig
from model.ffn import MixFFN

# A generated kernel's definition in Inductor's output code: `cpp_fused_...` on a CPU, `triton_..._fused_...`.
_KERNEL = re.compile(r"^(cpp_fused\w+|triton_\w+) = ", re.M)
_LIBRARY = re.compile(r"extern_kernels\.(\w+)\(|aten\.(\w+)\.default\(")


def compiled_kernels(module: MixFFN, x: torch.Tensor, grid: tuple[int, int, int], conv: bool) -> dict:
    """The generated kernels and the library calls of one compiled forward."""
    torch._dynamo.reset()
    forward = torch.compile(lambda x: module(x, grid)[0])
    arm = ffn.conv_when_compiled() if conv else contextlib.nullcontext()
    with torch.no_grad(), arm:
        _, code = run_and_get_code(forward, x)
    source = "\n".join(code)
    return {
        "kernels": sorted(set(_KERNEL.findall(source))),
        "library": sorted({a or b for a, b in _LIBRARY.findall(source)}),
    }


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--side", type=int, default=16, help="tokens per side of each frame")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    config = LinearDiTConfig.from_preset("sana-video-2b-480p" if cuda else "tiny")
    module = MixFFN(config).to(device, dtype).eval()
    grid = (args.frames, args.side, args.side)
    x = torch.randn(1, args.frames * args.side**2, config.hidden_size, device=device, dtype=dtype)
    arms = {
        name: compiled_kernels(module, x, grid, conv)
        for name, conv in (("taps", False), ("cuDNN conv", True))
    }
    for name, found in arms.items():
        print(f"{name}: {len(found['kernels'])} generated kernels, library calls {found['library']}")
        for kernel in found["kernels"]:
            print(f"    {kernel}")
    return arms


if __name__ == "__main__":
    main()

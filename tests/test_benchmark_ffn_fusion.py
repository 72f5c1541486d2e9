"""benchmarks/ffn_fusion.py on the CPU: Inductor fuses the Mix-FFN's SiLU, depthwise taps and gating into one
generated kernel, where cuDNN's conv splits them around a library call."""

from __future__ import annotations

from benchmarks.ffn_fusion import main


def test_the_taps_fuse_with_the_silu_and_the_gating():
    arms = main(["--frames", "2", "--side", "6"])
    taps, conv = arms["taps"], arms["cuDNN conv"]
    assert "convolution" not in taps["library"] and "convolution" in conv["library"]
    # One kernel holds the SiLU, the padded shifted taps and the gating's multiply.
    assert any(all(op in k for op in ("silu", "constant_pad_nd", "mul")) for k in taps["kernels"]), taps
    assert len(taps["kernels"]) < len(conv["kernels"])

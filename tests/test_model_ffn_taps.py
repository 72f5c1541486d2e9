"""The Mix-FFN's depthwise conv as taps under torch.compile (model/ffn.py; element-wise work Inductor can fuse
with the gating) is the same math as the conv kernel in eager: outputs and every gradient, block-causal chunks
included; `conv_when_compiled()` traces the conv instead."""

from __future__ import annotations

import torch

from model.config import LinearDiTConfig
from model.ffn import MixFFN, conv_when_compiled


def test_compiled_taps_match_the_eager_conv_forward_and_backward():
    torch.manual_seed(0)
    ffn = MixFFN(LinearDiTConfig.from_preset("tiny"))
    torch.nn.init.normal_(ffn.conv_temp.weight, std=0.05)  # zero at init: make the temporal path count
    x = torch.randn(2, 3 * 4 * 6, ffn.conv_point.weight.shape[0], requires_grad=True)

    def run(module):
        x.grad = None
        ffn.zero_grad()
        out, past = module(x, (3, 4, 6), chunk_frames=[1, 2])
        (out.square().sum() + past.sum()).backward()
        return [out, x.grad, *(p.grad for p in ffn.parameters())]

    graphs = []

    def recording(graph_module, _inputs):  # Dynamo's graph, run as it is
        graphs.append(graph_module)
        return graph_module.forward

    eager = [t.detach().clone() for t in run(ffn)]
    compiled = run(torch.compile(ffn, fullgraph=True, backend=recording))
    ops = {str(node.target) for graph in graphs for node in graph.graph.nodes}
    assert not [op for op in ops if "conv2d" in op], ops  # the taps, not the conv, were traced
    for name, a, b in zip(
        ["out", "x", *(n for n, _ in ffn.named_parameters())], eager, compiled, strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"{name} differs")

    graphs.clear()
    torch._dynamo.reset()
    with conv_when_compiled():  # the A/B's other arm: the conv is what gets compiled
        run(torch.compile(ffn, fullgraph=True, backend=recording))
    assert [n for g in graphs for n in g.graph.nodes if "conv2d" in str(n.target)]

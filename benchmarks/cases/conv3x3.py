"""Benchmark cases of the 3x3 convolution: our `Conv2d` (Winograd F(2x2, 3x3) on the CPU) against
nn.Conv2d (ATen's direct convolution, what torchvision's detectors run), the same weights.

Shapes of R-50-FPN detectors, 256 channels: an FPN P2 and P3 level of a 2-image 256 x 341 batch
(the train_speed default), P2 of one 800 x 1088 image, and the mask head's 14 x 14 maps of 100
detections (inference) and of 16 positive RoIs (training). Forward rows run without autograd;
backward rows time the backward pass of input and weights only (the graph is built outside the
timing). CPU only: on CUDA `Conv2d` is nn.Conv2d.

Layouts and precisions (issue 23: Winograd or oneDNN, per precision), on the FPN P2 and 100-RoI
mask head shapes: float32 Winograd (NCHW) against oneDNN on channels-last (NHWC) maps and weights
(what MODEL.MEMORY_FORMAT channels_last runs); bfloat16 autocast on NHWC (what the bfloat16
model runs: Winograd has no bfloat16 path) against bfloat16 NCHW and against float32 NCHW
(torchvision's float32 model). bfloat16 is only fast on a CPU with AVX512-BF16 or AMX; elsewhere
oneDNN emulates it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks.timing import Case
from detector.layers import Conv2d

SHAPES = [
    ("FPN P2, 2 x 64 x 86", (2, 256, 64, 86)),
    ("FPN P3, 2 x 32 x 43", (2, 256, 32, 43)),
    ("FPN P2 of 800 x 1088, 1 x 200 x 272", (1, 256, 200, 272)),
    ("mask head, 100 x 14 x 14", (100, 256, 14, 14)),
    ("mask head, 16 x 14 x 14", (16, 256, 14, 14)),
]


def _backward_timer(conv: nn.Module, x: Tensor):
    x = x.detach().requires_grad_()
    out = conv(x)
    grad = torch.randn_like(out)
    inputs = [x, conv.weight, conv.bias]
    return lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True)


def _forward_timer(conv: nn.Module, x: Tensor):
    def run() -> Tensor:
        with torch.no_grad():
            return conv(x)

    return run


def _nhwc(conv: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor]:
    """A channels-last copy of the layer and the input."""
    twin = nn.Conv2d(256, 256, 3, padding=1).to(memory_format=torch.channels_last)
    twin.load_state_dict(conv.state_dict())
    return twin, x.contiguous(memory_format=torch.channels_last)


def _bf16_timer(make: Callable[[nn.Module, Tensor], Callable[[], object]], conv, x):
    """`make(conv, x)` under CPU bfloat16 autocast (the backward's graph is built under it)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        timer = make(conv, x)

    def run() -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return timer()

    return run


def _layout_cases(ours: nn.Module, peer: nn.Module, name: str, x: Tensor) -> list[Case]:
    """float32 Winograd NCHW vs oneDNN NHWC; bfloat16 NHWC vs bfloat16 NCHW and float32 NCHW."""
    nhwc, x_nhwc = _nhwc(peer, x)
    rows = []
    for direction, make in (("fwd", _forward_timer), ("bwd", _backward_timer)):
        bf16_nhwc = _bf16_timer(make, nhwc, x_nhwc)
        bf16 = dict(dtype="bfloat16 NHWC")
        rows += [
            Case("conv3x3", direction, name, make(ours, x), make(nhwc, x_nhwc),
                 peer_name="oneDNN NHWC float32"),
            Case("conv3x3", direction, name, bf16_nhwc, _bf16_timer(make, peer, x), **bf16,
                 peer_name="bfloat16 NCHW"),
            Case("conv3x3", direction, name, bf16_nhwc, make(peer, x), **bf16,
                 peer_name="torchvision float32"),
        ]  # fmt: skip
    return rows


def cases(device: str) -> list[Case]:
    if device != "cpu":
        return []
    torch.manual_seed(0)
    ours = Conv2d(256, 256, 3, padding=1)
    peer = nn.Conv2d(256, 256, 3, padding=1)
    peer.load_state_dict(ours.state_dict())
    rows = []
    for name, shape in SHAPES:
        x = torch.randn(*shape)
        assert ours.uses_winograd(x), name
        rows.append(Case("conv3x3", "fwd", name, _forward_timer(ours, x), _forward_timer(peer, x)))
        rows.append(
            Case("conv3x3", "bwd", name, _backward_timer(ours, x), _backward_timer(peer, x))
        )
    for name, shape in (SHAPES[0], SHAPES[3]):
        rows += _layout_cases(ours, peer, name, torch.randn(*shape))
    return rows

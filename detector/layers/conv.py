"""`Conv2d`: nn.Conv2d that runs large 3x3 convolutions on the CPU by Winograd F(2x2, 3x3).

The FPN output convs, the RPN head conv, the box and mask head convs and the ResNet/VGG 3x3 convs
are 3x3, stride 1, padding 1; on the CPU they are most of a detector's time. Winograd's algorithm
(detector/ops/winograd.py) needs 2.25x fewer multiplications; measured on the 2-core machine, one
thread, forward (forward + backward) time against ATen's direct convolution: 0.63 (0.82) for an FPN
P2 level of 2 x 256 x 64 x 86, 0.68 (0.61) for a mask head of 100 RoIs x 256 x 14 x 14. On small
maps or few channels the transforms cost more than they save, so the layer falls back to
`F.conv2d` below `MIN_TILES` 2x2 tiles or `MIN_CHANNELS` input or output channels.

`Conv2d` is a drop-in nn.Conv2d (same parameters, state_dict keys, init and repr). It uses Winograd
only where the result is the same function up to float rounding (relative error ~3e-6 in
float32) and every caller copes with it:
- kernel 3x3, stride 1, padding 1, dilation 1, one group, zero padding, at least `MIN_CHANNELS`
  input and output channels, at least `MIN_TILES` tiles;
- CPU float32 or float64 input in NCHW (a channels-last map goes to oneDNN as it is), no autocast;
- eager mode: never while tracing, scripting, compiling or exporting (those see `F.conv2d`);
- enabled (`set_winograd(False)` or the `winograd(False)` context manager turns it off, e.g. for
  bit-exact comparisons with other implementations).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import torch
from torch import Tensor, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from detector.ops.winograd import winograd_conv3x3

#: Fewest 2x2 output tiles (N * ceil(H/2) * ceil(W/2)) for which Winograd is used: below it the
#: transforms and the 16 small matrix products lose to the direct convolution (measured: 48 tiles
#: of 256 channels 1.4x slower, 176 tiles 0.68x).
MIN_TILES = 128

#: Fewest input and output channels for which Winograd is used: the matrix products are (K x C) @
#: (C x T), and with few channels the transforms dominate (measured, forward + backward: 64
#: channels on 2 x 64 x 86 maps 0.77x, 32 channels on 8 x 32 x 64 x 64 1.06x, 16 channels 1.7x).
MIN_CHANNELS = 128

_enabled = True


def set_winograd(enabled: bool) -> None:
    """Turns the Winograd path of every `Conv2d` on or off (process-wide)."""
    global _enabled
    _enabled = bool(enabled)


def winograd_is_enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def winograd(enabled: bool) -> Generator[None, None, None]:
    """Context manager: `with winograd(False): ...` runs every `Conv2d` directly."""
    previous = _enabled
    set_winograd(enabled)
    try:
        yield
    finally:
        set_winograd(previous)


def _in_graph_capture() -> bool:
    """True while TorchScript, torch.compile, torch.export or FX capture the computation."""
    return (
        torch.jit.is_scripting()  # pyright: ignore[reportPrivateImportUsage]
        or torch.jit.is_tracing()  # pyright: ignore[reportPrivateImportUsage]
        or torch.compiler.is_compiling()
        or is_fx_symbolic_tracing()
    )


def msra_fill(conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
    """maskrcnn_benchmark's and detectron2's conv init ("MSRAFill"): Kaiming-normal weights
    (fan_out, ReLU gain), zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _channels_last(input: Tensor) -> bool:
    """An NHWC map (MODEL.MEMORY_FORMAT): oneDNN convolves it without reordering it to NCHW."""
    return not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last)


class Conv2d(nn.Conv2d):
    """nn.Conv2d computing eligible 3x3 convolutions by Winograd F(2x2, 3x3) (module docstring)."""

    def _winograd_shape(self) -> bool:
        return (
            self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.padding == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and min(self.in_channels, self.out_channels) >= MIN_CHANNELS
        )

    def uses_winograd(self, input: Tensor) -> bool:
        """Whether `forward(input)` takes the Winograd path."""
        if not (_enabled and self._winograd_shape()) or _in_graph_capture():
            return False
        if input.device.type != "cpu" or input.dtype not in (torch.float32, torch.float64):
            return False
        if input.dim() != 4 or torch.is_autocast_enabled("cpu") or _channels_last(input):
            return False
        tiles = input.shape[0] * ((input.shape[2] + 1) // 2) * ((input.shape[3] + 1) // 2)
        return tiles >= MIN_TILES and self.weight.dtype == input.dtype

    def forward(self, input: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, K, H, W) for the 3x3 same-size case; nn.Conv2d otherwise.

        TorchScript compiles only the first branch (nn.Conv2d's computation).
        """
        if torch.jit.is_scripting():  # pyright: ignore[reportPrivateImportUsage]
            return self._conv_forward(input, self.weight, self.bias)
        else:  # the `else` keeps TorchScript out of the Winograd path
            if self.uses_winograd(input):
                return winograd_conv3x3(input, self.weight, self.bias)
            return self._conv_forward(input, self.weight, self.bias)

"""torchvision's op test suite as a checklist, run against detector.ops.

torchvision 0.29's test/test_ops.py tests its ops class by class. For the op classes we implement
(RoIPool, PSRoIPool, RoIAlign, PSRoIAlign, MultiScaleRoIAlign, NMS, DeformConv, FrozenBatchNorm2d,
the boxes-to-RoIs conversion), every case it runs on the CPU has a counterpart here, named
`Test<Class>.test_<case>` as there, with torchvision's inputs, parameters and tolerances; the
expected values come from our float64 references (tests/ops/test_*.py), written independently.

Where we deliberately differ (README, "Deliberate differences from torchvision.ops"), the case
checks our documented behaviour instead: bad shapes raise ValueError naming the op and the argument
(torchvision: AssertionError, or RuntimeError from a kernel), and quantized roi_align takes several
images (torchvision refuses them).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.autograd import gradcheck
from torchvision.models.feature_extraction import get_graph_node_names

from detector import layers, ops
from tests.ops.test_deform_conv2d import reference_deform_conv2d
from tests.ops.test_nms import reference_batched_nms, reference_nms
from tests.ops.test_ps_roi_align import reference_ps_roi_align
from tests.ops.test_ps_roi_pool import reference_ps_roi_pool
from tests.ops.test_roi_align import reference_roi_align
from tests.ops.test_roi_pool import reference_roi_pool

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

# (batch index, x1, y1, x2, y2) RoIs of the forward cases, on a 10 x 10 map
FORWARD_ROIS = [[0, 0, 0, 9, 9], [0, 0, 5, 4, 9], [0, 5, 5, 9, 9], [1, 0, 0, 9, 9]]
# and of the gradient cases, on a 5 x 5 map
BACKWARD_ROIS = [[0, 0, 0, 4, 4], [0, 0, 2, 3, 4], [0, 2, 2, 4, 4]]


class _TwoInputs(nn.Module):
    """Calls a layer and drops the result, as torchvision's leaf-node checks do."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, a: Tensor, b: Tensor) -> None:
        self.layer(a, b)


class _ThreeInputs(_TwoInputs):
    def forward(self, a: Tensor, b: Tensor, c: Tensor) -> None:  # type: ignore[override]
        self.layer(a, b, c)


def _assert_leaf(layer: nn.Module, n_inputs: int) -> None:
    """torchvision's is_leaf_node check: the traced graph holds the inputs and one node for the
    op. Its tracer keeps torchvision.ops modules whole; ours are traced through, so their
    parameters appear too (as get_attr nodes) next to the one call of the op."""
    wrapper = _TwoInputs(layer) if n_inputs == 2 else _ThreeInputs(layer)
    train_nodes, eval_nodes = get_graph_node_names(wrapper)
    tensors = len(list(layer.parameters())) + len(list(layer.buffers()))
    assert len(train_nodes) == len(eval_nodes) == 1 + n_inputs + tensors
    calls = [n for n in torch.fx.symbolic_trace(wrapper).graph.nodes if n.op.startswith("call_")]
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# RoIOpTester: RoIPool, PSRoIPool, RoIAlign, PSRoIAlign


def _roi_pool_ref(x: Tensor, rois: Tensor, size: int, **_: object) -> Tensor:
    return reference_roi_pool(x, rois, (size, size), 1.0)


def _ps_roi_pool_ref(x: Tensor, rois: Tensor, size: int, **_: object) -> Tensor:
    return reference_ps_roi_pool(x, rois, (size, size), 1.0)


def _roi_align_ref(x: Tensor, rois: Tensor, size: int, aligned: bool = False) -> Tensor:
    return reference_roi_align(x, rois, (size, size), 1.0, -1, aligned)


def _ps_roi_align_ref(x: Tensor, rois: Tensor, size: int, **_: object) -> Tensor:
    return reference_ps_roi_align(x, rois, (size, size), 1.0, -1)


# name -> (layer(size, sampling_ratio, aligned), functional op, float64 reference)
ROI_OPS: dict[
    str, tuple[Callable[..., nn.Module], Callable[..., Tensor], Callable[..., Tensor]]
] = {
    "RoIPool": (lambda s, r, a: layers.RoIPool((s, s), 1.0), ops.roi_pool, _roi_pool_ref),
    "PSRoIPool": (lambda s, r, a: layers.PSRoIPool((s, s), 1.0), ops.ps_roi_pool, _ps_roi_pool_ref),
    "RoIAlign": (
        lambda s, r, a: layers.RoIAlign((s, s), 1.0, r, aligned=a),
        ops.roi_align,
        _roi_align_ref,
    ),
    "PSRoIAlign": (
        lambda s, r, a: layers.PSRoIAlign((s, s), 1.0, r),
        ops.ps_roi_align,
        _ps_roi_align_ref,
    ),
}
ALIGNED = {"RoIAlign": (False, True)}  # the other ops have no `aligned` argument

FORWARD_CASES = [
    (name, aligned, contiguous, dtype)
    for name in ROI_OPS
    for aligned in ALIGNED.get(name, (False,))
    for contiguous in (True, False)
    for dtype in (torch.float16, torch.float32, torch.float64)
]


@pytest.mark.parametrize(("name", "aligned", "contiguous", "dtype"), FORWARD_CASES, ids=str)
def test_forward(name: str, aligned: bool, contiguous: bool, dtype: torch.dtype) -> None:
    """RoIOpTester.test_forward: 2 x 50 x 10 x 10 map, 5 x 5 bins, adaptive sampling."""
    make_layer, _, reference = ROI_OPS[name]
    x = torch.rand(2, 2 * 5**2, 10, 10, dtype=dtype, generator=torch.Generator().manual_seed(0))
    if not contiguous:
        x = x.permute(0, 1, 3, 2)
    rois = torch.tensor(FORWARD_ROIS, dtype=dtype)
    y = make_layer(5, -1, aligned)(x, rois)
    assert y.dtype == x.dtype
    expected = reference(x.double(), rois.double(), 5, aligned=aligned)
    tol = 4e-3 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(expected.to(y), y, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", list(ROI_OPS))
def test_is_leaf_node(name: str) -> None:
    """RoIOpTester.test_is_leaf_node."""
    _assert_leaf(ROI_OPS[name][0](5, -1, False), n_inputs=2)


@pytest.mark.parametrize("name", list(ROI_OPS))
def test_torch_fx_trace(name: str) -> None:
    """RoIOpTester.test_torch_fx_trace: the traced layer gives the eager result and dtype."""
    layer = ROI_OPS[name][0](5, -1, False)
    traced = torch.fx.symbolic_trace(layer)
    x = torch.rand(2, 2 * 5**2, 5, 5)
    rois = torch.tensor(FORWARD_ROIS, dtype=torch.float32)
    expected = layer(x, rois)
    actual = traced(x, rois)
    assert actual.dtype == expected.dtype == x.dtype
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("name", list(ROI_OPS))
def test_backward(name: str, seed: int, contiguous: bool) -> None:
    """RoIOpTester.test_backward: gradcheck of the layer and of the scripted function."""
    make_layer, fn, _ = ROI_OPS[name]
    torch.manual_seed(seed)
    x = torch.rand(1, 2 * 2**2, 5, 5, dtype=torch.float64, requires_grad=True)
    if not contiguous:
        x = x.permute(0, 1, 3, 2)
    rois = torch.tensor(BACKWARD_ROIS, dtype=torch.float64)
    layer = make_layer(2, 1, False)
    scripted = torch.jit.script(fn)
    assert gradcheck(lambda z: layer(z, rois), (x,), atol=1e-5)
    assert gradcheck(lambda z: scripted(z, rois, 2), (x,), atol=1e-5)


@pytest.mark.parametrize("name", list(ROI_OPS))
def test_boxes_shape(name: str) -> None:
    """RoIOpTester.test_boxes_shape (deliberate difference: ValueError, not AssertionError)."""
    fn = ROI_OPS[name][1]
    # torchvision's map has 1 channel; position-sensitive ops need 4 for 2 x 2 bins, so that the
    # boxes are the only thing wrong.
    channels = 4 if name.startswith("PS") else 1
    a = torch.linspace(1, 8 * 8, 8 * 8).reshape(1, 1, 8, 8).expand(1, channels, 8, 8)
    with pytest.raises(ValueError, match=r"`boxes` must be a Tensor\[K, 5\]"):
        fn(a, torch.tensor([[0, 0, 3, 3]], dtype=a.dtype), output_size=(2, 2))
    with pytest.raises(ValueError, match=r"`boxes\[0\]` must be a Tensor\[K, 4\]"):
        fn(a, [torch.tensor([[0, 0, 3]], dtype=a.dtype)], output_size=(2, 2))


class _PoolWrapper(nn.Module):
    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, imgs: Tensor, boxes: list[Tensor]) -> Tensor:
        return self.pool(imgs, boxes)


@pytest.mark.parametrize(
    "pool",
    [layers.RoIPool(output_size=[3, 3], spatial_scale=1.0), layers.RoIAlign([3, 3], 1.0, -1)],
    ids=["RoIPool", "RoIAlign"],
)
def test_jit_boxes_list(pool: nn.Module) -> None:
    """TestRoiPool / TestRoIAlign.test_jit_boxes_list: a scripted module given a box list."""
    x = torch.rand(2, 1, 10, 10)
    roi = torch.tensor(FORWARD_ROIS, dtype=torch.float).t()  # (5, 4): five boxes
    scripted = torch.jit.script(_PoolWrapper(pool))
    y = scripted(x, [roi, roi])
    assert y.shape == (10, 1, 3, 3)
    torch.testing.assert_close(y, pool(x, [roi, roi]), rtol=0, atol=0)


def _random_rois(img_size: int, num_imgs: int, num_rois: int) -> Tensor:
    """(num_rois, 5) integer-valued RoIs inside the image, none degenerate."""
    rois = torch.randint(0, img_size // 2, size=(num_rois, 5)).float()
    rois[:, 0] = torch.randint(0, num_imgs, size=(num_rois,)).float()
    rois[:, 3:] += rois[:, 1:3]
    return rois


def _assert_within_one_step(qy: Tensor, q_expected: Tensor, scale: float) -> None:
    """Equal, or (rounding of x.5 values) rarely one quantization step apart."""
    differ = qy.int_repr() != q_expected.int_repr()
    assert differ.float().mean() < 0.05
    steps = (qy.dequantize() - q_expected.dequantize())[differ].abs()
    torch.testing.assert_close(steps, torch.full_like(steps, scale), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qdtype", [torch.qint8, torch.quint8, torch.qint32], ids=str)
@pytest.mark.parametrize(("scale", "zero_point"), [(1, 0), (2, 10), (0.1, 50)])
@pytest.mark.parametrize("aligned", [True, False])
def test_qroialign(aligned: bool, scale: float, zero_point: int, qdtype: torch.dtype) -> None:
    """TestRoIAlign.test_qroialign: the quantized op is the float op on the dequantized values."""
    torch.manual_seed(0)
    x = torch.randint(50, 100, size=(1, 2, 10, 10)).float()
    qx = torch.quantize_per_tensor(x, scale=scale, zero_point=zero_point, dtype=qdtype)
    qrois = torch.quantize_per_tensor(_random_rois(10, 1, 1000), scale, zero_point, qdtype)
    y = ops.roi_align(qx.dequantize(), qrois.dequantize(), 5, 1.0, -1, aligned)
    qy = ops.roi_align(qx, qrois, 5, 1.0, -1, aligned)
    q_expected = torch.quantize_per_tensor(y, scale=scale, zero_point=zero_point, dtype=qdtype)
    _assert_within_one_step(qy, q_expected, scale)


def test_qroi_align_multiple_images() -> None:
    """TestRoIAlign.test_qroi_align_multiple_images (deliberate difference: several images are
    pooled, each RoI from its own image, as the float op does; torchvision refuses them)."""
    torch.manual_seed(0)
    x = torch.randint(50, 100, size=(2, 3, 10, 10)).float()
    qx = torch.quantize_per_tensor(x, scale=1, zero_point=0, dtype=torch.qint8)
    qrois = torch.quantize_per_tensor(_random_rois(10, 2, 10), 1, 0, torch.qint8)
    assert qrois.dequantize()[:, 0].unique().numel() == 2  # both images are pooled from
    qy = ops.roi_align(qx, qrois, output_size=5)
    y = ops.roi_align(qx.dequantize(), qrois.dequantize(), output_size=5)
    _assert_within_one_step(qy, torch.quantize_per_tensor(y, 1, 0, torch.qint8), 1.0)


# ---------------------------------------------------------------------------------------------
# TestMultiScaleRoIAlign


def test_msroialign_repr() -> None:
    module = ops.MultiScaleRoIAlign(["0"], (7, 7), 2)
    assert (
        repr(module)
        == "MultiScaleRoIAlign(featmap_names=['0'], output_size=(7, 7), sampling_ratio=2)"
    )


def test_msroialign_is_leaf_node() -> None:
    _assert_leaf(ops.MultiScaleRoIAlign(["0"], (7, 7), 2), n_inputs=3)


# ---------------------------------------------------------------------------------------------
# TestNMS


def _tensors_with_iou(n: int, iou_threshold: float) -> tuple[Tensor, Tensor]:
    """n random boxes; the last is box 0 widened to an IoU just above the threshold with it."""
    boxes = torch.rand(n, 4) * 100
    boxes[:, 2:] += boxes[:, :2]
    boxes[-1] = boxes[0]
    x0, _, x1, _ = boxes[-1].tolist()
    target = iou_threshold + 1e-5
    boxes[-1, 2] += (x1 - x0) * (1 - target) / target
    return boxes, torch.rand(n)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("iou", [0.2, 0.5, 0.8])
def test_nms_ref(iou: float, seed: int) -> None:
    torch.manual_seed(seed)
    boxes, scores = _tensors_with_iou(1000, iou)
    torch.testing.assert_close(ops.nms(boxes, scores, iou), reference_nms(boxes, scores, iou))


@pytest.mark.parametrize(
    ("boxes", "scores"),
    [
        (torch.rand(4), torch.rand(3)),
        (torch.rand(3, 5), torch.rand(3)),
        (torch.rand(3, 4), torch.rand(3, 2)),
        (torch.rand(3, 4), torch.rand(4)),
    ],
)
def test_nms_input_errors(boxes: Tensor, scores: Tensor) -> None:
    """Deliberate difference: ValueError naming the argument (torchvision: RuntimeError)."""
    with pytest.raises(ValueError, match=r"nms: `(boxes|scores)`"):
        ops.nms(boxes, scores, 0.5)


@pytest.mark.parametrize(("scale", "zero_point"), [(1, 0), (2, 50), (3, 10)])
@pytest.mark.parametrize("iou", [0.2, 0.5, 0.8])
def test_qnms(iou: float, scale: float, zero_point: int) -> None:
    torch.manual_seed(0)
    boxes, scores = _tensors_with_iou(1000, iou)
    qboxes = torch.quantize_per_tensor(boxes, scale, zero_point, torch.quint8)
    qscores = torch.quantize_per_tensor(scores * 100, scale, zero_point, torch.quint8)
    expected = ops.nms(qboxes.dequantize(), qscores.dequantize(), iou)
    torch.testing.assert_close(ops.nms(qboxes, qscores, iou), expected)


def test_nms_float16() -> None:
    """TestNMS.test_nms_float16 (a CUDA/MPS case there; our CPU kernel takes float16 too)."""
    boxes = torch.tensor(
        [
            [285.3538, 185.5758, 1193.5110, 851.4551],
            [285.1472, 188.7374, 1192.4984, 851.0669],
            [279.2440, 197.9812, 1189.4746, 849.2019],
        ]
    )
    scores = torch.tensor([0.6370, 0.7569, 0.3966])
    keep16 = ops.nms(boxes.half(), scores.half(), 0.2)
    torch.testing.assert_close(keep16, ops.nms(boxes, scores, 0.2), rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(10))
def test_batched_nms_implementations(seed: int) -> None:
    """torchvision compares its two batched_nms paths; we have one, compared with a per-category
    loop of the greedy reference. Empty boxes with None for the rest give an empty result."""
    torch.manual_seed(seed)
    boxes = torch.cat((torch.rand(1000, 2), torch.rand(1000, 2) + 10), dim=1)
    scores = torch.rand(1000)
    idxs = torch.randint(0, 4, size=(1000,))
    keep = ops.batched_nms(boxes, scores, idxs, 0.9)
    torch.testing.assert_close(keep, reference_batched_nms(boxes, scores, idxs, 0.9))
    empty = torch.empty((0,), dtype=torch.int64)
    torch.testing.assert_close(ops.batched_nms(empty, None, None, None), empty)


@pytest.mark.parametrize(
    "test_util",
    ["test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"],
)
def test_nms_opcheck(test_util: str) -> None:
    """generate_opcheck_tests(TestNMS, ...): the four opcheck utilities on the nms operator."""
    torch.manual_seed(0)
    boxes, scores = _tensors_with_iou(100, 0.5)
    torch.library.opcheck(
        torch.ops.detector.nms.default, (boxes, scores, 0.5), test_utils=test_util
    )


# ---------------------------------------------------------------------------------------------
# TestDeformConv: 6 -> 2 channels, (3, 2) kernel, stride (2, 1), padding (1, 0), dilation (2, 1),
# 2 weight groups, 3 offset groups, on 5 x 4 maps.

STRIDE, PADDING, DILATION = (2, 1), (1, 0), (2, 1)


def _deform_layer() -> nn.Module:
    return layers.DeformConv2d(
        6, 2, (3, 2), stride=STRIDE, padding=PADDING, dilation=DILATION, groups=2
    )


def _deform_args(batch: int, contiguous: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x, offset, mask, weight, bias in float64, requiring gradients; permuted strides if asked."""
    g = torch.Generator().manual_seed(batch)
    out_h, out_w = 2, 3  # (5 + 2 - 5) // 2 + 1, (4 - 2) // 1 + 1
    x = torch.rand(batch, 6, 5, 4, dtype=torch.float64, generator=g)
    offset = torch.randn(batch, 3 * 2 * 3 * 2, out_h, out_w, dtype=torch.float64, generator=g)
    mask = torch.randn(batch, 3 * 3 * 2, out_h, out_w, dtype=torch.float64, generator=g)
    weight = torch.randn(2, 3, 3, 2, dtype=torch.float64, generator=g)
    bias = torch.randn(2, dtype=torch.float64, generator=g)
    if not contiguous:
        x = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
        offset = offset.permute(1, 3, 0, 2).contiguous().permute(2, 0, 3, 1)
        mask = mask.permute(1, 3, 0, 2).contiguous().permute(2, 0, 3, 1)
        weight = weight.permute(3, 2, 0, 1).contiguous().permute(2, 3, 1, 0)
    return tuple(t.requires_grad_() for t in (x, offset, mask, weight, bias))


def test_deform_conv_is_leaf_node() -> None:
    _assert_leaf(_deform_layer(), n_inputs=3)


@pytest.mark.parametrize("batch", [0, 33])
@pytest.mark.parametrize("contiguous", [True, False])
def test_deform_conv_forward(contiguous: bool, batch: int) -> None:
    x, offset, mask, _, _ = _deform_args(batch, contiguous)
    layer = _deform_layer().to(torch.float64)
    weight, bias = layer.weight.detach(), layer.bias.detach()
    with torch.no_grad():
        for m in (mask, None):
            if batch == 0:  # the reference has no empty case: an empty output of the right shape
                assert layer(x, offset, m).shape == (0, 2, 2, 3)
                continue
            expected = reference_deform_conv2d(
                x, offset, weight, bias, STRIDE, PADDING, DILATION, m
            )
            torch.testing.assert_close(layer(x, offset, m), expected, rtol=1e-5, atol=1e-5)


def test_deform_conv_wrong_sizes() -> None:
    """Deliberate difference: our message names the argument and the expected size."""
    x, offset, mask, _, _ = _deform_args(10, True)
    layer = _deform_layer().to(torch.float64)
    with pytest.raises(RuntimeError, match="`offset`"):
        layer(x, offset[:, :2].detach())
    with pytest.raises(RuntimeError, match="`mask`"):
        layer(x, offset.detach(), mask[:, :2].detach())


@pytest.mark.parametrize("batch", [0, 33])
@pytest.mark.parametrize("contiguous", [True, False])
def test_deform_conv_backward(contiguous: bool, batch: int) -> None:
    """gradcheck with and without a mask, eager and scripted."""
    x, offset, mask, weight, bias = _deform_args(batch, contiguous)
    scripted = torch.jit.script(ops.deform_conv2d)

    def call(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def run(x_: Tensor, off: Tensor, w: Tensor, b: Tensor, *mask_: Tensor) -> Tensor:
            return fn(x_, off, w, b, STRIDE, PADDING, DILATION, mask_[0] if mask_ else None)

        return run

    for fn in (ops.deform_conv2d, scripted):
        for m in (mask, None):
            inputs = (x, offset, weight, bias) + ((m,) if m is not None else ())
            assert gradcheck(call(fn), inputs, nondet_tol=1e-5, fast_mode=True)


def test_deform_conv_forward_scriptability() -> None:
    torch.jit.script(layers.DeformConv2d(in_channels=8, out_channels=8, kernel_size=3))


# ---------------------------------------------------------------------------------------------
# TestFrozenBNT


def test_frozenbatchnorm2d_repr() -> None:
    assert repr(layers.FrozenBatchNorm2d(32, eps=1e-5)) == "FrozenBatchNorm2d(32, eps=1e-05)"


@pytest.mark.parametrize("seed", range(10))
def test_frozenbatchnorm2d_eps(seed: int) -> None:
    """Frozen BN equals BatchNorm2d in eval mode, with the default eps and with eps=1e-5."""
    torch.manual_seed(seed)
    x = torch.rand(4, 32, 28, 28)
    state = {
        "weight": torch.rand(32),
        "bias": torch.rand(32),
        "running_mean": torch.rand(32),
        "running_var": torch.rand(32),
        "num_batches_tracked": torch.tensor(100),
    }
    for frozen, bn in (
        (layers.FrozenBatchNorm2d(32), nn.BatchNorm2d(32)),
        (layers.FrozenBatchNorm2d(32, eps=1e-5), nn.BatchNorm2d(32, eps=1e-5)),
    ):
        frozen.load_state_dict(state, strict=False)
        bn.load_state_dict(state)
        torch.testing.assert_close(frozen(x), bn.eval()(x), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# TestBoxConversionToRoi: a Tensor[K, 5], a list and a tuple of per-image boxes are accepted and
# pool the same RoIs.


def test_box_sequences_give_the_same_rois() -> None:
    x = torch.rand(2, 3, 120, 120)
    as_tensor = torch.tensor([[0, 0, 0, 100, 100], [1, 0, 0, 100, 100]], dtype=torch.float)
    as_list = [torch.tensor([[0, 0, 100, 100]], dtype=torch.float)] * 2
    expected = ops.roi_align(x, as_tensor, 7)
    for boxes in (as_list, tuple(as_list)):
        torch.testing.assert_close(ops.roi_align(x, boxes, 7), expected, rtol=0, atol=0)

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
from torchvision.models.detection.image_list import ImageList

from detector.config import get_cfg, merge_opts
from detector.modeling.anchor_generator import AnchorGenerator, build_anchor_generator


def _torchvision_anchors(sizes, ratios, image_size, grid_sizes) -> torch.Tensor:
    generator = TorchvisionAnchors(sizes, ratios)
    images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
    features = [torch.zeros(1, 1, *g) for g in grid_sizes]
    return generator(images, features)[0]


def test_c4_anchors_equal_torchvision():
    ours = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=(0.5, 1.0, 2.0), strides=(16,))
    assert ours.num_anchors_per_location() == [9]
    grid = (3, 5)
    anchors = ours([torch.zeros(2, 4, *grid)])
    assert len(anchors) == 1 and anchors[0].shape == (3 * 5 * 9, 4)
    expected = _torchvision_anchors(((128, 256, 512),), ((0.5, 1.0, 2.0),), (48, 80), [grid])
    torch.testing.assert_close(anchors[0], expected)


def test_fpn_anchors_equal_torchvision():
    sizes = ((32,), (64,), (128,), (256,), (512,))
    ours = AnchorGenerator(sizes=sizes, aspect_ratios=(0.5, 1.0, 2.0), strides=(4, 8, 16, 32, 64))
    grids = [(16, 32), (8, 16), (4, 8), (2, 4), (1, 2)]
    anchors = ours([torch.zeros(1, 8, *g) for g in grids])
    assert [a.shape[0] for a in anchors] == [h * w * 3 for h, w in grids]
    expected = _torchvision_anchors(sizes, ((0.5, 1.0, 2.0),) * 5, (64, 128), grids)
    torch.testing.assert_close(torch.cat(anchors), expected)


def test_cell_anchors_are_rounded_and_centred():
    (cell,) = AnchorGenerator(sizes=((16,),), aspect_ratios=(0.5, 1.0), strides=(16,)).cell_anchors
    torch.testing.assert_close(cell, torch.tensor([[-11.0, -6.0, 11.0, 6.0], [-8, -8, 8, 8]]))


def test_visibility():
    generator = AnchorGenerator(sizes=((16,),), aspect_ratios=(1.0,), strides=(16,))
    anchors = torch.tensor([[0.0, 0, 16, 16], [-2, 0, 10, 10], [0, 0, 33, 10], [-8, -8, 8, 8]])
    assert generator.visibility(anchors, (20, 32)).tolist() == [True, False, False, False]
    generator.straddle_thresh = 8
    assert generator.visibility(anchors, (20, 32)).tolist() == [True, True, True, True]
    generator.straddle_thresh = -1
    assert generator.visibility(anchors, (1, 1)).all()


def test_errors():
    with pytest.raises(ValueError, match="ANCHOR_STRIDE"):
        AnchorGenerator(sizes=((32,), (64,)), strides=(4,))
    with pytest.raises(ValueError, match="2 levels"):
        AnchorGenerator(sizes=((32,), (64,)), strides=(4, 8))([torch.zeros(1, 1, 2, 2)])


def _rpn_cfg(sizes, strides):
    opts = [
        "MODEL.RPN.ANCHOR_SIZES",
        str(list(sizes)),
        "MODEL.RPN.ANCHOR_STRIDE",
        str(list(strides)),
    ]
    return merge_opts(get_cfg(), opts)


def test_build_from_config():
    c4 = build_anchor_generator(_rpn_cfg((128, 256, 512), (16,)))
    assert c4.num_anchors_per_location() == [9] and c4.strides == [16]
    fpn = build_anchor_generator(_rpn_cfg((32, 64, 128, 256, 512), (4, 8, 16, 32, 64)))
    assert fpn.num_anchors_per_location() == [3] * 5
    with pytest.raises(ValueError, match="one size per FPN level"):
        build_anchor_generator(_rpn_cfg((32, 64), (4, 8, 16)))

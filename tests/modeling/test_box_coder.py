import math
from pathlib import Path

import torch
from torchvision.models.detection import _utils as det_utils

from detector.config import load_config
from detector.modeling.box_coder import BoxCoder
from detector.modeling.detector import GeneralizedRCNN


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 100
    wh = torch.rand(n, 2, generator=generator) * 50 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_decode_equal_torchvision():
    generator = torch.Generator().manual_seed(0)
    boxes, gt_boxes = _random_boxes(20, generator), _random_boxes(20, generator)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        ours, theirs = BoxCoder(weights), det_utils.BoxCoder(weights)
        deltas = ours.encode(gt_boxes, boxes)
        torch.testing.assert_close(deltas, theirs.encode_single(gt_boxes, boxes))
        torch.testing.assert_close(ours.decode(deltas, boxes), gt_boxes, atol=1e-4, rtol=1e-5)
        # K = 3 boxes per reference, with deltas large enough to hit the clip
        many = torch.randn(20, 12, generator=generator) * 3
        torch.testing.assert_close(ours.decode(many, boxes), theirs.decode_single(many, boxes))


def test_clip_and_default():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    assert coder.bbox_xform_clip == math.log(1000.0 / 16)
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    decoded = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 0.0]]), box)
    torch.testing.assert_close(decoded[0, 2] - decoded[0, 0], torch.tensor(10.0 * 1000 / 16))
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)


def _box_coders(obj: object, seen: set[int]) -> list[BoxCoder]:
    """Every BoxCoder reachable from `obj` through attributes (modules, creators, processors)."""
    if id(obj) in seen or not hasattr(obj, "__dict__"):
        return []
    seen.add(id(obj))
    if isinstance(obj, BoxCoder):
        return [obj]
    found: list[BoxCoder] = []
    for value in vars(obj).values():
        children = value.values() if isinstance(value, dict) else [value]
        for child in children:
            found += _box_coders(child, seen)
    return found


def test_clip_keys_reach_every_decoder():
    base = Path(__file__).resolve().parents[2] / "configs" / "Base-RCNN-FPN.yaml"
    opts = ["MODEL.RPN.BBOX_XFORM_CLIP", "2.5", "MODEL.ROI_HEADS.BBOX_XFORM_CLIP", "3.5"]
    model = GeneralizedRCNN.from_config(load_config(base, opts))
    clips = {id(c): c.bbox_xform_clip for c in _box_coders(model, set())}
    rpn = {c.bbox_xform_clip for c in _box_coders(model.rpn, set())}
    heads = {c.bbox_xform_clip for c in _box_coders(model.roi_heads, set())}
    assert rpn == {2.5} and heads == {3.5} and set(clips.values()) == {2.5, 3.5}
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    wide = BoxCoder((1.0, 1.0, 1.0, 1.0), 20.0).decode(torch.tensor([[0.0, 0.0, 8.0, 0.0]]), box)
    torch.testing.assert_close(wide[0, 2] - wide[0, 0], 10.0 * torch.exp(torch.tensor(8.0)))

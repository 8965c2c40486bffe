"""Instances: declared, typed fields of one length; indexing, cat, to, pickling."""

from __future__ import annotations

import pickle

import pytest
import torch

from detector.structures import BitMasks, Boxes, Instances, PolygonMasks

SQUARE = [0.0, 0.0, 10.0, 0.0, 10.0, 10.0, 0.0, 10.0]


def targets(n: int = 3) -> Instances:
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 1, 4]])[:n]
    return Instances(
        (30, 40),
        gt_boxes=Boxes(boxes),
        gt_classes=torch.arange(1, n + 1),
        gt_masks=PolygonMasks([[SQUARE]] * n),
        difficult=torch.zeros(n, dtype=torch.bool),
    )


def test_fields_and_len():
    inst = targets()
    assert len(inst) == 3
    assert inst.image_size == (30, 40)
    assert list(inst.fields()) == ["gt_boxes", "gt_classes", "gt_masks", "difficult"]
    assert inst.has("gt_boxes") and not inst.has("scores")
    assert inst.scores is None
    assert len(Instances((5, 5))) == 0


def test_unknown_fields_are_errors():
    inst = targets()
    with pytest.raises(AttributeError, match="no field 'gt_box'.*Did you mean 'gt_boxes'"):
        inst.gt_box = Boxes(torch.zeros(3, 4))
    with pytest.raises(AttributeError, match="Did you mean 'scores'"):
        _ = inst.score
    with pytest.raises(TypeError):
        Instances((1, 1), labels=torch.zeros(1))  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        inst.has("labels")


def test_types_and_dtypes_are_checked():
    inst = Instances((10, 10))
    with pytest.raises(TypeError, match="gt_boxes must be Boxes"):
        inst.gt_boxes = torch.zeros(2, 4)
    with pytest.raises(TypeError, match=r"gt_classes must be a torch.int64.*\.to\(torch.int64\)"):
        inst.gt_classes = torch.zeros(2, dtype=torch.int32)
    with pytest.raises(TypeError, match="difficult must be a torch.bool"):
        inst.difficult = torch.zeros(2)
    with pytest.raises(TypeError, match="scores must be a floating"):
        inst.scores = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="scalar"):
        inst.scores = torch.tensor(0.5)
    with pytest.raises(TypeError, match="gt_masks must be PolygonMasks or BitMasks"):
        inst.gt_masks = torch.zeros(2, 3, 3)
    with pytest.raises(ValueError, match="image_size"):
        Instances((10,))  # type: ignore[arg-type]


def test_lengths_must_agree():
    inst = targets()
    with pytest.raises(ValueError, match="gt_classes has 2 entries but gt_boxes has 3"):
        inst.gt_classes = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="entries"):
        Instances((5, 5), pred_boxes=Boxes(torch.zeros(2, 4)), scores=torch.zeros(3))
    inst.gt_masks = None  # unsetting is allowed
    assert not inst.has("gt_masks")


def test_getitem_every_field():
    inst = targets()
    keep = inst[inst.gt_boxes.nonempty()]
    assert len(keep) == 2
    assert keep.gt_classes.tolist() == [1, 2]
    assert len(keep.gt_masks) == 2 and keep.difficult.shape == (2,)
    assert keep.image_size == inst.image_size
    one = inst[1]
    assert len(one) == 1 and one.gt_classes.tolist() == [2]
    assert inst[-1].gt_classes.tolist() == [3]
    assert inst[1:].gt_classes.tolist() == [2, 3]
    assert inst[torch.tensor([2, 0])].gt_classes.tolist() == [3, 1]
    with pytest.raises(IndexError):
        inst[3]


def test_cat():
    inst = targets()
    both = Instances.cat([inst[:1], inst[1:]])
    assert len(both) == 3
    assert both.gt_classes.tolist() == [1, 2, 3]
    assert torch.equal(both.gt_boxes.tensor, inst.gt_boxes.tensor)
    bitmaps = Instances((4, 4), gt_masks=BitMasks(torch.ones(2, 4, 4, dtype=torch.bool)))
    assert len(Instances.cat([bitmaps, bitmaps]).gt_masks) == 4
    with pytest.raises(ValueError, match="image_size"):
        Instances.cat([inst, Instances((1, 1), gt_classes=torch.tensor([1]))])
    with pytest.raises(ValueError, match="fields"):
        Instances.cat([inst, Instances((30, 40), gt_classes=torch.tensor([1]))])


def test_results_and_proposals():
    results = Instances(
        (8, 8),
        pred_boxes=Boxes(torch.zeros(2, 4)),
        scores=torch.tensor([0.9, 0.1]),
        pred_classes=torch.tensor([3, 1]),
        pred_masks=torch.zeros(2, 1, 28, 28),
    )
    assert len(results[results.scores > 0.5]) == 1
    proposals = Instances(
        (8, 8), proposal_boxes=Boxes(torch.zeros(5, 4)), objectness_logits=torch.zeros(5)
    )
    assert len(proposals) == 5


def test_to_and_pickle():
    inst = targets()
    moved = inst.to("cpu")
    assert moved.gt_boxes.device.type == "cpu" and len(moved) == 3
    again = pickle.loads(pickle.dumps(inst))
    assert torch.equal(again.gt_classes, inst.gt_classes)
    assert again.image_size == (30, 40) and len(again.gt_masks) == 3
    assert "num_instances=3" in repr(inst)


@pytest.mark.cuda
def test_to_cuda():
    inst = targets().to("cuda")
    assert inst.gt_boxes.device.type == "cuda" and inst.gt_classes.is_cuda
    kept = inst[inst.gt_boxes.nonempty()]  # a CUDA mask also indexes polygon masks
    assert len(kept.gt_masks) == 2

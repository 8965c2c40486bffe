"""The synthetic shapes dataset and the DSB2018 nuclei loader."""

import numpy as np
import pytest
import torch
from PIL import Image

from detector.data import DSB2018Dataset, ShapesDataset
from detector.data.datasets import mask_boxes
from detector.structures import BitMasks


def test_shapes_are_deterministic_by_seed():
    a, b, c = ShapesDataset(6, seed=3), ShapesDataset(6, seed=3), ShapesDataset(6, seed=4)
    for i in range(6):
        image_a, target_a, _ = a[i]
        image_b, target_b, _ = b[i]
        assert torch.equal(image_a, image_b)
        assert torch.equal(target_a.gt_boxes.tensor, target_b.gt_boxes.tensor)
        assert torch.equal(target_a.gt_masks.tensor, target_b.gt_masks.tensor)
    assert not torch.equal(a[0][0], c[0][0])


def test_shapes_masks_boxes_and_classes_are_consistent():
    dataset = ShapesDataset(16, seed=0)
    assert dataset.class_names == ["__background__", "square", "circle", "triangle"]
    counts = []
    for i in range(len(dataset)):
        image, target, meta = dataset[i]
        assert image.shape == (3, 128, 128) and image.dtype == torch.uint8
        assert dataset.num_instances(i) == len(target)
        masks = target.gt_masks.tensor
        assert masks.any(dim=(1, 2)).all()  # no shape fully occluded
        assert (masks.sum(dim=0) <= 1).all()  # occluded pixels belong to the top shape only
        # The boxes are the masks' tight boxes.
        assert torch.equal(target.gt_boxes.tensor, BitMasks(masks).get_bounding_boxes().tensor)
        sides = target.gt_boxes.widths
        assert ((sides >= 8) & (sides <= 48)).all()
        assert set(target.gt_classes.tolist()) <= {1, 2, 3}
        counts.append(len(target))
        assert meta == {"image_id": i, "file_name": f"shapes:0:{i}", "height": 128, "width": 128}
    assert min(counts) >= 1 and max(counts) <= 4


def test_shapes_square_fills_its_box_and_differs_from_background():
    dataset = ShapesDataset(30, seed=0)
    for i in range(len(dataset)):
        image, target, _ = dataset[i]
        for k in torch.nonzero(target.gt_classes == 1).flatten().tolist():
            x0, y0, x1, y1 = target.gt_boxes.tensor[k].int().tolist()
            mask = target.gt_masks.tensor[k]
            full = mask[y0:y1, x0:x1].float().mean()
            if full == 1:  # an unoccluded square: colour far from the background's mean
                inside = image[:, mask].float().mean(dim=1)
                outside = image[:, ~target.gt_masks.tensor.any(0)].float().mean(dim=1)
                assert (inside - outside).abs().max() > 30
                return
    pytest.fail("no unoccluded square in 30 images")


def test_mask_boxes_hand_computed():
    masks = np.zeros((2, 5, 6), dtype=bool)
    masks[0, 1:3, 2:5] = True
    np.testing.assert_array_equal(mask_boxes(masks), [[2, 1, 5, 3], [0, 0, 0, 0]])


@pytest.fixture
def dsb2018(shared_data):
    return shared_data / "dsb2018-nuclei"


def test_dsb2018_splits_and_items(dsb2018):
    train = DSB2018Dataset(dsb2018, "train")
    val = DSB2018Dataset(dsb2018, "val")
    assert len(train) == 296 and len(val) == 74
    assert not set(train.image_ids) & set(val.image_ids)
    assert train.image_ids == sorted(train.image_ids) and train.image_ids[-1] < val.image_ids[0]
    assert train.class_names == ["__background__", "nucleus"]
    image, target, meta = train[0]
    image_id = train.image_ids[0]
    mask_files = sorted((dsb2018 / "stage1_train" / image_id / "masks").glob("*.png"))
    assert len(target) == len(mask_files) == train.num_instances(0)
    assert image.shape == (3, meta["height"], meta["width"]) == (3, *train.get_image_size(0))
    with Image.open(mask_files[0]) as png:
        first = torch.from_numpy(np.array(png) > 0)
    assert torch.equal(target.gt_masks.tensor[0], first)
    ys, xs = torch.nonzero(first, as_tuple=True)
    expected = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    torch.testing.assert_close(target.gt_boxes.tensor[0], expected)
    assert (target.gt_classes == 1).all()
    with Image.open(dsb2018 / "stage1_train" / image_id / "images" / f"{image_id}.png") as png:
        rgba = torch.from_numpy(np.array(png))
    assert torch.equal(image, rgba[..., :3].permute(2, 0, 1))  # RGBA decoded as RGB


def test_dsb2018_bad_split(dsb2018):
    with pytest.raises(ValueError, match="split must be one of"):
        DSB2018Dataset(dsb2018, "test")

"""ImageList: padding to the largest image and to a size divisibility."""

from __future__ import annotations

import pytest
import torch

from detector.structures import ImageList


def test_pads_to_largest_image():
    a = torch.ones(3, 10, 20)
    b = torch.full((3, 15, 12), 2.0)
    images = ImageList.from_tensors([a, b])
    assert images.tensor.shape == (2, 3, 15, 20)
    assert images.image_sizes == [(10, 20), (15, 12)]
    assert torch.equal(images[0], a) and torch.equal(images[1], b)
    assert images.tensor[0, :, 10:].abs().sum() == 0  # padding below image 0
    assert images.tensor[1, :, :, 12:].abs().sum() == 0  # padding right of image 1
    assert len(images) == 2


def test_pads_to_divisibility_32():
    images = ImageList.from_tensors(
        [torch.rand(3, 100, 130), torch.rand(3, 64, 64)], size_divisibility=32
    )
    assert images.tensor.shape == (2, 3, 128, 160)
    assert images.image_sizes == [(100, 130), (64, 64)]
    exact = ImageList.from_tensors([torch.rand(3, 64, 96)], size_divisibility=32)
    assert exact.tensor.shape == (1, 3, 64, 96)


def test_pad_value_and_dtype():
    images = ImageList.from_tensors(
        [torch.zeros(1, 2, 2, dtype=torch.uint8), torch.zeros(1, 3, 3, dtype=torch.uint8)],
        pad_value=7,
    )
    assert images.tensor.dtype == torch.uint8
    assert images.tensor[0, 0, 2, 2] == 7 and images.tensor[0, 0, 0, 0] == 0


def test_errors():
    with pytest.raises(ValueError, match="at least one"):
        ImageList.from_tensors([])
    with pytest.raises(ValueError, match="image 1"):
        ImageList.from_tensors([torch.rand(3, 4, 4), torch.rand(1, 4, 4)])
    with pytest.raises(ValueError, match=r"Tensor\[C, H, W\]"):
        ImageList.from_tensors([torch.rand(4, 4)])
    with pytest.raises(ValueError, match="exceeds"):
        ImageList(torch.rand(1, 3, 4, 4), [(5, 4)])


def test_to_keeps_sizes():
    images = ImageList.from_tensors([torch.rand(3, 5, 6)]).to("cpu")
    assert images.image_sizes == [(5, 6)] and images.device.type == "cpu"

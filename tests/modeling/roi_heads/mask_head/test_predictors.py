"""Mask predictors: their matrix-product forms equal the convolutions they stand for, for all
classes and for one class per RoI, in values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from detector.modeling.roi_heads.mask_head.predictors import (
    MaskRCNNC4Predictor,
    MaskRCNNConv1x1Predictor,
)


def _random_biases(predictor: torch.nn.Module) -> None:
    """Non-zero biases (the init zeroes them), so that their handling is checked too."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in predictor.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))


def _c4_reference(predictor: MaskRCNNC4Predictor, x: Tensor) -> Tensor:
    """conv_transpose2d -> ReLU -> conv2d, as nn layers compute them."""
    return predictor.mask_fcn_logits(F.relu(predictor.conv5_mask(x)))


@pytest.fixture
def c4_predictor() -> MaskRCNNC4Predictor:
    torch.manual_seed(0)
    predictor = MaskRCNNC4Predictor(6, dim_reduced=5, num_classes=4).double()
    _random_biases(predictor)
    return predictor


def test_c4_predictor_equals_the_convolutions(c4_predictor):
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64)  # a non-square map checks the layout
    logits = c4_predictor(x)
    assert logits.shape == (3, 4, 10, 14)
    torch.testing.assert_close(logits, _c4_reference(c4_predictor, x))


def test_c4_predictor_selected_classes_values_and_gradients(c4_predictor):
    x = torch.randn(3, 6, 4, 4, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor([2, 0, 3])
    selected = c4_predictor(x, classes)
    reference = _c4_reference(c4_predictor, x)[torch.arange(3), classes][:, None]
    assert selected.shape == (3, 1, 8, 8)
    torch.testing.assert_close(selected, reference)
    weights = torch.randn(selected.shape, dtype=torch.float64)
    inputs = [x, *c4_predictor.parameters()]
    grads = torch.autograd.grad((selected * weights).sum(), inputs)
    expected = torch.autograd.grad((reference * weights).sum(), inputs)
    for grad, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(grad, want)


def test_conv1x1_predictor_all_and_selected_classes():
    torch.manual_seed(0)
    predictor = MaskRCNNConv1x1Predictor(6, dim_reduced=0, num_classes=4).double()
    _random_biases(predictor)
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    reference = predictor.mask_fcn_logits(x)
    torch.testing.assert_close(predictor(x), reference)
    selected = predictor(x, torch.tensor([3, 1]))
    torch.testing.assert_close(selected, reference[[0, 1], [3, 1]][:, None])


def test_class_agnostic_predictor_ignores_classes():
    predictor = MaskRCNNC4Predictor(6, dim_reduced=5, num_classes=1)
    x = torch.randn(2, 6, 4, 4)
    assert torch.equal(predictor(x, torch.tensor([7, 9])), predictor(x))


def test_no_roi_and_wrong_classes():
    predictor = MaskRCNNC4Predictor(6, dim_reduced=5, num_classes=4)
    empty = torch.zeros(0, 6, 14, 14)
    assert predictor(empty).shape == (0, 4, 28, 28)
    assert predictor(empty, torch.zeros(0, dtype=torch.int64)).shape == (0, 1, 28, 28)
    with pytest.raises(ValueError, match="classes"):
        predictor(torch.zeros(2, 6, 4, 4), torch.tensor([1]))

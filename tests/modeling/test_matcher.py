import pytest
import torch
from torchvision.models.detection import _utils as det_utils

from detector.modeling.matcher import Matcher


@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_matcher_equals_torchvision(allow_low_quality):
    generator = torch.Generator().manual_seed(0)
    quality = torch.rand(5, 40, generator=generator) ** 3
    quality[1, 3] = quality[1, 7] = 0.95  # a tie for gt 1's best
    quality[2] *= 0.2  # gt 2's best match is below the low threshold
    ours = Matcher(0.7, 0.3, allow_low_quality)(quality)
    theirs = det_utils.Matcher(0.7, 0.3, allow_low_quality)(quality)
    assert torch.equal(ours, theirs)
    assert ours.dtype == torch.int64 and set(ours.tolist()) >= {-1, -2}


def test_codes_and_low_quality():
    quality = torch.tensor([[0.9, 0.5, 0.1, 0.2]])
    assert Matcher(0.7, 0.3)(quality).tolist() == [0, -2, -1, -1]
    quality = torch.tensor([[0.2, 0.01], [0.0, 0.05]])
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality).tolist() == [0, 1]
    # a low-quality match restores the prediction's own best gt (torchvision's rule)
    quality = torch.tensor([[0.2, 0.1], [0.0, 0.05]])
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality).tolist() == [0, 0]


def test_no_gt_and_no_predictions():
    assert Matcher(0.7, 0.3)(torch.zeros(0, 4)).tolist() == [-1] * 4
    assert Matcher(0.7, 0.3, True)(torch.zeros(3, 0)).shape == (0,)
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)

"""Predictor: every input kind (file, numpy array, tensor, list), results in the original
image's pixels (boxes inside it, masks at its size), equality with the model run by hand, and
errors that name the bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector import Predictor
from detector.data import build_transforms
from detector.structures import Instances
from tests.export.tiny_model import TinyRun, make_tiny_run

HEIGHT, WIDTH = 90, 120  # resized to 64 x 85 by MIN_SIZE_TEST 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return make_tiny_run(tmp_path_factory.mktemp("tiny_predictor"))


@pytest.fixture(scope="module")
def predictor(tiny_run: TinyRun) -> Predictor:
    return Predictor(tiny_run.config_file, tiny_run.checkpoint)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.RandomState(0).randint(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def _check_result(result: dict, height: int, width: int) -> None:
    n = len(result["boxes"])
    assert n > 0  # SCORE_THRESH 0: an untrained model detects
    assert result["boxes"].shape == (n, 4) and result["boxes"].dtype == torch.float32
    assert result["scores"].shape == (n,) and result["labels"].dtype == torch.int64
    assert result["masks"].shape == (n, height, width) and result["masks"].dtype == torch.bool
    assert len(result["class_names"]) == n
    assert result["image_size"] == (height, width)
    boxes = result["boxes"]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert set(result["labels"].tolist()) <= {1, 2, 3}
    assert result["class_names"] == [f"class_{k}" for k in result["labels"].tolist()]


def test_every_input_kind_gives_the_same_result(
    predictor: Predictor, rgb: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    from_path = predictor(path)
    _check_result(from_path, HEIGHT, WIDTH)
    pil = Image.fromarray(rgb).convert("RGBA")  # converted to RGB
    for other in (predictor(str(path)), predictor(rgb), predictor(tensor), predictor(pil)):
        for key in ("boxes", "scores", "labels", "masks"):
            assert torch.equal(other[key], from_path[key]), key


def test_a_list_gives_one_result_per_image(predictor: Predictor, rgb: np.ndarray) -> None:
    portrait = np.ascontiguousarray(rgb[:80, :40])  # 80 x 40 -> resized to 128 x 64 (max 96)
    results = predictor([rgb, portrait, torch.from_numpy(rgb).permute(2, 0, 1)])
    assert isinstance(results, list) and len(results) == 3
    _check_result(results[0], HEIGHT, WIDTH)
    _check_result(results[1], 80, 40)
    _check_result(results[2], HEIGHT, WIDTH)


def test_boxes_are_the_models_scaled_to_the_original_size(
    predictor: Predictor, tiny_run: TinyRun, rgb: np.ndarray
) -> None:
    image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    resized, _ = build_transforms(tiny_run.cfg, is_train=False)(image, Instances((HEIGHT, WIDTH)))
    assert tuple(resized.shape[-2:]) == (64, 85)  # shorter side 90 -> 64, 120 * 64/90 = 85.3
    with torch.no_grad():
        (dets,) = tiny_run.model([resized])
    expected = dets.pred_boxes.tensor * torch.tensor([WIDTH / 85, HEIGHT / 64] * 2)
    expected[:, 0::2] = expected[:, 0::2].clamp(0, WIDTH)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, HEIGHT)
    result = predictor(rgb)
    torch.testing.assert_close(result["boxes"], expected)
    assert torch.equal(result["scores"], dets.scores)
    assert torch.equal(result["labels"], dets.pred_classes)


def test_masks_are_pasted_in_their_boxes(predictor: Predictor, rgb: np.ndarray) -> None:
    result = predictor(rgb)
    for box, mask in zip(result["boxes"], result["masks"], strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs) == 0:
            continue
        # The pasted pixels lie within the box, give or take the paste's one-pixel padding.
        assert xs.min() >= box[0].floor() - 2 and xs.max() <= box[2].ceil() + 1
        assert ys.min() >= box[1].floor() - 2 and ys.max() <= box[3].ceil() + 1


def test_bad_inputs_name_the_image(predictor: Predictor, rgb: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"image 1 is a numpy array of shape \(90, 120\)"):
        predictor([rgb, rgb[..., 0]])
    with pytest.raises(ValueError, match=r"image 0 is a tensor .* torch.float32"):
        predictor(torch.zeros(3, 8, 8))
    with pytest.raises(TypeError, match="image 0 is a int"):
        predictor([3])
    with pytest.raises(Exception, match="missing.png"):
        predictor("missing.png")


def test_a_training_checkpoint_needs_a_config(tiny_run: TinyRun) -> None:
    with pytest.raises(ValueError, match="embeds no config and there is no config.yaml"):
        Predictor(None, tiny_run.checkpoint)


def test_an_rpn_only_model_is_refused(tiny_run: TinyRun) -> None:
    from detector.config import merge_opts

    cfg = merge_opts(tiny_run.cfg, ["MODEL.RPN_ONLY", "True"])
    with pytest.raises(ValueError, match="MODEL.RPN_ONLY"):
        Predictor(cfg, tiny_run.checkpoint)


def test_weights_of_another_model_are_refused(tiny_run: TinyRun, tmp_path: Path) -> None:
    faster = make_tiny_run(tmp_path / "faster", mask_on=False)
    with pytest.raises(
        ValueError, match=r"do not fit the model of this.*MASK_ON False.*keys not in the model"
    ):
        Predictor(faster.config_file, tiny_run.checkpoint)
    result = Predictor(faster.config_file, faster.checkpoint)(torch.zeros(3, 50, 60).byte())
    assert "masks" not in result and result["boxes"].shape[1] == 4


def test_predictor_is_exported_lazily() -> None:
    import detector
    import detector.predictor

    assert detector.Predictor is detector.predictor.Predictor
    with pytest.raises(AttributeError, match="no attribute 'Predictr'"):
        detector.Predictr  # noqa: B018


@pytest.mark.cuda
def test_cuda_predictor_matches_cpu(tiny_run: TinyRun, predictor: Predictor, rgb: np.ndarray):
    on_gpu = Predictor(tiny_run.config_file, tiny_run.checkpoint, device="cuda")
    result, reference = on_gpu(rgb), predictor(rgb)
    assert result["boxes"].device.type == "cpu"  # results come back on the CPU
    torch.testing.assert_close(result["scores"][:3], reference["scores"][:3], atol=1e-4, rtol=0)
    torch.testing.assert_close(result["boxes"][:3], reference["boxes"][:3], atol=1e-2, rtol=0)


def test_empty_inputs(predictor: Predictor, rgb: np.ndarray) -> None:
    """A 3 x 0 x 0 tensor used to give ZeroDivisionError in the resize."""
    assert predictor([]) == []
    with pytest.raises(ValueError, match=r"image 0 is empty \(3 x 0 x 0\)"):
        predictor(torch.zeros(3, 0, 0, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"image 1 is empty \(3 x 5 x 0\)"):
        predictor([rgb, np.zeros((5, 0, 3), np.uint8)])


def test_boxes_without_area_in_the_original_image_are_dropped(predictor: Predictor) -> None:
    """A box clipped to nothing (e.g. in the padding of a 1 x 1 image) is not a detection."""
    from detector.structures import Boxes

    boxes = [[128.0, 0.0, 128.0, 50.0], [10.0, 10.0, 60.0, 60.0], [5.0, 7.0, 5.0, 7.0]]
    dets = Instances(
        (128, 128),
        pred_boxes=Boxes(torch.tensor(boxes)),
        scores=torch.tensor([0.9, 0.8, 0.7]),
        pred_classes=torch.tensor([1, 2, 3]),
        pred_masks=torch.ones(3, 1, 28, 28),
    )
    result = predictor._postprocess(dets, (1, 1))
    assert result["scores"].tolist() == [pytest.approx(0.8)]
    assert result["labels"].tolist() == [2] and result["masks"].shape == (1, 1, 1)
    one_pixel = predictor(torch.full((3, 1, 1), 128, dtype=torch.uint8))
    widths = one_pixel["boxes"][:, 2] - one_pixel["boxes"][:, 0]
    heights = one_pixel["boxes"][:, 3] - one_pixel["boxes"][:, 1]
    assert ((widths > 0) & (heights > 0)).all()


@pytest.mark.parametrize("shape", [(3, 20, 20000), (3, 20000, 20)])
def test_very_elongated_images_run_end_to_end(predictor: Predictor, shape) -> None:
    """Resized with a one-pixel short side, they go through the whole network."""
    result = predictor(torch.full(shape, 100, dtype=torch.uint8))
    assert result["image_size"] == shape[1:]
    assert result["masks"].shape[1:] == shape[1:]


def test_read_only_images_give_no_warning(predictor: Predictor, rgb: np.ndarray) -> None:
    """Was: a PIL image triggered PyTorch's "The given NumPy array is not writable" warning."""
    frozen = rgb.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = predictor([Image.fromarray(rgb), frozen])
    assert torch.equal(results[0]["boxes"], results[1]["boxes"])
    assert not frozen.flags.writeable  # the caller's array is left as it was

"""paste_masks_in_image: a hand-computed case, equality with torchvision, chunking, edge cases.

Every test runs twice: with the compiled CPU kernel and with the PyTorch form that other devices
use (forced here through `paste._uses_compiled_kernel`).
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

from detector.ops import paste_masks as paste
from detector.ops import paste_masks_in_image
from detector.ops.paste_masks import _bytes_per_window_pixel, _chunks
from tests.ops.utils import copies_of


@pytest.fixture(autouse=True, params=["compiled", "pytorch"])
def form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which implementation pastes: the compiled CPU kernel or the PyTorch tensor ops."""
    compiled = request.param == "compiled"
    monkeypatch.setattr(paste, "_uses_compiled_kernel", lambda masks: compiled)
    return request.param


def random_case(
    generator: torch.Generator, num_masks: int, mask_size: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random masks and boxes overlapping the image: some partly outside, many tiny."""
    masks = torch.rand(num_masks, mask_size, mask_size, generator=generator)
    corner = torch.rand(num_masks, 2, generator=generator) * torch.tensor([width, height]) * 1.3
    corner = corner - 0.15 * torch.tensor([width, height])
    size = torch.rand(num_masks, 2, generator=generator) ** 3 * torch.tensor([width, height])
    boxes = torch.cat([corner, corner + size], dim=1)
    # torchvision fails on boxes entirely outside the image: keep every box overlapping it.
    boxes[:, 0] = boxes[:, 0].clamp(max=width - 2)
    boxes[:, 1] = boxes[:, 1].clamp(max=height - 2)
    boxes[:, 2] = torch.maximum(boxes[:, 2], boxes[:, 0].clamp(min=0) + 0.25)
    boxes[:, 3] = torch.maximum(boxes[:, 3], boxes[:, 1].clamp(min=0) + 0.25)
    return masks, boxes


def test_hand_computed_constant_mask():
    # A 2x2 mask of ones on box (2, 2, 6, 6): padded to 4x4 [0, 1, 1, 0], the box expanded by
    # 4/2 to (0, 0, 8, 8), i.e. 9 pixels; column d samples s = (4/9)(d + 0.5) - 0.5.
    profile = torch.tensor([0, 1 / 6, 11 / 18, 1, 1, 1, 11 / 18, 1 / 6, 0, 0, 0, 0])
    pasted = paste_masks_in_image(
        torch.ones(1, 2, 2), torch.tensor([[2.0, 2, 6, 6]]), (12, 12), None
    )
    torch.testing.assert_close(pasted[0], profile[:, None] * profile[None, :])
    binary = paste_masks_in_image(torch.ones(1, 2, 2), torch.tensor([[2.0, 2, 6, 6]]), (12, 12))
    assert binary.dtype == torch.bool
    # > 0.5: the 3x5 and 5x3 crosses of pixels 2..6 (the corners are (11/18)^2 < 0.5).
    expected = torch.zeros(12, 12, dtype=torch.bool)
    expected[3:6, 2:7] = True
    expected[2:7, 3:6] = True
    assert torch.equal(binary[0], expected)


@pytest.mark.parametrize(
    "mask_size,height,width", [(28, 60, 80), (14, 33, 17), (7, 100, 41), (2, 9, 13)]
)
def test_equals_torchvision(mask_size: int, height: int, width: int):
    generator = torch.Generator().manual_seed(mask_size * 1000 + height)
    masks, boxes = random_case(generator, 40, mask_size, height, width)
    expected = tv_paste(masks[:, None], boxes, (height, width))[:, 0]
    pasted = paste_masks_in_image(masks, boxes, (height, width), threshold=None)
    assert pasted.dtype == torch.float32 and pasted.shape == (40, height, width)
    torch.testing.assert_close(pasted, expected, atol=1e-5, rtol=0)


def test_equals_torchvision_special_boxes():
    """Degenerate, tiny, integer, border-touching and partly outside boxes; float64 masks."""
    boxes = torch.tensor(
        [
            [5.0, 5.0, 5.0, 5.0],  # empty box
            [3.2, 4.7, 3.9, 5.1],  # sub-pixel box
            [0.0, 0.0, 30.0, 20.0],  # the whole image
            [-7.5, -3.0, 4.0, 6.0],  # past the top-left corner
            [25.0, 15.0, 41.0, 33.0],  # past the bottom-right corner
            [10.0, 2.0, 11.0, 19.0],  # one pixel wide
            [-0.4, 19.6, 29.6, 19.9],  # thin, on the bottom border
        ]
    )
    masks = torch.rand(len(boxes), 28, 28, generator=torch.Generator().manual_seed(3)).double()
    expected = tv_paste(masks[:, None], boxes, (20, 30))[:, 0]
    pasted = paste_masks_in_image(masks, boxes, (20, 30), threshold=None)
    assert pasted.dtype == torch.float64
    torch.testing.assert_close(pasted, expected, atol=1e-10, rtol=0)


def test_threshold_matches_torchvision():
    generator = torch.Generator().manual_seed(7)
    masks, boxes = random_case(generator, 30, 28, 50, 70)
    probabilities = tv_paste(masks[:, None], boxes, (50, 70))[:, 0]
    binary = paste_masks_in_image(masks, boxes, (50, 70), threshold=0.5)
    assert binary.dtype == torch.bool
    clear = (probabilities - 0.5).abs() > 1e-5  # away from the threshold
    assert torch.equal(binary[clear], (probabilities > 0.5)[clear])
    assert binary.any()


def test_chunking_gives_the_same_result():
    generator = torch.Generator().manual_seed(11)
    masks, boxes = random_case(generator, 23, 14, 40, 45)
    whole = paste_masks_in_image(masks, boxes, (40, 45), None, chunk_size=1000)
    for chunk_size in (1, 4, 22):
        chunked = paste_masks_in_image(masks, boxes, (40, 45), None, chunk_size=chunk_size)
        assert torch.equal(chunked, whole)
    for max_bytes in (1, 20_000, 200_000):  # 1 byte: one mask per chunk
        chunked = paste_masks_in_image(masks, boxes, (40, 45), None, max_chunk_bytes=max_bytes)
        assert torch.equal(chunked, whole)
    assert torch.equal(paste_masks_in_image(masks, boxes, (40, 45), None), whole)


def test_chunks_respect_the_memory_budget():
    generator = torch.Generator().manual_seed(5)
    heights = sorted(torch.randint(0, 800, (200,), generator=generator).tolist())
    widths = torch.randint(0, 1333, (200,), generator=generator).tolist()
    max_bytes = 1 << 30
    chunks = _chunks(heights, widths, 64, max_bytes, 4)
    assert chunks[0][0] == 0 and chunks[-1][1] == 200
    per_pixel = _bytes_per_window_pixel(4)
    for (begin, end, window_h, window_w), following in zip(
        chunks, chunks[1:] + [None], strict=True
    ):
        assert 1 <= end - begin <= 64
        assert window_h == max(max(heights[begin:end]), 1)
        assert window_w == max(max(widths[begin:end]), 1)
        assert (end - begin) * window_h * window_w * per_pixel <= max_bytes
        assert following is None or following[0] == end
    # Full-image windows over 800 x 1333, 20 bytes per pixel: 50 masks per GiB.
    full = _chunks([800] * 100, [1333] * 100, 1000, max_bytes, 4)
    assert [end - begin for begin, end, _, _ in full] == [50, 50]


def test_input_forms_and_empty():
    masks = torch.rand(3, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[1.0, 1, 8, 8], [0, 0, 3, 9], [4, 2, 9, 5]])
    three_dims = paste_masks_in_image(masks[:, 0], boxes, (12, 10), None)
    four_dims = paste_masks_in_image(masks, boxes, (12, 10), None)
    assert torch.equal(three_dims, four_dims)
    empty = paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 6))
    assert empty.shape == (0, 5, 6) and empty.dtype == torch.bool
    with pytest.raises(ValueError, match=r"boxes must be \(3, 4\)"):
        paste_masks_in_image(masks, boxes[:2], (12, 10))
    with pytest.raises(ValueError, match="masks must be"):
        paste_masks_in_image(torch.zeros(3, 4, 5), boxes, (12, 10))


def test_box_entirely_outside_gives_an_empty_mask():
    # (torchvision raises an error for such boxes.)
    boxes = torch.tensor([[-30.0, -30.0, -20.0, -20.0], [50.0, 5.0, 60.0, 8.0]])
    pasted = paste_masks_in_image(torch.ones(2, 14, 14), boxes, (20, 40), None)
    assert not pasted.any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_masks_are_pasted_in_float32_and_rounded_once(dtype: torch.dtype, form: str):
    """Both forms give the bits of pasting the same values in float32, rounded once, and
    thresholded the same bool masks; the CPU kernel reads float16/bfloat16 masks itself (no
    float32 copy of the masks or of the result)."""
    generator = torch.Generator().manual_seed(9)
    masks, boxes = random_case(generator, 10, 28, 30, 40)
    reduced = masks.to(dtype)
    pasted = paste_masks_in_image(reduced, boxes, (30, 40), None)
    assert pasted.dtype == dtype
    expected = paste_masks_in_image(reduced.float(), boxes, (30, 40), None)
    torch.testing.assert_close(pasted, expected.to(dtype), rtol=0, atol=0)
    thresholded = paste_masks_in_image(reduced, boxes, (30, 40), 0.5)
    assert torch.equal(thresholded, expected > 0.5)
    padded = torch.nn.functional.pad(reduced, (1, 1, 1, 1))
    run = lambda: paste_masks_in_image(reduced, boxes, (30, 40), None)  # noqa: E731
    if form == "compiled":
        assert copies_of(run, [reduced, padded, pasted]) == []


def test_compiled_kernel_op_checks_and_errors(form: str):
    generator = torch.Generator().manual_seed(3)
    masks, boxes = random_case(generator, 6, 7, 20, 30)
    padded = torch.nn.functional.pad(masks, (1, 1, 1, 1))
    int_boxes = paste._expanded_integer_boxes(boxes, 9 / 7)
    op = torch.ops.detector.paste_masks
    for threshold in (None, 0.5):
        torch.library.opcheck(op, (padded, int_boxes, 20, 30, threshold))
        torch.library.opcheck(op, (padded.double(), int_boxes, 20, 30, threshold))
        torch.library.opcheck(op, (padded.bfloat16(), int_boxes, 20, 30, threshold))
    with pytest.raises(ValueError, match="paste_masks: `padded` must be"):
        op(padded[:, :, 1:], int_boxes, 20, 30, None)
    with pytest.raises(TypeError, match="paste_masks: `padded` must be a floating point"):
        op(padded.int(), int_boxes, 20, 30, None)
    with pytest.raises(ValueError, match=r"paste_masks: `boxes` must be \(6, 4\)"):
        op(padded, int_boxes[:5], 20, 30, None)
    with pytest.raises(TypeError, match="paste_masks: `boxes` must be int64"):
        op(padded, int_boxes.int(), 20, 30, None)
    with pytest.raises(ValueError, match="paste_masks: `height` and `width`"):
        op(padded, int_boxes, -1, 30, None)


def test_compiled_kernel_is_deterministic_across_thread_counts(form: str):
    generator = torch.Generator().manual_seed(4)
    masks, boxes = random_case(generator, 37, 28, 90, 70)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = paste_masks_in_image(masks, boxes, (90, 70), None)
        torch.set_num_threads(2)
        two = paste_masks_in_image(masks, boxes, (90, 70), None)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)

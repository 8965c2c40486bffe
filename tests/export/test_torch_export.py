"""torch.export programs of the inference model: tools/export.py --format torch-export writes a
.pt2 that torch.export.load reads back, and the loaded program gives PyTorch's detections (boxes,
scores, labels, mask probabilities) on real COCO images of several sizes (one dynamic-size
program), on synthetic images, and on an image without detections.

The program runs the same ATen and detector ops as eager PyTorch, so the outputs agree to float
rounding; ATOL bounds boxes (pixels), scores and mask probabilities.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from detector.config import merge_opts
from detector.data import read_image
from detector.export.inference_model import InferenceModel, compare_outputs, prepare_image
from detector.export.program import export_program, input_side_range
from detector.layers.conv import winograd
from tests.export.tiny_model import TinyRun, load_tool

ATOL = 1e-4
# The tiny model's test size (64) is under the dynamic range's smallest side (the P6 stride 64
# + 1): its programs are exported and checked on images resized to 80..192 pixels instead.
SIZES = ["INPUT.MIN_SIZE_TEST", "80", "INPUT.MAX_SIZE_TEST", "192"]


@dataclass
class Exported:
    """A program written by tools/export.py, loaded back, and the eager model it came from."""

    program: torch.nn.Module
    wrapper: InferenceModel
    cfg: Any
    report: str


def _export_with_tool(run: TinyRun, output: Path, *extra: str) -> str:
    """Runs tools/export.py --format torch-export (one thread); returns what it printed."""
    argv = ["--config-file", str(run.config_file), "MODEL.WEIGHT", str(run.checkpoint)]
    argv += ["--format", "torch-export", "--output", str(output), *SIZES, *extra]
    printed = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(printed):
            assert load_tool("export").main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return printed.getvalue()


@pytest.fixture(scope="module")
def exported(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The tiny Mask R-CNN exported once by the tool with a dynamic height and width."""
    output = tmp_path_factory.mktemp("torch_export") / "tiny.pt2"
    report = _export_with_tool(tiny_run, output)
    program = torch.export.load(str(output)).module()
    cfg = merge_opts(tiny_run.cfg, SIZES)
    return Exported(program, InferenceModel(tiny_run.model).eval(), cfg, report)


def _compare(exported: Exported, image: Tensor) -> int:
    """Asserts that the program's outputs equal eager PyTorch's; returns the detection count."""
    with torch.no_grad():
        got = list(exported.program(image))
    with torch.no_grad(), winograd(False):  # the program has direct convolutions
        expected = list(exported.wrapper(image))
    assert compare_outputs(exported.wrapper.output_names, got, expected, ATOL, "program") <= ATOL
    return expected[0].shape[0]


def test_tool_writes_a_dynamic_program(exported: Exported) -> None:
    assert "h, w in [65, 192]" in exported.report
    assert "the loaded program matches PyTorch on the sample image (3, 80, 80)" in exported.report
    assert input_side_range(exported.cfg) == (65, 192)


def test_program_matches_pytorch_on_coco_images(exported: Exported, shared_data: Path) -> None:
    files = sorted((shared_data / "coco-val2017-sample6" / "images").glob("*.jpg"))
    if not files:
        pytest.skip("no COCO images in coco-val2017-sample6/images")
    sizes, detections = set(), 0
    for file in files:
        image = prepare_image(exported.cfg, read_image(file))
        sizes.add(tuple(image.shape[-2:]))
        detections += _compare(exported, image)
    assert len(sizes) > 1  # one program, several input sizes
    assert detections > 0  # the comparison covered boxes, scores, labels and masks


@pytest.mark.parametrize("size", [(65, 65), (77, 101), (128, 96)])
def test_program_matches_pytorch_on_synthetic_images(
    exported: Exported, size: tuple[int, int]
) -> None:
    generator = torch.Generator().manual_seed(size[0] * size[1])
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator)
    assert _compare(exported, image) > 0


def test_program_refuses_a_size_outside_its_range(exported: Exported) -> None:
    with pytest.raises(Exception, match="65"):
        exported.program(torch.zeros(3, 64, 100, dtype=torch.uint8))


def test_fixed_size_program_without_detections(tiny_run: TinyRun, tmp_path: Path) -> None:
    """A score threshold above 1 keeps nothing: the program returns empty outputs, as PyTorch."""
    opts = [*SIZES, "MODEL.ROI_HEADS.SCORE_THRESH", "1.0"]  # kept: scores > 1.0, i.e. none
    cfg = merge_opts(tiny_run.cfg, opts)
    output = tmp_path / "empty.pt2"
    report = export_program(cfg, tiny_run.checkpoint, output, dynamic=False)
    assert "(h, w) = (80, 80) only" in report and "matches PyTorch" in report
    program = torch.export.load(str(output)).module()
    image = torch.randint(0, 256, (3, 80, 80), dtype=torch.uint8)
    with torch.no_grad():
        boxes, scores, labels, masks = program(image)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
    assert masks.shape == (0, 1, 14, 14)


@pytest.mark.slow
def test_r50_fpn_faster_rcnn_program_matches_pytorch(shared_data: Path, tmp_path: Path) -> None:
    """Random-weight R-50-FPN Faster R-CNN (configs/torchvision): a dynamic program, checked on
    a COCO image at the test size (800 x 1067 after the resize; several minutes on a CPU)."""
    from detector.config import load_config
    from detector.modeling.detector import GeneralizedRCNN

    images = shared_data / "coco-val2017-sample6" / "images"
    image, portrait = images / "000000000089.jpg", images / "000000404249.jpg"
    if not (image.is_file() and portrait.is_file()):
        pytest.skip(f"COCO sample images not found in {images}")
    config = Path(__file__).resolve().parents[2] / "configs/torchvision/faster_rcnn_R_50_FPN.yaml"
    # random weights score about 1/91 per class: keep every box so that there are detections
    cfg = load_config(config, ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH", "0.0"])
    torch.manual_seed(0)
    model = GeneralizedRCNN.from_config(cfg).eval()
    checkpoint = tmp_path / "r50.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    report = export_program(cfg, checkpoint, tmp_path / "r50.pt2", sample_image=image)
    assert "h, w in [65, 1333]" in report and "matches PyTorch" in report
    program = torch.export.load(str(tmp_path / "r50.pt2")).module()
    exported = Exported(program, InferenceModel(model).eval(), cfg, report)
    other = prepare_image(cfg, read_image(portrait))  # another size, the same program
    assert _compare(exported, other) > 0

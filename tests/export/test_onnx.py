"""ONNX export: onnxruntime's outputs match PyTorch's on real images (BCCD blood cells from
../shared/data) for Faster R-CNN, Mask R-CNN, and a model with DCN v2 and RoIPool; ops without an
ONNX equivalent are refused with the config key named; a graph whose detection count is fixed
is refused by the exporter's shape check."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from detector.config import merge_opts
from detector.data import read_image
from detector.engine.checkpoint import Checkpointer
from detector.export.inference_model import InferenceModel, prepare_image
from detector.export.onnx import (
    FixedShapeError,
    UnsupportedOpError,
    check_dynamic_outputs,
    check_exportable,
    check_onnx,
    export_onnx,
)
from detector.modeling.detector import GeneralizedRCNN
from tests.export.tiny_model import TINY_YAML, TinyRun, load_tool, make_tiny_run

ATOL = 1e-3  # pixels for boxes, probability for scores and masks


def _bccd_images(shared_data: Path) -> list[Path]:
    folder = shared_data / "bccd" / "BCCD" / "JPEGImages"
    images = sorted(folder.glob("*.jpg"))[:2]
    if len(images) < 2:
        pytest.skip(f"no BCCD images in {folder}")
    return images


def _export_and_compare(run: TinyRun, images: list[Path], tmp_path: Path) -> None:
    """Exports traced on the first image; checks the graph on both (same size after resize)."""
    onnx_path = tmp_path / "model.onnx"
    report = export_onnx(run.config_file, run.checkpoint, onnx_path, sample_image=images[0])
    assert "onnxruntime matches PyTorch" in report
    wrapper = InferenceModel(run.model)
    second = prepare_image(run.cfg, read_image(images[1]))
    first = prepare_image(run.cfg, read_image(images[0]))
    assert second.shape == first.shape == (3, 64, 85)  # 480 x 640 -> 64 x 85
    assert check_onnx(onnx_path, wrapper, second, atol=ATOL) <= ATOL
    with torch.no_grad():
        assert len(wrapper(second)[0]) > 0  # the comparison covered detections


def test_faster_rcnn_onnx_matches_pytorch(shared_data: Path, tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path / "faster", mask_on=False)
    _export_and_compare(run, _bccd_images(shared_data), tmp_path)


@pytest.mark.slow
def test_mask_rcnn_onnx_matches_pytorch(
    tiny_run: TinyRun, shared_data: Path, tmp_path: Path
) -> None:
    _export_and_compare(tiny_run, _bccd_images(shared_data), tmp_path)


@pytest.mark.slow
def test_dcn_and_roi_pool_onnx_match_pytorch(shared_data: Path, tmp_path: Path) -> None:
    text = TINY_YAML.format(mask_on=False)
    dcn = "    STAGE_WITH_DCN: (False, True, False, True)\n    WITH_MODULATED_DCN: True\n"
    text = text.replace("    NORM: GN\n", "    NORM: GN\n" + dcn)
    text = text.replace("POOLER_TYPE: ROIAlign\n", "POOLER_TYPE: ROIPool\n")
    config_file = tmp_path / "dcn.yaml"
    config_file.write_text(text)
    from detector.config import load_config

    cfg = load_config(config_file)
    torch.manual_seed(0)
    model = GeneralizedRCNN.from_config(cfg).eval()
    for name, p in model.named_parameters():
        if "offset" in name:  # untrained offsets are zero: make the deformation matter
            torch.nn.init.normal_(p, std=0.1)
    checkpoint = Checkpointer(tmp_path, model=model).save("model_final")
    run = TinyRun(config_file, cfg, checkpoint, model)
    _export_and_compare(run, _bccd_images(shared_data), tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "op"),
    [
        ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "DeformRoIPool", "detector::deform_roi_pool"),
        ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "PSRoIAlign", "detector::ps_roi_align"),
        ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "PSRoIPool", "detector::ps_roi_pool"),
        ("MODEL.ROI_MASK_HEAD.POOLER_TYPE", "DeformPSRoIPool", "detector::deform_ps_roi_pool"),
        ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignMax", "mode='max'"),
    ],
)
def test_ops_without_onnx_equivalent_are_refused(
    tiny_run: TinyRun, key: str, value: str, op: str
) -> None:
    cfg = merge_opts(tiny_run.cfg, [key, value])
    with pytest.raises(UnsupportedOpError, match=rf"{re.escape(key)} {value}: .*{re.escape(op)}"):
        check_exportable(cfg)


def test_export_tool_refuses_an_unsupported_model(
    tiny_run: TinyRun, tmp_path: Path, capsys
) -> None:
    export = load_tool("export")
    argv = ["--config-file", str(tiny_run.config_file), "MODEL.WEIGHT", str(tiny_run.checkpoint)]
    argv += ["MODEL.ROI_BOX_HEAD.POOLER_TYPE", "PSRoIAlign", "--format", "onnx"]
    assert export.main([*argv, "--output", str(tmp_path / "m.onnx")]) == 1
    assert "PSRoIAlign" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_export_fails_when_the_detection_count_is_fixed(
    tiny_run: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bug of issue 18 brought back (the pooler reading RoI counts as Python ints): the
    exporter's shape check refuses the graph and removes the file."""
    import detector.modeling.roi_heads.poolers as poolers

    monkeypatch.setattr(poolers, "as_size", int)
    output = tmp_path / "fixed.onnx"
    with pytest.raises(FixedShapeError, match=r"mask_head/pooler/Concat_1 \[\[10, 1\]"):
        export_onnx(tiny_run.config_file, tiny_run.checkpoint, output, check=False)
    assert not output.exists()


def test_exported_outputs_have_a_dynamic_detection_count(tiny_run: TinyRun, tmp_path: Path) -> None:
    output = tmp_path / "dynamic.onnx"
    export_onnx(tiny_run.config_file, tiny_run.checkpoint, output, check=False)
    check_dynamic_outputs(output)  # raises FixedShapeError otherwise
    import onnx

    graph = onnx.load(str(output)).graph
    image_dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert image_dims == [3, "height", "width"]


def test_onnx_export_without_detections_says_how_to_fix(
    tiny_run: TinyRun, tmp_path: Path, capsys
) -> None:
    """Was (the README's ONNX command on a briefly trained model): a PyTorch INTERNAL ASSERT
    traceback from the exporter's shape inference, traced on zero detections."""
    export = load_tool("export")
    argv = ["--config-file", str(tiny_run.config_file), "MODEL.WEIGHT", str(tiny_run.checkpoint)]
    argv += ["MODEL.ROI_HEADS.SCORE_THRESH", "1.0", "--format", "onnx"]
    assert export.main([*argv, "--output", str(tmp_path / "m.onnx")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: the model detects nothing on the sample image, and ONNX export needs a sample "
        "with detections: pass --sample-image with an image the model finds objects in (or "
        "lower MODEL.ROI_HEADS.SCORE_THRESH for the export)"
    ]

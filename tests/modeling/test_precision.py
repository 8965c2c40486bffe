"""MODEL.PRECISION: the model computes in bfloat16 when asked (or, with auto, when the CPU has
native bfloat16), keeps float32 weights, losses, optimizer state and outputs, and falls back to
float32 on a CPU without native bfloat16 (tested by forcing the detection either way)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from detector.config import ConfigError, load_config
from detector.export import InferenceModel
from detector.export.program import program_module
from detector.modeling.detector import GeneralizedRCNN
from detector.modeling.test_time_augmentation import DetectorWithTTA
from detector.utils import precision
from tests.modeling.small_models import SMALL_FPN_OPTS
from tests.test_configs import CONFIG_DIR, TINY_INPUT, _tiny_batch


def _model(setting: str, mask_on: bool = True, memory_format: str = "auto") -> GeneralizedRCNN:
    torch.manual_seed(0)
    name = "e2e_mask_rcnn_R_50_FPN_1x.yaml" if mask_on else "e2e_faster_rcnn_R_50_FPN_1x.yaml"
    opts = [*TINY_INPUT, *SMALL_FPN_OPTS, "MODEL.ROI_HEADS.SCORE_THRESH", "0.0",
            "MODEL.PRECISION", setting, "MODEL.MEMORY_FORMAT", memory_format]  # fmt: skip
    return GeneralizedRCNN.from_config(load_config(Path(CONFIG_DIR) / name, opts))


def _trunk_dtypes(model: nn.Module) -> list[torch.dtype]:
    """Records the dtype of the first trunk convolution's output at each call."""
    seen: list[torch.dtype] = []
    conv = next(m for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """Forces what the CPU detection answers."""

    def force(value: bool) -> None:
        monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: value)

    return force


def test_detection_matches_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = set(cpuinfo.read_text().split())
    monkeypatch.delenv(precision.NATIVE_BFLOAT16_ENV, raising=False)  # the suite sets it to 0
    assert precision.cpu_has_native_bfloat16() == bool({"avx512_bf16", "amx_tile"} & flags)


def test_the_environment_overrides_the_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, native in (("1", True), ("0", False)):
        monkeypatch.setenv(precision.NATIVE_BFLOAT16_ENV, value)
        assert precision.cpu_has_native_bfloat16() is native
        expected = torch.bfloat16 if native else None
        assert precision.autocast_dtype("auto", "cpu") == expected
    monkeypatch.setenv(precision.NATIVE_BFLOAT16_ENV, "yes")
    with pytest.raises(ValueError, match="DETECTOR_CPU_BFLOAT16 must be 0 or 1, got 'yes'"):
        precision.cpu_has_native_bfloat16()


def test_default_is_auto() -> None:
    cfg = load_config(Path(CONFIG_DIR) / "e2e_faster_rcnn_R_50_FPN_1x.yaml")
    assert cfg.MODEL.PRECISION == "auto"


@pytest.mark.parametrize("name", ["faster", "mask", "keypoint"])
def test_torchvision_configs_compute_in_float32(name: str) -> None:
    """They give torchvision's detections with its weights: also on a CPU where auto is bfloat16."""
    cfg = load_config(Path(CONFIG_DIR) / "torchvision" / f"{name}_rcnn_R_50_FPN.yaml")
    assert cfg.MODEL.PRECISION == "float32"


def test_the_log_line_names_what_auto_resolved_to(native) -> None:
    native(True)
    line = precision.describe("auto", "auto", "cpu")
    assert (
        line
        == "bfloat16 autocast, channels-last (MODEL.PRECISION auto: the CPU has native bfloat16)"
    )
    native(False)
    assert precision.describe("auto", "auto", "cpu") == (
        "float32, NCHW (MODEL.PRECISION auto: the CPU has no native bfloat16)"
    )
    assert precision.describe("bfloat16", "contiguous", "cpu") == (
        "bfloat16 autocast, NCHW (MODEL.PRECISION bfloat16)"
    )
    assert precision.describe("auto", "auto", "cuda").startswith("float32 (MODEL.PRECISION auto")


def test_resolution(native) -> None:
    native(True)
    assert precision.autocast_dtype("auto", "cpu") == torch.bfloat16
    assert precision.autocast_dtype("auto", "cuda") is None
    assert precision.autocast_dtype("float32", "cpu") is None
    native(False)
    assert precision.autocast_dtype("auto", "cpu") is None
    assert precision.autocast_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="MODEL.PRECISION"):
        precision.autocast_dtype("float16x", "cpu")


def test_unknown_precision_names_the_key() -> None:
    with pytest.raises(ConfigError, match="MODEL.PRECISION"):
        load_config(
            Path(CONFIG_DIR) / "e2e_faster_rcnn_R_50_FPN_1x.yaml", ["MODEL.PRECISION", "fp8"]
        )


def test_auto_without_native_bfloat16_trains_in_float32(native) -> None:
    native(False)
    model = _model("auto").train()
    seen = _trunk_dtypes(model)
    images, targets = _tiny_batch(mask_on=True)
    model(images, targets)
    assert seen == [torch.float32]


def _sgd_step(model: GeneralizedRCNN) -> dict[str, Tensor]:
    images, targets = _tiny_batch(mask_on=True)
    losses = model(images, targets)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sum(losses.values()).backward()
    optimizer.step()
    return losses


@pytest.mark.parametrize("setting", ["auto", "bfloat16"])
def test_bfloat16_step_keeps_float32_weights_and_losses(native, setting: str) -> None:
    native(True)  # auto: as on an AVX512-BF16 CPU
    model = _model(setting).train()
    seen = _trunk_dtypes(model)
    losses = _sgd_step(model)
    assert seen == [torch.bfloat16]
    assert len(losses) == 5
    for name, loss in losses.items():
        assert loss.dtype == torch.float32 and math.isfinite(loss.item()), name
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32, name
        assert param.grad is None or param.grad.dtype == torch.float32, name


def test_float32_forced_on_a_native_cpu(native) -> None:
    native(True)
    model = _model("float32").train()
    seen = _trunk_dtypes(model)
    _sgd_step(model)
    assert seen == [torch.float32]


def test_float32_model_inside_solver_amp_stays_autocast() -> None:
    """float32 adds no autocast(enabled=False) that would switch off the trainer's SOLVER.AMP."""
    model = _model("float32").train()
    seen = _trunk_dtypes(model)
    images, targets = _tiny_batch(mask_on=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(images, targets)
    assert seen == [torch.bfloat16]


def test_bfloat16_inference_returns_float32() -> None:
    model = _model("bfloat16").eval()
    seen = _trunk_dtypes(model)
    images, _ = _tiny_batch(mask_on=True)
    with torch.no_grad():
        results = model(images)
    assert seen == [torch.bfloat16]
    for result in results:
        assert len(result) > 0
        for name, value in result.fields().items():
            tensor = value.tensor if hasattr(value, "tensor") else value
            if isinstance(tensor, Tensor) and tensor.is_floating_point():
                assert tensor.dtype == torch.float32, name


def test_bfloat16_test_time_augmentation_returns_float32() -> None:
    model = _model("bfloat16").eval()
    seen = _trunk_dtypes(model)
    tta = DetectorWithTTA(model, h_flip=True, scales=(96,), vote_iou=0.5).eval()
    images, _ = _tiny_batch(mask_on=True)
    with torch.no_grad():
        results = tta(images[:1])
    assert seen == [torch.bfloat16] * 3  # three runs: test size, flipped, 96
    assert len(results[0]) > 0
    assert results[0].scores.dtype == results[0].pred_masks.dtype == torch.float32


def test_exported_module_computes_in_float32() -> None:
    """The export wrapper (as ONNX and TorchScript record it) calls the model's parts directly:
    no autocast, float32 throughout."""
    model = _model("bfloat16").eval()
    seen = _trunk_dtypes(model)
    images, _ = _tiny_batch(mask_on=True)
    with torch.no_grad():
        outputs = InferenceModel(model)(images[0])
    assert seen == [torch.float32]
    assert all(o.dtype in (torch.float32, torch.int64) for o in outputs)


# ------------------------------------------------------------------------------------------------
# MODEL.MEMORY_FORMAT
# ------------------------------------------------------------------------------------------------
def test_memory_format_resolution(native) -> None:
    channels_last, contiguous = torch.channels_last, torch.contiguous_format
    assert precision.torch_memory_format("auto", "bfloat16") == channels_last
    assert precision.torch_memory_format("auto", "float32") == contiguous
    assert precision.torch_memory_format("channels_last", "float32") == channels_last
    assert precision.torch_memory_format("contiguous", "bfloat16") == contiguous
    native(True)
    assert precision.torch_memory_format("auto", "auto") == channels_last
    native(False)
    assert precision.torch_memory_format("auto", "auto") == contiguous
    with pytest.raises(ValueError, match="MODEL.MEMORY_FORMAT"):
        precision.torch_memory_format("nhwc", "float32")
    with pytest.raises(ConfigError, match="MODEL.MEMORY_FORMAT"):
        load_config(
            Path(CONFIG_DIR) / "e2e_faster_rcnn_R_50_FPN_1x.yaml", ["MODEL.MEMORY_FORMAT", "nhwc"]
        )


def _conv_inputs_in_channels_last(model: nn.Module) -> dict[str, bool]:
    """Records, per convolution, whether every input it got was a channels-last map."""
    seen: dict[str, bool] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):

            def hook(_m: nn.Module, inputs: tuple[Tensor, ...], name: str = name) -> None:
                nhwc = inputs[0].is_contiguous(memory_format=torch.channels_last)
                seen[name] = seen.get(name, True) and nhwc

            module.register_forward_pre_hook(hook)
    return seen


def test_bfloat16_model_runs_in_channels_last(native) -> None:
    """auto with bfloat16: 4-d weights and every map in NHWC from the input batch to the last
    convolution (the RoI pooler's output is the one reorder, at the mask head's first conv); a
    training step keeps float32 NHWC weights and finite losses."""
    native(True)
    model = _model("auto", memory_format="auto").train()
    for name, param in model.named_parameters():
        if param.dim() == 4:
            assert param.is_contiguous(memory_format=torch.channels_last), name
    seen = _conv_inputs_in_channels_last(model)
    losses = _sgd_step(model)
    assert all(math.isfinite(loss.item()) for loss in losses.values())
    not_nhwc = sorted(name for name, nhwc in seen.items() if not nhwc)
    assert not_nhwc == ["roi_heads.mask_head.feature_extractor.mask_fcn1"]
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32, name
        if param.dim() == 4:
            assert param.is_contiguous(memory_format=torch.channels_last), name


def test_channels_last_computes_the_same_function() -> None:
    """float32 in NHWC (oneDNN) against NCHW (Winograd where it applies): the same losses and
    detections up to float rounding, from the same weights."""
    nchw, nhwc = (
        _model("float32", memory_format="contiguous"),
        _model("float32", memory_format="channels_last"),
    )
    nhwc.load_state_dict(nchw.state_dict())
    images, targets = _tiny_batch(mask_on=True)
    losses = {}
    for name, model in (("nchw", nchw), ("nhwc", nhwc)):
        torch.manual_seed(1)  # the same anchor and RoI samples
        losses[name] = model.train()(images, targets)
    for key, value in losses["nchw"].items():
        torch.testing.assert_close(losses["nhwc"][key], value, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        expected, actual = nchw.eval()(images), nhwc.eval()(images)
    for e, a in zip(expected, actual, strict=True):
        assert len(e) == len(a) > 0
        torch.testing.assert_close(a.pred_boxes.tensor, e.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(a.scores, e.scores, rtol=1e-4, atol=1e-5)


def test_torch_export_program_computes_in_the_models_bfloat16(tmp_path: Path) -> None:
    """The torch.export program of a bfloat16 model records its autocast: saved and loaded, it
    gives the eager bfloat16 outputs (float32), and lowered to ATen its convolutions, linear
    layers and RoI Align run in bfloat16."""
    model = _model("bfloat16").eval()
    wrapper = program_module(model)
    assert wrapper.precision == "bfloat16"
    images, _ = _tiny_batch(mask_on=True)
    with torch.no_grad():
        program = torch.export.export(wrapper, (images[0],), strict=False)
        torch.export.save(program, str(tmp_path / "model.pt2"))
        loaded = torch.export.load(str(tmp_path / "model.pt2")).module()
        expected, actual = wrapper(images[0]), loaded(images[0])
    assert len(expected[0]) > 0
    for e, a in zip(expected, actual, strict=True):
        assert a.dtype == e.dtype and a.dtype in (torch.float32, torch.int64)
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    lowered = program.run_decompositions()
    dtypes: dict[str, set[torch.dtype]] = {}
    for node in lowered.graph.nodes:
        value = node.meta.get("val")
        value = value[0] if isinstance(value, tuple) and value else value  # (output, argmax)
        if node.op == "call_function" and isinstance(value, Tensor):
            dtypes.setdefault(str(node.target), set()).add(value.dtype)
    assert dtypes["aten.convolution.default"] == {torch.bfloat16}
    assert dtypes["aten.addmm.default"] == {torch.bfloat16}
    assert dtypes["detector.multi_scale_roi_align.default"] == {torch.bfloat16}

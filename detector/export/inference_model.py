"""The module every exporter records: GeneralizedRCNN on one resized uint8 image returning plain
tensors; its sample input, and the comparison of an exported model with it.

Shapes: N detections, h x w the network input, M the mask side.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from detector.config import Config
from detector.layers.conv import winograd
from detector.modeling.detector import GeneralizedRCNN
from detector.modeling.per_image import required
from detector.structures import ImageList, as_size
from detector.utils.precision import autocast, autocast_dtype

__all__ = [
    "InferenceModel",
    "check_against_eager",
    "compare_outputs",
    "load_for_export",
    "other_size",
    "prepare_image",
    "quiet_tracing",
]


# --------------------------------------------------------------------------------------------
# The exported module
# --------------------------------------------------------------------------------------------
class InferenceModel(nn.Module):
    """GeneralizedRCNN on one resized uint8 image (3, h, w), returning plain tensors:
    boxes (N, 4), scores (N,), labels (N,) int64 [, mask probabilities (N, 1, M, M)]
    [, keypoint heatmap logits (N, K, S, S) in box coordinates: decode them with
    detector.modeling.roi_heads.keypoint_head.heatmaps_to_keypoints(heatmaps, boxes)].

    `precision` (a MODEL.PRECISION value; detector.utils.precision) is what the module computes
    in: float32 by default (what ONNX and TorchScript record); the torch.export program records
    the model's own precision, bfloat16 as autocast regions (outputs float32 either way)."""

    def __init__(self, model: nn.Module, precision: str = "float32") -> None:
        super().__init__()
        autocast_dtype(precision, "cpu")  # checks the name
        self.precision = precision
        self.model = cast(GeneralizedRCNN, model.eval())  # the docstring's contract
        self.mask_on = getattr(model.roi_heads, "mask_head", None) is not None
        keypoint_head = getattr(model.roi_heads, "keypoint_head", None)
        self.keypoint_on = keypoint_head is not None
        if keypoint_head is not None:  # decoding loops over detections: done outside
            keypoint_head.decode = False

    def preprocess(self, image: Tensor) -> Tensor:
        """GeneralizedRCNN.preprocess for one image, with the padding done by F.pad (a traced
        slice copy_ would cut the graph off its input): (3, h, w) uint8 -> (1, 3, H, W)."""
        model = self.model
        x = image.to(torch.float32)
        x = x.flip(0) if model.to_bgr255 else x / 255.0
        x = (x - model.pixel_mean) / model.pixel_std
        height, width = as_size(image.shape[-2]), as_size(image.shape[-1])
        d = model.size_divisibility
        # d * ceil(size / d) - size: with a symbolic size, every feature map's size is then a
        # multiple of ceil(size / d), which keeps the traced shape formulas short
        pad_h = (height + d - 1) // d * d - height if d > 0 else 0
        pad_w = (width + d - 1) // d * d - width if d > 0 else 0
        # symbolic (SymInt) or traced (0-dim tensor) sizes, which F.pad takes as ints
        padding = (0, pad_w, 0, pad_h)
        return nn.functional.pad(x, padding)[None]  # pyright: ignore[reportArgumentType]

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        with autocast(self.precision, self.model.pixel_mean.device):
            outputs = self._detect(image)
        return tuple(o.float() if o.is_floating_point() else o for o in outputs)

    def _detect(self, image: Tensor) -> tuple[Tensor, ...]:
        """The outputs of the class docstring, in the compute precision."""
        model = self.model
        sizes = [(as_size(image.shape[-2]), as_size(image.shape[-1]))]
        image_list = ImageList(self.preprocess(image), sizes)  # pyright: ignore[reportArgumentType] (symbolic or traced sizes)
        features = list(model.backbone(image_list.tensor).values())
        proposals, _ = model.rpn(image_list, features, None)
        heads = model.roi_heads
        assert heads is not None  # a detector, not an RPN-only model
        (dets,), _ = heads(features, proposals, image_list.image_sizes, None)
        outputs: tuple[Tensor, ...] = (
            required(dets.pred_boxes, "pred_boxes").tensor,
            required(dets.scores, "scores"),
            required(dets.pred_classes, "pred_classes"),
        )
        if self.mask_on:
            outputs += (required(dets.pred_masks, "pred_masks"),)
        if self.keypoint_on:
            outputs += (required(dets.pred_keypoint_heatmaps, "pred_keypoint_heatmaps"),)
        return outputs

    @property
    def output_names(self) -> list[str]:
        names = ["boxes", "scores", "labels"] + (["mask_probs"] if self.mask_on else [])
        return names + (["keypoint_heatmaps"] if self.keypoint_on else [])


def prepare_image(cfg: Config, sample_image: str | Path | Tensor | None) -> Tensor:
    """The network input of an image (a file, a uint8 (3, H, W) tensor, or None for a random
    MIN_SIZE_TEST square): resized by the test transform, (3, h, w) uint8 (float32 with
    INPUT.RESIZE_MODE torchvision)."""
    from detector.data import build_transforms, read_image
    from detector.structures import Instances

    if sample_image is None:
        generator = torch.Generator().manual_seed(0)
        side = cfg.INPUT.MIN_SIZE_TEST
        image = torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=generator)
    elif isinstance(sample_image, Tensor):
        image = sample_image
    else:
        image = read_image(sample_image, cfg.INPUT.MAX_IMAGE_PIXELS)
    size = (image.shape[-2], image.shape[-1])
    resized, _ = build_transforms(cfg, is_train=False)(image, Instances(size))
    return resized


def load_for_export(cfg: Config | None, weights: str | Path) -> tuple[GeneralizedRCNN, Config]:
    """(model in eval mode, resolved config) of a config (or None) and a checkpoint."""
    from detector.engine.trained_model import load_trained

    model, cfg, _ = load_trained(cfg, weights)
    return model, cfg


@contextlib.contextmanager
def quiet_tracing() -> Generator[None, None, None]:
    """torch.jit.trace without its TracerWarnings: the model's argument checks (shapes, NaN
    boxes) read tensors as Python values while tracing; they test the sample only, and the
    exported graph is checked on other sizes (`check_onnx`) and by `check_dynamic_outputs`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # pyright: ignore[reportPrivateImportUsage]
        warnings.filterwarnings("ignore", message=".*torch.jit.trace. is deprecated")
        yield


def other_size(image: Tensor) -> Tensor:
    """The sample image with another height and width: transposed, or (square) cropped by a
    quarter of its width. Checks on it catch sizes that a trace fixed to the sample's."""
    if image.shape[-2] != image.shape[-1]:
        return image.transpose(-2, -1).contiguous()
    return image[..., : image.shape[-1] - image.shape[-1] // 4].contiguous()


def check_against_eager(
    run: Callable[[Tensor], Sequence[Tensor]],
    wrapper: InferenceModel,
    image: Tensor,
    atol: float,
    what: str,
) -> float:
    """Runs an exported model (`run`) and PyTorch (`wrapper`, with direct convolutions as the
    exported graphs have) on `image`; see compare_outputs. Returns the largest absolute
    difference; `what` names the exported model in the error."""
    with torch.no_grad():
        got = list(run(image))
    with torch.no_grad(), winograd(False):
        expected = list(wrapper(image))
    return compare_outputs(wrapper.output_names, got, expected, atol, what)


def compare_outputs(
    names: list[str], got: list[Tensor], expected: list[Tensor], atol: float, what: str
) -> float:
    """Asserts that exported outputs `got` equal PyTorch's `expected`: the same shapes (the same
    number of detections), equal labels, the other outputs within `atol`. Returns the largest
    absolute difference; `what` names the exported model in the error."""
    worst = 0.0
    for name, a, b in zip(names, got, expected, strict=True):
        if a.shape != b.shape:
            raise AssertionError(
                f"{what} output {name} has shape {tuple(a.shape)}, PyTorch's {tuple(b.shape)}"
            )
        if name == "labels":
            if not torch.equal(a, b):
                raise AssertionError(f"{what} labels differ from PyTorch's")
            continue
        diff = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        if diff > atol:
            raise AssertionError(f"{what} output {name} differs from PyTorch's by {diff} > {atol}")
        worst = max(worst, diff)
    return worst

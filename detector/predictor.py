"""Predictor: a trained detector behind one call, from image files or arrays to detections.

    from detector import Predictor

    predictor = Predictor("configs/e2e_mask_rcnn_R_50_FPN_1x.yaml", "model_final.pth")
    result = predictor("street.jpg")
    result["boxes"]        # Tensor[N, 4] float32, xyxy in the original image's pixels
    result["scores"]       # Tensor[N] float32
    result["labels"]       # Tensor[N] int64, 1..K-1 (0 is the background)
    result["masks"]        # Tensor[N, H, W] bool at the original size (models with a mask head)
    result["keypoints"]    # Tensor[N, K, 3] float32 (x, y, score) in the original image's
                           # pixels (keypoint models); score: the heatmap logit
    result["class_names"]  # list[str], one per detection

`predictor.keypoint_names` and `predictor.keypoint_skeleton` (0-based index pairs) describe the
keypoints, from the slim checkpoint, else the config's dataset.

Images may be file paths, RGB H x W x 3 uint8 numpy arrays, 3 x H x W uint8 tensors or PIL
images, alone or in a list (then a list of results comes back).

The weights may be a slim checkpoint (detector.export.slim; it embeds its config and class
names, so `config` may be None) or a training checkpoint. Files are read with
`torch.load(weights_only=True)`: a checkpoint holding pickled Python objects is refused.

Shapes: N detections of one image, (H, W) the original image, (h, w) the resized network input,
M the mask head's side.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image as PILImage
from torch import Tensor

from detector.config import Config
from detector.data import build_transforms, read_image
from detector.engine.checkpoint import load_checkpoint_file
from detector.engine.trained_model import (
    class_names_from_config,
    is_slim,
    load_model,
    resolve_config,
)
from detector.modeling.postprocessing import detector_postprocess
from detector.structures import Boxes, Instances
from detector.utils.arrays import from_numpy, tolist

__all__ = ["ImageInput", "Predictor"]

logger = logging.getLogger(__name__)

ImageInput = str | Path | np.ndarray | Tensor | PILImage.Image


class Predictor:
    """Runs a detector on images given as files, arrays or tensors; see the module docstring.

    Args:
        config: a YAML config file, a config object, or None to use the one embedded in a slim
            checkpoint (or the config.yaml next to a training checkpoint).
        weights: a slim or training checkpoint file.
        device: where the model runs ("cpu", "cuda", "cuda:1", ...); results come back on the CPU.
        batch_size: images per forward pass (None: TEST.IMS_PER_BATCH).
        class_names: overrides the names (index 0 the background); default: the slim
            checkpoint's, else those of the config's DATASETS.TEST / TRAIN dataset (read on first
            use), else "class_<k>".
    """

    def __init__(
        self,
        config: str | Path | Config | None = None,
        weights: str | Path | None = None,
        device: str | torch.device = "cpu",
        *,
        batch_size: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if weights is None:
            raise ValueError("Predictor: `weights` (a slim or training checkpoint file) is needed")
        weights = Path(weights)
        data = load_checkpoint_file(weights)
        self.cfg = resolve_config(config, weights, data)
        if self.cfg.MODEL.RPN_ONLY:
            raise ValueError(
                "Predictor: MODEL.RPN_ONLY is True: a proposal network gives proposals, not "
                "detections; build it with GeneralizedRCNN.from_config and call it directly"
            )
        self.device = torch.device(device)
        self.model = load_model(self.cfg, weights, data).to(self.device)
        self.mask_threshold = self.cfg.MODEL.ROI_MASK_HEAD.POSTPROCESS_MASKS_THRESHOLD
        self.transforms = build_transforms(self.cfg, is_train=False)
        self.batch_size = int(batch_size or self.cfg.TEST.IMS_PER_BATCH or 1)
        self.meta: dict[str, Any] = dict(data.get("meta", {})) if is_slim(data) else {}
        if "iteration" in data and isinstance(data["iteration"], int):
            self.meta.setdefault("iteration", data["iteration"])
        embedded = data.get("class_names") if is_slim(data) else None
        self.keypoint_on = getattr(self.model.roi_heads, "keypoint_head", None) is not None
        self._keypoint_info = data.get("keypoints") if is_slim(data) else None
        self._class_names: list[str] | None = None
        if class_names is not None:
            self._class_names = [str(c) for c in class_names]
        elif embedded:
            self._class_names = [str(c) for c in embedded]

    # -- class names ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """K, the classes including the background (MODEL.ROI_BOX_HEAD.NUM_CLASSES)."""
        return int(self.cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES)

    @property
    def class_names(self) -> list[str]:
        """Index 0 the background, then one name per class (read lazily from the dataset)."""
        if self._class_names is None:
            names = class_names_from_config(self.cfg)
            if names and len(names) != self.num_classes:
                logger.warning(
                    "the dataset has %d classes (background included) but "
                    "MODEL.ROI_BOX_HEAD.NUM_CLASSES is %d; using class_<k> names",
                    len(names),
                    self.num_classes,
                )
                names = []
            self._class_names = names or [
                "__background__",
                *(f"class_{k}" for k in range(1, self.num_classes)),
            ]
        return self._class_names

    @property
    def keypoint_names(self) -> list[str]:
        """The K keypoint names of a keypoint model ([] otherwise)."""
        return list(self._keypoints()["names"]) if self.keypoint_on else []

    @property
    def keypoint_skeleton(self) -> list[tuple[int, int]]:
        """The keypoint pairs to join when drawing (0-based indices; [] without keypoints)."""
        return [(a, b) for a, b in self._keypoints()["skeleton"]] if self.keypoint_on else []

    def _keypoints(self) -> dict[str, Any]:
        if self._keypoint_info is None:
            from detector.engine.trained_model import keypoint_info_from_config

            self._keypoint_info = keypoint_info_from_config(self.cfg)
        assert self._keypoint_info is not None  # asked only of keypoint models (keypoint_on)
        return self._keypoint_info

    def _name(self, label: int) -> str:
        names = self.class_names
        return names[label] if 0 <= label < len(names) else f"class_{label}"

    # -- inputs --------------------------------------------------------------------------------
    def _to_tensor(self, image: ImageInput, index: int) -> Tensor:
        """An input as uint8 Tensor[3, H, W] RGB on the CPU, H and W > 0."""
        tensor = self._convert(image, index)
        if tensor.shape[1] == 0 or tensor.shape[2] == 0:
            raise ValueError(
                f"Predictor: image {index} is empty ({' x '.join(map(str, tensor.shape))}); "
                "expected at least one pixel"
            )
        return tensor

    def _convert(self, image: ImageInput, index: int) -> Tensor:
        if isinstance(image, (str, Path)):
            return read_image(image, max_pixels=int(self.cfg.INPUT.MAX_IMAGE_PIXELS))
        if isinstance(image, PILImage.Image):
            image = np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"Predictor: image {index} is a numpy array of shape {image.shape} and dtype "
                    f"{image.dtype}; expected an RGB H x W x 3 uint8 array"
                )
            # A copy when read-only (PIL images, frozen arrays): torch warns on those.
            image = np.require(image, requirements=("C", "W"))
            return from_numpy(image).permute(2, 0, 1)  # HWC -> CHW
        if isinstance(image, Tensor):  # pyright: ignore[reportUnnecessaryIsInstance]  (any type may come)
            if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
                raise ValueError(
                    f"Predictor: image {index} is a tensor of shape {tuple(image.shape)} and dtype "
                    f"{image.dtype}; expected an RGB 3 x H x W uint8 tensor"
                )
            return image.cpu()
        raise TypeError(
            f"Predictor: image {index} is a {type(image).__name__}; expected a file path, an "
            "H x W x 3 uint8 numpy array, a 3 x H x W uint8 tensor or a PIL image"
        )

    def _resize(self, image: Tensor) -> Tensor:
        """The test-time resize (INPUT.MIN_SIZE_TEST within MAX_SIZE_TEST), as in evaluation."""
        resized, _ = self.transforms(image, Instances((image.shape[-2], image.shape[-1])))
        return resized

    # -- outputs -------------------------------------------------------------------------------
    def _postprocess(self, dets: Instances, original_size: tuple[int, int]) -> dict[str, Any]:
        """Detections in the resized input's pixels -> the result dict at the original size."""
        height, width = original_size
        assert dets.pred_boxes is not None  # detections have pred_boxes, scores, pred_classes
        dets.pred_boxes = Boxes(dets.pred_boxes.tensor.float())
        out = detector_postprocess(dets, height, width, self.mask_threshold)
        assert out.pred_boxes is not None
        # A box left with no area inside the original image (e.g. of a 1 x 1 image) is dropped
        keep = out.pred_boxes.nonempty()  # (N,)
        if not bool(keep.all()):
            out = out[keep]
        boxes, scores, classes = out.pred_boxes, out.scores, out.pred_classes
        assert boxes is not None and scores is not None and classes is not None
        labels = classes.long()
        result: dict[str, Any] = {
            "boxes": boxes.tensor.cpu(),
            "scores": scores.float().cpu(),
            "labels": labels.cpu(),
        }
        if out.pred_masks is not None:
            result["masks"] = out.pred_masks.cpu()  # (N, H, W) bool
        if out.pred_keypoints is not None:  # (N, K, 3) in the original image
            result["keypoints"] = out.pred_keypoints.float().cpu()
        label_list: list[int] = tolist(labels)
        result["class_names"] = [self._name(k) for k in label_list]
        result["image_size"] = (height, width)
        return result

    # -- call ----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: Sequence[ImageInput]) -> list[dict[str, Any]]:
        """Detections of each image (see the module docstring), in batches of `batch_size`."""
        tensors = [self._to_tensor(image, i) for i, image in enumerate(images)]
        results: list[dict[str, Any]] = []
        for start in range(0, len(tensors), self.batch_size):
            batch = tensors[start : start + self.batch_size]
            inputs = [self._resize(image).to(self.device) for image in batch]
            detections = self.model(inputs)
            for dets, image in zip(detections, batch, strict=True):
                results.append(self._postprocess(dets, (image.shape[-2], image.shape[-1])))
        return results

    def __call__(
        self, images: ImageInput | Sequence[ImageInput]
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """One image -> one result dict; a list of images -> a list of them."""
        # A list or tuple holds images; anything else is one image (_convert checks it).
        if isinstance(images, (list, tuple)):
            return self.predict(cast("Sequence[ImageInput]", images))
        return self.predict([cast(ImageInput, images)])[0]

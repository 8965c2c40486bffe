"""GeneralizedRCNN: preprocess -> backbone -> RPN -> RoI heads.

Shapes:
    N: images, 3 x H_i x W_i: an input image (RGB, values 0..255, uint8 or float).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from detector.config import Config
from detector.modeling.backbone import build_backbone
from detector.modeling.per_image import required
from detector.modeling.rpn import RPN
from detector.structures import Boxes, ImageList, Instances
from detector.utils.precision import autocast, autocast_dtype, torch_memory_format

if TYPE_CHECKING:
    from detector.modeling.roi_heads import RoIHeads


class GeneralizedRCNN(nn.Module):
    """A two-stage detector. Without RoI heads (MODEL.RPN_ONLY) it is a proposal network.

    Training: `forward(images, targets)` returns a dict of losses (`loss_*`).
    Inference: `forward(images)` returns per image Instances in the input images' pixels:
    proposals (`proposal_boxes`, `objectness_logits`) for an RPN-only model, detections otherwise.
    Both compute in `precision` (MODEL.PRECISION, detector.utils.precision) and return float32;
    the weights and feature maps are in the layout of `memory_format` (MODEL.MEMORY_FORMAT).
    """

    pixel_mean: Tensor  # (3, 1, 1) buffers
    pixel_std: Tensor

    def __init__(
        self,
        *,
        backbone: nn.Module,
        rpn: RPN,
        roi_heads: RoIHeads | None = None,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        to_bgr255: bool = False,
        size_divisibility: int = 0,
        precision: str = "float32",
        memory_format: str = "auto",
    ) -> None:
        super().__init__()
        autocast_dtype(precision, "cpu")  # checks the name
        self.precision = precision
        self.memory_format = torch_memory_format(memory_format, precision)
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.to_bgr255 = to_bgr255
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)
        if self.memory_format == torch.channels_last:
            self.to(memory_format=torch.channels_last)  # the 4-d weights

    @classmethod
    def from_config(cls, cfg: Config) -> GeneralizedRCNN:
        """Reads MODEL.BACKBONE / RPN (and the RoI heads unless MODEL.RPN_ONLY), INPUT.PIXEL_MEAN,
        INPUT.PIXEL_STD, INPUT.TO_BGR255, DATALOADER.SIZE_DIVISIBILITY, MODEL.PRECISION and
        MODEL.MEMORY_FORMAT."""
        backbone = build_backbone(cfg)
        # out_channels: an int of every backbone (see detector.modeling.backbone)
        rpn = RPN.from_config(cfg, cast(int, backbone.out_channels))
        roi_heads = None
        if not cfg.MODEL.RPN_ONLY:
            from detector.modeling.roi_heads import build_roi_heads  # arrives with the RoI heads

            roi_heads = build_roi_heads(cfg, backbone)
        return cls(
            backbone=backbone,
            rpn=rpn,
            roi_heads=roi_heads,
            pixel_mean=tuple(cfg.INPUT.PIXEL_MEAN),
            pixel_std=tuple(cfg.INPUT.PIXEL_STD),
            to_bgr255=cfg.INPUT.TO_BGR255,
            size_divisibility=cfg.DATALOADER.SIZE_DIVISIBILITY,
            precision=str(cfg.MODEL.PRECISION),
            memory_format=str(cfg.MODEL.MEMORY_FORMAT),
        )

    def preprocess(self, images: list[Tensor]) -> ImageList:
        """Normalizes each (3, H_i, W_i) RGB 0..255 image and pads the batch to an ImageList.

        With `to_bgr255` (Caffe2/maskrcnn_benchmark weights) the channels become BGR and values stay
        in 0..255 before PIXEL_MEAN/PIXEL_STD; otherwise values are scaled to 0..1 first
        (torchvision weights).
        """
        normalized: list[Tensor] = []
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"GeneralizedRCNN: image {i} must be (3, H, W), got {tuple(image.shape)}"
                )
            image = image.to(self.pixel_mean.device, torch.float32)
            image = image.flip(0) if self.to_bgr255 else image / 255.0
            normalized.append((image - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(normalized, size_divisibility=self.size_divisibility)

    def forward(
        self, images: list[Tensor], targets: list[Instances] | None = None
    ) -> dict[str, Tensor] | list[Instances]:
        if self.training and targets is None:
            raise ValueError("GeneralizedRCNN: `targets` are needed in training mode")
        with autocast(self.precision, self.pixel_mean.device):
            image_list, features, proposals, losses = self._propose(images, targets)
            if self.roi_heads is None:
                results = proposals
            else:
                results, head_losses = self.roi_heads(
                    features, proposals, image_list.image_sizes, targets
                )
                losses = {**losses, **head_losses}
        if self.training:
            return {name: loss.float() for name, loss in losses.items()}
        return [as_float32(instances) for instances in results]

    def _propose(
        self, images: list[Tensor], targets: list[Instances] | None
    ) -> tuple[ImageList, list[Tensor], list[Instances], dict[str, Tensor]]:
        """preprocess -> backbone -> RPN: (image list, feature maps finest first, proposals
        per image, RPN losses (training))."""
        image_list = self.preprocess(images)
        batch = image_list.tensor.contiguous(memory_format=self.memory_format)  # (N, 3, H, W)
        features = list(self.backbone(batch).values())
        proposals, losses = self.rpn(image_list, features, targets)
        return image_list, features, proposals, losses

    def box_candidates(
        self, images: list[Tensor]
    ) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
        """Inference up to the box head, before any filtering (test-time augmentation merges
        these): (feature maps, per image (boxes (R_i, 4*K) in the image's pixels, class
        probabilities (R_i, K)))."""
        if self.roi_heads is None:
            raise ValueError("GeneralizedRCNN.box_candidates: an RPN-only model has no box head")
        with autocast(self.precision, self.pixel_mean.device):
            _, features, proposals, _ = self._propose(images, None)
            boxes = [required(p.proposal_boxes, "proposal_boxes") for p in proposals]
            candidates = self.roi_heads.candidates(features, boxes)
        return features, [(b.float(), p.float()) for b, p in candidates]


def as_float32(instances: Instances) -> Instances:
    """`instances` with its reduced-precision floating fields (bfloat16 / float16) in float32."""
    for name, value in instances.fields().items():
        tensor = value.tensor if isinstance(value, Boxes) else value
        if isinstance(tensor, Tensor) and tensor.dtype in (torch.bfloat16, torch.float16):
            setattr(
                instances,
                name,
                Boxes(tensor.float()) if isinstance(value, Boxes) else tensor.float(),
            )
    return instances

"""Box predictors: per-RoI class logits and box deltas.

Shape glossary: R RoIs, K = NUM_CLASSES (background included), D feature size, S the pooled
size, B = K box regressors (B = 1 with CLS_AGNOSTIC_BBOX_REG).

Registered in ROI_BOX_PREDICTORS (MODEL.ROI_BOX_HEAD.PREDICTOR), built by
``from_config(cfg, in_channels)``. Every predictor returns ``(class_logits (R, K),
box_deltas (R, 4*K))``, or with CLS_AGNOSTIC_BBOX_REG box deltas whose LAST 4 columns are the
class-agnostic foreground regression (``(R, 4*2)`` as maskrcnn_benchmark, ``(R, 4)`` for R-FCN).

Two kinds of predictors:

- FastRCNNPredictor / FPNPredictor take the box feature extractor's output, itself computed from
  the box pooler's output: ``pooler(features) -> extractor -> predictor(x)``.
- RFCNPredictor (R-FCN, Dai et al. 2016) is fully convolutional: it first computes
  position-sensitive score maps over the whole feature map, then pools each RoI from those maps
  with its own position-sensitive poolers, and averages the S*S bins' votes. It is called as
  ``predictor(features, boxes)`` and `pools_own_maps` is True, so the RoI heads skip their
  pooler and feature extractor for it.
"""

from __future__ import annotations

from torch import Tensor, nn

from detector.config import Config
from detector.modeling.registry import ROI_BOX_PREDICTORS
from detector.modeling.roi_heads.poolers import Pooler, build_pooler
from detector.structures import Boxes

__all__ = ["FPNPredictor", "FastRCNNPredictor", "RFCNPredictor", "build_box_predictor"]


def _init_outputs(cls_score: nn.Linear | nn.Conv2d, bbox_pred: nn.Linear | nn.Conv2d) -> None:
    """Classification N(0, 0.01), regression N(0, 0.001), zero biases (Fast R-CNN's init)."""
    nn.init.normal_(cls_score.weight, std=0.01)
    nn.init.normal_(bbox_pred.weight, std=0.001)
    for layer in (cls_score, bbox_pred):
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


@ROI_BOX_PREDICTORS.register("FastRCNNPredictor")
class FastRCNNPredictor(nn.Module):
    """Two linear layers over per-RoI features, average-pooled first when 4-D (C4 heads).

    ``(R, D) or (R, D, h, w) -> cls_score (R, K), bbox_pred (R, 4*K) [(R, 8) agnostic]``.
    """

    pools_own_maps = False

    def __init__(
        self, *, in_channels: int, num_classes: int, cls_agnostic_bbox_reg: bool = False
    ) -> None:
        super().__init__()
        num_regressors = 2 if cls_agnostic_bbox_reg else num_classes
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4 * num_regressors)
        _init_outputs(self.cls_score, self.bbox_pred)

    @classmethod
    def from_config(cls, cfg: Config, in_channels: int) -> FastRCNNPredictor:
        """Reads MODEL.ROI_BOX_HEAD.NUM_CLASSES and MODEL.ROI_HEADS.CLS_AGNOSTIC_BBOX_REG."""
        return cls(
            in_channels=in_channels,
            num_classes=cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES,
            cls_agnostic_bbox_reg=cfg.MODEL.ROI_HEADS.CLS_AGNOSTIC_BBOX_REG,
        )

    def _flatten(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return x.mean(dim=(2, 3))  # (R, D, h, w) -> (R, D), global average pooling
        return x.flatten(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self._flatten(x)
        return self.cls_score(x), self.bbox_pred(x)


@ROI_BOX_PREDICTORS.register("FPNPredictor")
class FPNPredictor(FastRCNNPredictor):
    """FastRCNNPredictor for flat features (MLP heads); a 4-D input is flattened, not pooled,
    as torchvision's FastRCNNPredictor."""

    def _flatten(self, x: Tensor) -> Tensor:
        return x.flatten(1)  # (R, D, ...) -> (R, D*...)


@ROI_BOX_PREDICTORS.register("RFCNPredictor")
class RFCNPredictor(nn.Module):
    """R-FCN's position-sensitive score maps, pooling and voting.

    features ``(N, C, H, W)`` -> conv_new (1x1, ReLU) ``(N, hidden, H, W)`` ->
        cls_score (1x1) ``(N, S*S*K, H, W)`` -> cls_pooler -> ``(R, K, S, S)`` -> mean -> (R, K)
        bbox_pred (1x1) ``(N, S*S*4*B, H, W)`` -> bbox_pooler -> ``(R, 4*B, S, S)`` -> mean

    The poolers must be position-sensitive (PSRoIPool, PSRoIAlign, DeformPSRoIPool); they pool
    from the score maps computed here, never from the backbone features directly. Only one
    feature level is used (R-FCN runs on a single stride-16 map).
    """

    pools_own_maps = True

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        cls_pooler: Pooler,
        bbox_pooler: Pooler,
        hidden_dim: int = 1024,
        cls_agnostic_bbox_reg: bool = True,
    ) -> None:
        super().__init__()
        for name, pooler in (("cls_pooler", cls_pooler), ("bbox_pooler", bbox_pooler)):
            if not pooler.position_sensitive or len(pooler.scales) != 1:
                raise ValueError(
                    f"RFCNPredictor: {name} must be a single-level position-sensitive pooler "
                    "(MODEL.ROI_BOX_HEAD.POOLER_TYPE PSRoIPool, PSRoIAlign or DeformPSRoIPool "
                    "with one POOLER_SCALES entry)"
                )
        bins = cls_pooler.output_size**2
        num_regressors = 1 if cls_agnostic_bbox_reg else num_classes
        conv_new = nn.Conv2d(in_channels, hidden_dim, 1)
        self.conv_new = nn.Sequential(conv_new, nn.ReLU(inplace=True))
        self.cls_score = nn.Conv2d(hidden_dim, bins * num_classes, 1)
        self.bbox_pred = nn.Conv2d(hidden_dim, bins * 4 * num_regressors, 1)
        nn.init.normal_(conv_new.weight, std=0.01)
        if conv_new.bias is not None:
            nn.init.zeros_(conv_new.bias)
        _init_outputs(self.cls_score, self.bbox_pred)
        self.cls_pooler = cls_pooler
        self.bbox_pooler = bbox_pooler

    @classmethod
    def from_config(cls, cfg: Config, in_channels: int) -> RFCNPredictor:
        """Reads MODEL.ROI_BOX_HEAD (NUM_CLASSES, CONV_HEAD_DIM as conv_new's width, the pooler
        keys) and MODEL.ROI_HEADS.CLS_AGNOSTIC_BBOX_REG."""
        head = cfg.MODEL.ROI_BOX_HEAD
        num_classes = head.NUM_CLASSES
        agnostic = cfg.MODEL.ROI_HEADS.CLS_AGNOSTIC_BBOX_REG
        bins = head.POOLER_RESOLUTION**2
        num_regressors = 1 if agnostic else num_classes
        return cls(
            in_channels=in_channels,
            num_classes=num_classes,
            cls_pooler=build_pooler(head, in_channels=bins * num_classes),
            bbox_pooler=build_pooler(head, in_channels=bins * 4 * num_regressors),
            hidden_dim=head.CONV_HEAD_DIM,
            cls_agnostic_bbox_reg=agnostic,
        )

    def forward(self, features: list[Tensor], boxes: list[Boxes]) -> tuple[Tensor, Tensor]:
        """features: maps ``(N, C, H, W)`` (the first is used); boxes: N Boxes, R in all."""
        x = self.conv_new(features[0])
        cls_votes = self.cls_pooler([self.cls_score(x)], boxes)  # (R, K, S, S)
        bbox_votes = self.bbox_pooler([self.bbox_pred(x)], boxes)  # (R, 4*B, S, S)
        return cls_votes.mean(dim=(2, 3)), bbox_votes.mean(dim=(2, 3))


def build_box_predictor(cfg: Config, in_channels: int) -> nn.Module:
    """The predictor named by MODEL.ROI_BOX_HEAD.PREDICTOR for `in_channels` inputs."""
    predictor = ROI_BOX_PREDICTORS.get(str(cfg.MODEL.ROI_BOX_HEAD.PREDICTOR))
    return predictor.from_config(cfg, in_channels)

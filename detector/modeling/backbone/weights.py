"""ImageNet weights in torchvision's layout (resnet*, resnext*, vgg16) into our backbones.

torchvision's keys map to ours as: ``conv1.* / bn1.*`` -> ``stem.conv1.* / stem.bn1.*``;
``layer{k}.*`` unchanged (a deformable 3x3 conv takes ``conv2.weight`` as ``conv2.conv.weight``);
VGG's ``features.*`` unchanged. Each of our bodies (`ResNet`, `ResNetHead`, `VGG16`) found inside
the given module receives the keys it has, wherever it sits (e.g. ``body.`` inside an FPN).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from detector.modeling.backbone.resnet import ResNet, ResNetHead
from detector.modeling.backbone.vgg import VGG16

logger = logging.getLogger(__name__)

_BODIES = (ResNet, ResNetHead, VGG16)


@dataclass
class WeightLoadReport:
    """What `load_torchvision_weights` did, by key name.

    loaded: our keys that received a tensor. missing: keys of our bodies that received none
    (e.g. DCN offset convs, FrozenBN-less extras). unmatched: torchvision keys used by none of
    our modules (e.g. ``fc.*``, ``classifier.*``, ``layer4.*`` for a C4 body without its head).
    """

    loaded: list[str] = field(default_factory=list[str])
    missing: list[str] = field(default_factory=list[str])
    unmatched: list[str] = field(default_factory=list[str])


# Caffe2 (Detectron / maskrcnn_benchmark catalog) ImageNet names -> torchvision's. A norm's
# scale and shift are `_bn_s`/`_bn_b` (batch norm folded into an affine map) or `_gn_s`/`_gn_b`
# (GroupNorm); res<k> is torchvision's layer<k-1>, branch2a/b/c its conv1/2/3, branch1 downsample.
_CAFFE2_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"conv1_w"), "conv1.weight"),
    (re.compile(r"(?:res_conv1_bn|conv1_gn)_(?P<p>[sb])"), "bn1.{p}"),
    (re.compile(r"res(?P<k>\d)_(?P<i>\d+)_branch2(?P<c>[abc])_w"), "layer{k}.{i}.conv{c}.weight"),
    (
        re.compile(r"res(?P<k>\d)_(?P<i>\d+)_branch2(?P<c>[abc])_(?:bn|gn)_(?P<p>[sb])"),
        "layer{k}.{i}.bn{c}.{p}",
    ),
    (re.compile(r"res(?P<k>\d)_(?P<i>\d+)_branch1_w"), "layer{k}.{i}.downsample.0.weight"),
    (
        re.compile(r"res(?P<k>\d)_(?P<i>\d+)_branch1_(?:bn|gn)_(?P<p>[sb])"),
        "layer{k}.{i}.downsample.1.{p}",
    ),
]
_CAFFE2_GROUPS: dict[str, Callable[[str], str]] = {
    "k": lambda v: str(int(v) - 1),
    "c": {"a": "1", "b": "2", "c": "3"}.__getitem__,
    "p": {"s": "weight", "b": "bias"}.__getitem__,
}


def is_caffe2_imagenet(state: Mapping[str, object]) -> bool:
    """Whether a state dict is a Caffe2 ImageNet ResNet (e.g. catalog://ImageNetPretrained/...)."""
    return "conv1_w" in state and any(k.startswith("res2_0_branch2a") for k in state)


def is_caffe2_trunk_key(key: str) -> bool:
    """Whether a Caffe2 blob name belongs to the ResNet trunk (stem, res2..res5)."""
    return _caffe2_name(key) is not None


def _caffe2_name(key: str) -> str | None:
    for pattern, template in _CAFFE2_RULES:
        match = pattern.fullmatch(key)
        if match is not None:
            groups = {g: _CAFFE2_GROUPS.get(g, str)(v) for g, v in match.groupdict().items()}
            return template.format(**groups)
    return None


def caffe2_to_torchvision(state: Mapping[str, object]) -> dict[str, Tensor]:
    """A Caffe2 ImageNet ResNet/ResNeXt (numpy arrays) in torchvision's classification layout.

    Keys no rule knows (the classifier `pred_*` / `fc1000_*`, momentum blobs) are dropped. A
    folded batch norm gets running_mean 0 and running_var 1 (our FrozenBatchNorm2d's eps of 1e-5
    then scales by 1/sqrt(1 + 1e-5), a relative 5e-6, as in detectron2); GroupNorm has no stats.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = _caffe2_name(key)
        if name is None:
            continue
        out[name] = torch.as_tensor(value).float().clone()
        if "_bn_s" in key:
            stem = name[: -len("weight")]
            out[stem + "running_mean"] = torch.zeros_like(out[name])
            out[stem + "running_var"] = torch.ones_like(out[name])
    return out


def _candidates(key: str, body: nn.Module) -> list[str]:
    """Our names, relative to `body`, that torchvision's `key` may map to."""
    if isinstance(body, VGG16):
        return [key]
    head = key.partition(".")[0]
    if head in ("conv1", "bn1"):
        return [f"stem.{key}"]
    names = [key]
    if key.endswith(".conv2.weight"):  # a deformable conv2 wraps its DeformConv2d as conv2.conv
        names.append(key[: -len("weight")] + "conv.weight")
    return names


def load_torchvision_weights(
    model: nn.Module, state_dict: Mapping[str, Tensor] | str | Path
) -> WeightLoadReport:
    """Copies a torchvision classification state dict (or a file holding one) into the bodies
    inside `model`; logs and returns the loaded, missing and unmatched key names.

    Raises ValueError when a matched key has a different shape (a different depth or width).
    """
    weights: Mapping[str, Tensor]
    if isinstance(state_dict, (str, Path)):
        weights = torch.load(state_dict, map_location="cpu", weights_only=True)
    else:
        weights = state_dict
    # Module.named_modules is unannotated in torch: (name, module) pairs
    modules = cast(Iterator[tuple[str, nn.Module]], model.named_modules())
    bodies = [(name, m) for name, m in modules if isinstance(m, _BODIES)]
    if not bodies:
        raise ValueError(f"{type(model).__name__} contains no ResNet, ResNetHead or VGG16 body")
    ours = model.state_dict()
    new_state: dict[str, Tensor] = {}
    report = WeightLoadReport()
    for key, value in weights.items():
        targets: list[str] = []
        for prefix, body in bodies:
            prefix = f"{prefix}." if prefix else ""
            targets += [prefix + name for name in _candidates(key, body) if prefix + name in ours]
        if not targets:
            if not key.endswith("num_batches_tracked"):
                report.unmatched.append(key)
            continue
        for target in targets:
            if ours[target].shape != value.shape:
                raise ValueError(
                    f"torchvision weight '{key}' has shape {tuple(value.shape)} but our "
                    f"'{target}' has {tuple(ours[target].shape)}: does the checkpoint match "
                    "MODEL.BACKBONE.CONV_BODY (depth, NUM_GROUPS, WIDTH_PER_GROUP)?"
                )
            new_state[target] = value
    model.load_state_dict(new_state, strict=False)
    report.loaded = sorted(new_state)
    for prefix, body in bodies:
        prefix = f"{prefix}." if prefix else ""
        for name in body.state_dict():
            full = prefix + name
            if full not in new_state and not name.endswith("num_batches_tracked"):
                report.missing.append(full)
    logger.info("Loaded %d tensors of torchvision weights", len(report.loaded))
    if report.missing:
        logger.warning("Backbone keys without torchvision weights: %s", ", ".join(report.missing))
    if report.unmatched:
        logger.info("torchvision keys not used: %s", ", ".join(report.unmatched))
    return report

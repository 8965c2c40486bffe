"""Every swap point of the model, in one place.

A registry maps the names used in configs (MODEL.BACKBONE.CONV_BODY, MODEL.ROI_BOX_HEAD.POOLER_TYPE,
...) to the classes or builder functions that implement them:

    @BACKBONES.register("R-50-FPN")
    def build_resnet_fpn_backbone(cfg): ...

    BACKBONES.get(cfg.MODEL.BACKBONE.CONV_BODY)(cfg)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that no entry of a registry has (a typo in a config value); str() is the message
    itself, without the quotes a KeyError adds."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry:
    """A name -> object map whose unknown-name error lists the known names."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: dict[str, Any] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator registering an object under one or more names (by default its __name__)."""

        def decorator(obj: T) -> T:
            entry: Any = obj  # a class or a function
            for key in names or (entry.__name__,):
                if key in self._entries:
                    raise KeyError(f"{self.name} registry: '{key}' is already registered")
                self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> Any:
        """Returns the object registered under `name`, or raises an UnknownNameError (a
        KeyError) listing the known names."""
        if name in self._entries:
            return self._entries[name]
        known = ", ".join(sorted(self._entries)) or "(none registered)"
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownNameError(
            f"{self.name} registry: unknown name '{name}'.{hint} Known names: {known}"
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {sorted(self._entries)})"


BACKBONES = Registry("MODEL.BACKBONE.CONV_BODY")
RPN_HEADS = Registry("MODEL.RPN.RPN_HEAD")
ROI_BOX_FEATURE_EXTRACTORS = Registry("MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR")
ROI_BOX_PREDICTORS = Registry("MODEL.ROI_BOX_HEAD.PREDICTOR")
ROI_MASK_HEADS = Registry("MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR")
ROI_KEYPOINT_FEATURE_EXTRACTORS = Registry("MODEL.ROI_KEYPOINT_HEAD.FEATURE_EXTRACTOR")
ROI_KEYPOINT_PREDICTORS = Registry("MODEL.ROI_KEYPOINT_HEAD.PREDICTOR")
POOLERS = Registry("MODEL.ROI_BOX_HEAD/ROI_MASK_HEAD.POOLER_TYPE")

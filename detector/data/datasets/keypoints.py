"""What a keypoint dataset declares about its keypoints: names, left/right flip map, skeleton
and the OKS sigmas of its evaluation (COCO's person keypoints are built in).

A COCO JSON names its keypoints in its category ("keypoints", and "skeleton" as 1-based index
pairs); a dataset declared in the config names them with DATASETS.CUSTOM.<name>.KEYPOINT_NAMES,
KEYPOINT_FLIP_MAP, KEYPOINT_SKELETON and KEYPOINT_OKS_SIGMAS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from detector.structures.keypoints import flip_indices_from_pairs

__all__ = [
    "COCO_PERSON_KEYPOINTS",
    "COCO_PERSON_OKS_SIGMAS",
    "KeypointMeta",
    "coco_person_keypoint_meta",
    "left_right_pairs",
]

COCO_PERSON_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# pycocotools' COCOeval.Params.kpt_oks_sigmas (Ronchi and Perona 2017), in the order above.
COCO_PERSON_OKS_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
    0.087, 0.087, 0.089, 0.089,
)  # fmt: skip
# The COCO person skeleton, as names (the JSON stores it as 1-based index pairs).
COCO_PERSON_SKELETON: tuple[tuple[str, str], ...] = (
    ("left_ankle", "left_knee"), ("left_knee", "left_hip"), ("right_ankle", "right_knee"),
    ("right_knee", "right_hip"), ("left_hip", "right_hip"), ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"), ("left_shoulder", "right_shoulder"),
    ("left_shoulder", "left_elbow"), ("right_shoulder", "right_elbow"),
    ("left_elbow", "left_wrist"), ("right_elbow", "right_wrist"), ("left_eye", "right_eye"),
    ("nose", "left_eye"), ("nose", "right_eye"), ("left_eye", "left_ear"),
    ("right_eye", "right_ear"), ("left_ear", "left_shoulder"), ("right_ear", "right_shoulder"),
)  # fmt: skip


def left_right_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """The flip map implied by names: "left_x" pairs with "right_x" (and "l_x"/"r_x"-free
    names stay put)."""
    known = set(names)
    return [(n, "right_" + n[5:]) for n in names if n.startswith("left_") and
            "right_" + n[5:] in known]  # fmt: skip


@dataclass(frozen=True)
class KeypointMeta:
    """The keypoints of a dataset.

    Attributes:
        names: the K keypoint names, in the order of the annotations.
        flip_map: left/right name pairs swapped by a horizontal flip.
        skeleton: name pairs joined by a line when drawn.
        oks_sigmas: K per-keypoint sigmas of COCO's OKS; () when not declared (evaluation
            then refuses to run).
        where: where the declaration comes from (a config key or a file), for errors.
    """

    names: tuple[str, ...]
    flip_map: tuple[tuple[str, str], ...] = ()
    skeleton: tuple[tuple[str, str], ...] = ()
    oks_sigmas: tuple[float, ...] = ()
    where: str = "keypoints"

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError(f"{self.where}: a keypoint dataset needs at least one keypoint name")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"{self.where}: keypoint names repeat: {list(self.names)}")
        self.flip_indices  # validates the flip map  # noqa: B018
        for pair in self.skeleton:
            unknown = [n for n in pair if n not in self.names]
            if len(pair) != 2 or unknown:
                raise ValueError(
                    f"{self.where}: skeleton edge {list(pair)} must join two of the keypoints "
                    f"{list(self.names)}"
                )
        if self.oks_sigmas and (
            len(self.oks_sigmas) != len(self.names)
            or not all(math.isfinite(s) and s > 0 for s in self.oks_sigmas)
        ):
            raise ValueError(
                f"{self.where}: OKS sigmas must be {len(self.names)} positive numbers (one per "
                f"keypoint), got {list(self.oks_sigmas)}"
            )

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def flip_indices(self) -> tuple[int, ...]:
        return flip_indices_from_pairs(self.names, self.flip_map, f"{self.where} flip map")

    @property
    def skeleton_indices(self) -> list[tuple[int, int]]:
        """The skeleton as 0-based index pairs."""
        index = {name: k for k, name in enumerate(self.names)}
        return [(index[a], index[b]) for a, b in self.skeleton]


def coco_person_keypoint_meta() -> KeypointMeta:
    """COCO's 17 person keypoints with their flip map, skeleton and sigmas."""
    return KeypointMeta(
        names=COCO_PERSON_KEYPOINTS,
        flip_map=tuple(left_right_pairs(COCO_PERSON_KEYPOINTS)),
        skeleton=COCO_PERSON_SKELETON,
        oks_sigmas=COCO_PERSON_OKS_SIGMAS,
        where="COCO person keypoints",
    )

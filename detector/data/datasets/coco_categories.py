"""The 80 COCO object categories with their original ids (1..90, with gaps), for models that
predict COCO categories when no dataset file is at hand (converted torchvision weights, a
COCO-trained checkpoint on a machine without COCO)."""

from __future__ import annotations

__all__ = ["COCO_CATEGORIES", "coco_class_names"]

# The names by category id 1..90 ("": an id COCO does not use), as in instances_*2017.json.
# fmt: off
_NAMES_BY_ID = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "", "backpack",
    "umbrella", "", "", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "", "dining table", "", "", "toilet", "",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster",
    "sink", "refrigerator", "", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)
# fmt: on
# (category id, name) of the 80 categories.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = tuple(
    (i, name) for i, name in enumerate(_NAMES_BY_ID, start=1) if name
)

BACKGROUND = "__background__"
UNUSED_ID = "N/A"  # an id COCO does not use (torchvision's name for it)


def coco_class_names(num_classes: int) -> list[str] | None:
    """The class names (index 0 the background) of a model with `num_classes` outputs that
    predicts COCO categories: 81 -> the 80 names in id order (labels 1..80, as our COCO
    datasets number them); 91 -> indexed by category id, "N/A" for the unused ids (torchvision's
    layout); None for any other number."""
    if num_classes == len(COCO_CATEGORIES) + 1:
        return [BACKGROUND, *(name for _, name in COCO_CATEGORIES)]
    last_id = COCO_CATEGORIES[-1][0]
    if num_classes == last_id + 1:
        by_id = dict(COCO_CATEGORIES)
        return [BACKGROUND, *(by_id.get(i, UNUSED_ID) for i in range(1, last_id + 1))]
    return None

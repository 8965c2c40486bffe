"""The small real datasets of ../shared/data (the project's test data) by name, for the tests
(conftest registers them) and benchmarks/accuracy.py. They are not built into the library's
catalog; their root is DATASETS.SHARED_ROOT, else $DETECTOR_SHARED_DATA, else ../shared/data.

    coco_sample6                      coco-val2017-sample6/ (6 COCO val2017 images)
    bccd_{train,val,trainval,test}    bccd/BCCD/ (VOC XML, classes RBC, WBC, Platelets)
    chess_{valid,test}                chess-pieces/<split>/ (COCO JSON, boxes only)
    voc_sample2                       voc-sample2/ (2 VOC images, every XML)
    dsb2018_{train,val,all}           dsb2018-nuclei/ (nuclei masks; sorted ids split 80/20)
"""

from __future__ import annotations

from detector.data import DatasetSpec, list_datasets, register_dataset

__all__ = ["SHARED_DATASETS", "register_shared_datasets"]

_BCCD_CLASSES = ("RBC", "WBC", "Platelets")


def _specs() -> dict[str, DatasetSpec]:
    specs = {
        "coco_sample6": DatasetSpec(
            "coco",
            ann_file="coco-val2017-sample6/annotations.json",
            image_dir="coco-val2017-sample6/images",
            base="shared",
        ),
        "voc_sample2": DatasetSpec("voc", root="voc-sample2", base="shared"),
    }
    for split in ("train", "val", "trainval", "test"):
        specs[f"bccd_{split}"] = DatasetSpec(
            "voc", root="bccd/BCCD", split=split, class_names=_BCCD_CLASSES, base="shared"
        )
    for split in ("valid", "test"):
        specs[f"chess_{split}"] = DatasetSpec(
            "coco",
            ann_file=f"chess-pieces/{split}/_annotations.coco.json",
            image_dir=f"chess-pieces/{split}",
            base="shared",
        )
    for split in ("train", "val", "all"):
        specs[f"dsb2018_{split}"] = DatasetSpec(
            "dsb2018", root="dsb2018-nuclei", split=split, base="shared"
        )
    return specs


SHARED_DATASETS: dict[str, DatasetSpec] = _specs()


def register_shared_datasets() -> None:
    """Registers every name of SHARED_DATASETS (once per process)."""
    known = set(list_datasets())
    for name, spec in SHARED_DATASETS.items():
        if name not in known:
            register_dataset(name, spec)

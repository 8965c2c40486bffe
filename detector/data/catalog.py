"""Named datasets: the built-in catalog, datasets declared in the config, and `get_dataset`.

The built-in names are those of the public benchmarks (COCO, Pascal VOC, Cityscapes, with
maskrcnn_benchmark's names) read under DATASETS.ROOT, and the synthetic shapes sets; datasets/
README.md lists them with their folders. `register_dataset` adds a name: a spec whose `base` is
"shared" reads under `shared_data_root(cfg)` (how the tests name the small real datasets of
../shared/data). A dataset declared under DATASETS.CUSTOM.<name> takes precedence over a
registered one of that name.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, ListConfig

from detector.config import Config, as_node
from detector.data.datasets import (
    COCODataset,
    DetectionDataset,
    DSB2018Dataset,
    ShapesDataset,
    VOCDataset,
)
from detector.data.datasets.keypoints import KeypointMeta
from detector.data.errors import DatasetError

__all__ = [
    "DatasetSpec",
    "get_dataset",
    "get_dataset_spec",
    "list_datasets",
    "register_dataset",
    "shared_data_root",
]

SHARED_DATA_ENV = "DETECTOR_SHARED_DATA"
DEFAULT_SHARED_ROOT = "../shared/data"
FORMATS = ("coco", "voc", "dsb2018", "shapes")


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one dataset (the fields of DATASETS.CUSTOM.<name>, lower-case).

    `base` says what relative paths are relative to: "datasets" (DATASETS.ROOT), "shared"
    (`shared_data_root(cfg)`) or "cwd" (the current directory).
    """

    format: str
    ann_file: str = ""
    image_dir: str = ""
    root: str = ""
    split: str = ""
    ann_dir: str = ""
    split_file: str = ""
    class_names: tuple[str, ...] = ()
    num_images: int = 0
    seed: int = 0
    image_size: int = 128
    masks: bool = False
    base: str = "cwd"
    keypoints: bool = False
    keypoint_names: tuple[str, ...] = ()
    keypoint_flip_map: tuple[tuple[str, ...], ...] = ()
    keypoint_skeleton: tuple[tuple[str, ...], ...] = ()
    keypoint_oks_sigmas: tuple[float, ...] = ()


def _builtin_catalog() -> dict[str, DatasetSpec]:
    catalog: dict[str, DatasetSpec] = {}
    for split in ("train", "val"):
        catalog[f"coco_2017_{split}"] = DatasetSpec(
            "coco",
            ann_file=f"coco/annotations/instances_{split}2017.json",
            image_dir=f"coco/{split}2017",
            base="datasets",
        )
    catalog.update(_maskrcnn_benchmark_names())
    voc_splits = [("2007", s) for s in ("train", "val", "trainval", "test")]
    voc_splits += [("2012", s) for s in ("train", "val", "trainval")]
    for year, split in voc_splits:
        catalog[f"voc_{year}_{split}"] = DatasetSpec(
            "voc", root=f"voc/VOC{year}", split=split, base="datasets"
        )
    for split in ("train", "val"):
        catalog[f"voc_2012_seg_{split}"] = DatasetSpec(
            "voc", root="voc/VOC2012", split=split, masks=True, base="datasets"
        )
    catalog["shapes_train"] = DatasetSpec("shapes", num_images=512, seed=0, base="cwd")
    catalog["shapes_val"] = DatasetSpec("shapes", num_images=64, seed=1, base="cwd")
    catalog["shapes_kp_train"] = DatasetSpec("shapes", num_images=512, seed=0, keypoints=True)
    catalog["shapes_kp_val"] = DatasetSpec("shapes", num_images=64, seed=1, keypoints=True)
    return catalog


def _coco_spec(ann_file: str, image_dir: str) -> DatasetSpec:
    return DatasetSpec("coco", ann_file=ann_file, image_dir=image_dir, base="datasets")


def _maskrcnn_benchmark_names() -> dict[str, DatasetSpec]:
    """The COCO-format names of maskrcnn_benchmark's paths catalog, with its folder layout under
    DATASETS.ROOT (keypoint files give person boxes, masks and keypoints)."""
    out: dict[str, DatasetSpec] = {}
    for split in ("train", "val", "minival", "valminusminival"):
        images = "coco/train2014" if split == "train" else "coco/val2014"
        out[f"coco_2014_{split}"] = _coco_spec(
            f"coco/annotations/instances_{split}2014.json", images
        )
        out[f"keypoints_coco_2014_{split}"] = _coco_spec(
            f"coco/annotations/person_keypoints_{split}2014.json", images
        )
    for split in ("train", "val"):
        out[f"keypoints_coco_2017_{split}"] = _coco_spec(
            f"coco/annotations/person_keypoints_{split}2017.json", f"coco/{split}2017"
        )
    for year, split in (("2007", "train"), ("2007", "val"), ("2007", "test"), ("2012", "train"),
                        ("2012", "val")):  # fmt: skip
        out[f"voc_{year}_{split}_cocostyle"] = _coco_spec(
            f"voc/VOC{year}/Annotations/pascal_{split}{year}.json", f"voc/VOC{year}/JPEGImages"
        )
    for split in ("train", "val", "test"):
        out[f"cityscapes_fine_instanceonly_seg_{split}_cocostyle"] = _coco_spec(
            f"cityscapes/annotations/instancesonly_filtered_gtFine_{split}.json",
            "cityscapes/images",
        )
    return out


_CATALOG: dict[str, DatasetSpec] = _builtin_catalog()
DatasetFactory = Callable[[DictConfig], DetectionDataset]
_Pairs = tuple[tuple[str, str], ...]
_FACTORIES: dict[str, DatasetFactory] = {}


def register_dataset(name: str, spec: DatasetSpec | DatasetFactory) -> None:
    """Adds a named dataset: a DatasetSpec, or a function `cfg -> DetectionDataset` for a
    dataset class of your own (an existing name is an error)."""
    if name in _CATALOG or name in _FACTORIES:
        raise ValueError(f"dataset '{name}' is already registered")
    if isinstance(spec, DatasetSpec):
        if spec.format not in FORMATS:
            raise ValueError(
                f"dataset '{name}': format must be one of {FORMATS}, got {spec.format}"
            )
        _CATALOG[name] = spec
    elif callable(spec):
        _FACTORIES[name] = spec
    else:
        raise TypeError(f"dataset '{name}': expected a DatasetSpec or a callable, got {spec!r}")


def list_datasets(cfg: Config | None = None) -> list[str]:
    """The built-in and registered names, plus those of cfg.DATASETS.CUSTOM."""
    names = set(_CATALOG) | set(_FACTORIES)
    if cfg is not None:
        names |= set(cfg.DATASETS.CUSTOM)
    return sorted(names)


def shared_data_root(cfg: Config) -> Path:
    """DATASETS.SHARED_ROOT, else $DETECTOR_SHARED_DATA, else ../shared/data."""
    return Path(cfg.DATASETS.SHARED_ROOT or os.environ.get(SHARED_DATA_ENV) or DEFAULT_SHARED_ROOT)


def _frozen(value: Any) -> Any:
    """A config value as DatasetSpec holds it: lists (nested ones too) become tuples."""
    if isinstance(value, (list, tuple, ListConfig)):
        return tuple(_frozen(item) for item in cast("list[Any]", value))
    return value


def _spec_from_config(node: Any) -> DatasetSpec:
    """DATASETS.CUSTOM.<name> as a spec: each field from the key of its upper-case name."""
    values = {
        field.name: _frozen(getattr(node, field.name.upper()))
        for field in fields(DatasetSpec)
        if field.name != "base"
    }
    values["format"] = str(node.FORMAT)
    return DatasetSpec(**values, base="cwd")


def _declared_keypoints(
    name: str, spec: DatasetSpec, found: KeypointMeta | None
) -> KeypointMeta | None:
    """The KeypointMeta of DATASETS.CUSTOM.<name>: its KEYPOINT_* keys over what the data
    itself declares (`found`, e.g. a COCO file's category); None when neither declares any."""
    where = f"DATASETS.CUSTOM.{name}"
    names = spec.keypoint_names or (found.names if found else ())
    declared = (spec.keypoint_flip_map, spec.keypoint_skeleton, spec.keypoint_oks_sigmas)
    if not names:
        if any(declared):
            raise DatasetError(
                f"{where}: KEYPOINT_FLIP_MAP, KEYPOINT_SKELETON or KEYPOINT_OKS_SIGMAS given but "
                "no keypoint names (KEYPOINT_NAMES, or a COCO category's 'keypoints')"
            )
        return None
    if not spec.keypoint_names and not any(declared):
        return found
    # The config's pairs are checked to be pairs by KeypointMeta itself (a ValueError).
    flip_map = cast(_Pairs, spec.keypoint_flip_map) or (found.flip_map if found else ())
    skeleton = cast(_Pairs, spec.keypoint_skeleton) or (found.skeleton if found else ())
    try:
        return KeypointMeta(
            names=tuple(names),
            flip_map=flip_map,
            skeleton=skeleton,
            oks_sigmas=spec.keypoint_oks_sigmas or (found.oks_sigmas if found else ()),
            where=where,
        )
    except ValueError as e:
        raise DatasetError(str(e)) from None


def get_dataset_spec(name: str, cfg: Config) -> DatasetSpec:
    """The spec of `name`: DATASETS.CUSTOM first, then the catalog."""
    if name in cfg.DATASETS.CUSTOM:
        return _spec_from_config(cfg.DATASETS.CUSTOM[name])
    if name in _CATALOG:
        return _CATALOG[name]
    known = list_datasets(cfg)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DatasetError(
        f"unknown dataset '{name}'.{hint} Known datasets: {', '.join(known)}. Declare your own "
        "under DATASETS.CUSTOM.<name> (FORMAT coco with ANN_FILE and IMAGE_DIR, or voc with ROOT "
        "and SPLIT)"
    )


def _base_folder(spec: DatasetSpec, cfg: Config) -> Path:
    bases = {"datasets": Path(cfg.DATASETS.ROOT), "shared": shared_data_root(cfg), "cwd": Path()}
    return bases[spec.base]


def _resolve(path: str, spec: DatasetSpec, cfg: Config) -> Path:
    return _base_folder(spec, cfg) / Path(path).expanduser()


# What moves the folder a built-in dataset is read from, by DatasetSpec.base.
_BASE_SETTINGS = {
    "shared": f"DATASETS.SHARED_ROOT (or the environment variable {SHARED_DATA_ENV})",
    "datasets": "DATASETS.ROOT",
}


def _check_base(name: str, spec: DatasetSpec, cfg: Config) -> None:
    """A built-in dataset whose file or folder is missing: say which setting moves its base
    folder (the shared-data root or DATASETS.ROOT)."""
    main_path = _resolve(spec.ann_file or spec.root, spec, cfg)
    if spec.base not in _BASE_SETTINGS or main_path.exists():
        return
    raise DatasetError(
        f"{main_path} not found: dataset '{name}' is read from {_base_folder(spec, cfg)}; set "
        f"{_BASE_SETTINGS[spec.base]} to the folder that holds "
        f"{Path(spec.ann_file or spec.root).parts[0]}/"
    )


ROLES = {"train": "training dataset", "test": "test dataset"}


def get_dataset(name: str, cfg: Config, role: str = "") -> DetectionDataset:
    """Builds the dataset called `name` (raw: no transforms, no filtering).

    Args:
        role: "train" or "test" to start error messages with which dataset they are about
            ("training dataset 'x' (DATASETS.TRAIN): ..."); "" for none.

    Raises:
        DatasetError: an unknown name, a missing path key, a missing or malformed file, no
            image.
    """
    try:
        dataset = _build_dataset(name, cfg)
        if len(dataset) == 0:
            raise DatasetError("the dataset holds no image")
        return dataset
    except DatasetError as e:
        if not role:
            raise
        raise DatasetError(f"{ROLES[role]} '{name}' (DATASETS.{role.upper()}): {e}") from None


def _require_paths(name: str, spec: DatasetSpec, keys: tuple[str, ...]) -> None:
    for key in keys:
        if not getattr(spec, key):
            raise DatasetError(
                f"dataset '{name}' (format {spec.format}) needs {key.upper()} "
                f"(DATASETS.CUSTOM.{name}.{key.upper()})"
            )


def _build_dataset(name: str, cfg: Config) -> DetectionDataset:
    if name in _FACTORIES and name not in cfg.DATASETS.CUSTOM:
        return _FACTORIES[name](as_node(cfg))
    spec = get_dataset_spec(name, cfg)
    _check_base(name, spec, cfg)
    max_pixels = cfg.INPUT.MAX_IMAGE_PIXELS
    if spec.format == "coco":
        _require_paths(name, spec, ("ann_file", "image_dir"))
        ann_file = _resolve(spec.ann_file, spec, cfg)
        declared = _declared_keypoints(name, spec, None) if spec.keypoint_names else None
        dataset = COCODataset(ann_file, _resolve(spec.image_dir, spec, cfg), max_pixels, declared)
        dataset.keypoint_meta = _declared_keypoints(name, spec, dataset.keypoint_meta)
        return dataset
    if spec.format == "voc":
        _require_paths(name, spec, ("root",))
        class_names = list(spec.class_names) or list(cfg.DATASETS.CLASS_NAMES) or None
        root = _resolve(spec.root, spec, cfg)
        return VOCDataset(
            root,
            spec.split,
            class_names,
            max_pixels,
            with_masks=spec.masks,
            image_dir=spec.image_dir or "JPEGImages",
            ann_dir=spec.ann_dir or "Annotations",
            split_file=spec.split_file or None,
        )
    if spec.format == "dsb2018":
        _require_paths(name, spec, ("root",))
        return DSB2018Dataset(_resolve(spec.root, spec, cfg), spec.split or "all", max_pixels)
    if spec.format == "shapes":
        if spec.num_images <= 0:
            raise DatasetError(f"dataset '{name}' (format shapes) needs NUM_IMAGES > 0")
        return ShapesDataset(spec.num_images, spec.seed, spec.image_size, spec.keypoints)
    raise DatasetError(f"dataset '{name}': unknown format '{spec.format}' (one of {FORMATS})")

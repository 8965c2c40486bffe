"""Data loaders from a config: `build_train_loader` (infinite, seeded, resumable) and
`build_test_loader` (one pass, sharded over ranks).

A batch is `(images, targets, metas)`: lists of uint8 Tensor[3, H_i, W_i] (float32 0..255 with
INPUT.RESIZE_MODE torchvision), Instances and dicts, one per image; the model normalizes and pads
them into an ImageList. `meta` holds the original "height"/"width" (to map detections back) and
"num_dropped_boxes" (boxes left empty by the transforms).
"""

from __future__ import annotations

import bisect
import itertools
import logging
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset

from detector.config import Config
from detector.data.catalog import ROLES, get_dataset
from detector.data.datasets import DetectionDataset
from detector.data.errors import DatasetError
from detector.data.samplers import (
    InferenceSampler,
    IterationBatchSampler,
    TrainingSampler,
    get_rank_and_world_size,
)
from detector.data.transforms import (
    ColorJitter,
    Compose,
    RandomHorizontalFlip,
    RandomVerticalFlip,
    ResizeShortestEdge,
    clip_and_drop_empty,
)
from detector.structures import Instances
from detector.utils.signals import ignore_stop_signals

__all__ = [
    "ConcatDetectionDataset",
    "MappedDataset",
    "build_test_loader",
    "build_train_loader",
    "build_transforms",
    "check_num_classes",
    "collate",
    "data_seed",
]

logger = logging.getLogger(__name__)

Batch = tuple[list[Tensor], list[Instances], list[dict[str, Any]]]


def build_transforms(cfg: Config, is_train: bool) -> Compose:
    """Training: colour jitter (INPUT.BRIGHTNESS, CONTRAST, SATURATION, HUE; off at 0), resize
    (a random INPUT.MIN_SIZE_TRAIN, within MAX_SIZE_TRAIN), then flips with
    INPUT.HORIZONTAL_FLIP_PROB_TRAIN and VERTICAL_FLIP_PROB_TRAIN; test: resize to MIN_SIZE_TEST
    within MAX_SIZE_TEST. Both resize as INPUT.RESIZE_MODE says."""
    inp = cfg.INPUT
    mode = str(inp.RESIZE_MODE)
    if is_train:
        jitter = ColorJitter(inp.BRIGHTNESS, inp.CONTRAST, inp.SATURATION, inp.HUE)
        return Compose(
            [
                *([jitter] if max(*jitter.amounts.values(), jitter.hue) > 0 else []),
                ResizeShortestEdge(list(inp.MIN_SIZE_TRAIN), inp.MAX_SIZE_TRAIN, mode),
                RandomHorizontalFlip(inp.HORIZONTAL_FLIP_PROB_TRAIN),
                *([RandomVerticalFlip(inp.VERTICAL_FLIP_PROB_TRAIN)]
                  if inp.VERTICAL_FLIP_PROB_TRAIN > 0 else []),
            ]
        )  # fmt: skip
    return Compose([ResizeShortestEdge([inp.MIN_SIZE_TEST], inp.MAX_SIZE_TEST, mode)])


def collate(batch: list[tuple[Tensor, Instances, dict[str, Any]]]) -> Batch:
    """[(image, target, meta), ...] -> (images, targets, metas); nothing is padded here."""
    images, targets, metas = zip(*batch, strict=True) if batch else ((), (), ())
    return list(images), list(targets), list(metas)


class ConcatDetectionDataset(DetectionDataset):
    """Several datasets with the same class names, one after the other."""

    def __init__(self, datasets: list[DetectionDataset], names: list[str]) -> None:
        for dataset, name in zip(datasets[1:], names[1:], strict=True):
            if dataset.class_names != datasets[0].class_names:
                raise DatasetError(
                    f"datasets '{names[0]}' and '{name}' have different class names "
                    f"({datasets[0].class_names[1:]} vs {dataset.class_names[1:]}); they cannot "
                    "be trained on together"
                )
        self.datasets = datasets
        self.class_names = datasets[0].class_names
        self.has_masks = all(d.has_masks for d in datasets)
        self.keypoint_meta = datasets[0].keypoint_meta
        for dataset, name in zip(datasets[1:], names[1:], strict=True):
            if dataset.keypoint_meta != self.keypoint_meta:
                raise DatasetError(
                    f"datasets '{names[0]}' and '{name}' have different keypoints; they cannot "
                    "be trained on together"
                )
        self._ends = list(itertools.accumulate(len(d) for d in datasets))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _locate(self, index: int) -> tuple[DetectionDataset, int]:
        k = bisect.bisect_right(self._ends, index)
        start = self._ends[k - 1] if k else 0
        return self.datasets[k], index - start

    def get_image_size(self, index: int) -> tuple[int, int]:
        dataset, local = self._locate(index)
        return dataset.get_image_size(local)

    def num_instances(self, index: int, include_difficult: bool = True) -> int:
        dataset, local = self._locate(index)
        return dataset.num_instances(local, include_difficult)

    def __getitem__(self, index: int) -> tuple[Tensor, Instances, dict[str, Any]]:
        dataset, local = self._locate(index)
        return dataset[local]


class MappedDataset(Dataset[tuple[Tensor, Instances, dict[str, Any]]]):
    """A dataset seen through a list of indices, with transforms applied.

    Items are dataset positions k (test) or (k, sample_seed) pairs (training, from
    TrainingSampler): the seed drives the random transforms.

    Args:
        dataset: the raw dataset (kept as `.dataset`, e.g. for evaluators).
        transforms: applied to (image, target) after the difficult objects are dropped.
        indices: the images used (None: all).
        drop_difficult: remove instances flagged difficult from the targets.
        skip_bad_images: an image whose reading raises a DatasetError is replaced by the next
            readable one (logged; `skipped` holds the positions found bad in this process).
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        transforms: Compose,
        indices: list[int] | None = None,
        drop_difficult: bool = False,
        skip_bad_images: bool = False,
    ) -> None:
        self.dataset = dataset
        self.transforms = transforms
        self.indices = list(range(len(dataset))) if indices is None else indices
        self.drop_difficult = drop_difficult
        self.class_names = dataset.class_names
        self.skip_bad_images = skip_bad_images
        self.skipped: set[int] = set()

    def __len__(self) -> int:
        return len(self.indices)

    def get_aspect_ratio(self, k: int) -> float:
        return self.dataset.get_aspect_ratio(self.indices[k])

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, Instances, dict[str, Any]]:
        k, seed = item if isinstance(item, tuple) else (item, None)
        image, target, meta = self._read(k)
        if self.drop_difficult and target.difficult is not None and target.difficult.any():
            target = target[~target.difficult]
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        image, target = self.transforms(image, target, generator)
        target, dropped = clip_and_drop_empty(target)
        return image, target, {**meta, "num_dropped_boxes": dropped}

    def _read(self, k: int) -> tuple[Tensor, Instances, dict[str, Any]]:
        """dataset[indices[k]]; with skip_bad_images, the first readable from k on."""
        if not self.skip_bad_images:
            return self.dataset[self.indices[k]]
        for step in range(len(self.indices)):
            position = (k + step) % len(self.indices)
            if position in self.skipped:
                continue
            try:
                return self.dataset[self.indices[position]]
            except DatasetError as e:
                self.skipped.add(position)
                logger.warning(
                    "DATALOADER.SKIP_BAD_IMAGES: skipped image %d (%d skipped by this process): %s",
                    self.indices[position],
                    len(self.skipped),
                    e,
                )
        raise DatasetError(
            f"DATALOADER.SKIP_BAD_IMAGES: none of the {len(self)} images is readable"
        )


def data_seed(cfg: Config) -> int:
    """The seed of the training data order: cfg.SEED, or 0 when it is -1 (unset)."""
    return cfg.SEED if cfg.SEED >= 0 else 0


def check_num_classes(cfg: Config, dataset: DetectionDataset, name: str, role: str) -> None:
    """Raises a DatasetError when MODEL.ROI_BOX_HEAD.NUM_CLASSES (background included) differs
    from the classes of `dataset` (a "train" or "test" dataset); RPN-only models have none."""
    _check_keypoints(cfg, dataset, name, role)
    expected = cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES
    if cfg.MODEL.RPN_ONLY or dataset.num_classes == expected:
        return
    raise DatasetError(
        f"MODEL.ROI_BOX_HEAD.NUM_CLASSES = {expected}, but the {ROLES[role]} '{name}' "
        f"(DATASETS.{role.upper()}) has {dataset.num_classes} classes ({dataset.num_classes - 1} "
        f"and the background): set MODEL.ROI_BOX_HEAD.NUM_CLASSES {dataset.num_classes}, or use "
        "a config made for this dataset"
    )


def _check_keypoints(cfg: Config, dataset: DetectionDataset, name: str, role: str) -> None:
    """MODEL.KEYPOINT_ON: a training dataset must have keypoints, as many as
    MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES, and cannot be flipped vertically."""
    meta = dataset.keypoint_meta
    if not cfg.MODEL.KEYPOINT_ON or (meta is None and role == "test"):
        return
    where = f"the {ROLES[role]} '{name}' (DATASETS.{role.upper()})"
    if meta is None:
        raise DatasetError(f"MODEL.KEYPOINT_ON, but {where} has no keypoints")
    expected = int(cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES)
    if meta.num_keypoints != expected:
        raise DatasetError(
            f"MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES = {expected}, but {where} has "
            f"{meta.num_keypoints} keypoints ({', '.join(meta.names)}): set it to "
            f"{meta.num_keypoints}"
        )
    if role == "train" and cfg.INPUT.VERTICAL_FLIP_PROB_TRAIN > 0:
        raise DatasetError(
            f"INPUT.VERTICAL_FLIP_PROB_TRAIN > 0 with {where}: keypoints have no top/bottom "
            "map; set it to 0"
        )


def _train_dataset(cfg: Config) -> tuple[DetectionDataset, list[int], bool]:
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise DatasetError("DATASETS.TRAIN is empty: name at least one training dataset")
    datasets = [get_dataset(name, cfg, "train") for name in names]
    dataset = datasets[0] if len(datasets) == 1 else ConcatDetectionDataset(datasets, names)
    check_num_classes(cfg, dataset, names[0], "train")  # all have the same classes
    use_difficult = cfg.DATASETS.TRAIN_USE_DIFFICULT
    indices = list(range(len(dataset)))
    if cfg.DATASETS.FILTER_EMPTY:
        indices = [i for i in indices if dataset.num_instances(i, use_difficult) > 0]
        if len(indices) < len(dataset):
            logger.info(
                "DATASETS.FILTER_EMPTY: removed %d of %d training images without boxes",
                len(dataset) - len(indices),
                len(dataset),
            )
    if not indices:
        raise DatasetError(f"the training datasets {names} hold no image with a box")
    return dataset, indices, not use_difficult


def _per_rank(total: int, key: str) -> int:
    _, world_size = get_rank_and_world_size()
    if total % world_size or total < world_size:
        raise DatasetError(f"{key} = {total} must be a multiple of the {world_size} processes")
    return total // world_size


def build_train_loader(cfg: Config, start_iter: int = 0) -> DataLoader[Any]:
    """The training loader of DATASETS.TRAIN: batches `start_iter * A` .. `SOLVER.MAX_ITER * A`
    of the infinite seeded stream, A = SOLVER.ACCUMULATE_GRAD_STEPS (one iteration is one optimizer
    step). Each batch holds SOLVER.IMS_PER_BATCH / world_size images, grouped by orientation
    when DATALOADER.ASPECT_RATIO_GROUPING. Resuming at `start_iter` yields the same batches (and
    augmentations) as an uninterrupted run.

    Returns:
        A DataLoader of (images, targets, metas); `loader.dataset` is a MappedDataset.
    """
    dataset, indices, drop_difficult = _train_dataset(cfg)
    mapped = MappedDataset(
        dataset,
        build_transforms(cfg, True),
        indices,
        drop_difficult,
        skip_bad_images=cfg.DATALOADER.SKIP_BAD_IMAGES,
    )
    batch_size = _per_rank(cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH")
    if batch_size > len(mapped):
        raise DatasetError(
            f"SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} asks for {batch_size} images per "
            f"batch and process, more than the {len(mapped)} training images of "
            f"{list(cfg.DATASETS.TRAIN)}; lower SOLVER.IMS_PER_BATCH"
        )
    group_ids = None
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        group_ids = [int(mapped.get_aspect_ratio(k) >= 1.0) for k in range(len(mapped))]
    steps = cfg.SOLVER.ACCUMULATE_GRAD_STEPS
    batch_sampler = IterationBatchSampler(
        TrainingSampler(len(mapped), seed=data_seed(cfg)),
        batch_size,
        max_iter=cfg.SOLVER.MAX_ITER * steps,
        start_iter=start_iter * steps,
        group_ids=group_ids,
    )
    return _loader(mapped, batch_sampler, cfg.DATALOADER.NUM_WORKERS, data_seed(cfg))


def build_test_loader(cfg: Config, dataset_name: str) -> DataLoader[Any]:
    """One pass over `dataset_name` (this rank's contiguous shard), resized for testing,
    TEST.IMS_PER_BATCH / world_size images per batch; no image or instance is removed (difficult
    objects stay, flagged). `loader.dataset.dataset` is the raw dataset."""
    dataset = get_dataset(dataset_name, cfg, "test")
    check_num_classes(cfg, dataset, dataset_name, "test")
    mapped = MappedDataset(dataset, build_transforms(cfg, False))
    batch_size = _per_rank(cfg.TEST.IMS_PER_BATCH, "TEST.IMS_PER_BATCH")
    batch_sampler = BatchSampler(InferenceSampler(len(mapped)), batch_size, drop_last=False)
    return _loader(mapped, batch_sampler, cfg.DATALOADER.NUM_WORKERS, data_seed(cfg))


def _loader(
    dataset: MappedDataset, batch_sampler: Any, num_workers: int, seed: int
) -> DataLoader[Any]:
    """A DataLoader with a generator of its own: building its iterator draws the workers' base
    seed from that generator, never from torch's global one, so starting (or resuming) the data
    stream leaves the training random streams (RPN and RoI samplers, ...) where the checkpoint
    put them. Workers ignore stop signals: the main process stops them in order."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=ignore_stop_signals,
    )

"""Datasets, transforms, samplers and loaders.

loader = build_train_loader(cfg, start_iter=0)
for images, targets, metas in loader: ...
"""

from detector.data.build import (
    MappedDataset,
    build_test_loader,
    build_train_loader,
    build_transforms,
    collate,
)
from detector.data.catalog import (
    DatasetSpec,
    get_dataset,
    list_datasets,
    register_dataset,
    shared_data_root,
)
from detector.data.datasets import (
    COCODataset,
    DetectionDataset,
    DSB2018Dataset,
    ShapesDataset,
    VOCDataset,
)
from detector.data.errors import DatasetError
from detector.data.image_io import read_image, read_image_size

__all__ = [
    "COCODataset",
    "DSB2018Dataset",
    "DatasetError",
    "DatasetSpec",
    "DetectionDataset",
    "MappedDataset",
    "ShapesDataset",
    "VOCDataset",
    "build_test_loader",
    "build_train_loader",
    "build_transforms",
    "collate",
    "get_dataset",
    "list_datasets",
    "read_image",
    "read_image_size",
    "register_dataset",
    "shared_data_root",
]

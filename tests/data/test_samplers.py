"""Training and inference samplers, aspect-ratio grouping, exact resume, and the loaders."""

import itertools

import pytest
import torch
from torchvision.io import write_jpeg

from detector.config import get_cfg, merge_opts
from detector.data import build_test_loader, build_train_loader
from detector.data.errors import DatasetError
from detector.data.samplers import (
    GroupedBatchSampler,
    InferenceSampler,
    IterationBatchSampler,
    TrainingSampler,
)


def _take(iterable, n):
    return list(itertools.islice(iter(iterable), n))


def test_training_sampler_epochs_are_permutations_and_seeded():
    items = _take(TrainingSampler(7, seed=5, rank=0, world_size=1), 21)
    indices = [index for index, _ in items]
    for epoch in range(3):
        assert sorted(indices[7 * epoch : 7 * epoch + 7]) == list(range(7))
    assert indices[:7] != indices[7:14]  # a new permutation each epoch
    again = _take(TrainingSampler(7, seed=5, rank=0, world_size=1), 21)
    other = _take(TrainingSampler(7, seed=6, rank=0, world_size=1), 21)
    assert items == again and items != other
    assert len({seed for _, seed in items}) == 21  # a distinct augmentation seed per sample


def test_ranks_share_the_global_stream():
    single = _take(TrainingSampler(10, seed=1, rank=0, world_size=1), 30)
    rank0 = _take(TrainingSampler(10, seed=1, rank=0, world_size=2), 15)
    rank1 = _take(TrainingSampler(10, seed=1, rank=1, world_size=2), 15)
    assert single[0::2] == rank0 and single[1::2] == rank1


def test_grouped_batches_share_orientation():
    group_ids = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0]
    sampler = TrainingSampler(len(group_ids), seed=0, rank=0, world_size=1)
    batches = _take(GroupedBatchSampler(sampler, group_ids, 3), 20)
    for batch in batches:
        assert len(batch) == 3
        assert len({group_ids[index] for index, _ in batch}) == 1
    seen = {group_ids[batch[0][0]] for batch in batches}
    assert seen == {0, 1}


@pytest.mark.parametrize("group_ids", [None, [0, 1, 1, 0, 1, 0, 0, 1, 1]])
def test_resume_at_iteration_equals_continuing(group_ids):
    def batches(start_iter):
        sampler = TrainingSampler(9, seed=3, rank=0, world_size=1)
        return list(IterationBatchSampler(sampler, 2, 25, start_iter, group_ids))

    full = batches(0)
    assert len(full) == 25
    for start in (1, 7, 24):
        assert batches(start) == full[start:]


def test_inference_sampler_shards_cover_everything_once():
    shards = [list(InferenceSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(InferenceSampler(2, rank=2, world_size=3)) == []


# --------------------------------------------------------------------------------------------
# Loaders from a config
# --------------------------------------------------------------------------------------------
def _shapes_cfg(*opts):
    return merge_opts(
        get_cfg(),
        [
            "DATASETS.TRAIN", "[shapes_train]", "SOLVER.IMS_PER_BATCH", "2",
            "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "4",
            "SOLVER.MAX_ITER", "6", "DATALOADER.NUM_WORKERS", "0", "SEED", "7",
            "INPUT.MIN_SIZE_TRAIN", "(96, 128, 160)", "INPUT.MAX_SIZE_TRAIN", "400",
            *opts,
        ],
    )  # fmt: skip


def _same_batches(a, b):
    for (images_a, targets_a, metas_a), (images_b, targets_b, metas_b) in zip(a, b, strict=True):
        assert metas_a == metas_b
        for x, y in zip(images_a, images_b, strict=True):
            assert torch.equal(x, y)
        for x, y in zip(targets_a, targets_b, strict=True):
            assert torch.equal(x.gt_boxes.tensor, y.gt_boxes.tensor)
            assert torch.equal(x.gt_masks.tensor, y.gt_masks.tensor)


def test_train_loader_resume_reproduces_images_and_augmentations():
    cfg = _shapes_cfg()
    full = list(build_train_loader(cfg))
    assert len(full) == 6 and all(len(images) == 2 for images, _, _ in full)
    sizes = {min(image.shape[1:]) for images, _, _ in full for image in images}
    assert len(sizes) > 1 and sizes <= {96, 128, 160}
    _same_batches(list(build_train_loader(cfg, start_iter=4)), full[4:])


def test_train_loader_workers_do_not_change_the_data():
    cfg = _shapes_cfg("SOLVER.MAX_ITER", "2")
    with_workers = list(build_train_loader(merge_opts(cfg, ["DATALOADER.NUM_WORKERS", "2"])))
    _same_batches(with_workers, list(build_train_loader(cfg)))


def test_train_loader_targets_follow_the_flipped_image():
    cfg = _shapes_cfg("INPUT.HORIZONTAL_FLIP_PROB_TRAIN", "1.0", "INPUT.MIN_SIZE_TRAIN", "(128,)")
    dataset = build_train_loader(cfg).dataset.dataset
    images, targets, metas = next(iter(build_train_loader(cfg)))
    for image, target, meta in zip(images, targets, metas, strict=True):
        raw_image, raw_target, _ = dataset[meta["image_id"]]
        assert torch.equal(image, raw_image.flip(-1))
        assert torch.equal(target.gt_masks.tensor, raw_target.gt_masks.tensor.flip(-1))
        assert torch.equal(target.gt_boxes.tensor, raw_target.gt_boxes.flip(128).tensor)


def test_coco_sample_empty_image_filtered_or_kept(shared_data):
    opts = ["DATASETS.TRAIN", "[coco_sample6]", "DATASETS.SHARED_ROOT", str(shared_data),
            "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "6", "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "100"]  # fmt: skip
    filtered = build_train_loader(merge_opts(get_cfg(), opts))
    assert len(filtered.dataset) == 5
    ids = {meta["image_id"] for _, _, metas in filtered for meta in metas}
    assert len(ids) == 5 and 89 not in ids
    kept = build_train_loader(merge_opts(get_cfg(), [*opts, "DATASETS.FILTER_EMPTY", "false"]))
    assert len(kept.dataset) == 6


def test_train_loader_drops_difficult_unless_asked(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    for name, flags in (("a", (1, 0)), ("b", (1,))):
        objects = "".join(
            f"<object><name>cat</name><difficult>{f}</difficult><bndbox><xmin>2</xmin>"
            "<ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
            for f in flags
        )
        xml = f"<annotation><size><width>16</width><height>12</height></size>{objects}</annotation>"
        (root / "Annotations" / f"{name}.xml").write_text(xml)
        write_jpeg(
            torch.zeros(3, 12, 16, dtype=torch.uint8), str(root / "JPEGImages" / f"{name}.jpg")
        )
    opts = ["DATASETS.CUSTOM", f"{{mine: {{FORMAT: voc, ROOT: '{root}', SPLIT: train}}}}",
            "DATASETS.CLASS_NAMES", "[cat]", "DATASETS.TRAIN", "[mine]", "SOLVER.IMS_PER_BATCH",
            "1", "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN",
            "(12,)", "DATALOADER.ASPECT_RATIO_GROUPING", "false",
            "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "2"]  # fmt: skip
    loader = build_train_loader(merge_opts(get_cfg(), opts))
    assert len(loader.dataset) == 1  # "b" has only a difficult object
    for _, targets, _ in loader:
        assert targets[0].difficult.tolist() == [False]
    loader = build_train_loader(
        merge_opts(get_cfg(), [*opts, "DATASETS.TRAIN_USE_DIFFICULT", "true"])
    )
    assert len(loader.dataset) == 2
    test = build_test_loader(merge_opts(get_cfg(), [*opts, "TEST.IMS_PER_BATCH", "2"]), "mine")
    ((images, targets, metas),) = list(test)
    assert [t.difficult.tolist() for t in targets] == [[True, False], [True]]
    assert [m["image_id"] for m in metas] == ["a", "b"]


def test_test_loader_resizes_and_keeps_order(shared_data):
    cfg = merge_opts(get_cfg(), ["DATASETS.SHARED_ROOT", str(shared_data), "TEST.IMS_PER_BATCH",
                                 "4", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TEST", "240",
                                 "INPUT.MAX_SIZE_TEST", "1000",
                                 "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "4"])  # fmt: skip
    loader = build_test_loader(cfg, "bccd_test")
    assert len(loader) == 18 and len(loader.dataset) == 72
    images, targets, metas = next(iter(loader))
    assert [m["image_id"] for m in metas] == [
        r.image_id for r in loader.dataset.dataset.records[:4]
    ]
    for image, target, meta in zip(images, targets, metas, strict=True):
        assert image.shape == (3, 240, 320) and target.image_size == (240, 320)
        assert (meta["height"], meta["width"]) == (480, 640)


def test_coco_sample_grouped_batches_share_orientation(shared_data):
    opts = ["DATASETS.TRAIN", "[coco_sample6]", "DATASETS.SHARED_ROOT", str(shared_data),
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "8", "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MAX_SIZE_TRAIN", "64"]  # fmt: skip
    orientations = set()
    for images, _, metas in build_train_loader(merge_opts(get_cfg(), opts)):
        landscape = {m["width"] >= m["height"] for m in metas}
        assert len(landscape) == 1
        assert {image.shape[2] >= image.shape[1] for image in images} == landscape
        orientations |= landscape
    assert orientations == {True, False}


def test_batch_larger_than_the_dataset_is_refused():
    """SOLVER.IMS_PER_BATCH 100000 used to hang, filling one batch from an endless stream."""
    with pytest.raises(DatasetError, match=r"SOLVER.IMS_PER_BATCH = 100000 asks for 100000 "):
        build_train_loader(_shapes_cfg("SOLVER.IMS_PER_BATCH", "100000"))

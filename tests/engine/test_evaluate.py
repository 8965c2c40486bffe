"""detector.evaluation.inference_on_dataset (eval mode, gathering across ranks) and
detector.engine.evaluate's drivers: an oracle run scored by the real COCO evaluator, tools/test.py's
`test` on one and two processes, the metrics summary and the expected-results check."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence

import numpy as np
import pytest
import torch
from torch import nn

from detector import evaluation
from detector.config import get_cfg, merge_opts
from detector.data import build_test_loader
from detector.engine import evaluate
from detector.evaluation import build_evaluator, inference_on_dataset
from detector.evaluation.evaluator import DatasetEvaluator
from detector.structures import Boxes, Instances
from detector.utils import comm


# --------------------------------------------------------------------------------------------
# inference_on_dataset
# --------------------------------------------------------------------------------------------
class RecordingEvaluator(DatasetEvaluator):
    """Keeps what it is given; evaluate() returns the number of images and boxes."""

    name = "recording"

    def __init__(self) -> None:
        self.seen: list[tuple[Hashable, Instances]] = []
        super().__init__(None)

    def reset(self) -> None:
        super().reset()
        self.seen = []

    def dataset_image_ids(self) -> list[Hashable]:
        return []

    def _check_image_id(self, image_id: Hashable) -> Hashable:
        return image_id

    def _to_records(self, image_id: Hashable, instances: Instances) -> dict:
        self.seen.append((image_id, instances))
        boxes = instances.pred_boxes.tensor.tolist()
        return {"instances": [{"image_id": image_id, "bbox": box} for box in boxes]}

    def _record_kind(self, records, path):
        return "instances"

    def _check_record(self, record, where):
        pass

    def _evaluate_records(self, records: dict, image_ids: Sequence[Hashable]) -> dict:
        return {"images": float(len(image_ids)), "boxes": float(len(records["instances"]))}


class BoxPerImage(nn.Module):
    """Returns one box (the input image's left half) per image; records its mode and grads."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, images: list[torch.Tensor]) -> list[Instances]:
        self.calls.append((self.training, torch.is_grad_enabled()))
        out = []
        for image in images:
            height, width = image.shape[-2:]
            box = torch.tensor([[0.0, 0.0, width / 2, height]]) * self.weight
            out.append(
                Instances(
                    (height, width),
                    pred_boxes=Boxes(box),
                    scores=torch.ones(1),
                    pred_classes=torch.ones(1, dtype=torch.int64),
                )
            )
        return out


def _batches():
    images = [torch.zeros(3, 20, 30, dtype=torch.uint8), torch.zeros(3, 40, 20, dtype=torch.uint8)]
    metas = [
        {"image_id": 7, "height": 40, "width": 60},
        {"image_id": 8, "height": 80, "width": 40},
    ]
    yield images, [None, None], metas
    yield images[:1], [None], [{"image_id": 9, "height": 10, "width": 15}]


def test_inference_on_dataset_runs_in_eval_mode_and_maps_to_original():
    model, evaluator = BoxPerImage(), RecordingEvaluator()
    model.train()
    metrics = inference_on_dataset(model, _batches(), evaluator, progress=False)
    assert metrics == {"images": 3.0, "boxes": 3.0}
    assert model.calls == [(False, False), (False, False)]  # eval mode, no autograd
    assert model.training  # restored
    ids = [image_id for image_id, _ in evaluator.seen]
    assert ids == [7, 8, 9]
    sizes = [instances.image_size for _, instances in evaluator.seen]
    assert sizes == [(40, 60), (80, 40), (10, 15)]
    boxes = [instances.pred_boxes.tensor.tolist() for _, instances in evaluator.seen]
    assert boxes == [[[0.0, 0.0, 30.0, 40.0]], [[0.0, 0.0, 20.0, 80.0]], [[0.0, 0.0, 7.5, 10.0]]]


def test_progress_is_logged_without_a_bar(monkeypatch, caplog):
    monkeypatch.setattr(evaluation.inference, "LOG_PERIOD_S", 0.0)
    caplog.set_level(logging.INFO, logger="detector.evaluation.inference")
    inference_on_dataset(BoxPerImage(), _batches(), RecordingEvaluator(), progress=False)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines[:2]] == [
        "inference: batch 1/?",
        "inference: batch 2/?",
    ]
    assert lines[2].startswith("inference done on 3 images (rank 0 of 1)")


def test_results_of_other_ranks_are_merged_on_rank_0(monkeypatch):
    other = RecordingEvaluator()
    other.process([100, 101], [Instances((5, 5), pred_boxes=Boxes(torch.zeros(2, 4)))] * 2)
    sent = []

    def fake_all_gather(data):
        sent.append(data)
        return [data, other.state()]

    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "all_gather", fake_all_gather)
    evaluator = RecordingEvaluator()
    metrics = inference_on_dataset(BoxPerImage(), _batches(), evaluator, progress=False)
    assert metrics == {"images": 5.0, "boxes": 7.0}  # 3 images of 1 box, 2 of 2 boxes
    assert sent[0]["image_ids"] == [7, 8, 9]
    assert evaluator.image_ids == [7, 8, 9, 100, 101]
    # Another rank sends its state and returns no metric.
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert inference_on_dataset(BoxPerImage(), _batches(), RecordingEvaluator()) == {}


class Oracle(nn.Module):
    """Predicts the ground truth of the batch that `feed` last yielded, in input pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[Instances] = []

    def feed(self, loader):
        for batch in loader:
            self.targets = batch[1]
            yield batch

    def forward(self, images: list[torch.Tensor]) -> list[Instances]:
        out = []
        for image, target in zip(images, self.targets, strict=True):
            assert target.image_size == tuple(image.shape[-2:])
            boxes = target.gt_boxes
            masks = target.gt_masks.crop_and_resize(boxes, 28)[:, None].float()  # (R, 1, M, M)
            out.append(
                Instances(
                    target.image_size,
                    pred_boxes=boxes,
                    scores=torch.linspace(1.0, 0.5, len(target)),
                    pred_classes=target.gt_classes,
                    pred_masks=masks,
                )
            )
        return out


def test_oracle_on_shapes_scores_ap_1(tmp_path):
    """Ground truth as predictions (masks as 28 x 28 crops, as the mask head gives them), through
    the test loader (images resized 128 -> 256 and predictions mapped back), scores box AP 1
    with the converted shapes ground truth."""
    cfg = merge_opts(
        get_cfg(),
        [
            "MODEL.MASK_ON", "true", "INPUT.MIN_SIZE_TEST", "256", "TEST.IMS_PER_BATCH", "2",
            "DATALOADER.NUM_WORKERS", "0", "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "4",
            "DATASETS.CUSTOM", "{tiny_shapes: {FORMAT: shapes, NUM_IMAGES: 4, SEED: 5}}",
        ],
    )  # fmt: skip
    loader = build_test_loader(cfg, "tiny_shapes")
    evaluator = build_evaluator(cfg, "tiny_shapes", tmp_path, dataset=loader.dataset.dataset)
    model = Oracle()
    metrics = inference_on_dataset(model, model.feed(loader), evaluator, progress=False)
    assert metrics["bbox/AP"] == pytest.approx(1.0)
    # The masks go through the mask head's 28 x 28 form and the paste: exact up to IoU 0.75;
    # a pixel off at a round border costs some circles and triangles at IoU 0.9 and 0.95.
    assert metrics["segm/AP50"] == pytest.approx(1.0) and metrics["segm/AP75"] == pytest.approx(1.0)
    assert metrics["segm/AP"] > 0.95
    assert (tmp_path / "coco_instances_results.json").is_file()


def test_format_metrics_shows_the_headline():
    text = evaluation.format_metrics(
        {"bbox/AP": 0.5, "bbox/APs": 0.1, "bbox/AP-cat": 0.2, "segm/AP50": 0.25}
    )
    assert text == "bbox/AP=0.5000, segm/AP50=0.2500"
    assert evaluation.format_metrics({"x": 1.0}) == "x=1.0000"


# --------------------------------------------------------------------------------------------
# Two processes: each runs its share of the images, rank 0 evaluates all of them
# --------------------------------------------------------------------------------------------
class CentralBox(nn.Module):
    """Predicts the central half of each image as a square (class 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, images: list[torch.Tensor]) -> list[Instances]:
        out = []
        for image in images:
            height, width = image.shape[-2:]
            box = torch.tensor([[width / 4, height / 4, 3 * width / 4, 3 * height / 4]])
            out.append(
                Instances(
                    (height, width),
                    pred_boxes=Boxes(box * self.weight),
                    scores=torch.ones(1),
                    pred_classes=torch.ones(1, dtype=torch.int64),
                )
            )
        return out


def _central_box_cfg(output_dir: str):
    return merge_opts(
        get_cfg(),
        [
            "OUTPUT_DIR", output_dir, "TEST.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TEST", "96",
            "DATASETS.CUSTOM", "{four: {FORMAT: shapes, NUM_IMAGES: 5, SEED: 2}}",
            "DATASETS.TEST", "(four,)", "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "4",
        ],
    )  # fmt: skip


def _dist_worker(rank: int, world_size: int, port: int, out: str) -> None:
    import json
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    results = evaluate.test(_central_box_cfg(out), model=CentralBox(), progress=False)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(results, f)
    torch.distributed.destroy_process_group()


@pytest.mark.dist
@pytest.mark.slow
def test_two_processes_give_the_one_process_metrics(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dist_worker, args=(2, port, str(tmp_path / "dist")), nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "dist" / "rank0.json").read_text())  # NaN reads as nan
    rank1 = json.loads((tmp_path / "dist" / "rank1.json").read_text())
    assert rank1 == {}
    records = json.loads(
        (tmp_path / "dist" / "inference" / "four" / "coco_instances_results.json").read_text()
    )
    assert sorted(r["image_id"] for r in records) == [0, 1, 2, 3, 4]

    single = evaluate.test(
        _central_box_cfg(str(tmp_path / "one")), model=CentralBox(), progress=False
    )
    assert rank0.keys() == single.keys() == {"four"}
    np.testing.assert_equal(rank0["four"], single["four"])


def test_check_expected_results():
    metrics = {"bbox/AP": 0.36, "segm/AP": 0.30}
    expected = [["bbox", "AP", 0.37, 0.01], ["segm", "AP", 0.34, 0.005], ["bbox", "AP50", 0.5, 1]]
    failures = evaluation.check_expected_results(metrics, expected, sigma_tol=4)
    assert len(failures) == 2
    assert failures[0].startswith("segm/AP: 0.3 NOT within [0.3200, 0.3600]")
    assert failures[1].startswith("bbox/AP50: None")
    with pytest.raises(ValueError, match=r"\[task, metric, value, std\]"):
        evaluation.check_expected_results(metrics, [["bbox", "AP"]], sigma_tol=4)

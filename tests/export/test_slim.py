"""Slim checkpoints: content, weights-only loading, sizes, fp16, and the same detections as the
training checkpoint they come from."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from detector.config import load_config, merge_opts
from detector.engine.checkpoint import UnsafeCheckpointError, load_checkpoint_file
from detector.export.slim import (
    SlimCheckpointError,
    check_plain,
    class_names_from_config,
    export_slim,
    is_slim,
)
from detector.predictor import Predictor
from tests.export.tiny_model import TinyRun

ROOT = Path(__file__).resolve().parents[2]


def _image(seed: int, height: int, width: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)


def _optimizer_bytes(checkpoint: Path) -> int:
    state = load_checkpoint_file(checkpoint)["optimizer"]["state"]
    return sum(t.numel() * t.element_size() for s in state.values() for t in s.values())


def test_slim_content_and_size(tiny_run: TinyRun, tmp_path: Path) -> None:
    slim_path = tmp_path / "model_final_slim.pth"
    export_slim(tiny_run.checkpoint, slim_path, tiny_run.cfg)
    data = torch.load(slim_path, weights_only=True)
    assert set(data) == {"model", "config", "class_names", "meta"} and is_slim(data)
    assert data["meta"]["iteration"] == 0
    assert data["meta"]["metrics"] == {"bbox/AP": 0.125}
    assert data["meta"]["framework_version"] == "0.1.0"
    assert data["meta"]["dtype"] == "float32"
    assert data["class_names"] == []  # the tiny config names no dataset
    # The embedded YAML reads back to the same config.
    (tmp_path / "embedded.yaml").write_text(data["config"])
    assert load_config(tmp_path / "embedded.yaml") == tiny_run.cfg
    state = tiny_run.model.state_dict()
    assert data["model"].keys() == state.keys()
    assert all(torch.equal(data["model"][k], v) for k, v in state.items())
    # Smaller than the training checkpoint by (at least) the optimizer's momentum buffers.
    training_size, slim_size = tiny_run.checkpoint.stat().st_size, slim_path.stat().st_size
    momentum = _optimizer_bytes(tiny_run.checkpoint)
    print(f"training {training_size} B, slim {slim_size} B, momentum buffers {momentum} B")
    assert training_size - slim_size >= momentum
    assert slim_size < 0.55 * training_size


def test_slim_gives_the_same_detections(tiny_run: TinyRun, tmp_path: Path) -> None:
    slim_path = tmp_path / "slim.pth"
    export_slim(tiny_run.checkpoint, slim_path, tiny_run.cfg)
    images = [_image(1, 90, 120), _image(2, 70, 50)]
    from_training = Predictor(tiny_run.config_file, tiny_run.checkpoint)(images)
    from_slim = Predictor(None, slim_path)(images)  # the config comes from the file
    for a, b in zip(from_training, from_slim, strict=True):
        assert len(a["boxes"]) > 0
        for key in ("boxes", "scores", "labels", "masks"):
            assert torch.equal(a[key], b[key]), key
        assert a["class_names"] == b["class_names"]


def test_fp16_slim(tiny_run: TinyRun, tmp_path: Path) -> None:
    fp32, fp16 = tmp_path / "fp32.pth", tmp_path / "fp16.pth"
    export_slim(tiny_run.checkpoint, fp32, tiny_run.cfg)
    export_slim(tiny_run.checkpoint, fp16, tiny_run.cfg, fp16=True)
    data = torch.load(fp16, weights_only=True)
    assert data["meta"]["dtype"] == "float16"
    state = tiny_run.model.state_dict()
    for key, value in data["model"].items():
        expected = torch.float16 if state[key].is_floating_point() else state[key].dtype
        assert value.dtype == expected, key
        torch.testing.assert_close(value, state[key].to(expected), rtol=0, atol=0)
    assert fp16.stat().st_size < 0.55 * fp32.stat().st_size
    # The Predictor casts the weights back to float32: the scores move by fp16 rounding only.
    predictor = Predictor(None, fp16)
    for key, value in predictor.model.state_dict().items():
        assert value.dtype == state[key].dtype
        torch.testing.assert_close(value, state[key], rtol=2**-10, atol=1e-7)
    image = _image(3, 90, 120)
    reference = Predictor(None, fp32)(image)
    result = predictor(image)
    assert result["scores"].dtype == torch.float32
    torch.testing.assert_close(result["scores"][:3], reference["scores"][:3], rtol=0, atol=1e-2)


def test_class_names_are_embedded(tiny_run: TinyRun, tmp_path: Path) -> None:
    cfg = merge_opts(tiny_run.cfg, ["DATASETS.CLASS_NAMES", "[cat, dog, bird]"])
    slim_path = tmp_path / "named.pth"
    export_slim(tiny_run.checkpoint, slim_path, cfg)
    data = torch.load(slim_path, weights_only=True)
    assert data["class_names"] == ["__background__", "cat", "dog", "bird"]
    result = Predictor(None, slim_path)(_image(4, 64, 64))
    names = {1: "cat", 2: "dog", 3: "bird"}
    assert result["class_names"] == [names[k] for k in result["labels"].tolist()]


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_payload_is_refused(tiny_run: TinyRun, tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    bad = tmp_path / "bad.pth"
    torch.save({"model": nn.Linear(3, 2).state_dict(), "evil": _Payload(marker)}, bad)
    with pytest.raises(UnsafeCheckpointError, match=r"bad\.pth.*pickled Python objects"):
        Predictor(tiny_run.config_file, bad)
    with pytest.raises(UnsafeCheckpointError, match=r"bad\.pth"):
        export_slim(bad, tmp_path / "out.pth", tiny_run.cfg)
    assert not marker.exists()
    assert not (tmp_path / "out.pth").exists()


def test_check_plain_rejects_other_objects() -> None:
    check_plain({"a": [1, 2.0, "x", True, torch.zeros(2)], "b": {"c": 1}})
    with pytest.raises(SlimCheckpointError, match=r"checkpoint\['a'\]\[1\] is a tuple"):
        check_plain({"a": [1, (2, 3)]})
    with pytest.raises(SlimCheckpointError, match="key 3"):
        check_plain({3: 1})


def test_export_refuses_a_file_without_weights(tiny_run: TinyRun, tmp_path: Path) -> None:
    odd = tmp_path / "odd.pth"
    torch.save({"iteration": 3, "notes": "x"}, odd)
    with pytest.raises(SlimCheckpointError, match=r"odd\.pth has no model weights.*iteration"):
        export_slim(odd, tmp_path / "out.pth", tiny_run.cfg)


def test_metrics_come_from_the_runs_log(tiny_run: TinyRun, tmp_path: Path) -> None:
    """Without a "metrics" entry, the newest evaluation in metrics.jsonl up to the checkpoint's
    iteration is stored (training lines and later evaluations are ignored)."""
    data = load_checkpoint_file(tiny_run.checkpoint)
    data.pop("metrics")
    data["iteration"] = 200
    torch.save(data, tmp_path / "model_0000200.pth")
    lines = [
        '{"iteration": 100, "loss_mask": 0.5, "lr": 0.01}',
        '{"iteration": 100, "bbox/AP": 0.1, "segm/AP": 0.05}',
        '{"iteration": 200, "bbox/AP": 0.2, "segm/AP": "nan"}',
        '{"iteration": 300, "bbox/AP": 0.3}',
        '{"iteration": 30',  # cut by a crash
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    slim = export_slim(tmp_path / "model_0000200.pth", tmp_path / "slim.pth", tiny_run.cfg)
    assert slim["meta"]["iteration"] == 200
    assert slim["meta"]["metrics"] == {"bbox/AP": 0.2}


@pytest.mark.parametrize(
    ("config", "person", "twelve"),
    [("configs/torchvision/faster_rcnn_R_50_FPN.yaml", 1, "N/A"),  # by COCO category id
     ("configs/e2e_faster_rcnn_R_50_FPN_1x.yaml", 1, "stop sign")],  # contiguous, 1..80
)  # fmt: skip
def test_coco_models_get_coco_names_without_the_dataset(tmp_path, caplog, config, person, twelve):
    """Was: class_75-style names and "cannot open dataset 'coco_2017_val'" (twice) when COCO
    is not on the machine."""
    cfg = load_config(ROOT / config, ["DATASETS.ROOT", str(tmp_path / "no_coco_here")])
    with caplog.at_level(logging.WARNING):
        names = class_names_from_config(cfg)
    assert len(names) == cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES
    assert names[0] == "__background__" and names[person] == "person"
    assert names[12] == twelve and names[-1] == "toothbrush"
    assert not caplog.records


def test_unopenable_datasets_give_one_warning(tmp_path, caplog):
    opts = ["DATASETS.TRAIN", "[bccd_train]", "DATASETS.TEST", "[bccd_test]"]
    cfg = load_config(None, [*opts, "DATASETS.SHARED_ROOT", str(tmp_path / "none")])
    with caplog.at_level(logging.WARNING):
        assert class_names_from_config(cfg) == []
    (record,) = caplog.records
    assert "'bccd_test'" in record.getMessage() and "'bccd_train'" in record.getMessage()

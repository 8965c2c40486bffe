"""benchmarks/wbc_crops.py: the frame-filling WBC crops of the accuracy benchmark, written once
even when several benchmark lanes start together."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
from pathlib import Path

from PIL import Image

from benchmarks.wbc_crops import make_wbc_crops


def test_crops_hold_frame_filling_cells(shared_data: Path, tmp_path: Path):
    files = make_wbc_crops(shared_data / "bccd" / "BCCD", tmp_path / "wbc")
    for split, file in files.items():
        data = json.loads(file.read_text())
        sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
        assert len(sizes) > 50 and {a["image_id"] for a in data["annotations"]} == set(sizes)
        for image in data["images"][:10]:
            with Image.open(file.parent / split / image["file_name"]) as opened:
                assert opened.size == (image["width"], image["height"])
        largest: dict[int, float] = {}
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            width, height = sizes[a["image_id"]]
            assert 0 <= x and 0 <= y and x + w <= width + 1e-6 and y + h <= height + 1e-6
            largest[a["image_id"]] = max(largest.get(a["image_id"], 0.0), w / width)
        # the cropped cell spans 1/1.6 of the side or more (less only where the image edge cut it)
        assert sorted(largest.values())[len(largest) // 10] >= 0.6


def test_a_lane_waits_while_another_writes_the_crops(shared_data: Path, tmp_path: Path):
    """While one process holds the crops' lock (is writing them), another that starts waits and
    writes nothing; once the lock is released it returns the crops. (The old code raced: two
    lanes started together wrote one temporary file and the second failed on its rename.)"""
    bccd, root = shared_data / "bccd" / "BCCD", tmp_path / "wbc"
    context = multiprocessing.get_context("spawn")
    with open(tmp_path / "wbc.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # this test plays the lane that is writing
        worker = context.Process(target=make_wbc_crops, args=(bccd, root))
        worker.start()
        worker.join(timeout=5)
        assert worker.is_alive() and not root.exists()
    worker.join(timeout=120)
    assert worker.exitcode == 0
    for split in ("train", "test"):
        data = json.loads((root / f"{split}.json").read_text())
        assert all((root / split / im["file_name"]).is_file() for im in data["images"])
    assert not list(root.glob("*.tmp"))


def test_lanes_started_together_all_return_the_crops(shared_data: Path, tmp_path: Path):
    bccd, root = shared_data / "bccd" / "BCCD", tmp_path / "wbc"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=make_wbc_crops, args=(bccd, root)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert json.loads((root / "train.json").read_text())["images"]

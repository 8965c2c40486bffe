"""tools/train.py on the shapes Mask R-CNN in its own process, with faults to inject, for the
kill / signal / lock / disk-full tests:

    python -m tests.engine.shapes_train [--pause-after N] [--pause-in-save N] [--dev-full N]
        -- TRAIN_PY_ARGS...

--pause-after N: after iteration N, write OUTPUT_DIR/paused and sleep (waiting for signals).
--pause-in-save N: while saving model_N.pth, write half of its bytes to the temporary file, then
    write OUTPUT_DIR/paused and sleep (a kill then lands in the middle of a checkpoint write).
--dev-full N: the temporary file of model_N.pth is a link to /dev/full, so the real torch.save
    fails with ENOSPC like on a full disk.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "shapes" / "mask_rcnn_R_18_FPN_shapes.yaml"


def _output_dir(train_args: list[str]) -> Path:
    return Path(train_args[train_args.index("OUTPUT_DIR") + 1])


def _pause(marker: Path) -> None:
    marker.write_text(str(os.getpid()))
    time.sleep(600)


def _pause_after(iteration: int, marker: Path) -> None:
    from detector.engine import trainer

    run_step = trainer.Trainer.run_step

    def paused_run_step(self: Any) -> dict[str, float]:
        if self.iter == iteration:
            _pause(marker)
        return run_step(self)

    trainer.Trainer.run_step = paused_run_step


def _pause_in_save(iteration: int, marker: Path) -> None:
    save = torch.save

    def half_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(obj, dict) and obj.get("iteration") == iteration:
            buffer = io.BytesIO()
            save(obj, buffer)
            f.write(buffer.getvalue()[: buffer.tell() // 2])
            _pause(marker)
        save(obj, f, *args, **kwargs)

    torch.save = half_save


def _dev_full(iteration: int, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f".model_{iteration:07d}.pth.tmp-{os.getpid()}"
    tmp.symlink_to("/dev/full")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pause-after", type=int, default=-1)
    parser.add_argument("--pause-in-save", type=int, default=-1)
    parser.add_argument("--dev-full", type=int, default=-1)
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    output_dir = _output_dir(train_args)
    if args.pause_after >= 0:
        _pause_after(args.pause_after, output_dir / "paused")
    if args.pause_in_save >= 0:
        _pause_in_save(args.pause_in_save, output_dir / "paused")
    if args.dev_full >= 0:
        _dev_full(args.dev_full, output_dir)
    spec = importlib.util.spec_from_file_location("train_tool", ROOT / "tools" / "train.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main(train_args)


if __name__ == "__main__":
    sys.exit(main())

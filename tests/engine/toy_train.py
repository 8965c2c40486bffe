"""A toy training run in its own process, for the kill-and-resume test.

    python -m tests.engine.toy_train OUTPUT_DIR [--resume] [--hang-at N]

With --hang-at N it writes OUTPUT_DIR/hanging after iteration N and sleeps, waiting to be killed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from detector.engine import HookBase, train
from tests.engine.toy import ToyModel, toy_cfg, toy_loader


class Hang(HookBase):
    def __init__(self, at: int, marker: Path) -> None:
        self.at = at
        self.marker = marker

    def after_step(self, trainer) -> None:
        if trainer.iter == self.at:
            self.marker.write_text(str(trainer.iter))
            time.sleep(600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hang-at", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = toy_cfg(args.output_dir, MAX_ITER=12, STEPS=[7], CHECKPOINT_PERIOD=4)
    hooks = [Hang(args.hang_at, Path(args.output_dir) / "hanging")] if args.hang_at else []
    train(
        cfg,
        args.resume,
        model=ToyModel(dropout=0.5),
        data_loader=toy_loader(),
        hooks=hooks,
        tensorboard=False,
    )


if __name__ == "__main__":
    main()

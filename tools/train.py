"""Train a detector: python tools/train.py --config-file X.yaml [--resume] [KEY VALUE ...].

Multi-GPU: torchrun --nproc_per_node=8 tools/train.py --config-file X.yaml. Outputs (checkpoints,
log.txt, metrics.jsonl, tensorboard/, config.yaml) go to OUTPUT_DIR. The model is evaluated on
DATASETS.TEST every TEST.EVAL_PERIOD iterations and at the end (OUTPUT_DIR/inference/), unless
--skip-test.
"""

from __future__ import annotations

import argparse
import sys

from detector.engine.launch import (
    default_argument_parser,
    load_config_from_args,
    run_tool_main,
    train,
)
from detector.utils import comm


def build_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser(
        __doc__.splitlines()[0], "SOLVER.BASE_LR 0.01 OUTPUT_DIR runs/x"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest good checkpoint in OUTPUT_DIR",
    )
    parser.add_argument(
        "--skip-test",
        action="store_true",
        help="do not evaluate on DATASETS.TEST (neither periodically nor at the end)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def run(args: argparse.Namespace) -> int:
    cfg = load_config_from_args(args)
    evaluate_fn = None
    if cfg.DATASETS.TEST and not args.skip_test:
        from detector.engine.evaluate import make_evaluate_fn

        evaluate_fn = make_evaluate_fn(cfg)
    result = train(cfg, resume=args.resume, evaluate_fn=evaluate_fn)
    if comm.is_main_process():
        print(f"final weights: {result.final_checkpoint}")
        outputs = "outputs (log.txt, metrics.jsonl, tensorboard/, config.yaml)"
        print(f"{outputs}: {result.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a trained detector: python tools/test.py --config-file X.yaml [KEY VALUE ...].

MODEL.WEIGHT path.pth names the weights (default: OUTPUT_DIR's last checkpoint). The model runs on
every DATASETS.TEST set and OUTPUT_DIR/inference/<dataset>/ receives the predictions
(coco_instances_results.json, voc_detections_results.json, ...) and the metrics (metrics.json).
`--eval-only-saved OUTPUT_DIR/inference` scores saved predictions again without running the
model, and writes the metrics beside them. Multi-GPU: torchrun --nproc_per_node=8 tools/test.py
... (rank 0 evaluates).
"""

from __future__ import annotations

import argparse
import sys

from detector.engine.evaluate import inference_dir, results_dir, test
from detector.engine.launch import (
    USER_ERRORS,
    default_argument_parser,
    load_config_from_args,
    run_tool_main,
)
from detector.engine.output_dir import make_output_dir
from detector.evaluation import format_metrics
from detector.utils import comm
from detector.utils.logger import setup_logger


def build_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser(
        __doc__.splitlines()[0], "MODEL.WEIGHT out/model_final.pth TEST.IMS_PER_BATCH 2"
    )
    parser.add_argument(
        "--eval-only-saved",
        metavar="PATH",
        default=None,
        help="re-evaluate saved predictions (OUTPUT_DIR/inference, a dataset's folder in it, or "
        "a *_results.json file) without running the model",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def run(args: argparse.Namespace) -> int:
    cfg = load_config_from_args(args)
    comm.init_distributed()
    make_output_dir(inference_dir(cfg))
    setup_logger(inference_dir(cfg), rank=comm.get_rank())
    results = test(cfg, saved_predictions=args.eval_only_saved, progress=not args.no_progress)
    if comm.is_main_process():
        for name, metrics in results.items():
            print(f"{name}: {format_metrics(metrics)}")
            print(f"  outputs: {results_dir(cfg, name, args.eval_only_saved)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    # KeyError: saved predictions that do not fit the dataset (the evaluators name the record).
    return run_tool_main(build_parser(), run, argv, (*USER_ERRORS, KeyError))


if __name__ == "__main__":
    sys.exit(main())

"""Export a trained detector: a slim checkpoint (default), ONNX, torch.export or TorchScript.

    python tools/export.py --config-file X.yaml MODEL.WEIGHT output/model_final.pth \
        --output model_final_slim.pth [--fp16]
    python tools/export.py --config-file X.yaml MODEL.WEIGHT model_final_slim.pth \
        --format onnx --output model.onnx [--sample-image img.jpg]
    python tools/export.py --config-file X.yaml MODEL.WEIGHT model_final.pth \
        --format torch-export --output model.pt2 [--sample-image img.jpg] [--fixed-size]
    python tools/export.py --config-file X.yaml MODEL.WEIGHT model_final.pth \
        --format torchscript --output model.ts [--sample-image img.jpg]

The slim checkpoint keeps the weights (float16 with --fp16), the resolved config, the class names
and the training iteration and metrics; `detector.Predictor` and tools/demo.py load it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from detector.config import ConfigError
from detector.engine.launch import default_argument_parser, load_config_from_args, run_tool_main


def build_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser(
        __doc__.splitlines()[0], "MODEL.WEIGHT output/model_final.pth (the checkpoint to export)"
    )
    parser.add_argument("--output", required=True, metavar="FILE", help="the file to write")
    parser.add_argument(
        "--format",
        choices=("slim", "onnx", "torch-export", "torchscript"),
        default="slim",
        help="slim checkpoint (default), ONNX model, torch.export program (.pt2) or TorchScript",
    )
    parser.add_argument("--fp16", action="store_true", help="slim: store weights as float16")
    parser.add_argument(
        "--sample-image",
        metavar="FILE",
        help="onnx / torch-export / torchscript: the image traced and checked (onnxruntime / "
        "the loaded program against PyTorch); "
        "default: a random image of INPUT.MIN_SIZE_TEST",
    )
    parser.add_argument(
        "--fixed-size",
        action="store_true",
        help="torch-export: a program for the sample image's size only (default: any height "
        "and width from the largest anchor stride + 1 to INPUT.MAX_SIZE_TEST)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _export(args: argparse.Namespace) -> str:
    cfg = load_config_from_args(args)
    weights = str(cfg.MODEL.WEIGHT)
    if not weights:
        raise ConfigError(
            "MODEL.WEIGHT is empty: give the checkpoint to export, e.g. "
            "MODEL.WEIGHT output/model_final.pth"
        )
    output = Path(args.output)
    if args.format == "slim":
        from detector.export.slim import export_slim

        slim = export_slim(weights, output, cfg, fp16=args.fp16)
        before = Path(weights).stat().st_size
        after = output.stat().st_size
        return (
            f"wrote {output}: {after / 2**20:.2f} MB ({slim['meta']['dtype']}, "
            f"{100 * after / before:.0f}% of {weights}, {before / 2**20:.2f} MB)"
        )
    from detector.export.onnx import export_onnx
    from detector.export.program import export_program

    if args.format == "onnx":
        report = export_onnx(cfg, weights, output, sample_image=args.sample_image)
        return f"wrote {output}; {report}"
    if args.format == "torchscript":
        from detector.export.torchscript import export_torchscript

        report = export_torchscript(cfg, weights, output, sample_image=args.sample_image)
        return f"wrote {output}; {report}"
    report = export_program(
        cfg, weights, output, sample_image=args.sample_image, dynamic=not args.fixed_size
    )
    return f"wrote {output}; {report}"


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(_export(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())

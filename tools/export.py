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

from detector.config import ConfigError, load_config
from detector.engine.checkpoint import CheckpointError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML config")
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
    parser.add_argument(
        "opts",
        nargs="*",
        metavar="KEY VALUE",
        help="config overrides (before or after the options); MODEL.WEIGHT names the checkpoint "
        "to export",
    )
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.opts = [*args.opts, *extra]
    return args


def _export(args: argparse.Namespace) -> str:
    cfg = load_config(args.config_file, args.opts)
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
    from detector.export.onnx import export_onnx, export_program

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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        message = _export(args)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())

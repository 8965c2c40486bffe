"""Convert another project's weights into a checkpoint our GeneralizedRCNN loads (MODEL.WEIGHT).

    tools/convert_weights.py --source torchvision IN.pth OUT.pth
    tools/convert_weights.py --source torchvision-classification resnet50.pth OUT.pth \\
        --config-file configs/e2e_faster_rcnn_R_50_FPN_1x.yaml
    tools/convert_weights.py --source detectron2 model_final.pkl OUT.pth --config-file X.yaml

The output is {"model": state_dict} (torch.save). With a config (for torchvision detection
weights, configs/torchvision/{faster,mask,keypoint}_rcnn_R_50_FPN.yaml by default) the
converted keys are checked against the model it builds: missing keys, unmatched keys and shape
mismatches are printed by name, and the exit status is 1 when any exists (unless
--allow-incomplete).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from detector.config import load_config
from detector.engine.launch import default_argument_parser, run_tool_main
from detector.modeling.conversion import SOURCES, convert_state_dict, load_source_file
from detector.modeling.detector import GeneralizedRCNN

TORCHVISION_CONFIGS = {
    "faster": "configs/torchvision/faster_rcnn_R_50_FPN.yaml",
    "mask": "configs/torchvision/mask_rcnn_R_50_FPN.yaml",
    "keypoint": "configs/torchvision/keypoint_rcnn_R_50_FPN.yaml",
}


def build_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser(
        __doc__.split("\n\n")[0],
        "MODEL.MASK_ON true (applied to the config the keys are checked against)",
        config_required=False,
    )
    parser.add_argument("--source", required=True, choices=sorted(SOURCES))
    parser.add_argument("input", type=Path, help="the source weights (.pth, .pt or .pkl)")
    parser.add_argument("output", type=Path, help="where to write our checkpoint (.pth)")
    parser.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="write the output even when keys are missing, unmatched or of another shape",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _config_path(args: argparse.Namespace, state_dict: dict) -> str:
    """The config to check against: --config-file, or torchvision's by the presence of a mask
    or keypoint head; "" for none."""
    if args.config_file:
        return args.config_file
    if args.source == "torchvision":
        if any(k.startswith("roi_heads.keypoint_") for k in state_dict):
            return TORCHVISION_CONFIGS["keypoint"]
        has_mask = any(k.startswith("roi_heads.mask_") for k in state_dict)
        return TORCHVISION_CONFIGS["mask" if has_mask else "faster"]
    if args.source == "torchvision-classification":
        raise ValueError("--source torchvision-classification needs --config-file")
    return ""


def run(args: argparse.Namespace) -> int:
    state_dict = load_source_file(args.input)
    config_path = _config_path(args, state_dict)
    model = None
    if config_path:
        cfg = load_config(config_path, args.opts)
        model = GeneralizedRCNN.from_config(cfg)
    converted, report = convert_state_dict(args.source, state_dict, model)
    print(report.summary())
    if not report.complete and not args.allow_incomplete:
        raise ValueError(
            f"not written: the conversion is incomplete for {config_path or 'the source'} "
            "(see above); pass --allow-incomplete to write it anyway"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": converted}, args.output)
    print(f"wrote {len(converted)} tensors to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Times every op, forward and backward, against torchvision.ops in the same run.

    python benchmarks/ops.py [--device cpu|cuda] [--threads N] [--op roi_align ...]

Prints a Markdown table with our time, the peer's time and the ratio (ours / peer); the peer is
torchvision at the same dtype, or our float32 kernel where torchvision has none for the dtype
(the float16/bfloat16 rows of `--op reduced_precision`).
Shapes are those of docs/benchmarks.md's tables. Nothing here is asserted: speed goals live in
the table.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import detector  # noqa: E402,F401
from benchmarks.timing import median_ms, print_table  # noqa: E402

CASE_MODULES = [
    "roi_align",
    "roi_pool",
    "ps_roi",
    "deform_conv",
    "deform_roi_pool",
    "nms",
    "conv3x3",
    "paste_masks",
    "reduced_precision",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--op", nargs="*", default=None, help=f"subset of {CASE_MODULES}")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modules = args.op or CASE_MODULES
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    rows = []
    for name in modules:
        module = importlib.import_module(f"benchmarks.cases.{name}")
        for case in module.cases(args.device):
            ours = median_ms(case.ours, args.device, repeat=args.repeat)
            peer = median_ms(case.peer, args.device, repeat=args.repeat) if case.peer else None
            rows.append((case, ours, peer))
    print_table(rows)


if __name__ == "__main__":
    main()

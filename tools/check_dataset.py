"""Check datasets before training: decode every image and read every annotation, listing all
problems at once.

    python tools/check_dataset.py --config-file X.yaml [--datasets NAME ...] [KEY VALUE ...]

Checks DATASETS.TRAIN and DATASETS.TEST (or the --datasets named) and prints one line per
unusable image (unreadable or truncated file, size unlike its annotation, box outside the
image, ...). The exit status is 0 when every dataset is clean, else 1. Bad images can also be
skipped during training: DATALOADER.SKIP_BAD_IMAGES true.
"""

from __future__ import annotations

import argparse
import sys

from detector.config import Config
from detector.data.catalog import get_dataset
from detector.data.check import find_problems
from detector.data.errors import DatasetError
from detector.engine.launch import default_argument_parser, load_config_from_args, run_tool_main


def build_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser(__doc__.splitlines()[0], "DATASETS.SHARED_ROOT /data/shared")
    parser.add_argument(
        "--datasets",
        nargs="+",
        metavar="NAME",
        default=None,
        help="the datasets to check (default: DATASETS.TRAIN and DATASETS.TEST)",
    )
    return parser


def _names(cfg: Config, args: argparse.Namespace) -> list[tuple[str, str]]:
    """(name, role) pairs: the --datasets named, else DATASETS.TRAIN then DATASETS.TEST."""
    if args.datasets:
        return [(name, "") for name in args.datasets]
    pairs = [(str(n), "train") for n in cfg.DATASETS.TRAIN]
    pairs += [(str(n), "test") for n in cfg.DATASETS.TEST if (str(n), "train") not in pairs]
    if not pairs:
        raise DatasetError("DATASETS.TRAIN and DATASETS.TEST are empty: nothing to check")
    return pairs


def check(name: str, role: str, cfg: Config) -> int:
    """Prints the problems of one dataset and a summary line; returns their number."""
    dataset = get_dataset(name, cfg, role)
    count = 0
    for problem in find_problems(dataset):
        print(f"{name}: {problem}", flush=True)
        count += 1
    print(f"{name}: {len(dataset)} images, {count} with problems", flush=True)
    return count


def run(args: argparse.Namespace) -> int:
    cfg = load_config_from_args(args)
    results = {name: check(name, role, cfg) for name, role in _names(cfg, args)}
    bad = {name: n for name, n in results.items() if n}
    if bad:
        listing = ", ".join(f"{name} ({n})" for name, n in bad.items())
        raise DatasetError(f"images with problems (listed above) in {listing}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())

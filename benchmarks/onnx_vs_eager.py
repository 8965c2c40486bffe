"""onnxruntime (CPU) against our eager PyTorch (CPU) per image, on the same network inputs.

    python benchmarks/onnx_vs_eager.py [--min-size 320 --max-size 533 --threads 1 --repeat 3]

Builds the random-weight tiny Mask R-CNN of the export tests (R-18-FPN, quarter width, made
decisive as there), exports it with detector.export.export_onnx traced on the first image, and
times, per image of ../shared/data (the export proof test's 7 images), the graph alone: eager
InferenceModel vs onnxruntime's session.run (best of --repeat), then prints both and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detector.config import merge_opts  # noqa: E402
from detector.data import read_image  # noqa: E402
from detector.export.inference_model import InferenceModel, prepare_image  # noqa: E402
from detector.export.onnx import export_onnx  # noqa: E402
from tests.export.test_deploy import IMAGES, OPTS, make_model  # noqa: E402


def best_time(fn, repeat: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=533)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(args.threads)
    data = REPO.parent / "shared" / "data"
    sizes = ["INPUT.MIN_SIZE_TEST", str(args.min_size), "INPUT.MAX_SIZE_TEST", str(args.max_size)]
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model("mask", Path(tmp))
        cfg = merge_opts(model.cfg, [*OPTS, *sizes])
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(cfg, model.checkpoint, onnx_path, sample_image=data / IMAGES[0], check=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        wrapper = InferenceModel(model.predictor.model).eval()
        print(f"threads {args.threads}, MIN_SIZE_TEST {args.min_size}, MAX {args.max_size}")
        print("| image | input | detections | eager ms | onnxruntime ms | eager / ort |")
        print("|---|---|---|---|---|---|")
        for name in IMAGES:
            image = prepare_image(cfg, read_image(data / name))
            with torch.no_grad():
                count = len(wrapper(image)[1])
                eager = best_time(lambda: wrapper(image), args.repeat)  # noqa: B023
            feed = {"image": image.numpy()}
            ort = best_time(lambda: session.run(None, feed), args.repeat)  # noqa: B023
            print(
                f"| {Path(name).name[:24]} | {tuple(image.shape[-2:])} | {count} | "
                f"{eager * 1e3:.1f} | {ort * 1e3:.1f} | {eager / ort:.2f} |"
            )


if __name__ == "__main__":
    main()

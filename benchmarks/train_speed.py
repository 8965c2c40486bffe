"""Training and inference speed of our R-50-FPN Faster/Mask R-CNN next to torchvision's.

Both models get the same settings: configs/torchvision/*.yaml on our side, and on torchvision's a
ResNet-50 with FrozenBatchNorm2d and 3 trainable stages (trainable_backbone_layers=3 <->
FREEZE_CONV_BODY_AT 2), built by hand because `fasterrcnn_resnet50_fpn(weights=None,
weights_backbone=None)` silently switches to BatchNorm2d and 5 trainable stages. torchvision's
model is randomly initialised and ours gets the same weights, converted
(`convert_torchvision_detection`, as tools/convert_weights.py does), so both compute the same
proposals, sample as many foreground RoIs and do the same work (`--own-init` keeps our own
random initialisation instead: the RoI counts then differ, and so does the work). Both see
identical images already at the target size (torchvision's min_size / max_size are set so that
its transform keeps the size) and the same boxes, labels and masks.
Ours and torchvision's runs are interleaved (alternating which goes first) to share the noise of
a loaded machine.

Prints a Markdown table: seconds per training iteration (forward + backward + SGD step, median
over --iters after one warm-up; the learning rate is 0 by default, so that the weights, and with
them the proposals and RoI counts, stay equal from step to step and between the two models),
peak memory of one training iteration, inference seconds per image (batch 1, median), the peak
memory of one inference, and the
ratio ours/torchvision. `--precision fp32 bf16` runs each model in both precisions in the same
interleaved run (bf16: CPU/CUDA autocast to bfloat16 around the training step and inference, on
both sides, weights and optimizer in float32; ours is a second model built with MODEL.PRECISION
bfloat16, so channels-last, with the same weights), with the ratio to torchvision's run at the
same precision and, for bf16, to torchvision's float32 run.

Peak memory: on CUDA `torch.cuda.max_memory_allocated` minus the memory allocated before the
iteration; on the CPU the peak resident set size of the process during the iteration (VmHWM from
/proc/self/status, reset through /proc/self/clear_refs) minus the RSS before it, after
the recycled-memory cache of our ops has been emptied and `malloc_trim(0)` has handed freed heap
memory back to the OS, so that neither model starts the iteration with memory kept from earlier
ones.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/train_speed.py --threads 1 --iters 3
    PYTHONPATH=$PWD .venv/bin/python benchmarks/train_speed.py --threads 2 --precision fp32 bf16
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from benchmarks.timing import wall_seconds
from detector.config import load_config, merge_opts
from detector.modeling.conversion import convert_torchvision_detection
from detector.modeling.detector import GeneralizedRCNN
from detector.structures import Boxes, Instances
from detector.structures.masks import BitMasks

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "faster": ROOT / "configs/torchvision/faster_rcnn_R_50_FPN.yaml",
    "mask": ROOT / "configs/torchvision/mask_rcnn_R_50_FPN.yaml",
}
NUM_CLASSES = 91


@dataclass
class Inputs:
    """The same batch in both models' formats.

    images_u8: N uint8 Tensor[3, H, W] (ours); images_f: the same / 255 as float (torchvision).
    """

    images_u8: list[Tensor]
    images_f: list[Tensor]
    targets_ours: list[Instances]
    targets_tv: list[dict[str, Tensor]]


def make_inputs(batch: int, height: int, width: int, device: str, seed: int = 0) -> Inputs:
    """Random images and 4 boxes per image with labels in 1..90 and elliptic masks."""
    gen = torch.Generator().manual_seed(seed)
    images_u8, images_f, t_ours, t_tv = [], [], [], []
    ys = torch.arange(height).view(-1, 1).float()
    xs = torch.arange(width).view(1, -1).float()
    for _ in range(batch):
        image = torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8)
        centers = torch.rand(4, 2, generator=gen) * torch.tensor([width * 0.6, height * 0.6])
        centers += torch.tensor([width * 0.2, height * 0.2])
        half = 20 + torch.rand(4, 2, generator=gen) * torch.tensor([width * 0.15, height * 0.15])
        boxes = torch.cat([centers - half, centers + half], dim=1)  # (4, 4) xyxy
        labels = torch.randint(1, NUM_CLASSES, (4,), generator=gen)
        # (4, H, W) filled ellipses inscribed in the boxes
        cx, cy = centers[:, 0].view(-1, 1, 1), centers[:, 1].view(-1, 1, 1)
        hx, hy = half[:, 0].view(-1, 1, 1), half[:, 1].view(-1, 1, 1)
        masks = ((xs - cx) / hx) ** 2 + ((ys - cy) / hy) ** 2 <= 1.0
        images_u8.append(image.to(device))
        images_f.append((image.float() / 255.0).to(device))
        t_ours.append(
            Instances(
                (height, width),
                gt_boxes=Boxes(boxes.to(device)),
                gt_classes=labels.to(device),
                gt_masks=BitMasks(masks.to(device)),
            )
        )
        t_tv.append(
            {
                "boxes": boxes.to(device),
                "labels": labels.to(device),
                "masks": masks.to(torch.uint8).to(device),
            }
        )
    return Inputs(images_u8, images_f, t_ours, t_tv)


def build_ours(
    kind: str, score_thresh: float, height: int, width: int, precision: str = "float32"
) -> nn.Module:
    """Our model from configs/torchvision/<kind>.yaml, random weights, sized for HxW inputs, in
    MODEL.PRECISION `precision` (bfloat16: also channels-last, MODEL.MEMORY_FORMAT auto)."""
    cfg = load_config(CONFIGS[kind])
    size = ["INPUT.MIN_SIZE_TRAIN", f"({min(height, width)},)"]
    size += ["INPUT.MAX_SIZE_TRAIN", str(max(height, width))]
    size += ["INPUT.MIN_SIZE_TEST", str(min(height, width))]
    size += ["INPUT.MAX_SIZE_TEST", str(max(height, width))]
    opts = [*size, "MODEL.ROI_HEADS.SCORE_THRESH", str(score_thresh)]
    cfg = merge_opts(cfg, [*opts, "MODEL.PRECISION", precision])
    return GeneralizedRCNN.from_config(cfg)


def build_torchvision(kind: str, score_thresh: float, height: int, width: int) -> nn.Module:
    """torchvision's R-50-FPN model with FrozenBN and 3 trainable stages, no resizing at HxW."""
    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
    cls = MaskRCNN if kind == "mask" else FasterRCNN
    return cls(
        backbone,
        num_classes=NUM_CLASSES,
        min_size=min(height, width),
        max_size=max(height, width),
        box_score_thresh=score_thresh,
    )


def load_torchvision_weights(ours: nn.Module, torchvision_model: nn.Module) -> None:
    """Copies torchvision's weights into our model (every key converted, shapes checked)."""
    state, report = convert_torchvision_detection(torchvision_model.state_dict(), ours)
    if not report.complete:
        raise RuntimeError(f"weight conversion incomplete:\n{report.summary()}")
    ours.load_state_dict(state, strict=True)


def _trim_heap() -> None:
    """Returns freed memory to the OS, so RSS reflects live memory: our ops' recycled blocks
    (ops/cpu/recycled_memory.h) and glibc's free heap memory."""
    torch.ops.detector._release_recycled_memory()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class PeakMemory:
    """Peak memory (MiB) a block adds on top of what was live before it."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.mib: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            _trim_heap()
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self._base = _status_kb("VmRSS") * 1024
            except OSError:
                self._base = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        elif self._base is not None:
            self.mib = (_status_kb("VmHWM") * 1024 - self._base) / 2**20


@dataclass
class Runner:
    """One model with its optimizer and the timing samples collected so far."""

    name: str
    model: nn.Module
    train_step: Callable[[], None]
    infer: Callable[[int], object]
    train_s: list[float] = field(default_factory=list)
    infer_s: list[float] = field(default_factory=list)
    peak_mib: float | None = None
    infer_peak_mib: float | None = None


def make_runner(
    name: str,
    model: nn.Module,
    images: list[Tensor],
    targets: list,
    lr: float = 0.0,
    precision: str = "fp32",
    device: str = "cpu",
) -> Runner:
    """Wraps a detection model: a training step on (images, targets) and inference on image i.

    The SGD step (momentum 0.9, weight decay 1e-4) does the same arithmetic whatever `lr`; with
    lr 0 the weights stay as they are, so every step proposes and samples the same RoIs.
    precision "bf16": the model's forward (and so its backward) under bfloat16 autocast.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    bf16 = precision == "bf16"

    def train_step() -> None:
        model.train()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    def infer(i: int) -> object:
        model.eval()
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            return model([images[i]])

    return Runner(f"{name} {precision}", model, train_step, infer)


def bench_group(runners: list[Runner], iters: int, n_images: int, device: str) -> None:
    """Warm-up, memory, then `iters` interleaved train steps and inferences of every runner (the
    order rotates from one iteration to the next)."""
    for runner in runners:
        runner.train_step()  # warm-up
        with PeakMemory(device) as mem:
            runner.train_step()
        runner.peak_mib = mem.mib
        runner.infer(0)  # warm-up
        with PeakMemory(device) as mem:
            runner.infer(0)
        runner.infer_peak_mib = mem.mib
    for it in range(iters):
        shift = it % len(runners)
        order = runners[shift:] + runners[:shift]
        for runner in order:
            runner.train_s.append(wall_seconds(runner.train_step, device))
        for runner in order:
            i = it % n_images
            runner.infer_s.append(wall_seconds(lambda r=runner, i=i: r.infer(i), device))


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def _fmt(x: float | None, spec: str) -> str:
    return format(x, spec) if x is not None else "n/a"


@dataclass
class Row:
    """One model at one precision: our runner, torchvision's, and torchvision's float32 one."""

    kind: str
    precision: str
    ours: Runner
    peer: Runner
    peer_fp32: Runner


def print_table(rows: list[Row]) -> None:
    """Markdown table: per model and precision, train s/iter, the training step's peak MiB,
    inference s/image, inference's peak MiB, each with the ratios ours/torchvision at the same
    precision and ours / torchvision float32."""
    print(
        "| model | precision | train s/iter ours | tv | ratio | vs tv fp32 | peak MiB ours | tv "
        "| ratio | vs tv fp32 | infer s/img ours | tv | ratio | vs tv fp32 "
        "| infer peak MiB ours | tv | ratio | vs tv fp32 |"
    )
    print("|---|---|" + "---:|" * 16)
    for row in rows:
        runners = (row.ours, row.peer, row.peer_fp32)
        train = [statistics.median(r.train_s) for r in runners]
        infer = [statistics.median(r.infer_s) for r in runners]
        peak = [r.peak_mib for r in runners]
        infer_peak = [r.infer_peak_mib for r in runners]
        cells = [row.kind, row.precision]
        columns = ((train, ".3f"), (peak, ".0f"), (infer, ".3f"), (infer_peak, ".0f"))
        for (ours, peer, peer32), spec in columns:
            cells += [_fmt(ours, spec), _fmt(peer, spec), _ratio(ours, peer), _ratio(ours, peer32)]
        print("| " + " | ".join(cells) + " |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations after warm-up")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 683), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["faster", "mask"], choices=list(CONFIGS))
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        choices=["fp32", "bf16"],
        help="bf16: bfloat16 autocast around both models' training step and inference; several "
        "precisions run interleaved in one run (torchvision's fp32 run is always included)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=0.0,
        help="SGD learning rate of the training steps. 0 (default) keeps the weights: with any "
        "other rate the two models' random anchor / RoI sampling makes their weights, proposals "
        "and mask-head RoI counts drift apart step by step, and the work with them",
    )
    parser.add_argument(
        "--own-init",
        action="store_true",
        help="keep our model's own random initialisation instead of torchvision's weights "
        "(the two then propose and sample different RoIs)",
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.0,
        help="box score threshold of both models at inference (0 keeps 100 detections/image "
        "with random weights, so the mask head and the pasting run as on a trained model)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    height, width = args.size
    inputs = make_inputs(args.batch, height, width, args.device)
    precisions = ["fp32"] + [p for p in args.precision if p != "fp32"]
    rows: list[Row] = []
    for kind in args.models:
        ours_model = build_ours(kind, args.score_thresh, height, width).to(args.device)
        tv_model = build_torchvision(kind, args.score_thresh, height, width).to(args.device)
        if not args.own_init:
            load_torchvision_weights(ours_model, tv_model)
        ours_models = {"fp32": ours_model}
        if "bf16" in precisions:  # our bfloat16 model: channels-last, the same weights
            ours_models["bf16"] = build_ours(kind, args.score_thresh, height, width, "bfloat16").to(
                args.device
            )
            ours_models["bf16"].load_state_dict(ours_model.state_dict())
        runners: dict[tuple[str, str], Runner] = {}
        for precision in precisions:
            for side, model, images, targets in (
                ("ours", ours_models[precision], inputs.images_u8, inputs.targets_ours),
                ("torchvision", tv_model, inputs.images_f, inputs.targets_tv),
            ):
                runners[side, precision] = make_runner(
                    side, model, images, targets, args.lr, precision, args.device
                )
        bench_group(list(runners.values()), args.iters, args.batch, args.device)
        for precision in precisions:
            if precision in args.precision:
                rows.append(
                    Row(
                        kind,
                        precision,
                        runners["ours", precision],
                        runners["torchvision", precision],
                        runners["torchvision", "fp32"],
                    )
                )
        del ours_model, tv_model, runners
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"device={args.device} threads={torch.get_num_threads()} batch={args.batch} "
        f"size={height}x{width} iters={args.iters} "
        f"weights={'own' if args.own_init else 'same'} lr={args.lr} torch={torch.__version__} "
        f"loadavg(after)={load}"
    )
    print_table(rows)


if __name__ == "__main__":
    main()

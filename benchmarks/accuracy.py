"""Does our training learn as well as torchvision's? The same network trained both ways, real data.

For each dataset and seed two processes run at the same time, one thread each:
- ours: `detector.engine.launch.train` (what tools/train.py runs) on a config built here;
- torchvision: torchvision's FasterRCNN / MaskRCNN with the same trunk, FPN, anchors, proposal
  counts, RoI sampling and head sizes, trained by a plain loop in the style of torchvision's
  detection references (SGD with momentum, linear warm-up then steps, gradient clipping), written
  here.
Both see exactly the same batches: the torchvision loop reads our training loader built from the
same config and seed (same images, same resize and flips, same order); the images are already at
the training size, so torchvision's own transform keeps their size and only normalises them.
Both optimizers are identical: one learning rate and one weight decay for every parameter (our
SOLVER.BIAS_LR_FACTOR 1, WEIGHT_DECAY_BIAS and WEIGHT_DECAY_NORM = WEIGHT_DECAY).

Both trained models are then scored by the same code: our test loader, our inference loop (the
torchvision model is wrapped to return our Instances in the input's pixels) and pycocotools on one
ground-truth JSON converted from the dataset. Printed per run and as mean +- spread over seeds:
AP, AP50, AP75, APs/m/l (and mask AP for Mask R-CNN), median seconds per iteration, peak RSS of the
training process, and ours/torchvision ratios.

Ablations: `--ours-opts KEY VALUE ...` are applied to our side only (e.g.
`MODEL.RPN.STRADDLE_THRESH -1`), to measure what a default costs or gains.

Long runs survive being stopped: both sides save their whole training state every
CHECKPOINT_PERIOD iterations (ours: the trainer's periodic checkpoint; torchvision's loop: model,
optimizer, schedule, RNG and the seconds so far in `torchvision_state.pth`), and `--resume`
continues each unfinished run of the command from its last state, with the batches and random
draws an uninterrupted run would have had, and skips the finished ones (their result.json).
A resumed run's peak RSS is that of its last process.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/accuracy.py --dataset bccd --seeds 1 2 3 \\
        --iters 600 --out runs/accuracy [--resume]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from detector.config import Config

ROOT = Path(__file__).resolve().parents[1]
# Iterations between the resumable states both sides save (a few seconds of saving per hour).
CHECKPOINT_PERIOD = 100
TV_STATE = "torchvision_state.pth"

# Each dataset: (train set, test set, Mask R-CNN?, classes incl. background, input min/max sides,
# anchor sizes per FPN level, images pixel mean and std (RGB, 0..1)).
DATASETS: dict[str, dict[str, Any]] = {
    "bccd": dict(
        train="bccd_trainval", test="bccd_test", mask=False, classes=4, size=(384, 640),
        anchors=(32, 64, 128, 256, 512), mean=(0.66, 0.62, 0.68), std=(0.2, 0.2, 0.2),
    ),
    "chess": dict(
        train="chess_valid", test="chess_test", mask=False, classes=15, size=(384, 640),
        anchors=(32, 64, 128, 256, 512), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    ),
    "dsb2018": dict(
        train="dsb2018_train", test="dsb2018_val", mask=True, classes=2, size=(256, 384),
        anchors=(8, 16, 32, 64, 128), mean=(0.17, 0.16, 0.18), std=(0.25, 0.25, 0.25),
    ),
    # frame-filling white blood cells cropped from BCCD (benchmarks/wbc_crops.py), one class
    "wbc": dict(
        train="wbc_train", test="wbc_test", mask=False, classes=2, size=(256, 416),
        anchors=(32, 64, 128, 256, 512), mean=(0.66, 0.62, 0.68), std=(0.2, 0.2, 0.2),
    ),
}  # fmt: skip
# Where the WBC crops are written (once) by the driver: generated data, never in the repository.
CROPS_ROOT = ROOT / "output" / "accuracy-data" / "wbc"


def _custom_opts(dataset: str) -> list[str]:
    """DATASETS.CUSTOM declarations of the generated datasets (the WBC crops)."""
    if dataset != "wbc":
        return []
    opts = []
    for split in ("train", "test"):
        key = f"DATASETS.CUSTOM.wbc_{split}"
        opts += [f"{key}.FORMAT", "coco", f"{key}.ANN_FILE", str(CROPS_ROOT / f"{split}.json")]
        opts += [f"{key}.IMAGE_DIR", str(CROPS_ROOT / split)]
    return opts


def _tuple(values: Any) -> str:
    return "(" + ", ".join(str(v) for v in values) + ",)"


def config_opts(dataset: str, seed: int, iters: int, out: Path) -> list[str]:
    """Our config (on top of Base-RCNN-FPN / Base-Mask-RCNN-FPN) for the benchmark network:
    full-width ResNet-18 + FPN 256, GroupNorm(32) in the trunk, trained from scratch."""
    d = DATASETS[dataset]
    steps = (int(iters * 0.75), int(iters * 0.9))
    return [
        "MODEL.DEVICE", "cpu", "MODEL.PRECISION", "float32",  # torchvision's side: float32
        "MODEL.BACKBONE.CONV_BODY", "R-18-FPN", "MODEL.BACKBONE.FREEZE_CONV_BODY_AT", "0",
        "MODEL.RESNETS.NORM", "GN", "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "256",
        "MODEL.RPN.ANCHOR_SIZES", _tuple(d["anchors"]),
        "MODEL.ROI_BOX_HEAD.NUM_CLASSES", str(d["classes"]),
        "INPUT.MIN_SIZE_TRAIN", _tuple([d["size"][0]]), "INPUT.MAX_SIZE_TRAIN", str(d["size"][1]),
        "INPUT.MIN_SIZE_TEST", str(d["size"][0]), "INPUT.MAX_SIZE_TEST", str(d["size"][1]),
        "INPUT.TO_BGR255", "False",
        "INPUT.PIXEL_MEAN", _tuple(d["mean"]), "INPUT.PIXEL_STD", _tuple(d["std"]),
        "DATASETS.TRAIN", _tuple([f'"{d["train"]}"']), "DATASETS.TEST", _tuple([f'"{d["test"]}"']),
        "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.02", "SOLVER.MOMENTUM", "0.9",
        "SOLVER.WEIGHT_DECAY", "0.0001", "SOLVER.WEIGHT_DECAY_BIAS", "0.0001",
        "SOLVER.WEIGHT_DECAY_NORM", "0.0001", "SOLVER.BIAS_LR_FACTOR", "1.0",
        "SOLVER.WARMUP_ITERS", str(min(100, iters // 4)), "SOLVER.WARMUP_FACTOR", "0.001",
        "SOLVER.STEPS", _tuple(steps), "SOLVER.MAX_ITER", str(iters),
        "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD), "SOLVER.MAX_CHECKPOINTS_KEPT", "1",
        "SOLVER.CLIP_GRADIENTS.ENABLED", "True",
        "SOLVER.CLIP_GRADIENTS.MAX_NORM", "10.0",
        "TEST.IMS_PER_BATCH", "2", "SEED", str(seed), "OUTPUT_DIR", str(out),
    ] + _custom_opts(dataset)  # fmt: skip


def load_cfg(dataset: str, seed: int, iters: int, out: Path, ours_opts: list[str]) -> Any:
    """The run's config; the dataset names are the tests' names of ../shared/data."""
    from detector.config import load_config
    from tests.shared_datasets import register_shared_datasets

    register_shared_datasets()

    base = "Base-Mask-RCNN-FPN.yaml" if DATASETS[dataset]["mask"] else "Base-RCNN-FPN.yaml"
    return load_config(ROOT / "configs" / base, config_opts(dataset, seed, iters, out) + ours_opts)


# ------------------------------------------------------------------------------------------------
# torchvision's side
# ------------------------------------------------------------------------------------------------
def build_torchvision(cfg: Config) -> nn.Module:
    """torchvision's Faster/Mask R-CNN with the same network and settings as our config."""
    from torchvision.models import resnet18
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    groups = int(cfg.MODEL.GROUP_NORM.NUM_GROUPS)
    trunk = resnet18(norm_layer=lambda channels: nn.GroupNorm(groups, channels))
    backbone = _resnet_fpn_extractor(trunk, trainable_layers=5)
    rpn, heads = cfg.MODEL.RPN, cfg.MODEL.ROI_HEADS
    anchors = AnchorGenerator(
        tuple((float(s),) for s in rpn.ANCHOR_SIZES),
        tuple(tuple(float(r) for r in rpn.ASPECT_RATIOS) for _ in rpn.ANCHOR_SIZES),
    )
    cls = MaskRCNN if cfg.MODEL.MASK_ON else FasterRCNN
    return cls(
        backbone,
        num_classes=int(cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES),
        min_size=int(cfg.INPUT.MIN_SIZE_TRAIN[0]),
        max_size=int(cfg.INPUT.MAX_SIZE_TRAIN),
        image_mean=list(cfg.INPUT.PIXEL_MEAN),
        image_std=list(cfg.INPUT.PIXEL_STD),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=int(rpn.PRE_NMS_TOP_N_TRAIN),
        rpn_post_nms_top_n_train=int(rpn.FPN_POST_NMS_TOP_N_TRAIN),
        rpn_pre_nms_top_n_test=int(rpn.PRE_NMS_TOP_N_TEST),
        rpn_post_nms_top_n_test=int(rpn.FPN_POST_NMS_TOP_N_TEST),
        rpn_batch_size_per_image=int(rpn.BATCH_SIZE_PER_IMAGE),
        box_batch_size_per_image=int(heads.BATCH_SIZE_PER_IMAGE),
        box_positive_fraction=float(heads.POSITIVE_FRACTION),
        box_score_thresh=float(heads.SCORE_THRESH),
        box_nms_thresh=float(heads.NMS),
        box_detections_per_img=int(heads.DETECTIONS_PER_IMG),
    )


def _tv_targets(targets: list[Any], with_masks: bool) -> list[dict[str, Tensor]]:
    out = []
    for inst in targets:
        t = {"boxes": inst.gt_boxes.tensor.float(), "labels": inst.gt_classes.long()}
        if with_masks:
            t["masks"] = inst.gt_masks.tensor.to(torch.uint8)  # (K, H, W) at the image's size
        out.append(t)
    return out


def _lr_factor(cfg: Config, it: int) -> float:
    s = cfg.SOLVER
    warm = 1.0
    if it < s.WARMUP_ITERS:
        alpha = it / s.WARMUP_ITERS
        warm = s.WARMUP_FACTOR * (1 - alpha) + alpha
    return warm * s.GAMMA ** sum(it >= step for step in s.STEPS)


def _save_tv_state(path: Path, state: dict[str, Any]) -> None:
    from detector.engine.checkpoint import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(state, f))


def train_torchvision(cfg: Config, resume: bool = False) -> tuple[nn.Module, list[float], bool]:
    """The plain loop: batch -> losses -> backward -> clip -> SGD step. Saves its state every
    CHECKPOINT_PERIOD iterations; with `resume`, continues from that state when there is one.
    Returns the model, the seconds of each iteration and whether it resumed."""
    from detector.data import build_train_loader
    from detector.engine.checkpoint import load_checkpoint_file

    s = cfg.SOLVER
    model = build_torchvision(cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=s.BASE_LR, momentum=s.MOMENTUM, weight_decay=s.WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: _lr_factor(cfg, it))
    state_path = Path(cfg.OUTPUT_DIR) / TV_STATE
    start, seconds = 0, []
    resumed = resume and state_path.is_file()
    if resumed:
        state = load_checkpoint_file(state_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])  # the RPN's and RoI heads' samplers draw from it
        start, seconds = int(state["iteration"]), list(state["seconds"])
        print(f"resumed at iteration {start} from {state_path}", flush=True)
    batches: Iterator[Any] = iter(build_train_loader(cfg, start_iter=start))
    for it in range(start, s.MAX_ITER):
        begin = time.perf_counter()
        images, targets, _metas = next(batches)
        images_f = [im.float() / 255.0 for im in images]  # (3, H, W) in 0..1
        losses = model(images_f, _tv_targets(targets, bool(cfg.MODEL.MASK_ON)))
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"torchvision loss is {loss.item()}: {losses}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.CLIP_GRADIENTS.ENABLED:
            torch.nn.utils.clip_grad_norm_(params, s.CLIP_GRADIENTS.MAX_NORM)
        opt.step()
        schedule.step()
        seconds.append(time.perf_counter() - begin)
        if (it + 1) % 20 == 0:
            print(f"iteration {it + 1}: loss {loss.item():.4f}, {seconds[-1]:.3f} s", flush=True)
        if (it + 1) % CHECKPOINT_PERIOD == 0 and it + 1 < s.MAX_ITER:
            state = dict(
                model=model.state_dict(), optimizer=opt.state_dict(),
                schedule=schedule.state_dict(), rng=torch.get_rng_state(), iteration=it + 1,
                seconds=seconds,
            )  # fmt: skip
            _save_tv_state(state_path, state)
    return model, seconds, resumed


def iteration_seconds(metrics_jsonl: str) -> list[float]:
    """Each iteration's time from our trainer's metrics.jsonl, in iteration order; a resumed
    run appends the iterations it repeats after its last checkpoint: the last record counts."""
    times: dict[int, float] = {}
    for line in metrics_jsonl.splitlines():
        record = json.loads(line)
        if "time" in record:
            times[int(record["iteration"])] = float(record["time"])
    return [times[k] for k in sorted(times)]


class TorchvisionAsOurs(nn.Module):
    """Eval-mode adapter: our inference loop's interface (uint8 (3, H, W) images at the test
    size -> one Instances per image at the network input's size) around a torchvision detection
    model. Its parts are run up to the RoI heads, so that the mask head's (R, 1, M, M)
    probabilities reach our post-processing unpasted, as our model's do: both sides' masks are
    pasted and cut at 0.5 by the same code."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: list[Tensor]) -> list[Any]:
        from detector.structures import Boxes, Instances

        m = self.model
        batch, _ = m.transform([im.float() / 255.0 for im in images])  # normalised, padded
        features = m.backbone(batch.tensors)
        proposals, _ = m.rpn(batch, features)
        outputs, _ = m.roi_heads(features, proposals, batch.image_sizes)
        results = []
        for size, out in zip(batch.image_sizes, outputs, strict=True):
            fields = dict(
                pred_boxes=Boxes(out["boxes"]), scores=out["scores"], pred_classes=out["labels"]
            )
            if "masks" in out:
                fields["pred_masks"] = out["masks"]  # (R, 1, M, M) probabilities
            results.append(Instances(tuple(size), **fields))
        return results


# ------------------------------------------------------------------------------------------------
# One run (a child process) and the evaluation both sides share
# ------------------------------------------------------------------------------------------------
def evaluate(model: nn.Module, cfg: Config, out: Path) -> dict[str, float]:
    """pycocotools on the converted ground truth of DATASETS.TEST[0], our inference loop."""
    from detector.data import build_test_loader
    from detector.evaluation import inference_on_dataset
    from detector.evaluation.build import _coco_tasks, _converted_evaluator

    loader = build_test_loader(cfg, cfg.DATASETS.TEST[0])
    dataset = loader.dataset.dataset
    evaluator = _converted_evaluator(cfg, dataset, out / "inference", _coco_tasks(cfg, dataset))
    return inference_on_dataset(model, loader, evaluator, progress=False)


def train_and_evaluate(
    side: str, cfg: Config, tv_flush_denormals: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Trains one side on `cfg` (in this process; with `resume`, from its last saved state),
    scores it; returns the timing, the peak RSS so far, the parameter count and the metrics."""
    if side == "ours":
        from detector.engine.checkpoint import POINTER
        from detector.engine.launch import train

        resumed = resume and (Path(cfg.OUTPUT_DIR) / POINTER).is_file()
        result = train(cfg, resume=resume, tensorboard=False, progress_bar=False)
        model = result.model
        seconds = iteration_seconds((Path(cfg.OUTPUT_DIR) / "metrics.jsonl").read_text())
    else:
        from detector.engine.launch import seed_all

        seed_all(cfg.SEED)
        # Denormal gradients slow a from-scratch run's iterations up to 8x on x86; our trainer
        # flushes them (SOLVER.FLUSH_DENORMALS), so the reference loop does too (one thread:
        # torch's flag on this thread is enough), to compare the networks, not that flag.
        torch.set_flush_denormal(tv_flush_denormals)
        tv_model, seconds, resumed = train_torchvision(cfg, resume)
        model = TorchvisionAsOurs(tv_model)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert model is not None
    return {
        "s_per_iter": statistics.median(seconds[min(5, len(seconds) - 1) :]),
        "peak_rss_mb": peak_mb,
        "resumed": resumed,
        "params": sum(p.numel() for p in model.parameters()),
        "metrics": evaluate(model, cfg, Path(cfg.OUTPUT_DIR)),
    }


def run_child(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    out = Path(args.out)
    cfg = load_cfg(args.dataset, args.seed, args.iters, out, args.ours_opts)
    record = {
        **_run_args(args.side, args.seed, args),  # what _finished compares
        **train_and_evaluate(args.side, cfg, args.tv_flush_denormals, args.resume),
    }
    (out / "result.json").write_text(json.dumps(record, indent=1))
    (out / TV_STATE).unlink(missing_ok=True)  # finished: the final weights are all it needs


# ------------------------------------------------------------------------------------------------
# The driver
# ------------------------------------------------------------------------------------------------
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _run_args(side: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """What makes a run: a folder holding another run's state cannot be resumed by this one."""
    opts = args.ours_opts if side == "ours" else []
    return dict(
        side=side, dataset=args.dataset, seed=seed, iters=args.iters, ours_opts=opts,
        tv_flush_denormals=args.tv_flush_denormals,
    )  # fmt: skip


def _check_resumable(out: Path, run_args: dict[str, Any]) -> None:
    saved = _load(out / "run_args.json")
    if saved is not None and saved != run_args:
        raise SystemExit(
            f"--resume: {out} holds a run of other arguments ({saved}), not {run_args}; "
            "give another --out or delete that folder"
        )


def _child(side: str, seed: int, args: argparse.Namespace) -> subprocess.Popen:
    out = Path(args.out) / args.dataset / f"seed{seed}" / side
    run_args = _run_args(side, seed, args)
    if args.resume:
        _check_resumable(out, run_args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_args.json").write_text(json.dumps(run_args, indent=1))
    cmd = [
        sys.executable, __file__, "--child", side, "--dataset", args.dataset, "--seed", str(seed),
        "--iters", str(args.iters), "--out", str(out),
    ]  # fmt: skip
    if not args.tv_flush_denormals:
        cmd.append("--no-tv-flush-denormals")
    if args.resume:
        cmd.append("--resume")
    if side == "ours":  # REMAINDER: last
        cmd += ["--ours-opts", *args.ours_opts]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = (out / "run.log").open("a" if args.resume else "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _finished(out: Path, seed: int, args: argparse.Namespace) -> bool:
    result = _load(out / "result.json")
    run_args = _run_args(out.name, seed, args)
    return result is not None and all(result.get(k) == v for k, v in run_args.items())


def _tasks(record: dict[str, Any]) -> list[str]:
    return sorted({k.split("/")[0] for k in record["metrics"] if "/" in k})


def _mean_spread(values: list[float]) -> str:
    """Mean +- sample standard deviation; "nan" where COCO has no such objects (e.g. APs)."""
    if any(v != v for v in values):
        return "nan"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def report(records: list[dict[str, Any]]) -> None:
    """Per run rows, then mean +- standard deviation over seeds, then the ratios."""
    by_side: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_side.setdefault(r["side"], []).append(r)
    tasks = _tasks(records[0])
    head = ["side", "seed"] + [f"{t}/{k}" for t in tasks for k in KEYS] + ["s/iter", "peak MB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in records:
        vals = [f"{r['metrics'].get(f'{t}/{k}', float('nan')):.3f}" for t in tasks for k in KEYS]
        row = [
            r["side"],
            str(r["seed"]),
            *vals,
            f"{r['s_per_iter']:.3f}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        print("| " + " | ".join(row) + " |")
    means = {}
    for side, rs in sorted(by_side.items()):
        cols = [
            _mean_spread([r["metrics"].get(f"{t}/{k}", float("nan")) for r in rs])
            for t in tasks
            for k in KEYS
        ]
        s_iter = statistics.mean(r["s_per_iter"] for r in rs)
        peak = statistics.mean(r["peak_rss_mb"] for r in rs)
        means[side] = (s_iter, peak)
        print("| " + " | ".join([side, "mean", *cols, f"{s_iter:.3f}", f"{peak:.0f}"]) + " |")
    if {"ours", "torchvision"} <= means.keys():
        (t_o, m_o), (t_t, m_t) = means["ours"], means["torchvision"]
        print(
            f"ratios ours/torchvision: time per iteration {t_o / t_t:.2f}, peak RSS {m_o / m_t:.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="bccd")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--out", default="runs/accuracy")
    parser.add_argument("--sides", nargs="+", default=["ours", "torchvision"])
    parser.add_argument("--child", choices=["ours", "torchvision"], help=argparse.SUPPRESS)
    parser.add_argument("--report-only", action="store_true", help="print saved results")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each unfinished run from its last saved state; skip the finished ones",
    )
    parser.add_argument(
        "--no-tv-flush-denormals",
        dest="tv_flush_denormals",
        action="store_false",
        help="let torchvision's loop compute with denormal floats (its default)",
    )
    parser.add_argument("--ours-opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)
    if args.child:
        args.side = args.child
        run_child(args)
        return 0
    if args.dataset == "wbc":
        from benchmarks.wbc_crops import make_wbc_crops
        from detector.config import get_cfg
        from detector.data.catalog import shared_data_root

        make_wbc_crops(shared_data_root(get_cfg()) / "bccd" / "BCCD", CROPS_ROOT)
    records = []
    for seed in args.seeds:
        folder = Path(args.out) / args.dataset / f"seed{seed}"
        if not args.report_only:
            sides = args.sides
            if args.resume:  # a run with a result.json of the same arguments is done
                sides = [side for side in sides if not _finished(folder / side, seed, args)]
            procs = [_child(side, seed, args) for side in sides]
            codes = [p.wait() for p in procs]
            if any(codes):
                print(f"seed {seed}: a run failed ({codes}); logs in {folder}/*/run.log")
                return 1
        records += [r for side in args.sides if (r := _load(folder / side / "result.json"))]
    if records:
        report(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())

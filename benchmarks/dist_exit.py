"""Distributed runs end cleanly every time: repeats 2-process CPU (gloo) runs and counts failures.

Three kinds of run, each repeated `--repeat` times (in this order, one at a time):
- `pytest`: tests/engine/test_dist.py::test_two_gloo_processes_match_one_process;
- `train`: torchrun --nproc_per_node=2 tools/train.py on the shapes Mask R-CNN config, a few
  iterations then the evaluation on shapes_val;
- `test`: torchrun --nproc_per_node=2 tools/test.py on the weights the first `train` run wrote.

A run passes when it exits with 0 and nothing is printed after the tool's own final line (no
"terminate called ...", no warning, no traceback). Prints one line per run and a summary with the
wall time; exits 1 if any run failed. Usage (from the repository root, with .venv built):

    .venv/bin/python benchmarks/dist_exit.py --repeat 20 --kinds train test
    .venv/bin/python benchmarks/dist_exit.py --repeat 50 --kinds pytest
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/shapes/mask_rcnn_R_18_FPN_shapes.yaml"
SMALL = ["SOLVER.IMS_PER_BATCH", "4", "TEST.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(tool: str, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={_free_port()}", str(ROOT / "tools" / tool),
        "--config-file", str(CONFIG), *args,
    ]  # fmt: skip


def _command(kind: str, work: Path, iters: int) -> tuple[list[str], str]:
    """The command line of one run and the prefix its last output line must have."""
    if kind == "pytest":
        test = "tests/engine/test_dist.py::test_two_gloo_processes_match_one_process"
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], "1 passed"
    if kind == "train":
        out = work / "train"
        opts = ["SOLVER.MAX_ITER", str(iters), "OUTPUT_DIR", str(out), *SMALL]
        return _torchrun("train.py", *opts), "outputs (log.txt"
    weights = work / "train0" / "model_final.pth"
    opts = ["MODEL.WEIGHT", str(weights), "OUTPUT_DIR", str(work / "test"), *SMALL]
    return _torchrun("test.py", "--no-progress", *opts), "  outputs: "


def run_once(kind: str, work: Path, index: int, iters: int) -> tuple[bool, float, str]:
    """One run; returns (passed, seconds, what went wrong)."""
    cmd, last_prefix = _command(kind, work, iters)
    if kind == "train":
        cmd[cmd.index(str(work / "train"))] = str(work / f"train{index}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    (work / f"{kind}{index}.log").write_text(proc.stdout + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    errors = [line for line in proc.stderr.splitlines() if _alarming(line)]
    if proc.returncode != 0:
        return False, seconds, f"exit code {proc.returncode}"
    if not last.startswith(last_prefix):
        return False, seconds, f"last line {last!r}"
    if errors:
        return False, seconds, f"stderr: {errors[0]!r}"
    return True, seconds, ""


def _alarming(line: str) -> bool:
    words = ("terminate called", "Traceback", "Fatal Python error", "NOT been destroyed", "SIGABRT")
    return any(w in line for w in words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="runs of each kind")
    parser.add_argument(
        "--kinds", nargs="+", default=["train", "test"], choices=["pytest", "train", "test"]
    )
    parser.add_argument("--iters", type=int, default=4, help="training iterations of a train run")
    parser.add_argument("--keep", metavar="DIR", help="keep outputs and logs here")
    args = parser.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="dist_exit_"))
    work.mkdir(parents=True, exist_ok=True)
    kinds = list(args.kinds)
    if "test" in kinds and "train" not in kinds:
        kinds.insert(0, "train")  # the test runs need weights
        print("(one train run first: the test runs need its weights)")
    failures = 0
    for kind in kinds:
        repeat = 1 if kind == "train" and "train" not in args.kinds else args.repeat
        passed, total = 0, 0.0
        for i in range(repeat):
            ok, seconds, why = run_once(kind, work, i, args.iters)
            passed += ok
            total += seconds
            print(f"{kind} {i + 1}/{repeat}: {'ok' if ok else 'FAILED: ' + why} ({seconds:.1f} s)")
            sys.stdout.flush()
        failures += repeat - passed
        print(f"{kind}: {passed}/{repeat} passed in {total:.0f} s ({total / repeat:.1f} s a run)")
    print(f"logs: {work}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

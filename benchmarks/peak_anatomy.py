"""The peak RSS of one side of the accuracy benchmark (benchmarks/accuracy.py) and what glibc's
heap holds at that moment: the process's RSS and `mallinfo2` sampled every 20 ms while the side
trains (and is scored).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peak_anatomy.py ours \\
        --dataset wbc --iters 24 --out runs/anatomy/ours
    MALLOC_MMAP_THRESHOLD_=131072 PYTHONPATH=$PWD ... peak_anatomy.py ours ...  # an allocator

Prints the peak, when it happened, and at that sample: the heap's size, the bytes in use in it,
the bytes free but kept, and the bytes in mmapped blocks (docs/accuracy.md, Memory). Linux with
glibc >= 2.33 only.
"""

from __future__ import annotations

import argparse
import ctypes
import threading
import time
from pathlib import Path

from benchmarks import accuracy

MB = 1 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # glibc's struct mallinfo2, all size_t
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def _rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("/proc/self/status has no VmRSS")


def sample(samples: list[tuple[float, int, tuple[int, int, int, int]]], stop: threading.Event):
    """Appends (seconds, RSS MB, (heap, in use, free, mmapped) MB) every 20 ms until `stop`."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    start = time.perf_counter()
    while not stop.is_set():
        info = libc.mallinfo2()
        heap = (info.arena // MB, info.uordblks // MB, info.fordblks // MB, info.hblkhd // MB)
        samples.append((time.perf_counter() - start, _rss_mb(), heap))
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=["ours", "torchvision"])
    parser.add_argument("--dataset", choices=sorted(accuracy.DATASETS), default="wbc")
    parser.add_argument("--iters", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="runs/anatomy")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    samples: list[tuple[float, int, tuple[int, int, int, int]]] = []
    stop = threading.Event()
    thread = threading.Thread(target=sample, args=(samples, stop), daemon=True)
    thread.start()
    child = ["--child", args.side, "--dataset", args.dataset, "--seed", str(args.seed),
             "--iters", str(args.iters), "--out", args.out]  # fmt: skip
    accuracy.main(child + (["--ours-opts"] if args.side == "ours" else []))
    stop.set()
    thread.join()
    seconds, peak, (heap, used, free, mapped) = max(samples, key=lambda s: s[1])
    print(f"{args.side}: peak RSS {peak} MB at {seconds:.1f} s of {samples[-1][0]:.1f} s")
    print(f"  heap {heap} MB: {used} MB in use, {free} MB free but kept; mmapped {mapped} MB")


if __name__ == "__main__":
    main()

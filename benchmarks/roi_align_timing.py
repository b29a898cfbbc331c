"""Time hf_pvt's plain-torch RoI operations at Mask R-CNN's test-time sizes on the CPU.

    python benchmarks/roi_align_timing.py               # threads 2 and 1, median of 7 runs each
    python benchmarks/roi_align_timing.py --runs 3 --threads 2

The case: one 1333x800 image (padded to 1344x800, as MMDetection pads to 32), a 256-channel FPN pyramid at strides
4/8/16/32 (maps 200x336 ... 25x42), and 1000 proposals with scale sqrt(w * h) log-uniform in [16, 800] px and
aspect ratios in [1/2, 2], clipped to the image, as RPN proposals are (about half land on the stride-4 level).
`multi_level_roi_align` pools them at 7x7 (the box head) and 14x14 (the mask head; at test time it sees at most 100
detections, so 1000 is the worst case); the 7x7 case is also timed with channels-last maps, which
`multi_level_roi_align` reads without a layout copy. Also timed: pasting 100 28x28 masks into the 1333x800 image,
and 128 28x28 mask targets cut from 20 ground-truth masks.

On a machine whose cores other processes also use, the 2-thread figures can be many times the 1-thread ones: every
multi-threaded torch op waits for its slowest thread. Compare figures from a quiet machine.

Each figure is the median wall time of `--runs` calls after one warm-up call. Peak extra memory is measured in a
fresh subprocess per operation: the peak resident set during one call (`ru_maxrss` after resetting the peak through
`/proc/self/clear_refs`, glibc told to return freed memory at once) minus the resident set before it; it includes
the output.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "hf_pvt" / "roi_ops_hf_pvt.py"
STRIDES = (4, 8, 16, 32)
IMAGE = (800, 1333)  # height, width
PADDED = (800, 1344)
OPERATIONS = ("roi_7x7", "roi_7x7_channels_last", "roi_14x14", "paste_100", "targets_128")


def load_roi_ops():
    # The module is self-contained, so it loads without importing hf_pvt (and Transformers) at all.
    spec = importlib.util.spec_from_file_location("roi_ops_hf_pvt", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_case(operation: str):
    import torch

    roi_ops = load_roi_ops()
    g = torch.Generator().manual_seed(0)
    height, width = IMAGE
    if operation.startswith("roi"):
        maps = [torch.randn(1, 256, PADDED[0] // s, PADDED[1] // s, generator=g) for s in STRIDES]
        if operation.endswith("channels_last"):  # maps already channels-last: no layout copy inside
            maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
        count = 1000
        area = torch.exp(torch.empty(count).uniform_(math.log(16), math.log(800), generator=g)) ** 2
        ratio = torch.exp(torch.empty(count).uniform_(math.log(0.5), math.log(2.0), generator=g))
        box_w, box_h = (area / ratio).sqrt(), (area * ratio).sqrt()
        cx, cy = torch.rand(count, generator=g) * width, torch.rand(count, generator=g) * height
        boxes = torch.stack([cx - box_w / 2, cy - box_h / 2, cx + box_w / 2, cy + box_h / 2], dim=1)
        boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([width, height, width, height], dtype=torch.float32))
        rois = torch.cat([torch.zeros(count, 1), boxes], dim=1)
        size = 14 if operation == "roi_14x14" else 7
        levels = torch.bincount(roi_ops.map_rois_to_levels(rois, 4), minlength=4).tolist()
        return (lambda: roi_ops.multi_level_roi_align(maps, rois, size, STRIDES)), {"rois_per_level": levels}
    if operation == "paste_100":
        count = 100
        masks = torch.rand(count, 28, 28, generator=g)
        side = torch.exp(torch.empty(count, 2).uniform_(math.log(16), math.log(800), generator=g))
        corner = torch.rand(count, 2, generator=g) * torch.tensor([width, height])
        boxes = torch.cat([corner, corner + side], dim=1)
        boxes = torch.minimum(boxes, torch.tensor([width, height, width, height], dtype=torch.float32))
        return (lambda: roi_ops.paste_masks(masks, boxes, IMAGE)), {}
    gt = torch.zeros(20, *PADDED, dtype=torch.bool)
    for i in range(20):
        top, left = int(torch.randint(0, 600, (1,), generator=g)), int(torch.randint(0, 1100, (1,), generator=g))
        gt[i, top : top + 150, left : left + 200] = True
    count = 128
    side = torch.exp(torch.empty(count, 2).uniform_(math.log(32), math.log(600), generator=g))
    corner = torch.rand(count, 2, generator=g) * torch.tensor([width - 32, height - 32])
    boxes = torch.cat([corner, corner + side], dim=1)
    indices = torch.randint(0, 20, (count,), generator=g)
    return (lambda: roi_ops.crop_and_resize_masks(gt, boxes, indices, 28)), {}


def worker_time(operation: str, threads: int, runs: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    call, info = make_case(operation)
    with torch.inference_mode():
        call()  # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), **info}


def worker_memory(operation: str, threads: int) -> dict:
    import gc

    import torch

    torch.set_num_threads(threads)
    call, _ = make_case(operation)
    with torch.inference_mode():
        call()  # warm-up: one-off allocations (thread pools, kernels) are not the op's memory
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak RSS to the current RSS (Linux >= 4.0)
            method = "ru_maxrss after clear_refs"
        except OSError:
            method = "ru_maxrss (peak not reset: upper bound)"
        with open("/proc/self/statm") as f:
            baseline = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        call()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    return {"peak_extra_mib": peak / 2**20, "memory_method": method}


def run_worker(*args: str) -> dict:
    env = dict(os.environ)
    if args[0] == "memory":  # every large block straight from and back to the OS, so that RSS tracks use
        env.update({"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"})
    done = subprocess.run(
        [sys.executable, __file__, "--worker", *args], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, operation, threads = args.worker[0], args.worker[1], int(args.worker[2])
        result = worker_time(operation, threads, args.runs) if kind == "time" else worker_memory(operation, threads)
        print(json.dumps(result))
        return
    print(f"{'operation':<22} {'threads':>7} {'median s':>9} {'min s':>7} {'max s':>7} {'peak extra MiB':>15}")
    for operation in OPERATIONS:
        memory = run_worker("memory", operation, str(args.threads[0]))
        for threads in args.threads:
            timing = run_worker("time", operation, str(threads), "--runs", str(args.runs))
            print(
                f"{operation:<22} {threads:>7} {timing['median_s']:>9.3f} {timing['min_s']:>7.3f} "
                f"{timing['max_s']:>7.3f} {memory['peak_extra_mib']:>15.0f}"
            )
        if "rois_per_level" in timing:
            print(f"{'':<22} rois per level (strides {STRIDES}): {timing['rois_per_level']}")
    print(f"memory: {memory['memory_method']}, one call, in a fresh process")


if __name__ == "__main__":
    main()

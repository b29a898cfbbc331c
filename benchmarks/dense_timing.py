"""Mask R-CNN inference time on the CPU at the papers' test scale, and where it goes.

    python benchmarks/dense_timing.py                                  # pvt-v2-b0 and pvt-v2-b2, 3 runs each
    python benchmarks/dense_timing.py --presets pvt-v2-b2 --runs 5 --threads 1
    python benchmarks/dense_timing.py --original 480x640               # a 640x480 photo: 800x1067 in 800x1088

The case: the released Mask R-CNN configuration (`mask_rcnn_pvt_v2_b*_fpn_1x_coco.py`: FPN of 256 channels, RPN,
box head of two 1024-wide layers, mask head of four 256-channel convs, COCO's 80 classes) on one image. The image
processor's test transform (`HfPvtImageProcessor.for_instance_segmentation`: keep-ratio into 1333x800, padded to a
multiple of 32) turns the default 720x480 photo into 1200x800 pixels in an 800x1216 input; the masks are pasted back
into the 480x720 photo, as MMDetection's `simple_test(rescale=True)` does.

Weights are random, with the box head's class logits spread (standard deviation 3 over the 81 classes) so that the
box head keeps the full 100 detections the papers' setting allows: the mask head and the pasting then do their
most work. The RPN gives its full 1000 proposals, as on real photos at this scale.

Each case runs in a fresh subprocess: one warm-up call, then `--runs` timed calls of the forward pass followed by
`mask_rcnn_postprocess` (pasting the 100 28x28 masks into the photo). Every figure is the median over the timed
calls. The stages are timed inside the same calls (module hooks and wrappers around the module-level functions the
model calls; their overhead is a few microseconds): backbone (`model.pvt`), neck (`model.neck`), RPN (head convs,
anchors, `rpn_proposals`: top-k, decoding, NMS per level), RoI heads (`_detect`: RoIAlign 7x7 on the proposals, box
head, `detect_boxes` with class-wise NMS, RoIAlign 14x14 on the detections, mask head), post-processing (pasting).
Parts of the stages are timed too: `roi_align` (`multi_level_roi_align`, both calls), the box head's fully connected
layers, the mask head's convolutions, and each NMS. Peak memory is the process's
peak resident set during one call (forward and pasting) above the resident set before it (model and input loaded),
with glibc told to return freed memory at once so that the resident set tracks use.

The machine may be shared: the load average before and after each case is printed with the table; compare figures
from a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks.dense_cases

STAGES = ("backbone", "neck", "rpn", "roi_heads", "postprocess")
# Parts of those stages, timed separately.
DETAILS = ("roi_align_s", "box_head_s", "mask_head_s", "rpn_nms_s", "detection_nms_s")


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a size as HEIGHTxWIDTH, e.g. 480x720, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return height, width


def _peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM (the peak resident set) to the current resident set, Linux >= 4.0
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_case(preset: str, original: tuple[int, int], runs: int, threads: int) -> dict:
    """One case, in this process: the JSON-ready medians."""
    import numpy as np
    import torch

    import hf_pvt.mask_rcnn_hf_pvt as mask_rcnn
    from benchmarks.dense_cases import spread_class_logits
    from hf_pvt import HfPvtConfig, HfPvtForInstanceSegmentation, HfPvtImageProcessor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = HfPvtConfig.from_preset(preset, num_labels=80)
    model = HfPvtForInstanceSegmentation(config).eval()
    processor = HfPvtImageProcessor.for_instance_segmentation()
    photo = np.random.default_rng(0).integers(0, 256, (*original, 3), dtype=np.uint8)
    inputs = processor(photo, return_tensors="pt")
    pixel_values, pixel_mask = inputs["pixel_values"], inputs["pixel_mask"]

    # Timers; NMS is attributed to the stage that called it (the RPN's proposals or the RoI heads' detections).
    spent: dict[str, float] = defaultdict(float)
    callers: list[str] = []

    @contextmanager
    def timed(name: str):
        start = time.perf_counter()
        callers.append(name)
        try:
            yield
        finally:
            callers.pop()
            spent[name] += time.perf_counter() - start

    def wrap(function, name: str):
        def wrapper(*args, **kwargs):
            with timed(name if name != "nms" else f"nms_{callers[-1]}"):
                return function(*args, **kwargs)

        return wrapper

    hooked = (
        (model.pvt, "backbone"),
        (model.neck, "neck"),
        (model.rpn_head, "rpn_head"),
        (model.roi_head.bbox_head, "box_head"),
        (model.roi_head.mask_head, "mask_head"),
    )
    for module, name in hooked:
        starts: list[float] = []
        module.register_forward_pre_hook(lambda *_, starts=starts: starts.append(time.perf_counter()))
        module.register_forward_hook(
            lambda *_, starts=starts, name=name: spent.__setitem__(
                name, spent[name] + time.perf_counter() - starts.pop()
            )
        )
    mask_rcnn.generate_anchors = wrap(mask_rcnn.generate_anchors, "anchors")
    mask_rcnn.rpn_proposals = wrap(mask_rcnn.rpn_proposals, "rpn_proposals")
    mask_rcnn.multi_level_roi_align = wrap(mask_rcnn.multi_level_roi_align, "roi_align")
    mask_rcnn.batched_nms = wrap(mask_rcnn.batched_nms, "nms")
    model._detect = wrap(model._detect, "roi_heads")

    # Spread the class logits (std 3) so that the box head keeps its 100 detections (see the docstring).
    spread_class_logits(model.roi_head.bbox_head.fc_cls, lambda: model(pixel_values, pixel_mask=pixel_mask))
    with torch.inference_mode():
        def call() -> tuple[float, dict, object, object]:
            spent.clear()
            start = time.perf_counter()
            outputs = model(pixel_values, pixel_mask=pixel_mask)
            forward = time.perf_counter() - start
            with timed("postprocess"):
                instances = mask_rcnn.mask_rcnn_postprocess(outputs, 0, target_size=original)
            return forward, dict(spent), outputs, instances

        call()  # warm-up
        peak_reset = _peak_rss_reset()
        before = _status_bytes("VmRSS")
        forward, parts, outputs, instances = call()
        peak = _status_bytes("VmHWM") - before
        records = [(forward, parts)]
        for _ in range(runs - 1):
            forward, parts, outputs, instances = call()
            records.append((forward, parts))

    def median(values) -> float:
        return statistics.median(values)

    totals = [forward + parts["postprocess"] for forward, parts in records]
    stages = {
        "backbone": median(parts["backbone"] for _, parts in records),
        "neck": median(parts["neck"] for _, parts in records),
        "rpn": median(parts["rpn_head"] + parts["anchors"] + parts["rpn_proposals"] for _, parts in records),
        "roi_heads": median(parts["roi_heads"] for _, parts in records),
        "postprocess": median(parts["postprocess"] for _, parts in records),
    }
    return {
        "preset": preset,
        "threads": threads,
        "original": list(original),
        "input": list(pixel_values.shape[-2:]),
        "image": outputs.image_sizes[0].tolist(),
        "proposals": len(outputs.proposals[0]),
        "detections": len(instances["boxes"]),
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "total_s": median(totals),
        "forward_s": median(forward for forward, _ in records),
        "stages_s": stages,
        "roi_align_s": median(parts["roi_align"] for _, parts in records),
        "rpn_head_s": median(parts["rpn_head"] for _, parts in records),
        "box_head_s": median(parts["box_head"] for _, parts in records),
        "mask_head_s": median(parts["mask_head"] for _, parts in records),
        "rpn_nms_s": median(parts["nms_rpn_proposals"] for _, parts in records),
        "detection_nms_s": median(parts["nms_roi_heads"] for _, parts in records),
        "runs": len(records),
        "peak_mib": peak / 2**20,
        "peak_method": "VmHWM after clear_refs" if peak_reset else "VmHWM of the whole process (not reset)",
    }


def run_in_subprocess(preset: str, original: tuple[int, int], runs: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # Large blocks straight from and back to the OS, so that the resident set tracks what is in use.
    env.update({"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "0"})
    command = [sys.executable, os.path.abspath(__file__), "--case", preset]
    command += ["--original", f"{original[0]}x{original[1]}", "--runs", str(runs), "--threads", str(threads)]
    load_before = os.getloadavg()[0]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"case {preset} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = (load_before, os.getloadavg()[0])
    return result


def markdown(results: list[dict]) -> str:
    header = (
        "| model | input (image) | latency s | peak MiB | backbone | neck | RPN | RoI heads | paste | roi_align |"
        " box head | mask head | RPN NMS | detection NMS | load avg |"
    )
    lines = [header, "|---" * 15 + "|"]
    for result in results:
        total = result["total_s"]

        def share(seconds: float, total: float = total) -> str:
            return f"{seconds:.2f} s ({100 * seconds / total:.0f}%)"

        stages = result["stages_s"]
        height, width = result["input"]
        image_height, image_width = result["image"]
        lines.append(
            f"| Mask R-CNN {result['preset']} ({result['parameters_m']:.1f}M) | {height}x{width} "
            f"({image_height}x{image_width}) | {total:.2f} | {result['peak_mib']:.0f} | "
            + " | ".join(share(stages[name]) for name in STAGES)
            + "".join(f" | {share(result[name])}" for name in DETAILS)
            + f" | {result['load'][0]:.1f} -> {result['load'][1]:.1f} |"
        )
    first = results[0]
    lines.append("")
    lines.append(
        f"Median of {first['runs']} calls after a warm-up, {first['threads']} thread(s); latency = forward + pasting "
        f"into the {first['original'][0]}x{first['original'][1]} photo; {first['proposals']} proposals and "
        f"{first['detections']} detections per call; memory: {first['peak_method']}. Stage shares are of the "
        "latency; roi_align (both RoIAlign calls), the box head's and mask head's layers and the detection NMS are "
        "parts of the RoI heads, the RPN NMS of the RPN."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["pvt-v2-b0", "pvt-v2-b2"])
    parser.add_argument("--original", type=_size, default=(480, 720), help="the photo's HEIGHTxWIDTH")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.threads < 1:
        parser.error("--runs and --threads must be at least 1")
    if args.case:
        print(json.dumps(run_case(args.case, args.original, args.runs, args.threads)))
        return 0
    results = []
    for preset in args.presets:
        results.append(run_in_subprocess(preset, args.original, args.runs, args.threads))
        print(f"{preset}: {results[-1]['total_s']:.2f} s", file=sys.stderr, flush=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

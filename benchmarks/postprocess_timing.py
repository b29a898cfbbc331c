"""RetinaNet post-processing time against the forward pass, at the papers' score threshold and at COCO-style low ones.

    python benchmarks/postprocess_timing.py                       # pvt-v2-b2, a 1333x800 keep-ratio input
    python benchmarks/postprocess_timing.py --preset pvt-v2-b0 --thresholds 0.05 0.005 0.001 --repeats 5

For each threshold it times `post_process_object_detection` (class-wise NMS that stops once `max_per_image`
detections are kept) and the full NMS truncated afterwards (what hf_pvt did before), checks that both keep the same
boxes, scores and labels, and prints the medians and the share of the forward pass. Random weights start every
class near probability 0.01 (RetinaNet's prior), so at 0.001 nearly every (anchor, class) pair is a candidate: the
worst case for NMS.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from hf_pvt import HfPvtConfig, HfPvtForObjectDetection, HfPvtImageProcessor
from hf_pvt.retinanet_hf_pvt import retinanet_postprocess


def median_seconds(function, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def full_nms_then_truncate(outputs, threshold: float, max_per_image: int = 100) -> dict[str, torch.Tensor]:
    """The previous procedure: NMS over every candidate, then the best `max_per_image`."""
    level_logits, level_deltas, level_anchors = outputs.level_maps()
    detections = retinanet_postprocess(
        [level[0] for level in level_logits],
        [level[0] for level in level_deltas],
        list(level_anchors),
        tuple(int(v) for v in outputs.image_sizes[0]),
        score_threshold=threshold,
        max_per_image=0,
    )
    return {key: value[:max_per_image] for key, value in detections.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="pvt-v2-b2")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1088, help="1333x800 keep-ratio of a 4:3 photo, padded to 32")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.001])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = HfPvtForObjectDetection(HfPvtConfig.from_preset(args.preset, num_labels=80)).eval()
    processor = HfPvtImageProcessor.for_object_detection()
    pixel_values = torch.randn(1, 3, args.height, args.width)
    with torch.inference_mode():
        start = time.perf_counter()
        outputs = model(pixel_values)
        forward = time.perf_counter() - start
    print(f"{args.preset} RetinaNet, input {args.height}x{args.width}, {args.threads} threads: forward {forward:.2f}s")

    for threshold in args.thresholds:
        new = processor.post_process_object_detection(outputs, threshold=threshold)[0]
        old = full_nms_then_truncate(outputs, threshold)
        same = all(torch.equal(new[key], old[key]) for key in ("boxes", "scores", "labels"))
        scores = outputs.logits[0].flatten().sigmoid()
        new_time = median_seconds(
            functools.partial(processor.post_process_object_detection, outputs, threshold=threshold), 3
        )
        old_time = median_seconds(functools.partial(full_nms_then_truncate, outputs, threshold), args.repeats)
        print(
            f"threshold {threshold}: {int((scores > threshold).sum())} candidate pairs before the per-level top-k; "
            f"post-processing {new_time:.3f} s ({100 * new_time / forward:.1f}% of the forward), full NMS then "
            f"truncate {old_time:.3f} s; same {len(new['scores'])} detections: {same}"
        )


if __name__ == "__main__":
    main()

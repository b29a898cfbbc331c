"""Where hf_pvt's time goes: the PyTorch profiler over a training step and an inference forward.

    python benchmarks/profile_steps.py             # pvt-small and pvt-v2-b2, train b8 and infer b1
    python benchmarks/profile_steps.py --preset pvt-v2-b2 --mode train --batch 8 --precision bf16 --rows 30

Prints, per case, the operators sorted by self CPU time (forward and backward kernels alike) and the share of
the step spent in matrix multiplies, convolutions, attention, normalisation, activations and everything else.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.benchmark import step_fn  # noqa: E402
from hf_pvt import HfPvtConfig, HfPvtForImageClassification  # noqa: E402

# Operator name fragments -> the family a row of the summary counts them in (first match wins).
FAMILIES = [
    ("attention", ("scaled_dot_product", "_flash_attention", "_efficient_attention", "softmax")),
    ("matmul", ("addmm", "mm", "bmm", "matmul", "linear")),
    ("convolution", ("conv", "mkldnn_convolution")),
    ("normalisation", ("layer_norm",)),
    ("activation", ("gelu", "relu")),
    ("copies and layout", ("copy_", "contiguous", "clone", "cat", "to_copy", "empty_strided", "fill_", "zero_")),
    ("elementwise", ("add", "mul", "div", "sum", "mean")),
]


def family(name: str) -> str:
    lowered = name.lower()
    for label, fragments in FAMILIES:
        if any(fragment in lowered for fragment in fragments):
            return label
    return "other"


def profile(preset: str, mode: str, batch: int, precision: str, rows: int, steps: int) -> None:
    torch.manual_seed(0)
    model = HfPvtForImageClassification(HfPvtConfig.from_preset(preset, num_labels=1000))
    # The benchmark's own step (train: forward + cross-entropy + backward; infer: inference-mode forward).
    case = {"device": "cpu", "mode": mode, "precision": precision}
    step = step_fn(model, case, torch.randn(batch, 3, 224, 224))
    for _ in range(2):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    print(f"\n=== {preset} {mode} batch {batch} {precision}: {total / steps / 1e3:.1f} ms of operator time per step")
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48))
    shares: dict[str, float] = defaultdict(float)
    for event in events:
        shares[family(event.key)] += event.self_cpu_time_total
    for label, time in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"  {label:20s} {100 * time / total:5.1f}%  {time / steps / 1e3:8.1f} ms/step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", help="default: pvt-small and pvt-v2-b2")
    parser.add_argument("--mode", choices=["train", "infer"], action="append", help="default: both")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 for train, 1 for infer")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: PyTorch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for preset in args.preset or ["pvt-small", "pvt-v2-b2"]:
        for mode in args.mode or ["train", "infer"]:
            batch = args.batch or (8 if mode == "train" else 1)
            profile(preset, mode, batch, args.precision, args.rows, args.steps)


if __name__ == "__main__":
    main()

"""The dense-prediction rows of `benchmarks/benchmark.py`: each head end to end on one photo at its test scale.

- RetinaNet (`HfPvtForObjectDetection`, 80 classes) and Mask R-CNN (`HfPvtForInstanceSegmentation`): a 480x640
  photo (COCO's commonest size) through `HfPvtImageProcessor.for_object_detection()` /
  `for_instance_segmentation()` (keep-ratio into 1333x800: 800x1067, padded to 800x1088), then
  `post_process_object_detection` at threshold 0.001 (the low threshold of COCO evaluation, where nearly every
  (anchor, class) pair of random weights is a candidate: the worst case) or the mask pasting into the photo
  (`mask_rcnn_postprocess`, with the box head's class logits spread so that the full 100 detections are kept).
- Semantic FPN (`HfPvtForSemanticSegmentation`, ADE20K's 150 classes): a 512x683 photo (ADE20K's commonest) through
  `for_semantic_segmentation()` (the authors' test transform: 512x704), then `post_process_semantic_segmentation` back
  to the photo's size.

Each step is timed by stage: backbone (`model.pvt`), neck (`model.neck`), head (the rest of the forward: RetinaNet's
convolutions; the FPN head; RPN and RoI heads), post-processing. FLOPs are counted once by torch's `FlopCounterMode`
on the plain path (`HF_PVT_FAST_PATHS=0`), attention included, so work the fast paths skip is not counted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

DENSE_KINDS = ("retinanet", "semantic_fpn", "mask_rcnn")
PHOTOS = {"retinanet": (480, 640), "mask_rcnn": (480, 640), "semantic_fpn": (512, 683)}
STAGES = ("backbone", "neck", "head", "postprocess")


def _register_cpu_attention_flops() -> None:
    """FlopCounterMode counts the CUDA attention kernels but not the CPU flash kernel, which PVT's attention runs
    on CPU: count it as the same two matmuls (4 * queries * keys * head dim per head)."""
    from torch.utils import flop_counter

    operator = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if operator in flop_counter.flop_registry or operator.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(operator, get_raw=True)
    def _cpu_flash_attention(query, key, value, *args, out_val=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)


def count_flops(call: Callable[[], object]) -> int:
    """FLOPs of `call()` on the plain path (fast paths off): matmuls, convolutions and attention."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention_flops()
    saved = os.environ.get("HF_PVT_FAST_PATHS")
    os.environ["HF_PVT_FAST_PATHS"] = "0"
    try:
        with FlopCounterMode(display=False) as counter:
            call()
    finally:
        if saved is None:
            os.environ.pop("HF_PVT_FAST_PATHS")
        else:
            os.environ["HF_PVT_FAST_PATHS"] = saved
    return counter.get_total_flops()


def spread_class_logits(classifier: torch.nn.Linear, call: Callable[[], object]) -> None:
    """Scale `classifier` so that its logits on the benchmark's input have standard deviation 3: random weights
    then keep the full 100 detections a Mask R-CNN allows, so the mask head and the pasting do their most work."""
    captured = []
    handle = classifier.register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.inference_mode():
        call()
    handle.remove()
    scale = 3.0 / float(captured[0].float().std())
    with torch.no_grad():
        classifier.weight.mul_(scale)
        classifier.bias.mul_(scale)


def build_dense_step(kind: str, preset: str) -> tuple[Callable[[], dict], dict]:
    """`(step, info)`: `step()` runs one image through the model and its post-processing in inference mode and
    returns the seconds of each stage; `info` holds the input size and the FLOPs of the model's forward."""
    import numpy as np

    from hf_pvt import HfPvtConfig, HfPvtImageProcessor
    from hf_pvt.mask_rcnn_hf_pvt import HfPvtForInstanceSegmentation, mask_rcnn_postprocess
    from hf_pvt.retinanet_hf_pvt import HfPvtForObjectDetection
    from hf_pvt.semantic_fpn_hf_pvt import HfPvtForSemanticSegmentation

    torch.manual_seed(0)
    photo_size = PHOTOS[kind]
    photo = np.random.default_rng(0).integers(0, 256, (*photo_size, 3), dtype=np.uint8)
    if kind == "retinanet":
        model = HfPvtForObjectDetection(HfPvtConfig.from_preset(preset, num_labels=80))
        processor = HfPvtImageProcessor.for_object_detection()
    elif kind == "mask_rcnn":
        model = HfPvtForInstanceSegmentation(HfPvtConfig.from_preset(preset, num_labels=80))
        processor = HfPvtImageProcessor.for_instance_segmentation()
    else:
        model = HfPvtForSemanticSegmentation(HfPvtConfig.from_preset(preset, num_labels=150))
        processor = HfPvtImageProcessor.for_semantic_segmentation()
    model.eval()
    inputs = dict(processor(photo, return_tensors="pt"))

    def forward():
        return model(**inputs)

    def postprocess(outputs) -> object:
        if kind == "retinanet":
            return processor.post_process_object_detection(outputs, threshold=0.001, target_sizes=[photo_size])
        if kind == "mask_rcnn":
            return mask_rcnn_postprocess(outputs, 0, target_size=photo_size)
        return processor.post_process_semantic_segmentation(outputs, target_sizes=[photo_size])

    if kind == "mask_rcnn":
        spread_class_logits(model.roi_head.bbox_head.fc_cls, forward)
    with torch.inference_mode():
        flops = count_flops(forward)
    spent: dict[str, float] = {}
    for module, name in ((model.pvt, "backbone"), (model.neck, "neck")):
        starts: list[float] = []
        module.register_forward_pre_hook(lambda *_, starts=starts: starts.append(time.perf_counter()))
        module.register_forward_hook(
            lambda *_, starts=starts, name=name: spent.__setitem__(name, time.perf_counter() - starts.pop())
        )

    @contextmanager
    def timed(name: str):
        start = time.perf_counter()
        yield
        spent[name] = time.perf_counter() - start

    def step() -> dict:
        spent.clear()
        with torch.inference_mode():
            with timed("forward"):
                outputs = forward()
            with timed("postprocess"):
                postprocess(outputs)
        parts = {name: spent[name] for name in ("backbone", "neck", "postprocess")}
        parts["head"] = spent["forward"] - spent["backbone"] - spent["neck"]
        return parts

    info = {
        "photo": list(photo_size),
        "input": list(inputs["pixel_values"].shape[-2:]),
        "flops": flops,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    return step, info

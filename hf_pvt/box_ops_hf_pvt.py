"""Box operations shared by the detectors: IoU, anchors, box coding, MaxIoU assignment and class-wise NMS.

Each function reproduces one piece of MMDetection v2.13 (the framework the PVT authors trained their detectors
with), so that converted checkpoints score the published box AP and fine-tuning optimises the same objective. Boxes
are (x1, y1, x2, y2) in input pixels with mmdet v2's continuous convention: width = x2 - x1, no "+1". Pure torch, no
torchvision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "DELTA_MEANS",
    "DELTA_STDS",
    "assign_max_iou",
    "batched_nms",
    "box_iou",
    "check_levels",
    "decode_boxes",
    "encode_boxes",
    "generate_anchors",
    "valid_anchor_flags",
]


def check_levels(**per_level: Sequence) -> None:
    """Raise a ValueError unless every per-level argument has one entry per feature level."""
    lengths = {name: len(value) for name, value in per_level.items()}
    if len(set(lengths.values())) > 1:
        counts = ", ".join(f"`{name}`: {length}" for name, length in lengths.items())
        raise ValueError(f"Give one entry per feature level in each of these, got {counts}.")


def _check_boxes(boxes: torch.Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"`{name}` must have shape (N, 4) in (x1, y1, x2, y2) format, got {tuple(boxes.shape)}.")


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pairwise IoU of `boxes1` (N, 4) and `boxes2` (M, 4) -> (N, M), as mmdet v2's `bbox_overlaps(mode="iou")`.

    Areas are (x2 - x1) * (y2 - y1) and the union is clamped to `eps`, so degenerate (zero-area) boxes have IoU 0
    with everything, themselves included.
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    size = (bottom_right - top_left).clamp(min=0)
    overlap = size[..., 0] * size[..., 1]
    union = (area1[:, None] + area2[None, :] - overlap).clamp(min=eps)
    return overlap / union


# ----------------------------------------------------------------------------------------------------------------
# Anchors


def generate_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    octave_base_scale: float = 4,
    scales_per_octave: int = 3,
    ratios: Sequence[float] = (0.5, 1.0, 2.0),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """Anchors of every level as mmdet v2.13's `AnchorGenerator.grid_anchors` (base size = stride, centre offset 0).

    Level l gets a (H_l * W_l * A, 4) tensor, A = len(ratios) * scales_per_octave: locations row-major (y, then x),
    and at each location the A anchors ratio-major, scale-minor (`scale_major=True`), so the order matches
    `logits.permute(0, 2, 3, 1).reshape(B, -1, num_labels)`. The arithmetic runs in float32 in mmdet's operation
    order, so the values are bit-identical to mmdet's, then the result is cast to `dtype`.
    """
    check_levels(feature_sizes=feature_sizes, strides=strides)
    # mmdet builds the scales in float64 with numpy, then stores them (and the ratios) as float32 tensors.
    scales = torch.tensor([octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)])
    h_ratios = torch.sqrt(torch.tensor(list(ratios), dtype=torch.float32))
    w_ratios = 1 / h_ratios
    anchors = []
    for (height, width), stride in zip(feature_sizes, strides):
        half_w = 0.5 * (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
        half_h = 0.5 * (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
        base = torch.stack([0.0 - half_w, 0.0 - half_h, 0.0 + half_w, 0.0 + half_h], dim=-1)
        shift_x = (torch.arange(width) * stride).repeat(height)
        shift_y = (torch.arange(height) * stride).repeat_interleave(width)
        shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).to(torch.float32)
        level = (base[None, :, :] + shifts[:, None, :]).reshape(-1, 4)
        anchors.append(level.to(device=device, dtype=dtype))
    return anchors


def valid_anchor_flags(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    num_anchors: int,
    pad_shape: tuple[int, int],
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """Per-level boolean flags of the anchors whose location lies on the image, as mmdet v2.13's `valid_flags`.

    A location (y, x) of a level with stride s is valid when y < ceil(h / s) and x < ceil(w / s), (h, w) being
    `pad_shape`: in mmdet, the image's own size padded to the size divisor (32), before the batch padding. Flags are
    in the anchor order of `generate_anchors`.
    """
    check_levels(feature_sizes=feature_sizes, strides=strides)
    pad_h, pad_w = (int(v) for v in pad_shape[:2])
    flags = []
    for (height, width), stride in zip(feature_sizes, strides):
        valid_y = torch.arange(height, device=device) < min(math.ceil(pad_h / stride), height)
        valid_x = torch.arange(width, device=device) < min(math.ceil(pad_w / stride), width)
        valid = (valid_y[:, None] & valid_x[None, :]).reshape(-1)
        flags.append(valid.repeat_interleave(num_anchors))
    return flags


# ----------------------------------------------------------------------------------------------------------------
# Box coding


# MMDetection's `DeltaXYWHBBoxCoder` defaults, used by the RPN and RetinaNet; Mask R-CNN's box head uses stds
# (0.1, 0.1, 0.2, 0.2) so that its smaller deltas weigh like the RPN's in the L1 loss.
DELTA_MEANS = (0.0, 0.0, 0.0, 0.0)
DELTA_STDS = (1.0, 1.0, 1.0, 1.0)


def _delta_stats(
    means: Sequence[float], stds: Sequence[float], like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`means` and `stds` as tensors on `like`'s device and dtype, checked: four finite values, stds positive."""
    values = {}
    for name, given in (("means", means), ("stds", stds)):
        tensor = torch.as_tensor(given, dtype=torch.float64).reshape(-1)
        if tensor.numel() != 4 or not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"`{name}` must be four finite numbers, one per (dx, dy, dw, dh), got {given!r}.")
        values[name] = tensor
    if not bool((values["stds"] > 0).all()):
        raise ValueError(f"`stds` must be positive, got {stds!r}.")
    return values["means"].to(like), values["stds"].to(like)


def encode_boxes(
    anchors: torch.Tensor,
    gt_boxes: torch.Tensor,
    means: Sequence[float] = DELTA_MEANS,
    stds: Sequence[float] = DELTA_STDS,
) -> torch.Tensor:
    """Regression targets (dx, dy, dw, dh) that move `anchors` onto `gt_boxes` (both (N, 4)).

    mmdet's `DeltaXYWHBBoxCoder.encode`: dx = (gx - ax) / aw, dw = log(gw / aw), then each delta minus its `means`
    entry and divided by its `stds` entry (defaults 0 and 1: the deltas themselves).
    """
    _check_boxes(anchors, "anchors")
    if gt_boxes.shape != anchors.shape:
        raise ValueError(
            f"`gt_boxes` must have the shape of `anchors` {tuple(anchors.shape)}, got {tuple(gt_boxes.shape)}."
        )
    anchor_xy = (anchors[:, :2] + anchors[:, 2:]) * 0.5
    anchor_wh = anchors[:, 2:] - anchors[:, :2]
    gt_xy = (gt_boxes[:, :2] + gt_boxes[:, 2:]) * 0.5
    gt_wh = gt_boxes[:, 2:] - gt_boxes[:, :2]
    delta_xy = (gt_xy - anchor_xy) / anchor_wh
    delta_wh = torch.log(gt_wh / anchor_wh)
    deltas = torch.stack([delta_xy[:, 0], delta_xy[:, 1], delta_wh[:, 0], delta_wh[:, 1]], dim=-1)
    if means is DELTA_MEANS and stds is DELTA_STDS:
        return deltas
    mean, std = _delta_stats(means, stds, deltas)
    return (deltas - mean) / std


def decode_boxes(
    anchors: torch.Tensor,
    deltas: torch.Tensor,
    max_shape: tuple[int, int] | None = None,
    wh_ratio_clip: float = 16 / 1000,
    means: Sequence[float] = DELTA_MEANS,
    stds: Sequence[float] = DELTA_STDS,
) -> torch.Tensor:
    """Boxes (N, 4) from `anchors` and `deltas` (N, 4), as mmdet's `DeltaXYWHBBoxCoder.decode`.

    The deltas are first scaled back, `deltas * stds + means` (defaults: unchanged). dw and dh are clamped to
    +-|log(wh_ratio_clip)| so a box grows or shrinks at most 1 / wh_ratio_clip times; with `max_shape` (h, w), x is
    clipped to [0, w] and y to [0, h].
    """
    _check_boxes(anchors, "anchors")
    if deltas.shape != anchors.shape:
        raise ValueError(
            f"`deltas` must have the shape of `anchors` {tuple(anchors.shape)}, got {tuple(deltas.shape)}."
        )
    if means is not DELTA_MEANS or stds is not DELTA_STDS:
        mean, std = _delta_stats(means, stds, deltas)
        deltas = deltas * std + mean
    max_ratio = abs(math.log(wh_ratio_clip))
    anchor_xy = (anchors[:, :2] + anchors[:, 2:]) * 0.5
    anchor_wh = anchors[:, 2:] - anchors[:, :2]
    center = anchor_xy + anchor_wh * deltas[:, :2]
    half_size = anchor_wh * deltas[:, 2:].clamp(min=-max_ratio, max=max_ratio).exp() * 0.5
    boxes = torch.cat([center - half_size, center + half_size], dim=-1)
    if max_shape is not None:
        height, width = (float(v) for v in max_shape[:2])
        upper = boxes.new_tensor([width, height, width, height])
        boxes = torch.minimum(boxes.clamp(min=0), upper)
    return boxes


# ----------------------------------------------------------------------------------------------------------------
# Assignment


def assign_max_iou(
    anchors: torch.Tensor,
    gt_boxes: torch.Tensor,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float = 0.4,
    min_pos_iou: float = 0.0,
) -> torch.Tensor:
    """Assign each anchor (N, 4) to a ground-truth box (K, 4): LongTensor (N,) with -1 ignore, 0 negative, k + 1 gt k.

    mmdet v2.13's `MaxIoUAssigner` with `match_low_quality=True`, `gt_max_assign_all=True` and no ignored boxes, in
    its order: anchors with max IoU < `neg_iou_thr` become negatives, those with max IoU >= `pos_iou_thr` take their
    best gt (the first on ties), then every gt whose best IoU is >= `min_pos_iou` takes *all* anchors reaching that
    best IoU, later gts overwriting earlier ones. With `min_pos_iou=0` (RetinaNet) that last step keeps mmdet's quirk:
    a gt overlapping no anchor (best IoU 0) claims every anchor it has IoU 0 with. Without gt, all are negatives.
    """
    _check_boxes(anchors, "anchors")
    _check_boxes(gt_boxes, "gt_boxes")
    num_anchors, num_gts = anchors.shape[0], gt_boxes.shape[0]
    if num_gts == 0 or num_anchors == 0:
        return torch.zeros(num_anchors, dtype=torch.long, device=anchors.device)
    overlaps = box_iou(gt_boxes, anchors)  # (K, N), mmdet's orientation
    max_overlaps, best_gt = overlaps.max(dim=0)
    gt_max_overlaps = overlaps.max(dim=1).values

    assigned = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    assigned[max_overlaps < neg_iou_thr] = 0
    positive = max_overlaps >= pos_iou_thr
    assigned[positive] = best_gt[positive] + 1

    # Low-quality matches, vectorised: the highest gt index reaching its best IoU on an anchor wins, as the last
    # write of mmdet's loop over gts.
    reaches_best = (overlaps == gt_max_overlaps[:, None]) & (gt_max_overlaps[:, None] >= min_pos_iou)
    gt_numbers = torch.arange(1, num_gts + 1, device=anchors.device, dtype=torch.int32)[:, None]
    last_gt = torch.where(reaches_best, gt_numbers, 0).amax(dim=0).long()
    return torch.where(last_gt > 0, last_gt, assigned)


# ----------------------------------------------------------------------------------------------------------------
# Non-maximum suppression


def _iou_suppressed(boxes: torch.Tensor, kept: torch.Tensor, iou_threshold: float, chunk_size: int) -> torch.Tensor:
    """Which of `boxes` (T, 4) have IoU > `iou_threshold` with any of `kept` (K, 4), K tiled to bound memory."""
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for start in range(0, kept.shape[0], chunk_size):
        suppressed |= (box_iou(boxes, kept[start : start + chunk_size]) > iou_threshold).any(dim=1)
    return suppressed


def _greedy_within_block(alive: torch.Tensor, suppresses: torch.Tensor, max_rounds: int = 8) -> torch.Tensor:
    """Greedy NMS result of a block in rank order, given `suppresses[i, j]` (i ranked before j would suppress j).

    Iterates keep_j = alive_j and no kept i < j suppresses j towards its fixed point, which is exactly the greedy
    result (the recurrence's unique solution); real detections get there in a few rounds. Each round settles the
    boxes up to the first one it changed, but a chain of overlapping boxes settles only one link per round, so after
    `max_rounds` the unsettled rest is swept row by row (without a host synchronisation per row).
    """
    keep, settled = alive, 0
    for _ in range(max_rounds):
        new_keep = alive & ~suppresses[keep].any(dim=0)
        changed = torch.nonzero(new_keep != keep)
        if changed.numel() == 0:
            return keep
        # Up to the first change the previous round was already a fixed point, hence final; so is the change itself.
        keep, settled = new_keep, int(changed[0, 0]) + 1
    keep = keep.clone()
    keep[settled:] = alive[settled:] & ~suppresses[:settled][keep[:settled]].any(dim=0)[settled:]
    rows = torch.nonzero(suppresses[settled:].any(dim=1)).squeeze(1) + settled
    for row in rows.tolist():
        keep &= ~(suppresses[row] & keep[row])
    return keep


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    class_ids: torch.Tensor,
    iou_threshold: float,
    *,
    max_kept: int | None = None,
    block_size: int = 256,
) -> torch.Tensor:
    """Class-wise greedy NMS: indices (LongTensor) of the kept boxes, by score descending, ties lower index first.

    Exactly the greedy rule of mmcv's `batched_nms` (as its CUDA kernel: strictly greater), applied per class: going
    down the scores, a box is dropped when its IoU (`box_iou`) with a kept, higher-ranked box of the same class is
    > `iou_threshold`. Classes are grouped with stable sorts rather than mmcv's coordinate offsets, which perturb
    IoUs by rounding. The ranked boxes are
    processed `block_size` at a time: a block first loses the boxes overlapping a box already kept in its class
    (compared in tiles), then is resolved exactly by `_greedy_within_block`. Only torch ops, deterministic, and at
    most block_size x max(block_size, 4096) IoUs in memory at once.

    `max_kept` (> 0) returns only the first `max_kept` kept boxes, which is what detectors keep per image: the boxes
    are then visited in global score order and the work stops once that many are kept. A box's fate depends only on
    the higher-ranked boxes of its class, so the result equals the full NMS truncated, at a fraction of the cost when
    a low score threshold leaves hundreds of thousands of (box, class) candidates.
    """
    _check_boxes(boxes, "boxes")
    if scores.shape != boxes.shape[:1] or class_ids.shape != boxes.shape[:1]:
        raise ValueError(
            f"`scores` {tuple(scores.shape)} and `class_ids` {tuple(class_ids.shape)} must have shape "
            f"({boxes.shape[0]},), one per box."
        )
    if block_size < 1:
        raise ValueError(f"`block_size` must be positive, got {block_size}.")
    num_boxes = boxes.shape[0]
    if num_boxes == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()  # half-precision areas overflow at detection resolutions
    if max_kept is not None and max_kept > 0:
        return _first_kept(boxes, scores, class_ids, iou_threshold, max_kept, block_size)

    # Rank: by score descending (ties: lower index), then group by class keeping that rank inside each class.
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(class_ids[order], stable=True).indices]
    ranked_boxes, ranked_classes = boxes[order], class_ids[order]
    _, class_counts = torch.unique_consecutive(ranked_classes, return_counts=True)
    class_end = torch.cumsum(class_counts, 0).repeat_interleave(class_counts).tolist()
    class_start = (torch.cumsum(class_counts, 0) - class_counts).repeat_interleave(class_counts).tolist()

    keep = torch.zeros(num_boxes, dtype=torch.bool, device=boxes.device)
    chunk_size = max(block_size, 4096)
    for start in range(0, num_boxes, block_size):
        end = min(start + block_size, num_boxes)
        block, block_classes = ranked_boxes[start:end], ranked_classes[start:end]
        alive = torch.ones(end - start, dtype=torch.bool, device=boxes.device)
        # Boxes kept before this block can only be of the block's first class (classes are contiguous).
        first_class_end = min(class_end[start], end) - start
        previous = torch.nonzero(keep[class_start[start] : start]).squeeze(1) + class_start[start]
        if previous.numel():
            alive[:first_class_end] = ~_iou_suppressed(
                block[:first_class_end], ranked_boxes[previous], iou_threshold, chunk_size
            )
        same_class = block_classes[:, None] == block_classes[None, :]
        later = torch.ones_like(same_class).triu(diagonal=1)
        suppresses = (box_iou(block, block) > iou_threshold) & same_class & later
        keep[start:end] = _greedy_within_block(alive, suppresses)

    kept = torch.sort(order[keep]).values
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def _first_kept(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    class_ids: torch.Tensor,
    iou_threshold: float,
    max_kept: int,
    block_size: int,
) -> torch.Tensor:
    """`batched_nms(...)[:max_kept]`, visiting the boxes in global score order `block_size` at a time and stopping
    once `max_kept` are kept. Each block is compared with the (at most max_kept + block_size) boxes kept so far."""
    order = torch.sort(scores, descending=True, stable=True).indices
    kept_indices, kept_boxes, kept_classes = [], boxes[:0], class_ids[:0]
    num_kept = 0
    for start in range(0, order.numel(), block_size):
        index = order[start : start + block_size]
        block, block_classes = boxes[index], class_ids[index]
        same_class_as_kept = block_classes[:, None] == kept_classes[None, :]
        alive = ~((box_iou(block, kept_boxes) > iou_threshold) & same_class_as_kept).any(dim=1)
        same_class = block_classes[:, None] == block_classes[None, :]
        later = torch.ones_like(same_class).triu(diagonal=1)
        keep = _greedy_within_block(alive, (box_iou(block, block) > iou_threshold) & same_class & later)
        kept_indices.append(index[keep])
        kept_boxes = torch.cat((kept_boxes, block[keep]))
        kept_classes = torch.cat((kept_classes, block_classes[keep]))
        num_kept += int(keep.sum())
        if num_kept >= max_kept:
            break
    return torch.cat(kept_indices)[:max_kept]

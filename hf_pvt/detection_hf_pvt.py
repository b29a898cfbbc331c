"""RetinaNet box operations for the PVT detectors: anchors, box coding, assignment, losses, NMS and post-processing.

Each function reproduces one piece of MMDetection v2.13 (the framework the PVT authors trained their RetinaNets
with), so that converted checkpoints score the published box AP and fine-tuning optimises the same objective. Boxes
are (x1, y1, x2, y2) in input pixels with mmdet v2's continuous convention: width = x2 - x1, no "+1".

Self-contained on purpose: pure torch, no torchvision and nothing from hf_pvt or transformers, because Hub folders
carry a copy of this file for `trust_remote_code` loading and the image processor imports it relatively.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "assign_max_iou",
    "batched_nms",
    "box_iou",
    "decode_boxes",
    "encode_boxes",
    "generate_anchors",
    "retinanet_loss",
    "retinanet_postprocess",
    "sigmoid_focal_loss",
    "valid_anchor_flags",
]

RETINANET_STRIDES = (8, 16, 32, 64, 128)


def _check_levels(**per_level: Sequence) -> None:
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
    strides: Sequence[int] = RETINANET_STRIDES,
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
    _check_levels(feature_sizes=feature_sizes, strides=strides)
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
    _check_levels(feature_sizes=feature_sizes, strides=strides)
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


def encode_boxes(anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """Regression targets (dx, dy, dw, dh) that move `anchors` onto `gt_boxes` (both (N, 4)).

    mmdet's `DeltaXYWHBBoxCoder.encode` with means 0 and stds 1: dx = (gx - ax) / aw, dw = log(gw / aw).
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
    return torch.stack([delta_xy[:, 0], delta_xy[:, 1], delta_wh[:, 0], delta_wh[:, 1]], dim=-1)


def decode_boxes(
    anchors: torch.Tensor,
    deltas: torch.Tensor,
    max_shape: tuple[int, int] | None = None,
    wh_ratio_clip: float = 16 / 1000,
) -> torch.Tensor:
    """Boxes (N, 4) from `anchors` and `deltas` (N, 4), as mmdet's `DeltaXYWHBBoxCoder.decode` (means 0, stds 1).

    dw and dh are clamped to +-|log(wh_ratio_clip)| so a box grows or shrinks at most 1 / wh_ratio_clip times; with
    `max_shape` (h, w), x is clipped to [0, w] and y to [0, h].
    """
    _check_boxes(anchors, "anchors")
    if deltas.shape != anchors.shape:
        raise ValueError(
            f"`deltas` must have the shape of `anchors` {tuple(anchors.shape)}, got {tuple(deltas.shape)}."
        )
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
# Training targets and losses


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


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Elementwise sigmoid focal loss (no reduction) of `logits` against binary `targets` of the same shape.

    mmdet's `py_sigmoid_focal_loss`: BCE-with-logits * (alpha * t + (1 - alpha) * (1 - t)) * pt ** gamma with
    pt = 1 - p for t = 1 and p for t = 0, i.e. -alpha (1 - p)^gamma log p for positives and
    -(1 - alpha) p^gamma log(1 - p) for negatives; the modulating factor is not detached (as in mmdet and mmcv).
    """
    if targets.shape != logits.shape:
        raise ValueError(
            f"`targets` must have the shape of `logits` {tuple(logits.shape)}, got {tuple(targets.shape)}."
        )
    targets = targets.to(logits.dtype)
    probs = logits.sigmoid()
    pt = (1 - probs) * targets + probs * (1 - targets)
    weight = (alpha * targets + (1 - alpha) * (1 - targets)) * pt.pow(gamma)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weight


def _flatten_levels(tensors: Sequence[torch.Tensor], channels: int) -> torch.Tensor:
    """(B, A * channels, H, W) per level -> (B, sum_l H_l * W_l * A, channels), in anchor order."""
    batch_size = tensors[0].shape[0]
    return torch.cat([t.permute(0, 2, 3, 1).reshape(batch_size, -1, channels) for t in tensors], dim=1)


def _image_targets(
    target: dict, index: int, num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated (boxes float32 (n, 4), labels long (n,)) of one image, degenerate boxes dropped.

    A box with zero width or height has IoU 0 with every anchor, so the low-quality match would make it claim every
    anchor with an infinite regression target; mmdet never meets one because its COCO loader drops boxes under one
    pixel, so they are dropped here.
    """
    if not isinstance(target, dict) or "boxes" not in target or "class_labels" not in target:
        raise ValueError(f"`targets[{index}]` must be a dict with 'boxes' (n, 4) and 'class_labels' (n,).")
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
    labels = torch.as_tensor(target["class_labels"], device=device).reshape(-1).long()
    if labels.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"`targets[{index}]` has {boxes.shape[0]} boxes but {labels.shape[0]} class labels; give one per box."
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"`targets[{index}]['class_labels']` must lie in [0, {num_classes}), got {labels.tolist()}.")
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], labels[keep]


def retinanet_loss(
    cls_logits: Sequence[torch.Tensor],
    box_deltas: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor],
    targets: Sequence[dict],
    pad_shapes: Sequence[tuple[int, int]],
    num_classes: int,
    alpha: float = 0.25,
    gamma: float = 2.0,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float = 0.4,
    *,
    strides: Sequence[int] = RETINANET_STRIDES,
    min_pos_iou: float = 0.0,
) -> dict[str, torch.Tensor]:
    """RetinaNet training loss, as mmdet v2.13's `RetinaHead.loss` (`AnchorHead.loss`) with the PVT configs.

    Args:
        cls_logits: per level (B, A * num_classes, H, W) classification logits (pre-sigmoid).
        box_deltas: per level (B, A * 4, H, W) box regression deltas.
        anchors: per level (H * W * A, 4) anchors from `generate_anchors`, shared by the batch.
        targets: per image a dict with "boxes" (n, 4) absolute xyxy in input pixels and "class_labels" (n,), n >= 0.
        pad_shapes: per image the (h, w) used for the anchors' valid flags (mmdet's `pad_shape`, see
            `valid_anchor_flags`).
        num_classes, alpha, gamma, pos_iou_thr, neg_iou_thr: head and assigner settings (RetinaNet defaults).
        strides: the levels' strides. min_pos_iou: the assigner's low-quality threshold.

    Per image, the valid anchors (`allowed_border=-1`, so inside = valid) of all levels together are assigned by
    `assign_max_iou`; positives and negatives get focal-loss weight 1, ignored and invalid anchors 0; labels are
    one-hot and background all zeros. Positives regress `encode_boxes` targets with an L1 loss on the raw deltas. Both
    losses are summed over anchors, levels and images and divided by avg_factor = sum over images of max(num_pos, 1).
    Computed in float32, like mmdet's `force_fp32`.
    """
    _check_levels(cls_logits=cls_logits, box_deltas=box_deltas, anchors=anchors, strides=strides)
    batch_size = cls_logits[0].shape[0]
    if len(targets) != batch_size or len(pad_shapes) != batch_size:
        raise ValueError(
            f"`targets` ({len(targets)}) and `pad_shapes` ({len(pad_shapes)}) need one entry per image ({batch_size})."
        )
    feature_sizes = [tuple(level.shape[-2:]) for level in cls_logits]
    num_anchors = anchors[0].shape[0] // (feature_sizes[0][0] * feature_sizes[0][1])
    if cls_logits[0].shape[1] != num_anchors * num_classes:
        raise ValueError(
            f"`cls_logits` have {cls_logits[0].shape[1]} channels, expected {num_anchors} anchors x {num_classes} "
            "classes; check `num_classes` against the head."
        )
    logits = _flatten_levels(cls_logits, num_classes).float()
    deltas = _flatten_levels(box_deltas, 4).float()
    flat_anchors = torch.cat(list(anchors)).float().to(logits.device)
    if flat_anchors.shape[0] != logits.shape[1]:
        raise ValueError(f"`anchors` hold {flat_anchors.shape[0]} anchors but the predictions {logits.shape[1]}.")

    cls_targets = torch.zeros_like(logits)
    cls_weights = logits.new_zeros(logits.shape[:2])
    reg_targets = torch.zeros_like(deltas)
    reg_weights = deltas.new_zeros(deltas.shape[:2])
    avg_factor = 0
    for i, (target, pad_shape) in enumerate(zip(targets, pad_shapes)):
        gt_boxes, gt_labels = _image_targets(target, i, num_classes, logits.device)
        valid = torch.cat(valid_anchor_flags(feature_sizes, strides, num_anchors, pad_shape, logits.device))
        assigned = torch.full_like(valid, -1, dtype=torch.long)
        assigned[valid] = assign_max_iou(flat_anchors[valid], gt_boxes, pos_iou_thr, neg_iou_thr, min_pos_iou)
        positive = torch.nonzero(assigned > 0).squeeze(1)
        matched = assigned[positive] - 1
        cls_weights[i] = (assigned >= 0).float()
        cls_targets[i, positive, gt_labels[matched]] = 1
        reg_targets[i, positive] = encode_boxes(flat_anchors[positive], gt_boxes[matched])
        reg_weights[i, positive] = 1
        avg_factor += max(positive.numel(), 1)

    focal = sigmoid_focal_loss(logits, cls_targets, alpha, gamma) * cls_weights[..., None]
    l1 = (deltas - reg_targets).abs() * reg_weights[..., None]
    return {"loss_cls": focal.sum() / avg_factor, "loss_bbox": l1.sum() / avg_factor}


# ----------------------------------------------------------------------------------------------------------------
# Non-maximum suppression and post-processing


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


def retinanet_postprocess(
    cls_logits: Sequence[torch.Tensor],
    box_deltas: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor],
    image_size: tuple[int, int],
    score_threshold: float = 0.05,
    nms_pre: int = 1000,
    iou_threshold: float = 0.5,
    max_per_image: int = 100,
) -> dict[str, torch.Tensor]:
    """Detections of ONE image, as mmdet v2.13's `AnchorHead._get_bboxes` followed by `multiclass_nms`.

    Args:
        cls_logits: per level (A * C, H, W) logits of the image. box_deltas: per level (A * 4, H, W).
        anchors: per level (H * W * A, 4) from `generate_anchors`.
        image_size: (h, w) of the image inside the (padded) input; boxes are clipped to it.
        score_threshold: keep (anchor, class) pairs scoring strictly above it.
        nms_pre: per level, keep only the `nms_pre` anchors with the highest best-class score (<= 0: all).
        iou_threshold: class-wise NMS threshold. max_per_image: detections kept at most (<= 0: all).

    Per level: sigmoid scores, top `nms_pre` anchors by max class score (ties: lower index), decode and clip. Then
    over all levels, (anchor, class) pairs above `score_threshold`, class-wise `batched_nms`, sorted by score
    descending, truncated to `max_per_image`. Returns {"boxes" (k, 4) xyxy input pixels, "scores" (k,),
    "labels" (k,) long}, computed in float32 (mmdet's `force_fp32`).
    """
    _check_levels(cls_logits=cls_logits, box_deltas=box_deltas, anchors=anchors)
    if cls_logits[0].dim() != 3:
        raise ValueError(
            f"`cls_logits` must be per-level (A * C, H, W) maps of one image, got {tuple(cls_logits[0].shape)}; "
            "index the batch first."
        )
    image_size = tuple(int(v) for v in image_size)
    level_boxes, level_scores = [], []
    for logits, deltas, level_anchors in zip(cls_logits, box_deltas, anchors):
        num_locations = logits.shape[-2] * logits.shape[-1]
        num_classes = logits.shape[0] * num_locations // level_anchors.shape[0]
        scores = logits.float().permute(1, 2, 0).reshape(-1, num_classes).sigmoid()
        deltas = deltas.float().permute(1, 2, 0).reshape(-1, 4)
        level_anchors = level_anchors.float().to(scores.device)
        if 0 < nms_pre < scores.shape[0]:
            top = torch.sort(scores.max(dim=1).values, descending=True, stable=True).indices[:nms_pre]
            scores, deltas, level_anchors = scores[top], deltas[top], level_anchors[top]
        level_boxes.append(decode_boxes(level_anchors, deltas, max_shape=image_size))
        level_scores.append(scores)
    boxes, scores = torch.cat(level_boxes), torch.cat(level_scores)

    # (anchor, class) candidates in mmdet's anchor-major order.
    anchor_index, labels = torch.nonzero(scores > score_threshold, as_tuple=True)
    boxes, scores = boxes[anchor_index], scores[anchor_index, labels]
    keep = batched_nms(boxes, scores, labels, iou_threshold)
    if max_per_image > 0:
        keep = keep[:max_per_image]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

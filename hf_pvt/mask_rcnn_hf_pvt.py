"""The papers' instance segmentation model: Mask R-CNN over the PVT encoder, as MMDetection v2.13 builds it.

The authors trained it with MMDetection v2.13 (`mask_rcnn_pvt_v2_b2_fpn_1x_coco.py` and its siblings, over
MMDetection's `mask_rcnn_r50_fpn.py`). This module holds the model and each step of its training and inference as
a small function:

- an FPN over the four stages with a fifth, max-pooled level (strides 4 to 64);
- the RPN head, its loss (`rpn_loss`) and its proposals (`rpn_proposals`);
- the box head (`Shared2FCBBoxHead`) on 7x7 RoIAlign features, proposal sampling (`sample_proposals`), its loss
  (`rcnn_loss`) and its detections (`detect_boxes`);
- the mask head (`FCNMaskHead`) on 14x14 features of the positives (training) or of the detections (inference),
  its loss (`mask_loss`), and the pasting of its 28x28 masks into the image (`mask_rcnn_postprocess`).

Boxes are (x1, y1, x2, y2) in input pixels with MMDetection v2's continuous convention (width = x2 - x1). Module
names are MMDetection's (`rpn_head.rpn_conv`, `roi_head.bbox_head.shared_fcs.0`, `roi_head.mask_head.convs.0.conv`,
...), so the released checkpoints convert by renaming.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .box_ops_hf_pvt import (
    assign_max_iou,
    batched_nms,
    decode_boxes,
    encode_boxes,
    generate_anchors,
    valid_anchor_flags,
)
from .configuration_hf_pvt import HfPvtConfig
from .dense_inputs_hf_pvt import detection_targets, image_sizes, pad_shapes
from .modeling_hf_pvt import CLASSIFICATION_ONLY_KEYS, HfPvtModel, HfPvtPreTrainedModel
from .neck_hf_pvt import HfPvtFeaturePyramid
from .roi_ops_hf_pvt import crop_and_resize_masks, multi_level_roi_align, paste_masks

__all__ = [
    "HfPvtForInstanceSegmentation",
    "HfPvtInstanceSegmentationOutput",
    "detect_boxes",
    "mask_loss",
    "mask_rcnn_postprocess",
    "rcnn_loss",
    "rpn_loss",
    "rpn_proposals",
    "sample_indices",
    "sample_proposals",
]

RPN_STRIDES = (4, 8, 16, 32, 64)
# RoI features come from the four stage levels only, not from the max-pooled fifth.
ROI_STRIDES = (4, 8, 16, 32)
BOX_ROI_SIZE = 7
MASK_ROI_SIZE = 14
MASK_SIZE = 2 * MASK_ROI_SIZE  # the mask head upsamples its RoI features by 2
# The box head regresses DeltaXYWH deltas divided by these (MMDetection's `target_stds`; the RPN's are 1).
RCNN_BOX_STDS = (0.1, 0.1, 0.2, 0.2)


# ----------------------------------------------------------------------------------------------------------------
# Output


@dataclass
class HfPvtInstanceSegmentationOutput(ModelOutput):
    r"""
    Per-image results are lists with one tensor per image, because every image keeps its own number of proposals
    and detections (a pipeline splitting a batch turns each into a `(1, ...)` tensor; index `[i]` works on both).

    loss (`torch.FloatTensor` of shape `()`, *optional*, with `labels`):
        The sum of the five terms of `loss_dict`.
    loss_dict (`dict[str, torch.FloatTensor]`, *optional*, with `labels`):
        MMDetection's names: `loss_rpn_cls` (objectness BCE) and `loss_rpn_bbox` (L1 on anchor deltas), both over
        the sampled anchors; `loss_cls` (softmax cross-entropy) and `loss_bbox` (L1 on the ground-truth class's
        deltas), both over the sampled proposals; `loss_mask` (per-pixel BCE of the ground-truth class's mask).
    proposals (`list[torch.FloatTensor]`):
        Per image, `(k_i, 4)` RPN proposals in input pixels, by objectness descending (at most
        `config.rpn_max_proposals`; `rpn_train_nms_pre` per level in training, `rpn_test_nms_pre` otherwise).
    proposal_scores (`list[torch.FloatTensor]`):
        Per image, `(k_i,)` objectness probabilities of the proposals.
    logits (`list[torch.FloatTensor]`, *optional*, in evaluation mode):
        Per image, `(k_i, num_labels + 1)` box-head class logits of the proposals; the last column is the
        background.
    pred_box_deltas (`list[torch.FloatTensor]`, *optional*, in evaluation mode):
        Per image, `(k_i, 4 * num_labels)` class-specific (dx, dy, dw, dh) deltas from the proposals, divided by
        the box coder's stds (0.1, 0.1, 0.2, 0.2).
    pred_boxes (`list[torch.FloatTensor]`, *optional*, in evaluation mode):
        Per image, `(d_i, 4)` detected boxes in input pixels, clipped to the image, by score descending: (box,
        class) pairs scoring above `config.rcnn_score_threshold` after class-wise NMS, at most
        `config.rcnn_max_per_image`.
    pred_scores (`list[torch.FloatTensor]`, *optional*, in evaluation mode):
        Per image, `(d_i,)` class probabilities of the detections.
    pred_labels (`list[torch.LongTensor]`, *optional*, in evaluation mode):
        Per image, `(d_i,)` class ids of the detections, in `[0, num_labels)`.
    pred_mask_logits (`list[torch.FloatTensor]`, *optional*, in evaluation mode):
        Per image, `(d_i, 28, 28)` mask logits of each detection's class over its box.
        `mask_rcnn_postprocess` pastes their sigmoid into the image.
    image_sizes (`torch.LongTensor` of shape `(batch_size, 2)`):
        The (height, width) of each image inside `pixel_values` without its padding (from `pixel_mask`): boxes are
        clipped to it.
    sampling (`list[dict[str, torch.LongTensor]]`, *optional*, with `labels`):
        Per image, the samples the losses used: `rpn_positive` / `rpn_negative` index the image's anchors (all
        levels concatenated, in `generate_anchors` order), `rcnn_positive` / `rcnn_negative` index the image's
        ground-truth boxes followed by its proposals. `rpn_loss` and `sample_proposals` accept them back.
    hidden_states, attentions: as [`HfPvtModel`] returns them.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict[str, torch.FloatTensor] | None = None
    proposals: list[torch.FloatTensor] | None = None
    proposal_scores: list[torch.FloatTensor] | None = None
    logits: list[torch.FloatTensor] | None = None
    pred_box_deltas: list[torch.FloatTensor] | None = None
    pred_boxes: list[torch.FloatTensor] | None = None
    pred_scores: list[torch.FloatTensor] | None = None
    pred_labels: list[torch.LongTensor] | None = None
    pred_mask_logits: list[torch.FloatTensor] | None = None
    image_sizes: torch.LongTensor | None = None
    sampling: list[dict[str, torch.LongTensor]] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------------
# Heads


class HfPvtRpnHead(nn.Module):
    """MMDetection's `RPNHead`, shared by every level: a 3x3 conv + ReLU, then 1x1 convs to one objectness logit
    per anchor (sigmoid) and to four box deltas per anchor."""

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.rpn_conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.rpn_cls = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.rpn_reg = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.rpn_conv(feature_map))
        return self.rpn_cls(hidden), self.rpn_reg(hidden)


class HfPvtBoxHead(nn.Module):
    """MMDetection's `Shared2FCBBoxHead`: flattened 7x7 RoI features -> two fully connected layers + ReLU -> class
    logits (`num_labels + 1`, background last) and class-specific box deltas (`4 * num_labels`)."""

    def __init__(self, in_channels: int, fc_channels: int, num_labels: int):
        super().__init__()
        self.shared_fcs = nn.ModuleList(
            [nn.Linear(in_channels * BOX_ROI_SIZE * BOX_ROI_SIZE, fc_channels), nn.Linear(fc_channels, fc_channels)]
        )
        self.fc_cls = nn.Linear(fc_channels, num_labels + 1)
        self.fc_reg = nn.Linear(fc_channels, 4 * num_labels)

    def forward(self, roi_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = roi_features.flatten(1)
        for fc in self.shared_fcs:
            hidden = F.relu(fc(hidden))
        return self.fc_cls(hidden), self.fc_reg(hidden)


class HfPvtMaskConv(nn.Module):
    """One 3x3 conv of the mask head; the wrapper keeps MMDetection's `ConvModule` key (`convs.{i}.conv`)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(hidden))


class HfPvtMaskHead(nn.Module):
    """MMDetection's `FCNMaskHead`: `num_convs` 3x3 conv + ReLU on 14x14 RoI features, a stride-2 transposed conv +
    ReLU to 28x28, and a 1x1 conv to one mask logit map per class."""

    def __init__(self, in_channels: int, channels: int, num_convs: int, num_labels: int):
        super().__init__()
        self.convs = nn.ModuleList(
            HfPvtMaskConv(in_channels if index == 0 else channels, channels) for index in range(num_convs)
        )
        self.upsample = nn.ConvTranspose2d(channels if num_convs else in_channels, channels, kernel_size=2, stride=2)
        self.conv_logits = nn.Conv2d(channels, num_labels, kernel_size=1)

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        hidden = roi_features
        for conv in self.convs:
            hidden = conv(hidden)
        return self.conv_logits(F.relu(self.upsample(hidden)))


class HfPvtRoIHead(nn.Module):
    """MMDetection's `StandardRoIHead` modules: the box head and the mask head (`roi_head.bbox_head`,
    `roi_head.mask_head`)."""

    def __init__(self, config: HfPvtConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.bbox_head = HfPvtBoxHead(width, config.rcnn_fc_channels, config.num_labels)
        self.mask_head = HfPvtMaskHead(width, config.mask_head_channels, config.mask_head_num_convs, config.num_labels)


# ----------------------------------------------------------------------------------------------------------------
# Sampling and box coding shared by both stages


def sample_indices(
    assigned: torch.Tensor,
    num_samples: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MMDetection's `RandomSampler`: (positive, negative) indices into `assigned`, each sorted ascending.

    `assigned` is an assigner's result (-1 ignore, 0 negative, k + 1 ground truth k). At most
    int(num_samples * positive_fraction) positives are drawn uniformly without replacement, then negatives fill
    the rest of `num_samples`. Draws use `generator` (the global RNG when None) through `torch.randperm` on the
    generator's device, so a seeded generator gives the same samples on every run.
    """
    positives = torch.nonzero(assigned > 0).flatten()
    negatives = torch.nonzero(assigned == 0).flatten()
    positives = _random_subset(positives, int(num_samples * positive_fraction), generator)
    negatives = _random_subset(negatives, num_samples - positives.numel(), generator)
    return positives, negatives


def _random_subset(candidates: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    if candidates.numel() <= count:
        return candidates
    device = generator.device if generator is not None else torch.device("cpu")
    chosen = torch.randperm(candidates.numel(), generator=generator, device=device)[:count]
    # MMDetection takes `.unique()` of the draw: sorted indices.
    return candidates[chosen.to(candidates.device)].sort().values


def _given_samples(
    samples: Any, assigned: torch.Tensor, keys: tuple[str, str], where: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) indices given by the caller, checked against the (deterministic) assignment."""
    if not isinstance(samples, Mapping) or not set(keys) <= set(samples):
        raise ValueError(f"{where} must be a dict with {keys[0]!r} and {keys[1]!r} index tensors.")
    positive, negative = (torch.as_tensor(samples[key], device=assigned.device).reshape(-1).long() for key in keys)
    for name, indices, wanted in ((keys[0], positive, "positive"), (keys[1], negative, "negative")):
        if indices.numel() and (indices.min() < 0 or indices.max() >= assigned.numel()):
            raise ValueError(f"{where}[{name!r}] indexes beyond the {assigned.numel()} candidates.")
        if wanted == "positive" and not bool((assigned[indices] > 0).all()):
            raise ValueError(f"{where}[{name!r}] holds candidates that the assigner did not make positive.")
        if wanted == "negative" and not bool((assigned[indices] == 0).all()):
            raise ValueError(f"{where}[{name!r}] holds candidates that the assigner did not make negative.")
    return positive, negative


def _flatten_levels(levels: Sequence[torch.Tensor], channels: int) -> torch.Tensor:
    """Per level (B, A * channels, H, W) -> float32 (B, sum_l H_l * W_l * A, channels), in anchor order."""
    flat = []
    for level in levels:
        batch_size, level_channels, height, width = level.shape
        # Sizes spelled out rather than -1, which an empty batch leaves undetermined.
        count = height * width * level_channels // channels
        flat.append(level.permute(0, 2, 3, 1).reshape(batch_size, count, channels))
    return torch.cat(flat, dim=1).float()


def _cat(tensors: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """`torch.cat` that also takes the empty list of an empty batch, giving `empty`."""
    return torch.cat(tensors) if tensors else empty


def _sum_over_images(terms: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.stack(terms).sum() if terms else like.sum() * 0


# ----------------------------------------------------------------------------------------------------------------
# Region proposal network


def rpn_loss(
    objectness: Sequence[torch.Tensor],
    box_deltas: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor],
    targets: Sequence[Mapping[str, torch.Tensor]],
    pad_shapes: Sequence[tuple[int, int]],
    *,
    strides: Sequence[int] = RPN_STRIDES,
    pos_iou_thr: float = 0.7,
    neg_iou_thr: float = 0.3,
    num_samples: int = 256,
    positive_fraction: float = 0.5,
    generator: torch.Generator | None = None,
    samples: Sequence[Mapping[str, torch.Tensor]] | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The RPN loss, as MMDetection v2.13's `RPNHead.loss` with `mask_rcnn_r50_fpn.py`'s settings.

    Args:
        objectness: per level `(B, A, H, W)` logits. box_deltas: per level `(B, 4A, H, W)`.
        anchors: per level `(H * W * A, 4)` from `generate_anchors`, shared by the batch.
        targets: per image a dict with `boxes` `(n, 4)` in input pixels (n may be 0).
        pad_shapes: per image the (h, w) that decides which anchors are valid (`valid_anchor_flags`).
        pos_iou_thr, neg_iou_thr: MaxIoU assignment; a ground truth's best anchors are positive too when that IoU
            reaches `neg_iou_thr` (MMDetection's `min_pos_iou`, 0.3 like the negative threshold).
        num_samples, positive_fraction, generator: `sample_indices` per image, over the valid anchors.
        samples: per image `{"rpn_positive", "rpn_negative"}` anchor indices to use instead of sampling.

    The objectness BCE over the sampled anchors (target 1 for positives) and the L1 loss between positive
    anchors' deltas and their `encode_boxes` targets are summed over the batch and divided by the number of
    samples, counting at least one positive and one negative per image (MMDetection's `num_total_samples`).
    Returns the losses `{"loss_rpn_cls", "loss_rpn_bbox"}` and per image the samples used, computed in float32.
    """
    batch_size = objectness[0].shape[0]
    if len(targets) != batch_size or len(pad_shapes) != batch_size:
        raise ValueError(
            f"`targets` ({len(targets)}) and `pad_shapes` ({len(pad_shapes)}) need one entry per image ({batch_size})."
        )
    if samples is not None and len(samples) != batch_size:
        raise ValueError(f"`samples` needs one entry per image ({batch_size}), got {len(samples)}.")
    feature_sizes = [tuple(level.shape[-2:]) for level in objectness]
    num_anchors = objectness[0].shape[1]
    logits = _flatten_levels(objectness, 1)[..., 0]
    deltas = _flatten_levels(box_deltas, 4)
    flat_anchors = torch.cat(list(anchors)).float().to(logits.device)
    if flat_anchors.shape[0] != logits.shape[1]:
        raise ValueError(f"`anchors` hold {flat_anchors.shape[0]} anchors but the predictions {logits.shape[1]}.")

    cls_terms, reg_terms, used, num_total = [], [], [], 0
    for index, (target, pad_shape) in enumerate(zip(targets, pad_shapes)):
        gt_boxes = target["boxes"].float()
        valid = torch.cat(valid_anchor_flags(feature_sizes, strides, num_anchors, pad_shape, logits.device))
        assigned = torch.full_like(valid, -1, dtype=torch.long)
        assigned[valid] = assign_max_iou(flat_anchors[valid], gt_boxes, pos_iou_thr, neg_iou_thr, neg_iou_thr)
        if samples is None:
            positive, negative = sample_indices(assigned, num_samples, positive_fraction, generator)
        else:
            keys = ("rpn_positive", "rpn_negative")
            positive, negative = _given_samples(samples[index], assigned, keys, f"samples[{index}]")
        matched = assigned[positive] - 1
        chosen = torch.cat([positive, negative])
        labels = torch.cat([logits.new_ones(positive.numel()), logits.new_zeros(negative.numel())])
        cls_terms.append(F.binary_cross_entropy_with_logits(logits[index, chosen], labels, reduction="sum"))
        reg_targets = encode_boxes(flat_anchors[positive], gt_boxes[matched])
        reg_terms.append((deltas[index, positive] - reg_targets).abs().sum())
        num_total += max(positive.numel(), 1) + max(negative.numel(), 1)
        used.append({"rpn_positive": positive, "rpn_negative": negative})
    losses = {
        "loss_rpn_cls": _sum_over_images(cls_terms, logits) / max(num_total, 1),
        "loss_rpn_bbox": _sum_over_images(reg_terms, deltas) / max(num_total, 1),
    }
    return losses, used


def rpn_proposals(
    objectness: Sequence[torch.Tensor],
    box_deltas: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor],
    image_sizes: torch.Tensor | Sequence[tuple[int, int]],
    nms_pre: int = 1000,
    iou_threshold: float = 0.7,
    max_proposals: int = 1000,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """RPN proposals of every image, as MMDetection v2.13's `RPNHead._get_bboxes`.

    Args:
        objectness: per level `(B, A, H, W)` logits. box_deltas: per level `(B, 4A, H, W)`.
        anchors: per level `(H * W * A, 4)` from `generate_anchors`.
        image_sizes: per image the (h, w) its proposals are clipped to.
        nms_pre: per level, the anchors kept by objectness before NMS (<= 0: all).
        iou_threshold: NMS threshold, applied within each level (the level is the class of `batched_nms`).
        max_proposals: proposals kept per image, best first (<= 0: all).

    Per image and level: sigmoid objectness, the `nms_pre` best anchors (ties: lower index first), decoding
    (DeltaXYWH, means 0, stds 1) clipped to the image. Proposals of zero width or height (anchors clipped away at the
    border) are dropped before the NMS: v2.13 keeps only boxes wider and taller than `min_bbox_size`, which the config
    sets to 0 (MMDetection pull request 5011). Returns per image `(k, 4)` boxes and `(k,)` objectness probabilities,
    by probability descending, in float32 and without gradient.
    """
    with torch.no_grad():
        boxes_per_image, scores_per_image = [], []
        for image, image_size in enumerate(image_sizes):
            image_size = tuple(int(v) for v in image_size)
            level_boxes, level_scores, level_ids = [], [], []
            for level, (logits, deltas, level_anchors) in enumerate(zip(objectness, box_deltas, anchors)):
                scores = logits[image].float().permute(1, 2, 0).reshape(-1).sigmoid()
                deltas = deltas[image].float().permute(1, 2, 0).reshape(-1, 4)
                level_anchors = level_anchors.float().to(scores.device)
                if 0 < nms_pre < scores.shape[0]:
                    top = torch.sort(scores, descending=True, stable=True).indices[:nms_pre]
                    scores, deltas, level_anchors = scores[top], deltas[top], level_anchors[top]
                level_boxes.append(decode_boxes(level_anchors, deltas, max_shape=image_size))
                level_scores.append(scores)
                level_ids.append(torch.full_like(scores, level, dtype=torch.long))
            boxes, scores, levels = torch.cat(level_boxes), torch.cat(level_scores), torch.cat(level_ids)
            proper = torch.nonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).flatten()
            boxes, scores, levels = boxes[proper], scores[proper], levels[proper]
            keep = batched_nms(
                boxes, scores, levels, iou_threshold, max_kept=max_proposals if max_proposals > 0 else None
            )
            boxes_per_image.append(boxes[keep])
            scores_per_image.append(scores[keep])
    return boxes_per_image, scores_per_image


# ----------------------------------------------------------------------------------------------------------------
# Box head: sampling, loss, detections


def sample_proposals(
    proposals: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    num_classes: int,
    *,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float = 0.5,
    num_samples: int = 512,
    positive_fraction: float = 0.25,
    generator: torch.Generator | None = None,
    samples: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The box head's training samples of ONE image, as MMDetection v2.13's `StandardRoIHead.forward_train`.

    The proposals `(k, 4)` are assigned by MaxIoU to `gt_boxes` `(n, 4)` (a ground truth's best proposals are
    positive too from `neg_iou_thr` on); the ground-truth boxes then join the candidates in front, each assigned to
    itself (`add_gt_as_proposals`), and `sample_indices` draws `num_samples` at most `positive_fraction` positive
    (or `samples`, `{"rcnn_positive", "rcnn_negative"}` indices into the candidates, are used).

    Returns `boxes` (positives then negatives, `(m, 4)`), `labels` (`(m,)`, `num_classes` for negatives),
    `box_targets` (`(m, 4)` deltas divided by the stds; zeros for negatives), `matched_gt` (`(p,)` ground-truth
    index of each positive), and the `rcnn_positive` / `rcnn_negative` candidate indices.
    """
    gt_boxes = gt_boxes.to(proposals.dtype)
    candidates = torch.cat([gt_boxes, proposals])
    # Proposals are assigned among themselves; the ground-truth boxes join afterwards, each matched to itself.
    assigned = assign_max_iou(proposals, gt_boxes, pos_iou_thr, neg_iou_thr, neg_iou_thr)
    assigned = torch.cat([torch.arange(1, gt_boxes.shape[0] + 1, device=proposals.device), assigned])
    if samples is None:
        positive, negative = sample_indices(assigned, num_samples, positive_fraction, generator)
    else:
        positive, negative = _given_samples(samples, assigned, ("rcnn_positive", "rcnn_negative"), "samples")
    matched = assigned[positive] - 1
    positive_boxes = candidates[positive]
    box_targets = torch.zeros((positive.numel() + negative.numel(), 4), dtype=proposals.dtype, device=proposals.device)
    if positive.numel():
        box_targets[: positive.numel()] = encode_boxes(positive_boxes, gt_boxes[matched], stds=RCNN_BOX_STDS)
    labels = torch.cat(
        [gt_labels[matched].long(), torch.full((negative.numel(),), num_classes, device=proposals.device)]
    )
    return {
        "boxes": torch.cat([positive_boxes, candidates[negative]]),
        "labels": labels,
        "box_targets": box_targets,
        "matched_gt": matched,
        "rcnn_positive": positive,
        "rcnn_negative": negative,
    }


def rcnn_loss(
    class_logits: torch.Tensor, box_deltas: torch.Tensor, labels: torch.Tensor, box_targets: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The box head's loss, as MMDetection v2.13's `BBoxHead.loss` (softmax CE + L1, class-specific regression).

    `class_logits` `(m, C + 1)` and `box_deltas` `(m, 4C)` of the sampled proposals of the whole batch, their
    `labels` `(m,)` (C = background) and `box_targets` `(m, 4)`. The cross-entropy is averaged over the m samples;
    the L1 loss between each positive's deltas of its own class and its targets is summed and divided by m too
    (MMDetection's `avg_factor=bbox_targets.size(0)`), so it is 0 without positives. Computed in float32.
    """
    count = class_logits.shape[0]
    num_classes = class_logits.shape[1] - 1
    loss_cls = F.cross_entropy(class_logits.float(), labels, reduction="sum") / max(count, 1)
    positive = torch.nonzero(labels < num_classes).flatten()
    chosen = box_deltas.float().reshape(count, num_classes, 4)[positive, labels[positive]]
    loss_bbox = (chosen - box_targets[positive].float()).abs().sum() / max(count, 1)
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}


def mask_loss(mask_logits: torch.Tensor, mask_targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mask loss, as MMDetection v2.13's `FCNMaskHead.loss`: binary cross-entropy of each positive's logits of
    its ground-truth class `(p, C, 28, 28)` against its `(p, 28, 28)` target, averaged over every pixel of the
    batch's positives; 0 (still part of the graph) without positives. Computed in float32."""
    if mask_logits.shape[0] == 0:
        return mask_logits.sum().float()
    chosen = mask_logits[torch.arange(mask_logits.shape[0], device=mask_logits.device), labels]
    return F.binary_cross_entropy_with_logits(chosen.float(), mask_targets.float(), reduction="mean")


def detect_boxes(
    proposals: torch.Tensor,
    class_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    image_size: tuple[int, int],
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    max_per_image: int = 100,
) -> dict[str, torch.Tensor]:
    """Detections of ONE image, as MMDetection v2.13's `BBoxHead.get_bboxes` followed by `multiclass_nms`.

    Softmax over `class_logits` `(k, C + 1)`, each class's box decoded from its proposal (`box_deltas` `(k, 4C)`
    times the stds (0.1, 0.1, 0.2, 0.2)) and clipped to `image_size`; the (proposal, class) pairs scoring above
    `score_threshold` (background excluded), class-wise `batched_nms`, at most `max_per_image` (<= 0: all).
    Returns `{"boxes" (d, 4), "scores" (d,), "labels" (d,)}` by score descending, in float32.
    """
    image_size = tuple(int(v) for v in image_size)
    scores = F.softmax(class_logits.float(), dim=-1)[:, :-1]
    # Class-specific decoding: each proposal once per class, (k, C, 4) boxes clipped to the image.
    count, num_classes = proposals.shape[0], box_deltas.shape[1] // 4
    repeated = proposals.float()[:, None, :].expand(count, num_classes, 4).reshape(-1, 4)
    deltas = box_deltas.float().reshape(-1, 4)
    boxes = decode_boxes(repeated, deltas, max_shape=image_size, stds=RCNN_BOX_STDS).reshape(count, num_classes, 4)
    # (proposal, class) candidates in MMDetection's proposal-major order.
    proposal_index, labels = torch.nonzero(scores > score_threshold, as_tuple=True)
    boxes, scores = boxes[proposal_index, labels], scores[proposal_index, labels]
    keep = batched_nms(boxes, scores, labels, iou_threshold, max_kept=max_per_image if max_per_image > 0 else None)
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


# ----------------------------------------------------------------------------------------------------------------
# Post-processing


def mask_rcnn_postprocess(
    outputs: HfPvtInstanceSegmentationOutput | Mapping[str, Any],
    image_index: int = 0,
    target_size: tuple[int, int] | None = None,
    threshold: float = 0.05,
    mask_threshold: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Instances of one image from the model's outputs, as MMDetection v2.13's `simple_test` with rescaling.

    Args:
        outputs: the model's output (or a pipeline's per-image slice of it).
        image_index: which image of the batch.
        target_size: (height, width) of the original image; the boxes are scaled from the image's size inside
            `pixel_values` (`outputs.image_sizes`) to it. None keeps input pixels and that size.
        threshold: keep detections scoring above it (the model already dropped those at or below
            `config.rcnn_score_threshold`, 0.05).
        mask_threshold: a pasted mask pixel is foreground when its probability is >= it (`config.mask_threshold`).

    Returns `{"boxes" (k, 4) x1, y1, x2, y2 in target pixels, "scores" (k,), "labels" (k,), "masks" (k, H, W)
    bool}`: each detection's 28x28 mask probabilities (sigmoid of its class's logits) pasted over its box by
    bilinear sampling (`paste_masks`), at the target size.
    """
    fields = ("pred_boxes", "pred_scores", "pred_labels", "pred_mask_logits", "image_sizes")
    if any(outputs[name] is None for name in fields if name in outputs) or not all(name in outputs for name in fields):
        raise ValueError(
            "outputs hold no detections: run the model in evaluation mode (model.eval()) to get pred_boxes, "
            "pred_scores, pred_labels and pred_mask_logits."
        )
    boxes = outputs["pred_boxes"][image_index].reshape(-1, 4).float()
    scores = outputs["pred_scores"][image_index].reshape(-1).float()
    labels = outputs["pred_labels"][image_index].reshape(-1)
    mask_logits = outputs["pred_mask_logits"][image_index]
    mask_logits = mask_logits.reshape(-1, *mask_logits.shape[-2:])
    height, width = (int(v) for v in outputs["image_sizes"][image_index].reshape(-1))
    keep = scores > threshold
    boxes, scores, labels, mask_logits = boxes[keep], scores[keep], labels[keep], mask_logits[keep]
    if target_size is not None:
        target_height, target_width = (int(v) for v in target_size)
        scale = boxes.new_tensor([target_width / width, target_height / height] * 2)
        boxes = boxes * scale
    else:
        target_height, target_width = height, width
    masks = paste_masks(mask_logits.float().sigmoid(), boxes, (target_height, target_width), mask_threshold)
    return {"boxes": boxes, "scores": scores, "labels": labels, "masks": masks}


# ----------------------------------------------------------------------------------------------------------------
# Model


class HfPvtForInstanceSegmentation(HfPvtPreTrainedModel):
    """The papers' Mask R-CNN: the encoder in dense-prediction mode, an FPN over the four stages with a max-pooled
    fifth level (strides 4 to 64), the RPN, and the box and mask heads on RoIAlign features of levels 1-4.

    Module names follow MMDetection's (`neck.lateral_convs.k`, `rpn_head.rpn_conv`, `roi_head.bbox_head.shared_fcs.0`,
    `roi_head.mask_head.convs.0.conv`, ...), so the authors' checkpoints convert by renaming. Images of different
    sizes share a batch by padding (bottom/right) with a `pixel_mask`, as the image processor does.

    In training mode the forward pass computes the losses (with `labels`); in evaluation mode it also detects: RPN
    proposals, box head, class-wise NMS, and mask logits of the kept boxes, which `mask_rcnn_postprocess` pastes
    into the original image. With `labels` in evaluation mode both come out, the losses then from the inference
    proposals (`rpn_test_nms_pre` per level).
    """

    _keys_to_ignore_on_load_unexpected = CLASSIFICATION_ONLY_KEYS

    def __init__(self, config: HfPvtConfig):
        super().__init__(config)
        if config.num_stages != 4:
            raise ValueError(
                f"Mask R-CNN reads the four stages of a 4-stage encoder; this config has {config.num_stages}."
            )
        if config.num_labels < 1:
            raise ValueError(f"Instance segmentation needs num_labels >= 1 (got {config.num_labels}).")
        self.pvt = HfPvtModel(config, dense_prediction=True)
        # MMDetection's FPN without extra convs: the fifth level is a stride-2 max pool (kernel 1) of the fourth.
        self.neck = HfPvtFeaturePyramid(
            config.hidden_sizes, config.decoder_hidden_size, num_extra_levels=1, extra_levels="max_pool"
        )
        self.num_anchors = len(config.rpn_anchor_ratios)
        self.rpn_head = HfPvtRpnHead(config.decoder_hidden_size, self.num_anchors)
        self.roi_head = HfPvtRoIHead(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # MMDetection v2.13's inits, layer by layer: for remote code Transformers skips modules without parameters
        # of their own, so a head's container never reaches this method.
        if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            return
        if any(module is layer for layer in self.neck.modules()):
            init.xavier_uniform_(module.weight)
        elif any(module is layer for layer in self.rpn_head.modules()):
            init.normal_(module.weight, mean=0.0, std=0.01)
        elif any(module is layer for layer in self.roi_head.bbox_head.modules()):
            # v2.13's `ConvFCBBoxHead` init_cfg applies Xavier (normal) to every Linear layer, which overrides the
            # normal(0.01) / normal(0.001) its parent `BBoxHead` asks for fc_cls / fc_reg (MMDetection issue 6238,
            # fixed in v2.18); the authors' detectors were trained from this init.
            init.xavier_normal_(module.weight)
        elif any(module is layer for layer in self.roi_head.mask_head.modules()):
            # `ConvModule`'s and `FCNMaskHead.init_weights`' Kaiming normal (fan_out, ReLU) for every conv.
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        else:
            return
        init.zeros_(module.bias)

    # ------------------------------------------------------------------------------------------------ forward

    def _roi_features(self, pyramid: list[torch.Tensor], boxes: list[torch.Tensor], size: int) -> torch.Tensor:
        """RoIAlign features `(sum k_i, C, size, size)` of per-image `(k_i, 4)` boxes from levels 1-4."""
        rois = [
            torch.cat([image_boxes.new_full((len(image_boxes), 1), i), image_boxes], 1)
            for i, image_boxes in enumerate(boxes)
        ]
        rois = _cat(rois, pyramid[0].new_zeros((0, 5), dtype=torch.float32))
        return multi_level_roi_align(pyramid[: len(ROI_STRIDES)], rois, size, ROI_STRIDES)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> HfPvtInstanceSegmentationOutput:
        r"""
        pixel_mask (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            1 for real pixels, 0 for padding (bottom/right), as the image processor returns it.
        labels (`list[dict]`, *optional*):
            One dict per image, as Transformers' segmentation models take them: `class_labels` (`(n,)` ids),
            `boxes` (`(n, 4)` normalised (center_x, center_y, width, height) relative to `pixel_values`' height
            and width) and `masks` (`(n, height, width)` binary, at `pixel_values`' size). `n = 0` is allowed.
        generator (`torch.Generator`, *optional*):
            The random generator of the anchor and proposal sampling (default: torch's global one).
        """
        sizes = image_sizes(pixel_values, pixel_mask)
        # Boxes (float32), classes and masks checked once by the detectors' shared reader; zero-size boxes dropped.
        targets = None
        if labels is not None:
            targets = detection_targets(labels, pixel_values, self.config.num_labels, masks=True)
        outputs = self.pvt(pixel_values, **kwargs)
        pyramid = self.neck(outputs.feature_maps)
        objectness, rpn_deltas = zip(*(self.rpn_head(level) for level in pyramid))
        anchors = generate_anchors(
            [tuple(level.shape[-2:]) for level in pyramid],
            RPN_STRIDES,
            octave_base_scale=self.config.rpn_anchor_scale,
            scales_per_octave=1,
            ratios=self.config.rpn_anchor_ratios,
            # float32 whatever the model's dtype: bf16 cannot hold anchor corners such as 1000.5 exactly.
            dtype=torch.float32,
            device=pyramid[0].device,
        )
        nms_pre = self.config.rpn_train_nms_pre if self.training else self.config.rpn_test_nms_pre
        proposals, proposal_scores = rpn_proposals(
            objectness,
            rpn_deltas,
            anchors,
            sizes.tolist(),
            nms_pre=nms_pre,
            iou_threshold=self.config.rpn_nms_iou_threshold,
            max_proposals=self.config.rpn_max_proposals,
        )

        loss = loss_dict = sampling = None
        if targets is not None:
            # MMDetection's pad_shape: anchors centred beyond it are neither positive nor negative, and the
            # ground-truth masks end there.
            shapes = pad_shapes(sizes, pixel_values.shape[-2:])
            loss_dict, sampling = self._losses(
                pyramid, objectness, rpn_deltas, anchors, proposals, targets, shapes, generator
            )
            loss = sum(loss_dict.values())

        detections = {}
        if not self.training:
            detections = self._detect(pyramid, proposals, sizes)
        return HfPvtInstanceSegmentationOutput(
            loss=loss,
            loss_dict=loss_dict,
            proposals=proposals,
            proposal_scores=proposal_scores,
            image_sizes=sizes,
            sampling=sampling,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **detections,
        )

    def _losses(
        self,
        pyramid: list[torch.Tensor],
        objectness: tuple[torch.Tensor, ...],
        rpn_deltas: tuple[torch.Tensor, ...],
        anchors: list[torch.Tensor],
        proposals: list[torch.Tensor],
        targets: list[dict],
        shapes: list[tuple[int, int]],
        generator: torch.Generator | None,
    ) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        config = self.config
        losses, rpn_samples = rpn_loss(
            objectness,
            rpn_deltas,
            anchors,
            targets,
            shapes,
            pos_iou_thr=config.rpn_pos_iou_threshold,
            neg_iou_thr=config.rpn_neg_iou_threshold,
            num_samples=config.rpn_num_samples,
            positive_fraction=config.rpn_positive_fraction,
            generator=generator,
        )
        samples = [
            sample_proposals(
                image_proposals,
                target["boxes"],
                target["class_labels"],
                config.num_labels,
                pos_iou_thr=config.rcnn_pos_iou_threshold,
                neg_iou_thr=config.rcnn_neg_iou_threshold,
                num_samples=config.rcnn_num_samples,
                positive_fraction=config.rcnn_positive_fraction,
                generator=generator,
            )
            for image_proposals, target in zip(proposals, targets)
        ]
        box_features = self._roi_features(pyramid, [sample["boxes"] for sample in samples], BOX_ROI_SIZE)
        class_logits, box_deltas = self.roi_head.bbox_head(box_features)
        losses.update(
            rcnn_loss(
                class_logits,
                box_deltas,
                _cat([sample["labels"] for sample in samples], class_logits.new_zeros(0, dtype=torch.long)),
                _cat([sample["box_targets"] for sample in samples], box_deltas.new_zeros(0, 4, dtype=torch.float32)),
            )
        )
        positive_boxes = [sample["boxes"][: sample["matched_gt"].numel()] for sample in samples]
        mask_logits = self.roi_head.mask_head(self._roi_features(pyramid, positive_boxes, MASK_ROI_SIZE))
        mask_targets = [
            crop_and_resize_masks(target["masks"][:, :pad_h, :pad_w], boxes, sample["matched_gt"], MASK_SIZE)
            for target, boxes, sample, (pad_h, pad_w) in zip(targets, positive_boxes, samples, shapes)
        ]
        positive_labels = [sample["labels"][: sample["matched_gt"].numel()] for sample in samples]
        losses["loss_mask"] = mask_loss(
            mask_logits,
            _cat(mask_targets, mask_logits.new_zeros(0, MASK_SIZE, MASK_SIZE, dtype=torch.float32)),
            _cat(positive_labels, mask_logits.new_zeros(0, dtype=torch.long)),
        )
        sampling = [
            {**rpn, "rcnn_positive": sample["rcnn_positive"], "rcnn_negative": sample["rcnn_negative"]}
            for rpn, sample in zip(rpn_samples, samples)
        ]
        return losses, sampling

    def _detect(
        self, pyramid: list[torch.Tensor], proposals: list[torch.Tensor], sizes: torch.Tensor
    ) -> dict[str, list[torch.Tensor]]:
        config = self.config
        counts = [len(image_proposals) for image_proposals in proposals]
        class_logits, box_deltas = self.roi_head.bbox_head(self._roi_features(pyramid, proposals, BOX_ROI_SIZE))
        logits, deltas = list(class_logits.split(counts)), list(box_deltas.split(counts))
        detections = [
            detect_boxes(
                image_proposals,
                image_logits,
                image_deltas,
                tuple(image_size),
                score_threshold=config.rcnn_score_threshold,
                iou_threshold=config.rcnn_nms_iou_threshold,
                max_per_image=config.rcnn_max_per_image,
            )
            for image_proposals, image_logits, image_deltas, image_size in zip(
                proposals, logits, deltas, sizes.tolist()
            )
        ]
        boxes = [detection["boxes"] for detection in detections]
        classes = [detection["labels"] for detection in detections]
        mask_logits = self.roi_head.mask_head(self._roi_features(pyramid, boxes, MASK_ROI_SIZE))
        # Each detection keeps the mask of its own class.
        all_classes = _cat(classes, mask_logits.new_zeros(0, dtype=torch.long))
        mask_logits = mask_logits[torch.arange(len(all_classes), device=mask_logits.device), all_classes]
        return {
            "logits": logits,
            "pred_box_deltas": deltas,
            "pred_boxes": boxes,
            "pred_scores": [detection["scores"] for detection in detections],
            "pred_labels": classes,
            "pred_mask_logits": list(mask_logits.split([len(image_boxes) for image_boxes in boxes])),
        }

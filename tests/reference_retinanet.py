"""Plain-PyTorch reference of the authors' RetinaNet detectors (MMDetection v2.13), for tests only.

Written from the authors' `retinanet_pvt_*_fpn_1x_coco.py` configs and MMDetection v2.13's behaviour,
independently of hf_pvt (it imports nothing from it): module names reproduce mmdet's checkpoint keys (`backbone.*`,
`neck.lateral_convs.k.conv.*`, `bbox_head.cls_convs.k.conv.*`, `bbox_head.retina_cls.*`, ...), so
`{'state_dict': model.state_dict()}` is a checkpoint in the authors' layout. Tests use it as the ground truth of
the whole detection path: FPN, head, anchors, delta decoding, per-level top-k, score threshold, class-wise greedy
NMS and the per-image cap.

Deliberately simple rather than fast: NMS is the textbook greedy loop, one class at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from reference_pvt import build_reference, random_init_
from torch import nn

STRIDES = (8, 16, 32, 64, 128)


class ConvModule(nn.Module):
    """mmdet's ConvModule without norm: a conv under `.conv`, then ReLU if `relu`."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class FPN(nn.Module):
    """`FPN(in_channels, out_channels, start_level=1, add_extra_convs='on_input', num_outs=5)`, no ReLU before
    the extra convs: P3-P5 from stages 2-4, P6 from stage 4's map C5 (not P5), P7 from P6."""

    def __init__(self, in_channels: list[int], out_channels: int, start_level: int = 1, num_outs: int = 5):
        super().__init__()
        self.start_level = start_level
        used = in_channels[start_level:]
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in used)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3) for _ in used)
        for extra in range(num_outs - len(used)):
            source = in_channels[-1] if extra == 0 else out_channels
            self.fpn_convs.append(ConvModule(source, out_channels, 3, stride=2))

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        inputs = inputs[self.start_level :]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:])
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        outs.append(self.fpn_convs[len(laterals)](inputs[-1]))
        for conv in self.fpn_convs[len(laterals) + 1 :]:
            outs.append(conv(outs[-1]))
        return outs


class RetinaHead(nn.Module):
    """`RetinaHead(num_classes, in_channels, stacked_convs, feat_channels)`, shared by every level."""

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int, stacked_convs: int, num_anchors: int):
        super().__init__()
        self.num_classes = num_classes
        widths = [in_channels] + [feat_channels] * stacked_convs
        self.cls_convs = nn.ModuleList(ConvModule(a, b, 3, relu=True) for a, b in zip(widths, widths[1:]))
        self.reg_convs = nn.ModuleList(ConvModule(a, b, 3, relu=True) for a, b in zip(widths, widths[1:]))
        self.retina_cls = nn.Conv2d(widths[-1], num_anchors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(widths[-1], num_anchors * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls_feat, reg_feat = x, x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        return self.retina_cls(cls_feat), self.retina_reg(reg_feat)


def anchors_for(
    feature_sizes: list[tuple[int, int]],
    strides: tuple[int, ...] = STRIDES,
    octave_base_scale: float = 4,
    scales_per_octave: int = 3,
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
) -> list[torch.Tensor]:
    """mmdet v2.13 `AnchorGenerator` (base size = stride, centre offset 0, scale_major): per level (H*W*A, 4),
    locations row-major, then the A anchors of a location ratio by ratio, scales inside each ratio."""
    scales = torch.tensor([octave_base_scale * 2 ** (k / scales_per_octave) for k in range(scales_per_octave)])
    h_ratios = torch.tensor(ratios).sqrt()
    w_ratios = 1 / h_ratios
    levels = []
    for (height, width), stride in zip(feature_sizes, strides):
        ws = (stride * w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (stride * h_ratios[:, None] * scales[None, :]).view(-1)
        base = torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)
        ys, xs = torch.meshgrid(torch.arange(height) * stride, torch.arange(width) * stride, indexing="ij")
        shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4).float()
        levels.append((shifts + base[None]).reshape(-1, 4))
    return levels


def decode(anchors: torch.Tensor, deltas: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """mmdet's DeltaXYWHBBoxCoder.decode (means 0, stds 1, wh_ratio_clip 16/1000), clipped to the image."""
    max_ratio = abs(math.log(16 / 1000))
    dx, dy = deltas[:, 0], deltas[:, 1]
    dw, dh = deltas[:, 2].clamp(-max_ratio, max_ratio), deltas[:, 3].clamp(-max_ratio, max_ratio)
    px, py = (anchors[:, 0] + anchors[:, 2]) * 0.5, (anchors[:, 1] + anchors[:, 3]) * 0.5
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * dx, py + ph * dy
    height, width = image_size
    return torch.stack(
        [
            (gx - gw * 0.5).clamp(0, width),
            (gy - gh * 0.5).clamp(0, height),
            (gx + gw * 0.5).clamp(0, width),
            (gy + gh * 0.5).clamp(0, height),
        ],
        dim=-1,
    )


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of xyxy `boxes`; areas (x2 - x1) * (y2 - y1), as mmcv's nms (offset 0). Degenerate pairs
    (zero union) give NaN, which suppresses nothing, as in mmcv."""
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area[:, None] + area[None, :] - inter)


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> list[int]:
    """The textbook loop: the best remaining box is kept, and every box overlapping it by IoU > threshold dropped."""
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    suppresses = pairwise_iou(boxes) > iou_threshold
    removed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for rank in range(len(order)):
        if removed[rank]:
            continue
        keep.append(int(order[rank]))
        removed |= suppresses[rank]  # marks earlier ranks too, but they are settled already
    return keep


class RetinaNetReference(nn.Module):
    """The authors' RetinaNet: a PVT backbone in dense mode, FPN neck, RetinaHead; mmdet's checkpoint keys."""

    def __init__(
        self,
        backbone_kwargs: Mapping[str, Any],
        num_classes: int = 80,
        fpn_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
    ):
        super().__init__()
        # The authors' detection backbones carry neither classifier, nor (v1) cls token and final norm.
        self.backbone = build_reference({**backbone_kwargs, "num_classes": 0})
        if self.backbone.version == 1:
            del self.backbone.cls_token
            del self.backbone.norm
        self.neck = FPN(self.backbone.embed_dims, fpn_channels)
        self.bbox_head = RetinaHead(num_classes, fpn_channels, feat_channels, stacked_convs, num_anchors=9)

    def forward(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level (B, A*C, H, W) class logits and (B, A*4, H, W) box deltas."""
        levels = self.neck(self.backbone.forward_dense(pixel_values))
        cls_scores, bbox_preds = zip(*(self.bbox_head(level) for level in levels))
        return list(cls_scores), list(bbox_preds)

    @torch.no_grad()
    def detect(
        self,
        pixel_values: torch.Tensor,
        image_sizes: list[tuple[int, int]] | None = None,
        score_threshold: float = 0.05,
        nms_pre: int = 1000,
        iou_threshold: float = 0.5,
        max_per_image: int = 100,
    ) -> list[dict[str, torch.Tensor]]:
        """mmdet v2.13's `simple_test` without rescaling: per image {"boxes", "scores", "labels"} in input pixels,
        boxes clipped to the image's valid (height, width) inside the padded batch (default: the whole input)."""
        cls_scores, bbox_preds = self(pixel_values)
        anchors = anchors_for([tuple(level.shape[-2:]) for level in cls_scores])
        num_classes = self.bbox_head.num_classes
        results = []
        for index in range(pixel_values.shape[0]):
            image_size = image_sizes[index] if image_sizes is not None else tuple(pixel_values.shape[-2:])
            all_boxes, all_scores = [], []
            for cls_score, bbox_pred, level_anchors in zip(cls_scores, bbox_preds, anchors):
                scores = cls_score[index].permute(1, 2, 0).reshape(-1, num_classes).sigmoid()
                deltas = bbox_pred[index].permute(1, 2, 0).reshape(-1, 4)
                if scores.shape[0] > nms_pre:
                    # mmdet's topk leaves the order of equal scores open; lower anchor index first here.
                    top = torch.sort(scores.max(dim=1).values, descending=True, stable=True).indices[:nms_pre]
                    scores, deltas, level_anchors = scores[top], deltas[top], level_anchors[top]
                all_boxes.append(decode(level_anchors, deltas, image_size))
                all_scores.append(scores)
            boxes, scores = torch.cat(all_boxes), torch.cat(all_scores)
            kept_boxes, kept_scores, kept_labels = [], [], []
            for label in range(num_classes):
                candidates = torch.nonzero(scores[:, label] > score_threshold).squeeze(1)
                keep = greedy_nms(boxes[candidates], scores[candidates, label], iou_threshold)
                kept_boxes.append(boxes[candidates][keep])
                kept_scores.append(scores[candidates, label][keep])
                kept_labels.append(torch.full((len(keep),), label, dtype=torch.long))
            boxes, scores, labels = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
            order = torch.sort(scores, descending=True, stable=True).indices
            if max_per_image > 0:  # mmdet's multiclass_nms: 0 or less keeps every detection
                order = order[:max_per_image]
            results.append({"boxes": boxes[order], "scores": scores[order], "labels": labels[order]})
        return results


@torch.no_grad()
def random_retinanet_(model: RetinaNetReference, seed: int = 0, class_bias: float = -3.5) -> RetinaNetReference:
    """Random non-trivial weights: the backbone as reference_pvt's `random_init_`, neck and head convs at a scale
    that keeps activations of order one, random biases everywhere, and class biases around `class_bias`
    (sigmoid(-3.5) = 0.03, just under the 0.05 threshold) so that a good part of the scores pass it and NMS has
    overlaps to suppress."""
    random_init_(model.backbone, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    for module in (*model.neck.modules(), *model.bbox_head.modules()):
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * math.sqrt(1.0 / fan_in))
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    head = model.bbox_head.retina_cls
    head.bias.copy_(class_bias + 0.5 * torch.randn(head.bias.shape, generator=generator))
    return model.eval()


def mmdet_checkpoint(model: RetinaNetReference, class_names: list[str] | None = None) -> dict[str, Any]:
    """What mmdet's `save_checkpoint` writes: the state dict and a `meta` with the class names."""
    meta: dict[str, Any] = {"mmdet_version": "2.13.0", "epoch": 12, "iter": 87960}
    if class_names is not None:
        meta["CLASSES"] = tuple(class_names)
    return {"meta": meta, "state_dict": dict(model.state_dict())}

"""Plain-PyTorch reference of the authors' Mask R-CNN (MMDetection v2.13.0, `mask_rcnn_r50_fpn.py` with a PVT
backbone, as in `mask_rcnn_pvt_v2_b2_fpn_1x_coco.py`), for tests only.

Independent of hf_pvt (it imports nothing from it; the backbone is reference_pvt's dense mode). Module names
reproduce mmdet's checkpoint keys (`backbone.*`, `neck.lateral_convs.k.conv.*`, `rpn_head.rpn_conv.*`,
`roi_head.bbox_head.shared_fcs.0.*`, `roi_head.mask_head.convs.0.conv.*`, ...), so
`{'state_dict': model.state_dict()}` is a checkpoint in the authors' layout.

Deliberately simple rather than fast: greedy NMS loops, one RoIAlign per box, one mask paste per box. Every
semantic choice names the MMDetection 2.13.0 / mmcv 1.3 function it reproduces. Where mmdet's behaviour depends on
the device or on other images of the batch, the reference follows what the authors' evaluation computed (one image
per GPU, CUDA NMS) and says so.

Coordinates: `images` is a padded batch (B, 3, H, W); `image_sizes[i] = (h, w)` is image i's valid region
(mmdet's `img_shape`) at the top-left of its slot; boxes are xyxy in input pixels unless rescaled to an original
size (mmdet's `rescale=True`, dividing by `scale_factor = (w / W0, h / H0)`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from reference_pvt import build_reference, random_init_
from torch import nn

# Anchors and pyramid: `AnchorGenerator(scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64])`.
STRIDES = (4, 8, 16, 32, 64)
ANCHOR_SCALES = (8.0,)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
ROI_STRIDES = (4, 8, 16, 32)  # `SingleRoIExtractor(featmap_strides=[4, 8, 16, 32])`: the 5th level is RPN-only
FINEST_SCALE = 56
RCNN_STDS = (0.1, 0.1, 0.2, 0.2)
WH_RATIO_CLIP = 16 / 1000
PAD_DIVISOR = 32  # the pipelines' `Pad(size_divisor=32)`: each image's own `pad_shape`

# `test_cfg` and `train_cfg` of mask_rcnn_r50_fpn.py.
TEST_RPN = {"nms_pre": 1000, "iou_threshold": 0.7, "max_per_img": 1000}
TRAIN_RPN_PROPOSAL = {"nms_pre": 2000, "iou_threshold": 0.7, "max_per_img": 1000}
TEST_RCNN = {"score_thr": 0.05, "iou_threshold": 0.5, "max_per_img": 100, "mask_thr_binary": 0.5}
RPN_ASSIGNER = {"pos_iou_thr": 0.7, "neg_iou_thr": 0.3, "min_pos_iou": 0.3}
RCNN_ASSIGNER = {"pos_iou_thr": 0.5, "neg_iou_thr": 0.5, "min_pos_iou": 0.5}
RPN_SAMPLER = {"num": 256, "pos_fraction": 0.5}
RCNN_SAMPLER = {"num": 512, "pos_fraction": 0.25}
MASK_SIZE = 28


# ----------------------------------------------------------------------------------------------------- modules


class ConvModule(nn.Module):
    """mmcv's ConvModule without norm: the conv under `.conv` (bias on), then ReLU if `relu`."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, relu: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class FPN(nn.Module):
    """mmdet `FPN(in_channels, out_channels, num_outs=5)`: start_level 0, no extra convs, so the fifth level is
    `F.max_pool2d(P5, 1, stride=2)`; no activations; top-down nearest upsampling to the lower level's size."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int = 5):
        super().__init__()
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1, relu=False) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, relu=False) for _ in in_channels)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs


class RPNHead(nn.Module):
    """mmdet `RPNHead` (sigmoid objectness): 3x3 conv + ReLU, then 1x1 convs to A scores and 4A deltas."""

    def __init__(self, in_channels: int, feat_channels: int, num_anchors: int = 3):
        super().__init__()
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.rpn_conv(x))
        return self.rpn_cls(x), self.rpn_reg(x)


class Shared2FCBBoxHead(nn.Module):
    """mmdet `Shared2FCBBoxHead`: flatten, (fc + ReLU) x 2, then `fc_cls` (num_classes + 1 logits, background last)
    and `fc_reg` (4 deltas per class, `reg_class_agnostic=False`)."""

    def __init__(self, in_channels: int, fc_channels: int, num_classes: int, roi_size: int = 7):
        super().__init__()
        self.num_classes = num_classes
        self.shared_fcs = nn.ModuleList(
            [nn.Linear(in_channels * roi_size * roi_size, fc_channels), nn.Linear(fc_channels, fc_channels)]
        )
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, 4 * num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class FCNMaskHead(nn.Module):
    """mmdet `FCNMaskHead`: `num_convs` x (3x3 conv + ReLU), ConvTranspose2d(k=2, s=2) + ReLU, 1x1 `conv_logits`
    to one 28x28 logit map per class (`class_agnostic=False`)."""

    def __init__(self, in_channels: int, conv_channels: int, num_classes: int, num_convs: int = 4):
        super().__init__()
        widths = [in_channels] + [conv_channels] * num_convs
        self.convs = nn.ModuleList(ConvModule(a, b, 3, relu=True) for a, b in zip(widths, widths[1:]))
        self.upsample = nn.ConvTranspose2d(widths[-1], conv_channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(conv_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x)))


class RoIHead(nn.Module):
    """Holds the two heads under mmdet's `roi_head.bbox_head` / `roi_head.mask_head` names."""

    def __init__(self, bbox_head: Shared2FCBBoxHead, mask_head: FCNMaskHead):
        super().__init__()
        self.bbox_head = bbox_head
        self.mask_head = mask_head


class MaskRCNNReference(nn.Module):
    """The authors' Mask R-CNN: PVT backbone (dense mode), FPN, RPN head, box head, mask head."""

    def __init__(
        self,
        backbone_arch: Mapping[str, Any],
        num_classes: int = 80,
        fpn_channels: int = 256,
        rpn_feat_channels: int = 256,
        fc_channels: int = 1024,
        mask_channels: int = 256,
        mask_num_convs: int = 4,
    ):
        super().__init__()
        # The authors' detection backbones carry neither classifier nor (v1) cls token and final norm.
        self.backbone = build_reference({**backbone_arch, "num_classes": 0})
        if self.backbone.version == 1:
            del self.backbone.cls_token
            del self.backbone.norm
        self.num_classes = num_classes
        self.neck = FPN(self.backbone.embed_dims, fpn_channels)
        self.rpn_head = RPNHead(fpn_channels, rpn_feat_channels, num_anchors=len(ANCHOR_SCALES) * len(ANCHOR_RATIOS))
        self.roi_head = RoIHead(
            Shared2FCBBoxHead(fpn_channels, fc_channels, num_classes),
            FCNMaskHead(fpn_channels, mask_channels, num_classes, mask_num_convs),
        )

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The five FPN levels (B, C, H_l, W_l), and per level the RPN's (B, A, H_l, W_l) objectness logits and
        (B, 4A, H_l, W_l) deltas."""
        levels = self.neck(self.backbone.forward_dense(images))
        cls_scores, bbox_preds = zip(*(self.rpn_head(level) for level in levels))
        return levels, list(cls_scores), list(bbox_preds)


def build_reference_mask_rcnn(
    backbone_arch: Mapping[str, Any],
    num_classes: int = 80,
    fpn_channels: int = 256,
    rpn_feat_channels: int = 256,
    fc_channels: int = 1024,
    mask_channels: int = 256,
    mask_num_convs: int = 4,
) -> MaskRCNNReference:
    """`backbone_arch`: reference_pvt kwargs (embed_dims, num_heads, mlp_ratios, depths, sr_ratios, version,
    linear, img_size for v1's stored position grids). Defaults are the released model's widths."""
    return MaskRCNNReference(
        backbone_arch, num_classes, fpn_channels, rpn_feat_channels, fc_channels, mask_channels, mask_num_convs
    ).eval()


@torch.no_grad()
def random_mask_rcnn_(
    model: MaskRCNNReference,
    seed: int = 0,
    objectness_std: float = 1.5,
    class_logit_std: float = 2.0,
    mask_logit_std: float = 2.0,
) -> MaskRCNNReference:
    """Random non-trivial weights, biases included, deterministic in `seed`: the backbone as reference_pvt's
    `random_init_`; the other convs and fcs at fan-in scale (He for those followed by ReLU); then each predictor is
    scaled on a fixed probe image so that its outputs have the wanted spread whatever the widths: objectness logits
    `objectness_std` (scores spread over (0, 1): top-k, NMS and the proposal cap all have work, no saturated ties),
    class logits `class_logit_std` (some (proposal, class) pairs pass 0.05 and NMS has same-class overlaps),
    mask logits `mask_logit_std`, box deltas small (0.2 for the RPN, 0.5 before the R-CNN stds)."""
    random_init_(model.backbone, seed)
    generator = torch.Generator().manual_seed(seed + 1)

    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std

    relu_follows = {model.rpn_head.rpn_conv, *model.roi_head.bbox_head.shared_fcs, model.roi_head.mask_head.upsample}
    relu_follows |= {conv.conv for conv in model.roi_head.mask_head.convs}
    for module in (*model.neck.modules(), *model.rpn_head.modules(), *model.roi_head.modules()):
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # A kernel-2 stride-2 transposed conv feeds each output pixel from in_channels inputs.
            fan_in = module.in_channels if isinstance(module, nn.ConvTranspose2d) else module.weight[0].numel()
            gain = 2.0 if module in relu_follows else 1.0
            module.weight.copy_(normal(module.weight.shape, math.sqrt(gain / fan_in)))
            module.bias.copy_(normal(module.bias.shape, 0.1))

    def calibrate(layer: nn.Module, raw_outputs: torch.Tensor, std: float, bias_std: float) -> None:
        layer.weight.mul_(std / raw_outputs.std())
        layer.bias.copy_(normal(layer.bias.shape, bias_std))

    probe = torch.randn(1, 3, 64, 64, generator=generator)
    levels = model.neck(model.backbone.forward_dense(probe))
    rpn = model.rpn_head
    hidden = [F.relu(rpn.rpn_conv(level)) for level in levels]
    calibrate(rpn.rpn_cls, torch.cat([F.conv2d(h, rpn.rpn_cls.weight).flatten() for h in hidden]), objectness_std, 0.5)
    calibrate(rpn.rpn_reg, torch.cat([F.conv2d(h, rpn.rpn_reg.weight).flatten() for h in hidden]), 0.2, 0.05)

    centres, sizes = torch.rand(32, 2, generator=generator) * 64, 4 + torch.rand(32, 2, generator=generator) * 60
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1).clamp(0, 64)
    head = model.roi_head.bbox_head
    hidden = extract_roi_features(levels, 0, boxes, 7).flatten(1)
    for fc in head.shared_fcs:
        hidden = F.relu(fc(hidden))
    calibrate(head.fc_cls, F.linear(hidden, head.fc_cls.weight), class_logit_std, 0.5)
    calibrate(head.fc_reg, F.linear(hidden, head.fc_reg.weight), 0.5, 0.1)

    mask = model.roi_head.mask_head
    hidden = extract_roi_features(levels, 0, boxes, 14)
    for conv in mask.convs:
        hidden = conv(hidden)
    hidden = F.relu(mask.upsample(hidden))
    calibrate(mask.conv_logits, F.conv2d(hidden, mask.conv_logits.weight), mask_logit_std, 0.3)
    return model.eval()


def mmdet_checkpoint(model: MaskRCNNReference, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """What mmdet's `save_checkpoint` writes: the state dict and a `meta` with the class names."""
    meta: dict[str, Any] = {"mmdet_version": "2.13.0", "epoch": 12, "iter": 87960}
    if class_names is not None:
        meta["CLASSES"] = tuple(class_names)
    return {"meta": meta, "state_dict": dict(model.state_dict())}


# ------------------------------------------------------------------------------------------ anchors and boxes


def anchors_for(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int] = STRIDES) -> list[torch.Tensor]:
    """mmdet `AnchorGenerator.grid_anchors` (base size = stride, centre offset 0, scale_major): per level
    (H*W*A, 4), locations row-major, then the A anchors of a location, one per ratio (w = s*8/sqrt(r),
    h = s*8*sqrt(r))."""
    scales = torch.tensor(ANCHOR_SCALES)
    h_ratios = torch.tensor(ANCHOR_RATIOS).sqrt()
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


def valid_flags(
    feature_sizes: Sequence[tuple[int, int]], pad_size: tuple[int, int], strides: Sequence[int] = STRIDES
) -> torch.Tensor:
    """mmdet `AnchorGenerator.valid_flags` over all levels (flattened like the anchors): a location is valid when it
    lies within ceil(pad / stride) of the image's own `pad_shape`. With `allowed_border=-1` (train_cfg.rpn) these
    are the anchors the RPN assigner sees (`anchor_inside_flags` adds no border test)."""
    num_anchors = len(ANCHOR_SCALES) * len(ANCHOR_RATIOS)
    flags = []
    for (height, width), stride in zip(feature_sizes, strides):
        valid = torch.zeros(height, width, dtype=torch.bool)
        valid[: min(math.ceil(pad_size[0] / stride), height), : min(math.ceil(pad_size[1] / stride), width)] = True
        flags.append(valid.reshape(-1).repeat_interleave(num_anchors))
    return torch.cat(flags)


def encode(boxes: torch.Tensor, targets: torch.Tensor, stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """mmdet `bbox2delta` (DeltaXYWHBBoxCoder.encode, means 0)."""
    px, py = (boxes[..., 0] + boxes[..., 2]) * 0.5, (boxes[..., 1] + boxes[..., 3]) * 0.5
    pw, ph = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    gx, gy = (targets[..., 0] + targets[..., 2]) * 0.5, (targets[..., 1] + targets[..., 3]) * 0.5
    gw, gh = targets[..., 2] - targets[..., 0], targets[..., 3] - targets[..., 1]
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
    return deltas / deltas.new_tensor(stds)


def decode(
    boxes: torch.Tensor,
    deltas: torch.Tensor,
    image_size: tuple[int, int],
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> torch.Tensor:
    """mmdet `delta2bbox` (DeltaXYWHBBoxCoder.decode, means 0, wh_ratio_clip 16/1000), clipped to the image:
    x to [0, w], y to [0, h]. Broadcasts over leading dims (class-specific deltas: boxes (n, 1, 4), deltas
    (n, C, 4))."""
    deltas = deltas * deltas.new_tensor(stds)
    max_ratio = abs(math.log(WH_RATIO_CLIP))
    dx, dy = deltas[..., 0], deltas[..., 1]
    dw, dh = deltas[..., 2].clamp(-max_ratio, max_ratio), deltas[..., 3].clamp(-max_ratio, max_ratio)
    px, py = (boxes[..., 0] + boxes[..., 2]) * 0.5, (boxes[..., 1] + boxes[..., 3]) * 0.5
    pw, ph = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
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


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """mmdet `bbox_overlaps(mode='iou')` as the assigners use it: union clamped below by 1e-6."""
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    return inter / (area1[:, None] + area2[None, :] - inter).clamp(min=1e-6)


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> list[int]:
    """mmcv `nms` (offset 0): the best remaining box is kept and every box overlapping it by IoU > threshold
    dropped; kept indices best first. `>` is mmcv's CUDA kernel (`inter > thr * union`), which the authors'
    evaluation ran; mmcv's CPU kernel before 1.3.16 used `>=` (only exact ties at the threshold differ). IoU has no
    epsilon: two empty boxes give NaN and suppress nothing, as in mmcv. Equal scores: lower index first."""
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppresses = inter / (area[:, None] + area[None, :] - inter) > iou_threshold
    removed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for rank in range(len(order)):
        if removed[rank]:
            continue
        keep.append(int(order[rank]))
        removed |= suppresses[rank]  # marks earlier ranks too, but they are settled already
    return keep


def max_iou_assign(
    boxes: torch.Tensor, gt_boxes: torch.Tensor, pos_iou_thr: float, neg_iou_thr: float, min_pos_iou: float
) -> torch.Tensor:
    """mmdet `MaxIoUAssigner.assign` (match_low_quality=True, gt_max_assign_all=True, no ignored boxes), in mmdet's
    convention: -1 unassigned, 0 negative, k + 1 assigned to ground truth k.

    Negative: max IoU in [0, neg_iou_thr). Positive: max IoU >= pos_iou_thr, to the best ground truth (the first
    one on ties). Then for each ground truth in order whose best IoU is >= min_pos_iou, every box reaching that
    best IoU is (re)assigned to it, so a later ground truth wins over an earlier one and over the argmax."""
    assigned = torch.full((len(boxes),), -1, dtype=torch.long)
    if len(gt_boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.long)
    if len(boxes) == 0:
        return assigned
    overlaps = box_iou(gt_boxes, boxes)  # (num_gts, num_boxes)
    max_overlaps = overlaps.max(dim=0).values
    argmax_overlaps = overlaps.argmax(dim=0)
    assigned[(max_overlaps >= 0) & (max_overlaps < neg_iou_thr)] = 0
    positive = max_overlaps >= pos_iou_thr
    assigned[positive] = argmax_overlaps[positive] + 1
    for k in range(len(gt_boxes)):
        best = overlaps[k].max()
        if best >= min_pos_iou:
            assigned[overlaps[k] == best] = k + 1
    return assigned


# ------------------------------------------------------------------------------------------------------ RoIs


def _axis_weights(coords: torch.Tensor, size: int) -> torch.Tensor:
    """(n, size) weights of mmcv's `bilinear_interpolate` along one axis for n sample coordinates: a coordinate
    below -1 or above `size` contributes nothing; below 0 it is clamped to 0; at or beyond size - 1 it uses the
    last row alone; otherwise (1 - f) on floor(c) and f on floor(c) + 1."""
    inside = (coords >= -1) & (coords <= size)
    coords = coords.clamp(min=0)
    low = coords.floor().long()
    at_end = low >= size - 1
    low = low.clamp(max=size - 1)
    coords = torch.where(at_end, low.to(coords.dtype), coords)
    high = torch.where(at_end, low, low + 1)
    frac = coords - low.to(coords.dtype)
    weights = torch.zeros(len(coords), size, dtype=coords.dtype)
    rows = torch.arange(len(coords))
    weights.index_put_((rows, low), (1 - frac) * inside, accumulate=True)
    weights.index_put_((rows, high), frac * inside, accumulate=True)
    return weights


def roi_align(feature: torch.Tensor, box: torch.Tensor, output_size: int, spatial_scale: float) -> torch.Tensor:
    """mmcv `RoIAlign(output_size, spatial_scale, sampling_ratio=0, pool_mode='avg', aligned=True)` of one xyxy
    `box` on one (C, H, W) map -> (C, output_size, output_size).

    Box corners x scale - 0.5; bin size = box size / output size (no minimum when aligned); per bin a grid of
    ceil(box size / output size) samples per axis at the grid cells' centres (none for a box of size <= 0, whose
    bins are 0); each bin is the mean of its bilinear samples (`_axis_weights`). Bilinear interpolation on a
    separable grid of samples is the product of the two axes' weights, hence the two weight matrices."""
    channels, height, width = feature.shape
    x1, y1, x2, y2 = (box.to(torch.float32) * spatial_scale - 0.5).unbind()
    roi_w, roi_h = x2 - x1, y2 - y1
    bin_w, bin_h = roi_w / output_size, roi_h / output_size
    grid_w, grid_h = int(torch.ceil(roi_w / output_size)), int(torch.ceil(roi_h / output_size))
    if grid_w <= 0 or grid_h <= 0:
        return feature.new_zeros(channels, output_size, output_size)
    bins = torch.arange(output_size, dtype=torch.float32)
    ys = y1 + bins[:, None] * bin_h + (torch.arange(grid_h) + 0.5)[None, :] * bin_h / grid_h
    xs = x1 + bins[:, None] * bin_w + (torch.arange(grid_w) + 0.5)[None, :] * bin_w / grid_w
    row_weights = _axis_weights(ys.reshape(-1), height)  # (output * grid_h, H)
    col_weights = _axis_weights(xs.reshape(-1), width)
    samples = torch.einsum("ih,chw,jw->cij", row_weights, feature, col_weights)
    return samples.reshape(channels, output_size, grid_h, output_size, grid_w).mean(dim=(2, 4))


def roi_levels(boxes: torch.Tensor) -> torch.Tensor:
    """mmdet `SingleRoIExtractor.map_roi_levels`: floor(log2(sqrt(w * h) / 56 + 1e-6)) clamped to 0..3."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    return torch.floor(torch.log2(scale / FINEST_SCALE + 1e-6)).clamp(0, len(ROI_STRIDES) - 1).long()


def extract_roi_features(
    levels: Sequence[torch.Tensor], image_index: int, boxes: torch.Tensor, output_size: int
) -> torch.Tensor:
    """mmdet `SingleRoIExtractor.forward` for one image's boxes -> (n, C, output_size, output_size); only the
    first four levels (strides 4-32) are used."""
    channels = levels[0].shape[1]
    out = levels[0].new_zeros(len(boxes), channels, output_size, output_size)
    for row, (box, level) in enumerate(zip(boxes, roi_levels(boxes).tolist())):
        out[row] = roi_align(levels[level][image_index], box, output_size, 1 / ROI_STRIDES[level])
    return out


def paste_mask(
    probabilities: torch.Tensor, box: torch.Tensor, height: int, width: int, threshold: float
) -> torch.Tensor:
    """mmdet `FCNMaskHead.get_seg_masks` / `_do_paste_mask` on CPU (one box per chunk, skip_empty=True): within
    the window [floor(x1) - 1, ceil(x2) + 1) x [floor(y1) - 1, ceil(y2) + 1) clipped to the image, pixel centres
    (x + 0.5, y + 0.5) are mapped to [-1, 1] over the box (an infinite coordinate, from an empty box, becomes 0)
    and sampled from the 28x28 probabilities by `grid_sample` (bilinear, zero padding, align_corners=False); the
    mask is value >= threshold. (mmdet's GPU path pastes over the whole image: outside the window the sampled
    value is below 0.5, so the binary masks agree except for empty boxes.)"""
    x0 = max(int(torch.floor(box[0])) - 1, 0)
    y0 = max(int(torch.floor(box[1])) - 1, 0)
    x1 = min(int(torch.ceil(box[2])) + 1, width)
    y1 = min(int(torch.ceil(box[3])) + 1, height)
    image = torch.zeros(height, width, dtype=torch.bool)
    if x1 <= x0 or y1 <= y0:
        return image
    xs = (torch.arange(x0, x1, dtype=torch.float32) + 0.5 - box[0]) / (box[2] - box[0]) * 2 - 1
    ys = (torch.arange(y0, y1, dtype=torch.float32) + 0.5 - box[1]) / (box[3] - box[1]) * 2 - 1
    xs = torch.where(torch.isinf(xs), torch.zeros_like(xs), xs)
    ys = torch.where(torch.isinf(ys), torch.zeros_like(ys), ys)
    grid = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), dim=-1)
    values = F.grid_sample(probabilities[None, None].float(), grid[None], align_corners=False)[0, 0]
    image[y0:y1, x0:x1] = values >= threshold
    return image


# ------------------------------------------------------------------------------------------------ inference


def _level_outputs(cls_score: torch.Tensor, bbox_pred: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's (H*W*A,) objectness logits and (H*W*A, 4) deltas, in the anchors' order (mmdet permutes
    (A, H, W) to (H, W, A) and flattens)."""
    return cls_score[index].permute(1, 2, 0).reshape(-1), bbox_pred[index].permute(1, 2, 0).reshape(-1, 4)


def rpn_proposals(
    cls_scores: Sequence[torch.Tensor],
    bbox_preds: Sequence[torch.Tensor],
    index: int,
    image_size: tuple[int, int],
    nms_pre: int,
    iou_threshold: float,
    max_per_img: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmdet 2.13 `RPNHead._get_bboxes` for image `index` -> (boxes (n, 4), scores (n,), levels (n,)), best first.

    Per level: sigmoid objectness; when the level has more than `nms_pre` anchors, the `nms_pre` best (equal scores:
    lower anchor index first; mmdet's sort leaves them open); decode and clip to `image_size`. Then, over all levels
    together: drop boxes of width or height <= 0 (2.13 tests `min_bbox_size >= 0`, and the config's 0 makes that
    `w > 0 and h > 0`; mmdet's own `valid_ind.sum() != len(...)` guard would skip the filter in the freak case where
    the kept indices sum to the number of boxes, not reproduced), NMS within each level (`batched_nms` with the level
    as the class), and keep the `max_per_img` best overall."""
    feature_sizes = [tuple(level.shape[-2:]) for level in cls_scores]
    all_boxes, all_scores, all_levels = [], [], []
    for level, (cls_score, bbox_pred, anchors) in enumerate(zip(cls_scores, bbox_preds, anchors_for(feature_sizes))):
        logits, deltas = _level_outputs(cls_score.detach(), bbox_pred.detach(), index)
        scores = logits.sigmoid()
        if 0 < nms_pre < len(scores):
            top = torch.sort(scores, descending=True, stable=True).indices[:nms_pre]
            scores, deltas, anchors = scores[top], deltas[top], anchors[top]
        all_boxes.append(decode(anchors, deltas, image_size))
        all_scores.append(scores)
        all_levels.append(torch.full((len(scores),), level, dtype=torch.long))
    boxes, scores, levels = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_levels)
    nonempty = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    boxes, scores, levels = boxes[nonempty], scores[nonempty], levels[nonempty]
    keep = []
    for level in levels.unique().tolist():
        members = torch.nonzero(levels == level).squeeze(1)
        keep.extend(members[greedy_nms(boxes[members], scores[members], iou_threshold)].tolist())
    keep = torch.tensor(keep, dtype=torch.long)
    keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices][:max_per_img]
    return boxes[keep], scores[keep], levels[keep]


def detect_boxes(
    model: MaskRCNNReference,
    levels: Sequence[torch.Tensor],
    index: int,
    proposals: torch.Tensor,
    image_size: tuple[int, int],
    scale_factor: torch.Tensor | None,
    score_thr: float = TEST_RCNN["score_thr"],
    iou_threshold: float = TEST_RCNN["iou_threshold"],
    max_per_img: int = TEST_RCNN["max_per_img"],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmdet `BBoxHead.get_bboxes` + `multiclass_nms` for one image -> (boxes, scores, labels), best first.

    7x7 RoI features of the proposals, box head, softmax over num_classes + 1 (background last, never reported);
    every class's box decoded from the proposal (stds 0.1, 0.1, 0.2, 0.2) and clipped to `image_size`; divided by
    `scale_factor` (w, h, w, h) when given (`rescale=True`, before NMS as in mmdet); (proposal, class) pairs with
    score > score_thr (strictly); NMS per class; the `max_per_img` best (<= 0 keeps all, as `multiclass_nms`)."""
    num_classes = model.num_classes
    if len(proposals) == 0:
        return proposals.new_zeros(0, 4), proposals.new_zeros(0), torch.zeros(0, dtype=torch.long)
    cls_score, bbox_pred = model.roi_head.bbox_head(extract_roi_features(levels, index, proposals, 7))
    scores = cls_score.softmax(dim=-1)[:, :num_classes]
    boxes = decode(proposals[:, None, :], bbox_pred.view(len(proposals), num_classes, 4), image_size, RCNN_STDS)
    if scale_factor is not None:
        boxes = boxes / scale_factor.repeat(2)
    kept_boxes, kept_scores, kept_labels = [], [], []
    for label in range(num_classes):
        candidates = torch.nonzero(scores[:, label] > score_thr).squeeze(1)
        keep = candidates[greedy_nms(boxes[candidates, label], scores[candidates, label], iou_threshold)]
        kept_boxes.append(boxes[keep, label])
        kept_scores.append(scores[keep, label])
        kept_labels.append(torch.full((len(keep),), label, dtype=torch.long))
    boxes, scores, labels = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
    order = torch.sort(scores, descending=True, stable=True).indices
    if max_per_img > 0:
        order = order[:max_per_img]
    return boxes[order], scores[order], labels[order]


def _scale_factors(
    image_sizes: Sequence[tuple[int, int]],
    original_sizes: Sequence[tuple[int, int]] | None,
    scale_factors: Sequence[tuple[float, float]] | None,
) -> list[torch.Tensor | None]:
    if original_sizes is None:
        if scale_factors is not None:
            raise ValueError("scale_factors rescale to an original size: pass original_sizes too")
        return [None] * len(image_sizes)
    if scale_factors is not None:
        return [torch.tensor(factor, dtype=torch.float32) for factor in scale_factors]
    # mmdet's `Resize(keep_ratio=True)`: w_scale = new_w / w, h_scale = new_h / h, stored as float32.
    return [
        torch.tensor([width / original[1], height / original[0]], dtype=torch.float32)
        for (height, width), original in zip(image_sizes, original_sizes)
    ]


@torch.no_grad()
def predict(
    model: MaskRCNNReference,
    images: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    original_sizes: Sequence[tuple[int, int]] | None = None,
    scale_factors: Sequence[tuple[float, float]] | None = None,
    rpn_cfg: Mapping[str, Any] = TEST_RPN,
    rcnn_cfg: Mapping[str, Any] = TEST_RCNN,
) -> list[dict[str, torch.Tensor]]:
    """mmdet 2.13 `TwoStageDetector.simple_test` (one image at a time after the shared backbone/FPN pass).

    `images` (B, 3, H, W), already normalised and padded; `image_sizes[i] = (h, w)` its valid region (default: the
    whole input); `original_sizes[i] = (H0, W0)` turns on mmdet's `rescale=True` with scale factor
    (w / W0, h / H0) unless `scale_factors[i] = (w_scale, h_scale)` is given. Returns per image:
    `proposals` (n, 4) / `proposal_scores` (n,) / `proposal_levels` (n,) in input pixels, best first;
    `boxes` (k, 4) in original pixels when rescaled (else input pixels), `scores` (k,), `labels` (k,) best first;
    `mask_rois` (k, 4) the input-pixel boxes the mask head saw (mmdet multiplies the rescaled boxes back by the
    scale factor); `masks` (k, H0, W0) bool (input valid size (h, w) without rescale).

    mmdet's batched test pads the proposal lists of a batch with zero boxes, whose uniform softmax can pass the
    threshold when num_classes + 1 < 20; the authors evaluated one image per GPU, which never pads, as here."""
    if image_sizes is None:
        image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
    levels, cls_scores, bbox_preds = model(images)
    factors = _scale_factors(image_sizes, original_sizes, scale_factors)
    results = []
    for index, (image_size, factor) in enumerate(zip(image_sizes, factors)):
        proposals, proposal_scores, proposal_levels = rpn_proposals(
            cls_scores, bbox_preds, index, image_size, **rpn_cfg
        )
        box_cfg = {key: rcnn_cfg[key] for key in ("score_thr", "iou_threshold", "max_per_img")}
        boxes, scores, labels = detect_boxes(model, levels, index, proposals, image_size, factor, **box_cfg)
        mask_rois = boxes * factor.repeat(2) if factor is not None else boxes
        height, width = original_sizes[index] if original_sizes is not None else image_size
        masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
        if len(boxes):
            logits = model.roi_head.mask_head(extract_roi_features(levels, index, mask_rois, 14))
            probabilities = logits[torch.arange(len(boxes)), labels].sigmoid()
            paste_boxes = mask_rois / factor.repeat(2) if factor is not None else mask_rois
            for row in range(len(boxes)):
                masks[row] = paste_mask(
                    probabilities[row], paste_boxes[row], height, width, rcnn_cfg["mask_thr_binary"]
                )
        results.append(
            {
                "proposals": proposals,
                "proposal_scores": proposal_scores,
                "proposal_levels": proposal_levels,
                "boxes": boxes,
                "scores": scores,
                "labels": labels,
                "mask_rois": mask_rois,
                "masks": masks,
            }
        )
    return results


# -------------------------------------------------------------------------------------------------- training


def default_pad_sizes(image_sizes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each image's own `pad_shape` under `Pad(size_divisor=32)`."""
    return [
        (math.ceil(h / PAD_DIVISOR) * PAD_DIVISOR, math.ceil(w / PAD_DIVISOR) * PAD_DIVISOR) for h, w in image_sizes
    ]


def rpn_assignment(
    feature_sizes: Sequence[tuple[int, int]], gt_boxes: torch.Tensor, pad_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """mmdet `AnchorHead._get_targets_single`'s assignment for one image -> (anchors (N, 4), assigned (N,)) over
    all anchors flattened level-major: MaxIoU (pos >= 0.7, neg < 0.3, min_pos_iou 0.3, low-quality matches) among
    the valid anchors only (`valid_flags`; `allowed_border=-1` adds no border test); invalid anchors get -1."""
    anchors = torch.cat(anchors_for(feature_sizes))
    valid = valid_flags(feature_sizes, pad_size)
    assigned = torch.full((len(anchors),), -1, dtype=torch.long)
    assigned[valid] = max_iou_assign(anchors[valid], gt_boxes.float(), **RPN_ASSIGNER)
    return anchors, assigned


def rcnn_assignment(proposals: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """mmdet `StandardRoIHead.forward_train` + `RandomSampler(add_gt_as_proposals=True)` for one image: MaxIoU
    (0.5 / 0.5 / 0.5, low-quality matches) over the proposals alone, then the ground truths prepended, each
    assigned to itself (`AssignResult.add_gt_`). Indices run over [gt_boxes; proposals]."""
    assigned = max_iou_assign(proposals, gt_boxes.float(), **RCNN_ASSIGNER)
    return torch.cat([torch.arange(1, len(gt_boxes) + 1), assigned])


def random_samples(
    assigned: torch.Tensor, num: int, pos_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """mmdet `RandomSampler` without the gt insertion: up to num * pos_fraction positives, the rest negatives, each
    drawn uniformly; indices sorted (mmdet takes `.unique()`). For tests without a model's own samples."""

    def choose(pool: torch.Tensor, count: int) -> torch.Tensor:
        if len(pool) > count:
            pool = pool[torch.randperm(len(pool), generator=generator)[:count]]
        return pool.sort().values

    positives = choose(torch.nonzero(assigned > 0).squeeze(1), int(num * pos_fraction))
    return positives, choose(torch.nonzero(assigned == 0).squeeze(1), num - len(positives))


def _check_samples(
    name: str, index: int, assigned: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
) -> None:
    for kind, chosen in (("positive", positives), ("negative", negatives)):
        if len(chosen) and (chosen.min() < 0 or chosen.max() >= len(assigned)):
            raise ValueError(f"{name}[{index}]: {kind} indices out of range 0..{len(assigned) - 1}")
        if len(chosen.unique()) != len(chosen):
            raise ValueError(f"{name}[{index}]: repeated {kind} indices (mmdet's samplers take unique indices)")
    if not bool((assigned[positives] > 0).all()):
        raise ValueError(f"{name}[{index}]: an index given as positive is not assigned to a ground truth")
    if not bool((assigned[negatives] == 0).all()):
        raise ValueError(f"{name}[{index}]: an index given as negative is not a negative of the assigner")


def training_proposals(
    cls_scores: Sequence[torch.Tensor], bbox_preds: Sequence[torch.Tensor], image_sizes: Sequence[tuple[int, int]]
) -> list[torch.Tensor]:
    """`train_cfg.rpn_proposal` proposals (nms_pre 2000, NMS 0.7, max 1000), detached as mmdet's `get_bboxes`."""
    cfg = TRAIN_RPN_PROPOSAL
    return [
        rpn_proposals(cls_scores, bbox_preds, i, size, cfg["nms_pre"], cfg["iou_threshold"], cfg["max_per_img"])[0]
        for i, size in enumerate(image_sizes)
    ]


def losses(
    model: MaskRCNNReference,
    images: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]],
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    gt_masks: Sequence[torch.Tensor],
    rpn_samples: Sequence[tuple[torch.Tensor, torch.Tensor]],
    rcnn_samples: Sequence[tuple[torch.Tensor, torch.Tensor]],
    pad_sizes: Sequence[tuple[int, int]] | None = None,
    proposals: Sequence[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """mmdet 2.13 `TwoStageDetector.forward_train` losses for GIVEN samples (differentiable).

    Inputs per image: `gt_boxes` (n, 4) xyxy input pixels, `gt_labels` (n,) in [0, num_classes), `gt_masks`
    (n, H, W) binary at input resolution (cropped or zero-padded here to the image's `pad_shape`: mmdet's RoIAlign
    of the targets sees that size at the border); `pad_sizes` default: `default_pad_sizes(image_sizes)`.
    `rpn_samples[i] = (positives, negatives)`: indices into ALL of image i's anchors flattened level-major, then
    location, then anchor (mmdet's own `pos_inds` index the valid-anchor subset: map them through
    `valid_flags(...).nonzero()`). `rcnn_samples[i]`: indices into [gt_boxes[i]; proposals[i]]. `proposals`
    default: `training_proposals` of this model. Every index is checked against the reference's assignment.

    - `loss_rpn_cls`: BCE-with-logits (positives target 1, negatives 0) summed over the sampled anchors and
      `loss_rpn_bbox`: L1 of positives' deltas (means 0, stds 1) summed, both divided by num_total_samples =
      sum_i max(pos_i, 1) + sum_i max(neg_i, 1) (`AnchorHead.get_targets` / `loss`; summing mmdet's per-level
      terms).
    - `loss_cls`: cross entropy over all sampled RoIs (background label = num_classes) / max(#sampled, 1);
      `loss_bbox`: L1 on the ground-truth class's deltas (stds 0.1, 0.1, 0.2, 0.2) of positives / #sampled
      (`BBoxHead.loss`: avg_factor = bbox_targets.size(0)); `acc`: top-1 accuracy in percent.
    - `loss_mask`: positives' 14x14 RoI features -> mask head -> the ground-truth class's 28x28 logits; targets
      = RoIAlign(28, aligned, sampling_ratio 0, scale 1) of the assigned gt mask over the proposal clipped to the
      mask's size, >= 0.5 (`mask_target`, `BitmapMasks.crop_and_resize`); BCE-with-logits mean
      (`mask_cross_entropy`)."""
    num_images = images.shape[0]
    pad_sizes = list(pad_sizes) if pad_sizes is not None else default_pad_sizes(image_sizes)
    levels, cls_scores, bbox_preds = model(images)
    feature_sizes = [tuple(level.shape[-2:]) for level in cls_scores]

    rpn_cls_sum = rpn_box_sum = images.new_zeros(())
    num_total_samples = 0
    for i in range(num_images):
        anchors, assigned = rpn_assignment(feature_sizes, gt_boxes[i], pad_sizes[i])
        positives, negatives = (torch.as_tensor(s, dtype=torch.long) for s in rpn_samples[i])
        _check_samples("rpn_samples", i, assigned, positives, negatives)
        per_level = [_level_outputs(c, b, i) for c, b in zip(cls_scores, bbox_preds)]
        logits = torch.cat([logit for logit, _ in per_level])
        deltas = torch.cat([delta for _, delta in per_level])
        targets = encode(anchors[positives], gt_boxes[i].float()[assigned[positives] - 1])
        rpn_cls_sum = (
            rpn_cls_sum
            + F.binary_cross_entropy_with_logits(logits[positives], torch.ones(len(positives)), reduction="sum")
            + F.binary_cross_entropy_with_logits(logits[negatives], torch.zeros(len(negatives)), reduction="sum")
        )
        rpn_box_sum = rpn_box_sum + (deltas[positives] - targets).abs().sum()
        num_total_samples += max(len(positives), 1) + max(len(negatives), 1)

    if proposals is None:
        proposals = training_proposals(cls_scores, bbox_preds, image_sizes)
    box_features, mask_features, labels, box_targets, mask_targets, positive_rows = [], [], [], [], [], []
    row = 0
    for i in range(num_images):
        candidates = torch.cat([gt_boxes[i].float(), proposals[i].detach().float()])
        assigned = rcnn_assignment(proposals[i].detach().float(), gt_boxes[i])
        positives, negatives = (torch.as_tensor(s, dtype=torch.long) for s in rcnn_samples[i])
        _check_samples("rcnn_samples", i, assigned, positives, negatives)
        matched = assigned[positives] - 1
        sampled = torch.cat([candidates[positives], candidates[negatives]])  # mmdet's order: positives first
        box_features.append(extract_roi_features(levels, i, sampled, 7))
        labels.append(torch.cat([gt_labels[i][matched].long(), torch.full((len(negatives),), model.num_classes)]))
        box_targets.append(encode(candidates[positives], gt_boxes[i].float()[matched], RCNN_STDS))
        positive_rows.append(torch.arange(row, row + len(positives)))
        row += len(sampled)
        mask_features.append(extract_roi_features(levels, i, candidates[positives], 14))
        # mmdet's targets come from masks padded with zeros to the image's own pad_shape (`Pad._pad_masks`).
        masks = torch.zeros(len(gt_masks[i]), *pad_sizes[i])
        height, width = min(pad_sizes[i][0], gt_masks[i].shape[1]), min(pad_sizes[i][1], gt_masks[i].shape[2])
        masks[:, :height, :width] = gt_masks[i][:, :height, :width].float()
        limit = torch.tensor([masks.shape[2], masks.shape[1]] * 2, dtype=torch.float32)
        clipped = torch.minimum(candidates[positives].clamp(min=0), limit)
        for box, gt_index in zip(clipped, matched.tolist()):
            target = roi_align(masks[gt_index][None], box, MASK_SIZE, 1.0)[0]
            mask_targets.append((target >= 0.5).float())

    cls_score, bbox_pred = model.roi_head.bbox_head(torch.cat(box_features))
    labels = torch.cat(labels)
    positive_rows = torch.cat(positive_rows)
    num_sampled = len(labels)
    loss_cls = F.cross_entropy(cls_score, labels, reduction="sum") / max(num_sampled, 1)
    acc = (cls_score.argmax(dim=1) == labels).float().sum() * 100.0 / max(num_sampled, 1)
    positive_deltas = bbox_pred.view(num_sampled, model.num_classes, 4)[positive_rows, labels[positive_rows]]
    loss_bbox = (positive_deltas - torch.cat(box_targets)).abs().sum() / max(num_sampled, 1)

    positive_labels = labels[positive_rows]
    mask_logits = model.roi_head.mask_head(torch.cat(mask_features))
    if len(positive_labels):
        chosen = mask_logits[torch.arange(len(positive_labels)), positive_labels]
        loss_mask = F.binary_cross_entropy_with_logits(chosen, torch.stack(mask_targets), reduction="mean")
    else:
        loss_mask = mask_logits.sum()
    return {
        "loss_rpn_cls": rpn_cls_sum / num_total_samples,
        "loss_rpn_bbox": rpn_box_sum / num_total_samples,
        "loss_cls": loss_cls,
        "loss_bbox": loss_bbox,
        "loss_mask": loss_mask,
        "acc": acc,
    }

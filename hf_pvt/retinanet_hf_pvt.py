"""RetinaNet on a PVT encoder, the papers' detector: the model, its head, its loss and its post-processing.

The authors trained their RetinaNets with MMDetection v2.13 (`retinanet_pvt_v2_b2_fpn_1x_coco.py` and its siblings
in their `detection/configs`); each function here reproduces one piece of it, so that converted checkpoints score
the published box AP and fine-tuning optimises the same objective. The box operations it shares with Mask R-CNN
(anchors, box coding, assignment, NMS) are in `box_ops_hf_pvt.py`; the FPN in `neck_hf_pvt.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .box_ops_hf_pvt import (
    assign_max_iou,
    batched_nms,
    check_levels,
    decode_boxes,
    encode_boxes,
    generate_anchors,
    valid_anchor_flags,
)
from .configuration_hf_pvt import HfPvtConfig
from .dense_inputs_hf_pvt import check_class_ids, detection_targets, image_sizes, pad_shapes
from .modeling_hf_pvt import CLASSIFICATION_ONLY_KEYS, HfPvtModel, HfPvtPreTrainedModel
from .neck_hf_pvt import HfPvtFeaturePyramid

# The pyramid levels P3-P7: stages 2-4 of the encoder, then two stride-2 convolutions.
RETINANET_STRIDES = (8, 16, 32, 64, 128)


# In evaluation, where images of different padded sizes each run at their own size, the anchors beyond an image's
# own area get this logit (probability 0, so never a detection) and zero deltas. Finite, so losses stay finite.
OUTSIDE_IMAGE_LOGIT = -1e4


@dataclass
class HfPvtObjectDetectionOutput(ModelOutput):
    r"""
    Every field is batch-first, one row per image, so that a batch splits per image (as `pipeline()` splits it).

    loss (`torch.FloatTensor` of shape `()`, *optional*, with `labels`):
        `loss_dict["loss_cls"] + loss_dict["loss_bbox"]`.
    loss_dict (`dict[str, torch.FloatTensor]`, *optional*, with `labels`):
        The sigmoid focal loss and the L1 box-delta loss, each normalised by the number of positive anchors.
    logits (`torch.FloatTensor` of shape `(batch_size, num_anchors, num_labels)`):
        Class logits (before the sigmoid) of every anchor of the pyramid levels P3 to P7 (strides 8 to 128), level
        after level, each level's anchors location by location (row-major) and `config.anchor_ratios` x scales per
        location: MMDetection's per-level `cls_scores` as `permute(0, 2, 3, 1).reshape(batch_size, -1, num_labels)`,
        concatenated. `level_maps()` gives them back as maps.
    pred_box_deltas (`torch.FloatTensor` of shape `(batch_size, num_anchors, 4)`):
        The (dx, dy, dw, dh) deltas from each anchor (MMDetection's `bbox_preds`), in the same order.
    anchors (`torch.FloatTensor` of shape `(batch_size, num_anchors, 4)`):
        The anchor boxes (x1, y1, x2, y2) in input pixels, float32, in the same order; the same for every image (an
        expanded view, no copy).
    spatial_shapes (`torch.LongTensor` of shape `(batch_size, 5, 2)`):
        The (height, width) of each level's map, the same for every image: level l holds `height_l * width_l *
        anchors per location` of the anchors.
    image_sizes (`torch.LongTensor` of shape `(batch_size, 2)`):
        The (height, width) of each image inside `pixel_values` without its padding (from `pixel_mask`): boxes are
        clipped to it. The image processor's `post_process_object_detection` turns all of this into boxes.

    In evaluation mode, images of different padded sizes (each image's `pixel_mask` region rounded up to 32,
    MMDetection's `pad_shape`) are computed each at its own size, so an image's outputs never depend on the other
    images of its batch; the anchors beyond an image's own levels then hold logits of -1e4 (probability 0) and zero
    deltas.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict[str, torch.FloatTensor] | None = None
    logits: torch.FloatTensor | None = None
    pred_box_deltas: torch.FloatTensor | None = None
    anchors: torch.FloatTensor | None = None
    spatial_shapes: torch.LongTensor | None = None
    image_sizes: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None

    def level_maps(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """MMDetection's per-level layout, as views: class logits `(batch, anchors per location * num_labels, h_l,
        w_l)`, box deltas `(batch, anchors per location * 4, h_l, w_l)` and anchors `(h_l * w_l * anchors per
        location, 4)` of each level."""
        return split_levels(self.logits, self.pred_box_deltas, self.anchors[0], self.spatial_shapes[0])


def split_levels(
    logits: torch.Tensor, box_deltas: torch.Tensor, anchors: torch.Tensor, spatial_shapes: torch.Tensor
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Flat `logits` (B, N, C), `box_deltas` (B, N, 4) and `anchors` (N, 4) -> per-level maps (B, A * C, h, w),
    (B, A * 4, h, w) and anchors (h * w * A, 4), as views; `spatial_shapes` (L, 2) holds each level's (h, w)."""
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    per_location = logits.shape[1] // max(sum(h * w for h, w in shapes), 1)
    counts = [h * w * per_location for h, w in shapes]
    batch_size = logits.shape[0]

    def maps(flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(
            level.reshape(batch_size, h, w, -1).permute(0, 3, 1, 2)
            for level, (h, w) in zip(flat.split(counts, dim=1), shapes)
        )

    return maps(logits), maps(box_deltas), tuple(anchors.split(counts, dim=0))


class HfPvtRetinaHead(nn.Module):
    """RetinaNet's head, shared by every pyramid level: two branches of `detection_num_convs` 3x3 conv + ReLU, then
    a 3x3 conv to `num_anchors * num_labels` class logits and one to `num_anchors * 4` box deltas."""

    def __init__(self, config: HfPvtConfig, num_anchors: int):
        super().__init__()
        width = config.detection_feat_channels
        in_channels = [config.decoder_hidden_size] + [width] * (config.detection_num_convs - 1)
        self.cls_convs = nn.ModuleList(nn.Conv2d(c, width, kernel_size=3, padding=1) for c in in_channels)
        self.reg_convs = nn.ModuleList(nn.Conv2d(c, width, kernel_size=3, padding=1) for c in in_channels)
        last = width if config.detection_num_convs else config.decoder_hidden_size
        self.retina_cls = nn.Conv2d(last, num_anchors * config.num_labels, kernel_size=3, padding=1)
        self.retina_reg = nn.Conv2d(last, num_anchors * 4, kernel_size=3, padding=1)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls_features = reg_features = feature_map
        for conv in self.cls_convs:
            cls_features = F.relu(conv(cls_features))
        for conv in self.reg_convs:
            reg_features = F.relu(conv(reg_features))
        return self.retina_cls(cls_features), self.retina_reg(reg_features)


class HfPvtForObjectDetection(HfPvtPreTrainedModel):
    """The papers' RetinaNet detector (the authors' `retinanet_pvt_v2_b2_fpn_1x_coco.py` and its siblings, on
    MMDetection v2.13): the encoder in dense-prediction mode, an FPN over stages 2-4 with two extra stride-2 levels
    (P3-P7, strides 8-128) and the shared RetinaNet head with 9 anchors per location.

    Module names follow MMDetection's (`neck.lateral_convs.k`, `neck.fpn_convs.k`, `bbox_head.cls_convs.k`,
    `bbox_head.retina_cls`, ...), so the authors' detectors convert by renaming. Images of different sizes share a
    batch by padding (bottom/right) with a `pixel_mask`, as the image processor does. Anchor targets, losses and
    post-processing (decoding, per-level top-k, class-wise NMS) are the small functions beside it.
    """

    _keys_to_ignore_on_load_unexpected = CLASSIFICATION_ONLY_KEYS
    strides = RETINANET_STRIDES

    def __init__(self, config: HfPvtConfig):
        super().__init__(config)
        if config.num_stages != 4:
            raise ValueError(f"RetinaNet reads stages 2-4 of a 4-stage encoder; this config has {config.num_stages}.")
        if config.num_labels < 1:
            raise ValueError(f"Object detection needs num_labels >= 1 (got {config.num_labels}).")
        self.pvt = HfPvtModel(config, dense_prediction=True)
        self.neck = HfPvtFeaturePyramid(
            config.hidden_sizes,
            config.decoder_hidden_size,
            start_level=1,
            num_extra_levels=len(RETINANET_STRIDES) - 3,
            extra_levels="conv_on_input",
        )
        self.num_anchors = len(config.anchor_ratios) * config.anchor_scales_per_octave
        self.bbox_head = HfPvtRetinaHead(config, self.num_anchors)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # MMDetection's RetinaNet init: Xavier-uniform FPN convs, N(0, 0.01) head convs, and a class bias that
        # starts every anchor at probability 0.01, so the focal loss is not swamped by easy negatives at first.
        if isinstance(module, nn.Conv2d) and any(module is conv for conv in self.neck.modules()):
            init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d) and any(module is conv for conv in self.bbox_head.modules()):
            init.normal_(module.weight, mean=0.0, std=0.01)
            init.constant_(module.bias, -math.log((1 - 0.01) / 0.01) if module is self.bbox_head.retina_cls else 0.0)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        **kwargs,
    ) -> HfPvtObjectDetectionOutput:
        r"""
        pixel_mask (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            1 for real pixels, 0 for padding (bottom/right), as the image processor returns it.
        labels (`list[dict]`, *optional*):
            One dict per image with `class_labels` (`(n,)` ids) and `boxes` (`(n, 4)` normalised (center_x,
            center_y, width, height) relative to `pixel_values`' height and width), as Transformers' detection
            models take them. Images without objects have `n = 0`.
        """
        sizes = image_sizes(pixel_values, pixel_mask)
        targets = detection_targets(labels, pixel_values, self.config.num_labels) if labels is not None else None
        shapes = None
        if pixel_mask is not None and len(sizes):
            # Padding beyond every image's own padded size (a fixed canvas, say) changes nothing: leave it out.
            shapes = torch.tensor(pad_shapes(sizes, pixel_values.shape[-2:]), dtype=torch.long).reshape(-1, 2)
            height, width = (int(side) for side in shapes.amax(dim=0))
            pixel_values = pixel_values[..., :height, :width]
        hidden_states = attentions = None
        if shapes is not None and not self.training and len(shapes.unique(dim=0)) > 1:
            logits, box_deltas = self._head_per_size(pixel_values, shapes, **kwargs)
        else:
            outputs = self.pvt(pixel_values, **kwargs)
            logits, box_deltas = (list(x) for x in zip(*(self.bbox_head(p) for p in self.neck(outputs.feature_maps))))
            hidden_states, attentions = outputs.hidden_states, outputs.attentions
        level_sizes = [tuple(level.shape[-2:]) for level in logits]
        anchors = generate_anchors(
            level_sizes,
            self.strides,
            octave_base_scale=self.config.anchor_octave_base_scale,
            scales_per_octave=self.config.anchor_scales_per_octave,
            ratios=self.config.anchor_ratios,
            # float32 whatever the model's dtype: bf16 cannot hold anchor corners such as 1000.5 exactly.
            dtype=torch.float32,
            device=logits[0].device,
        )

        loss = loss_dict = None
        if targets is not None:
            loss_dict = retinanet_loss(
                logits,
                box_deltas,
                anchors,
                targets,
                pad_shapes(sizes, pixel_values.shape[-2:]),
                num_classes=self.config.num_labels,
                alpha=self.config.focal_loss_alpha,
                gamma=self.config.focal_loss_gamma,
                pos_iou_thr=self.config.detection_pos_iou_threshold,
                neg_iou_thr=self.config.detection_neg_iou_threshold,
                strides=self.strides,
            )
            loss = loss_dict["loss_cls"] + loss_dict["loss_bbox"]
        batch_size = logits[0].shape[0]
        flat_anchors = torch.cat(anchors)
        spatial_shapes = torch.tensor(level_sizes, device=flat_anchors.device)
        return HfPvtObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=_flatten_levels(logits, self.config.num_labels),
            pred_box_deltas=_flatten_levels(box_deltas, 4),
            anchors=flat_anchors.unsqueeze(0).expand(batch_size, *flat_anchors.shape),
            spatial_shapes=spatial_shapes.unsqueeze(0).expand(batch_size, *spatial_shapes.shape),
            image_sizes=sizes,
            hidden_states=hidden_states,
            attentions=attentions,
        )

    def _level_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """The (height, width) of each pyramid level's map for an input of `height` x `width` pixels."""
        sizes = list(zip(self.pvt.stage_sizes(height)[1:], self.pvt.stage_sizes(width)[1:]))
        for conv in self.neck.fpn_convs[len(self.neck.lateral_convs) :]:
            kernel, stride, padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            sizes.append(tuple((side + 2 * padding - kernel) // stride + 1 for side in sizes[-1]))
        return sizes

    def _head_per_size(
        self, pixel_values: torch.Tensor, shapes: torch.Tensor, **kwargs
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Evaluation of a batch whose images have different padded sizes: the images of each size run together at
        that size, as each would alone (batch padding reaches every token through attention, so it would change
        their outputs), and their maps are placed top-left in maps of the batch's size."""
        for flag in ("output_hidden_states", "output_attentions"):
            if kwargs.get(flag, getattr(self.config, flag)):
                raise ValueError(
                    f"{flag}=True with images of different padded sizes {sorted(set(map(tuple, shapes.tolist())))} "
                    "in evaluation mode: each size runs on its own, so their hidden states and attentions do not "
                    "stack. Pass images of one size (or one at a time), or leave the flag off."
                )
        batch_size, _, height, width = pixel_values.shape
        dtype = self.bbox_head.retina_cls.weight.dtype
        channels = (self.num_anchors * self.config.num_labels, self.num_anchors * 4)
        logits, box_deltas = [], []
        for level_height, level_width in self._level_sizes(height, width):
            size = (level_height, level_width)
            logits.append(pixel_values.new_full((batch_size, channels[0], *size), OUTSIDE_IMAGE_LOGIT, dtype=dtype))
            box_deltas.append(pixel_values.new_zeros((batch_size, channels[1], *size), dtype=dtype))
        for shape in shapes.unique(dim=0).tolist():
            index = torch.nonzero((shapes == shapes.new_tensor(shape)).all(dim=1)).squeeze(1).to(pixel_values.device)
            outputs = self.pvt(pixel_values[index, :, : shape[0], : shape[1]], **kwargs)
            for level, feature_map in enumerate(self.neck(outputs.feature_maps)):
                cls_logits, deltas = self.bbox_head(feature_map)
                level_height, level_width = cls_logits.shape[-2:]
                logits[level][index, :, :level_height, :level_width] = cls_logits.to(dtype)
                box_deltas[level][index, :, :level_height, :level_width] = deltas.to(dtype)
        return logits, box_deltas


# ----------------------------------------------------------------------------------------------------------------
# Training loss


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
    # Sizes spelled out rather than -1, which an empty batch leaves undetermined.
    rows = [t.shape[2] * t.shape[3] * (t.shape[1] // channels) for t in tensors]
    return torch.cat([t.permute(0, 2, 3, 1).reshape(batch_size, n, channels) for t, n in zip(tensors, rows)], dim=1)


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
    check_class_ids(labels, num_classes, f"targets[{index}]")
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
    check_levels(cls_logits=cls_logits, box_deltas=box_deltas, anchors=anchors, strides=strides)
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
    # An empty batch has no positives and no images: its losses are 0 (and still reach the parameters' gradients).
    avg_factor = max(avg_factor, 1)
    return {"loss_cls": focal.sum() / avg_factor, "loss_bbox": l1.sum() / avg_factor}


# ----------------------------------------------------------------------------------------------------------------
# Post-processing


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
    check_levels(cls_logits=cls_logits, box_deltas=box_deltas, anchors=anchors)
    if cls_logits[0].dim() not in (2, 3):
        raise ValueError(
            f"`cls_logits` must be per-level (A * C, H, W) maps or (H * W * A, C) rows of one image, got "
            f"{tuple(cls_logits[0].shape)}; index the batch first."
        )
    image_size = tuple(int(v) for v in image_size)
    level_boxes, level_scores = [], []
    for logits, deltas, level_anchors in zip(cls_logits, box_deltas, anchors):
        if logits.dim() == 2:  # one row per anchor already, as the model's output holds them
            scores, deltas = logits.float().sigmoid(), deltas.float()
        else:
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
    keep = batched_nms(boxes, scores, labels, iou_threshold, max_kept=max_per_image)
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


__all__ = [
    "OUTSIDE_IMAGE_LOGIT",
    "RETINANET_STRIDES",
    "HfPvtForObjectDetection",
    "HfPvtObjectDetectionOutput",
    "HfPvtRetinaHead",
    "retinanet_loss",
    "retinanet_postprocess",
    "sigmoid_focal_loss",
    "split_levels",
]

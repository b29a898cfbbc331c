"""Self-checks of tests/reference_mask_rcnn.py, the plain-torch Mask R-CNN (MMDetection v2.13) that the model's
parity tests use as ground truth: mmdet's key names, output conventions on a padded batch, the RoIAlign against a
literal transcription of mmcv's kernel, the assigner's low-quality rule, mask pasting, and finite losses."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAMILY, TINY
from reference_mask_rcnn import (
    RCNN_SAMPLER,
    RPN_SAMPLER,
    TEST_RCNN,
    box_iou,
    build_reference_mask_rcnn,
    default_pad_sizes,
    losses,
    max_iou_assign,
    paste_mask,
    predict,
    random_mask_rcnn_,
    random_samples,
    rcnn_assignment,
    roi_align,
    rpn_assignment,
    training_proposals,
)

NUM_CLASSES = 5
WIDTHS = {"fpn_channels": 32, "rpn_feat_channels": 24, "fc_channels": 64, "mask_channels": 16, "mask_num_convs": 2}
# Two images of different sizes, zero-padded into one 64x96 batch, resized from these originals.
IMAGE_SIZES = [(64, 90), (50, 70)]
ORIGINAL_SIZES = [(128, 180), (75, 105)]


def arch(member: str) -> dict:
    version, linear = FAMILY[member]
    return {
        "embed_dims": TINY["hidden_sizes"],
        "num_heads": TINY["num_attention_heads"],
        "mlp_ratios": TINY["mlp_ratios"],
        "depths": TINY["depths"],
        "sr_ratios": TINY["sr_ratios"],
        "version": version,
        "linear": linear,
        "img_size": 64,
    }


def tiny_mask_rcnn(member: str, seed: int = 0):
    model = build_reference_mask_rcnn(arch(member), num_classes=NUM_CLASSES, **WIDTHS)
    return random_mask_rcnn_(model, seed)


def padded_batch(seed: int = 0) -> torch.Tensor:
    images = torch.zeros(2, 3, 64, 96)
    generator = torch.Generator().manual_seed(seed)
    for image, (height, width) in zip(images, IMAGE_SIZES):
        image[:, :height, :width] = torch.randn(3, height, width, generator=generator)
    return images


def head_keys(num_convs: int) -> set[str]:
    names = [f"neck.lateral_convs.{k}.conv" for k in range(4)] + [f"neck.fpn_convs.{k}.conv" for k in range(4)]
    names += ["rpn_head.rpn_conv", "rpn_head.rpn_cls", "rpn_head.rpn_reg"]
    names += [f"roi_head.bbox_head.{name}" for name in ("shared_fcs.0", "shared_fcs.1", "fc_cls", "fc_reg")]
    names += [f"roi_head.mask_head.convs.{k}.conv" for k in range(num_convs)]
    names += ["roi_head.mask_head.upsample", "roi_head.mask_head.conv_logits"]
    return {f"{name}.{kind}" for name in names for kind in ("weight", "bias")}


def test_state_dict_is_mmdets_layout(member):
    model = build_reference_mask_rcnn(arch(member), num_classes=NUM_CLASSES, **WIDTHS)
    keys = set(model.state_dict())
    assert {key for key in keys if not key.startswith("backbone.")} == head_keys(2)
    assert not {"backbone.head.weight", "backbone.cls_token", "backbone.norm.weight"} & keys
    assert "backbone.patch_embed1.proj.weight" in keys and "backbone.block4.0.attn.kv.weight" in keys


def test_default_widths_are_the_released_ones():
    state = build_reference_mask_rcnn(arch("v2")).state_dict()
    shapes = {key: tuple(value.shape) for key, value in state.items() if not key.startswith("backbone.")}
    assert {key for key in shapes} == head_keys(4)
    assert shapes["neck.lateral_convs.3.conv.weight"] == (256, 64, 1, 1)
    assert shapes["rpn_head.rpn_cls.weight"] == (3, 256, 1, 1) and shapes["rpn_head.rpn_reg.weight"] == (12, 256, 1, 1)
    assert shapes["roi_head.bbox_head.shared_fcs.0.weight"] == (1024, 256 * 7 * 7)
    assert shapes["roi_head.bbox_head.fc_cls.weight"] == (81, 1024)
    assert shapes["roi_head.bbox_head.fc_reg.weight"] == (320, 1024)
    assert shapes["roi_head.mask_head.convs.3.conv.weight"] == (256, 256, 3, 3)
    assert shapes["roi_head.mask_head.upsample.weight"] == (256, 256, 2, 2)
    assert shapes["roi_head.mask_head.conv_logits.weight"] == (80, 256, 1, 1)


def _pairs_above(boxes: torch.Tensor, threshold: float) -> bool:
    iou = box_iou(boxes, boxes)
    iou.fill_diagonal_(0)
    return bool((iou > threshold).any())


def test_predict_on_a_padded_batch(member):
    model = tiny_mask_rcnn(member, seed=list(FAMILY).index(member))
    images = padded_batch()
    results = predict(model, images, IMAGE_SIZES, ORIGINAL_SIZES)
    uncapped = predict(model, images, IMAGE_SIZES, ORIGINAL_SIZES, rcnn_cfg={**TEST_RCNN, "max_per_img": 0})
    for result, full, (height, width), (original_h, original_w) in zip(results, uncapped, IMAGE_SIZES, ORIGINAL_SIZES):
        proposals, scores = result["proposals"], result["proposal_scores"]
        assert proposals.shape == (len(scores), 4) and 0 < len(scores) <= 1000
        assert bool((scores[:-1] >= scores[1:]).all())
        assert bool((proposals[:, 2] > proposals[:, 0]).all() and (proposals[:, 3] > proposals[:, 1]).all())
        assert bool((proposals >= 0).all()) and bool((proposals[:, 2::2] <= width).all())
        assert bool((proposals[:, 3::2] <= height).all())
        for level in result["proposal_levels"].unique():  # NMS 0.7 within each level
            assert not _pairs_above(proposals[result["proposal_levels"] == level], 0.7)

        boxes, scores, labels, masks = result["boxes"], result["scores"], result["labels"], result["masks"]
        assert 0 < len(scores) <= 100 and boxes.shape == (len(scores), 4)
        assert masks.shape == (len(scores), original_h, original_w) and masks.dtype == torch.bool
        assert bool((scores[:-1] >= scores[1:]).all()) and bool((scores > 0.05).all())
        assert labels.dtype == torch.long and bool(((labels >= 0) & (labels < NUM_CLASSES)).all())
        assert bool((boxes[:, 2::2] <= original_w + 1e-3).all() and (boxes[:, 3::2] <= original_h + 1e-3).all())
        for label in labels.unique():
            assert not _pairs_above(boxes[labels == label], 0.5)
        scale = torch.tensor([width / original_w, height / original_h] * 2)
        torch.testing.assert_close(result["mask_rois"], boxes * scale)
        ys, xs = torch.meshgrid(torch.arange(original_h) + 0.5, torch.arange(original_w) + 0.5, indexing="ij")
        for box, mask in zip(boxes, masks):  # mask pixels' centres lie inside their box
            inside = (xs >= box[0] - 1e-3) & (xs <= box[2] + 1e-3) & (ys >= box[1] - 1e-3) & (ys <= box[3] + 1e-3)
            assert not bool((mask & ~inside).any())
        assert int(masks.flatten(1).any(dim=1).sum()) > len(masks) // 2
        assert len(full["scores"]) >= len(scores)
    assert max(len(full["scores"]) for full in uncapped) > 100  # the cap did cut


def test_predict_without_rescale_pastes_at_the_valid_size():
    model = tiny_mask_rcnn("v2")
    results = predict(model, padded_batch(), IMAGE_SIZES)
    for result, size in zip(results, IMAGE_SIZES):
        assert result["masks"].shape[1:] == size
        torch.testing.assert_close(result["mask_rois"], result["boxes"])


def _mmcv_roi_align_loop(feature, box, output_size, spatial_scale):
    """mmcv 1.3's `roi_align_forward_cuda_kernel` (avg, aligned, sampling_ratio 0), transcribed literally."""
    channels, height, width = feature.shape

    def bilinear(y, x):
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return torch.zeros(channels)
        y, x = max(y, 0.0), max(x, 0.0)
        y_low, x_low = int(y), int(x)
        if y_low >= height - 1:
            y_high = y_low = height - 1
            y = float(y_low)
        else:
            y_high = y_low + 1
        if x_low >= width - 1:
            x_high = x_low = width - 1
            x = float(x_low)
        else:
            x_high = x_low + 1
        ly, lx = y - y_low, x - x_low
        hy, hx = 1 - ly, 1 - lx
        return (
            hy * hx * feature[:, y_low, x_low]
            + hy * lx * feature[:, y_low, x_high]
            + ly * hx * feature[:, y_high, x_low]
            + ly * lx * feature[:, y_high, x_high]
        )

    x1, y1, x2, y2 = (float(v) * spatial_scale - 0.5 for v in box)
    roi_w, roi_h = x2 - x1, y2 - y1
    bin_w, bin_h = roi_w / output_size, roi_h / output_size
    grid_w, grid_h = math.ceil(roi_w / output_size), math.ceil(roi_h / output_size)
    out = torch.zeros(channels, output_size, output_size)
    for ph in range(output_size):
        for pw in range(output_size):
            total = torch.zeros(channels)
            for iy in range(max(grid_h, 0)):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(max(grid_w, 0)):
                    total += bilinear(y, x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w)
            out[:, ph, pw] = total / max(grid_h * grid_w, 1)
    return out


@pytest.mark.parametrize(
    "box, scale",
    [
        ((3.0, 5.0, 40.0, 22.0), 0.25),  # inside, several samples per bin
        ((-9.0, -7.0, 13.0, 11.0), 0.5),  # beyond the top-left corner
        ((20.0, 10.0, 33.0, 31.0), 0.5),  # beyond the bottom-right corner (map 11 x 15 at scale 0.5)
        ((5.2, 6.1, 6.0, 6.3), 1.0),  # smaller than a bin: one sample per bin
        ((4.0, 4.0, 4.0, 9.0), 1.0),  # zero width: all zeros
    ],
)
def test_roi_align_matches_mmcv_kernel(box, scale):
    feature = torch.randn(3, 11, 15, generator=torch.Generator().manual_seed(1))
    for output_size in (7, 4):
        ours = roi_align(feature, torch.tensor(box), output_size, scale)
        torch.testing.assert_close(ours, _mmcv_roi_align_loop(feature, box, output_size, scale), atol=1e-5, rtol=1e-5)


def test_max_iou_assign_low_quality_rule():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0]])
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 11.0],  # IoU 0.909 / 0.917: best of gt 1 only, positive to gt 1
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 / 0.833: positive to gt 0
            [0.0, 0.0, 10.0, 30.0],  # IoU 0.33 / 0.4: between the thresholds, unassigned
            [50.0, 50.0, 60.0, 60.0],  # IoU 0: negative
        ]
    )
    assert max_iou_assign(boxes, gt, 0.7, 0.3, 0.3).tolist() == [2, 1, -1, 0]
    # Low-quality: gt 1's best box (row 0) goes to gt 1 even though gt 0 is its argmax under a high threshold.
    close = torch.tensor([[0.0, 0.0, 10.0, 10.5], [40.0, 40.0, 50.0, 50.0]])
    assert max_iou_assign(close, gt, 0.99, 0.3, 0.3).tolist() == [2, 0]
    # R-CNN assignment: ground truths first, each assigned to itself.
    assert rcnn_assignment(boxes, gt).tolist() == [1, 2, 2, 1, 0, 0]


def test_paste_mask_of_ones_fills_the_pixel_centres_inside_the_box():
    pasted = paste_mask(torch.ones(28, 28), torch.tensor([2.0, 3.0, 10.0, 7.0]), 12, 14, 0.5)
    expected = torch.zeros(12, 14, dtype=torch.bool)
    expected[3:7, 2:10] = True
    assert torch.equal(pasted, expected)


def _ground_truth(height: int, width: int, boxes: list[tuple[int, int, int, int]], labels: list[int]):
    masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes):
        ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        mask[((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1] = 1  # an ellipse inside its box
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels), masks


def test_losses_for_given_samples_are_finite_and_positive(member):
    model = tiny_mask_rcnn(member, seed=3)
    images = padded_batch(seed=4)
    gt = [
        _ground_truth(64, 96, [(4, 6, 40, 50), (30, 20, 88, 60)], [1, 4]),
        _ground_truth(64, 96, [(10, 10, 60, 45)], [0]),
    ]
    gt_boxes, gt_labels, gt_masks = (list(items) for items in zip(*gt))
    with torch.no_grad():
        _, cls_scores, bbox_preds = model(images)
    feature_sizes = [tuple(level.shape[-2:]) for level in cls_scores]
    proposals = training_proposals(cls_scores, bbox_preds, IMAGE_SIZES)
    generator = torch.Generator().manual_seed(0)
    rpn_samples, rcnn_samples = [], []
    for boxes, pad_size, image_proposals in zip(gt_boxes, default_pad_sizes(IMAGE_SIZES), proposals):
        _, assigned = rpn_assignment(feature_sizes, boxes, pad_size)
        rpn_samples.append(random_samples(assigned, RPN_SAMPLER["num"], RPN_SAMPLER["pos_fraction"], generator))
        assigned = rcnn_assignment(image_proposals, boxes)
        rcnn_samples.append(random_samples(assigned, RCNN_SAMPLER["num"], RCNN_SAMPLER["pos_fraction"], generator))
    assert all(len(pos) > 0 for pos, _ in rpn_samples) and all(len(pos) > 1 for pos, _ in rcnn_samples)

    model.train()
    values = losses(model, images, IMAGE_SIZES, gt_boxes, gt_labels, gt_masks, rpn_samples, rcnn_samples)
    assert set(values) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask", "acc"}
    for name, value in values.items():
        assert value.shape == () and bool(torch.isfinite(value)), name
        assert name == "acc" or float(value.detach()) > 0, name
    sum(value for name, value in values.items() if name != "acc").backward()
    assert model.roi_head.mask_head.conv_logits.weight.grad.abs().sum() > 0
    assert model.backbone.patch_embed1.proj.weight.grad.abs().sum() > 0

    # The same proposals passed explicitly give the same losses; a wrong sample is refused.
    with torch.no_grad():
        again = losses(model, images, IMAGE_SIZES, gt_boxes, gt_labels, gt_masks, rpn_samples, rcnn_samples,
                       proposals=proposals)  # fmt: skip
    for name in values:
        torch.testing.assert_close(again[name], values[name].detach())
    positives, negatives = rcnn_samples[0]
    with pytest.raises(ValueError, match="not a negative"):
        losses(model, images, IMAGE_SIZES, gt_boxes, gt_labels, gt_masks, rpn_samples,
               [(positives, torch.cat([negatives, positives[:1]])), rcnn_samples[1]])  # fmt: skip

"""RetinaNet box operations (hf_pvt/box_ops_hf_pvt.py, hf_pvt/retinanet_hf_pvt.py) against hand-computed
MMDetection v2.13 values, direct formulas and, for NMS, a plain greedy loop."""

from __future__ import annotations

import math
import time

import pytest
import torch

from hf_pvt.box_ops_hf_pvt import (
    _greedy_within_block,
    assign_max_iou,
    batched_nms,
    box_iou,
    decode_boxes,
    encode_boxes,
    generate_anchors,
    valid_anchor_flags,
)
from hf_pvt.retinanet_hf_pvt import retinanet_loss, retinanet_postprocess, sigmoid_focal_loss

LN2 = math.log(2)


def boxes_tensor(rows, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype).reshape(-1, 4)


# ----------------------------------------------------------------------------------------------------------------
# IoU


def test_box_iou_hand_values():
    boxes1 = boxes_tensor([[0, 0, 10, 10], [5, 5, 5, 5]])
    boxes2 = boxes_tensor([[0, 0, 10, 10], [5, 5, 15, 15], [10, 0, 20, 10], [20, 20, 30, 30], [0, 0, 10, 20]])
    expected = torch.tensor(
        [
            [1.0, 25 / 175, 0.0, 0.0, 0.5],  # identical, quarter overlap, touching edge, disjoint, half
            [0.0, 0.0, 0.0, 0.0, 0.0],  # a zero-area box overlaps nothing
        ]
    )
    torch.testing.assert_close(box_iou(boxes1, boxes2), expected)
    torch.testing.assert_close(box_iou(boxes2, boxes1), expected.T)
    assert box_iou(boxes_tensor([[5, 5, 5, 5]]), boxes_tensor([[5, 5, 5, 5]])).item() == 0.0
    assert box_iou(boxes_tensor([]), boxes2).shape == (0, 5)
    with pytest.raises(ValueError, match="boxes1"):
        box_iou(torch.zeros(3, 5), boxes2)


# ----------------------------------------------------------------------------------------------------------------
# Anchors and valid flags


def test_anchors_match_mmdet_retinanet_values():
    (level,) = generate_anchors([(2, 3)], [8])
    assert level.shape == (2 * 3 * 9, 4) and level.dtype == torch.float32
    # Stride 8: base size 8, scales 4 * 2^(k/3), ratios h/w 0.5, 1, 2; ratio-major, scale-minor, centred on (0, 0).
    side = [32 * 2 ** (k / 3) for k in range(3)]  # 32, 40.3175, 50.7968
    expected = []
    for ratio in (0.5, 1.0, 2.0):
        for s in side:
            half_w, half_h = s / math.sqrt(ratio) / 2, s * math.sqrt(ratio) / 2
            expected.append([-half_w, -half_h, half_w, half_h])
    expected = torch.tensor(expected)
    torch.testing.assert_close(
        expected[[0, 3, 4, 8]],
        torch.tensor(
            [
                [-22.6274, -11.3137, 22.6274, 11.3137],
                [-16.0, -16.0, 16.0, 16.0],
                [-20.1587, -20.1587, 20.1587, 20.1587],
                [-17.9594, -35.9188, 17.9594, 35.9188],
            ]
        ),
        atol=1e-4,
        rtol=0,
    )
    torch.testing.assert_close(level[:9], expected, atol=1e-5, rtol=0)
    # Locations row-major: (y=0, x=1) is shifted 8 px right, (y=1, x=0) 8 px down.
    torch.testing.assert_close(level[9:18], expected + torch.tensor([8.0, 0, 8, 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(level[27:36], expected + torch.tensor([0.0, 8, 0, 8]), atol=1e-5, rtol=0)
    torch.testing.assert_close(level[45:54], expected + torch.tensor([16.0, 8, 16, 8]), atol=1e-5, rtol=0)


def test_anchors_levels_dtype_and_errors():
    levels = generate_anchors([(4, 5), (2, 3)], [16, 32], 2, 1, [1.0], dtype=torch.float64)
    assert [tuple(level.shape) for level in levels] == [(20, 4), (6, 4)]
    assert levels[1].dtype == torch.float64
    torch.testing.assert_close(levels[1][0], torch.tensor([-32.0, -32, 32, 32], dtype=torch.float64))
    with pytest.raises(ValueError, match="strides"):
        generate_anchors([(4, 5)], [8, 16])


def test_valid_flags_follow_the_pad_shape():
    feature_sizes, strides = [(3, 4), (2, 2)], [8, 16]
    flags = valid_anchor_flags(feature_sizes, strides, num_anchors=2, pad_shape=(16, 20))
    # Level 0: ceil(16 / 8) = 2 valid rows, ceil(20 / 8) = 3 valid columns, each location's 2 anchors alike.
    grid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(flags[0], grid.reshape(-1).repeat_interleave(2))
    # Level 1: ceil(16 / 16) = 1 row, ceil(20 / 16) = 2 columns.
    assert torch.equal(flags[1], torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool))
    # A pad shape beyond the feature map leaves everything valid.
    assert all(level.all() for level in valid_anchor_flags(feature_sizes, strides, 2, (100, 100)))


# ----------------------------------------------------------------------------------------------------------------
# Box coding


def test_decode_hand_values_and_clipping():
    rois = boxes_tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 5, 5]])
    deltas = boxes_tensor([[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 2, -1], [0.7, -1.9, -0.5, 0.3]])
    # Row 2: centre 0.5 + 1 = 1.5, size e = 2.7183 -> 1.5 -+ 1.3591. Row 3: width e^2 = 7.389 around 0.5 (x1 clipped
    # to 0), height e^-1 = 0.3679 around 0.5. Row 4: a zero-size roi stays a point.
    expected = boxes_tensor(
        [[0, 0, 1, 1], [0.1409, 0.1409, 2.8591, 2.8591], [0, 0.3161, 4.1945, 0.6839], [5, 5, 5, 5]]
    )
    torch.testing.assert_close(decode_boxes(rois, deltas, max_shape=(32, 32)), expected, atol=1e-4, rtol=0)


def test_decode_clamps_the_size_change_and_clips_x_and_y_separately():
    anchor = boxes_tensor([[0, 0, 10, 10]])
    deltas = boxes_tensor([[0, 0, 10, -10]])  # far beyond the 1000 / 16 = 62.5x growth allowed
    # Width 10 * 62.5 = 625, height 10 / 62.5 = 0.16, both around the centre (5, 5).
    unclipped = boxes_tensor([[5 - 312.5, 5 - 0.08, 5 + 312.5, 5 + 0.08]])
    torch.testing.assert_close(decode_boxes(anchor, deltas), unclipped)
    # max_shape is (h, w) = (20, 30): x is clipped to [0, 30], y to [0, 20].
    torch.testing.assert_close(decode_boxes(anchor, deltas, max_shape=(20, 30)), boxes_tensor([[0, 4.92, 30, 5.08]]))
    wider = decode_boxes(anchor, deltas, wh_ratio_clip=1 / 100)
    torch.testing.assert_close(wider[0, 2] - wider[0, 0], torch.tensor(1000.0))


def test_encode_hand_values_and_round_trip():
    anchors = boxes_tensor([[0, 0, 10, 20]])
    gt = boxes_tensor([[2, 4, 22, 14]])
    # Centres (5, 10) -> (12, 9), sizes (10, 20) -> (20, 10).
    expected = torch.tensor([[7 / 10, -1 / 20, math.log(2), math.log(0.5)]])
    torch.testing.assert_close(encode_boxes(anchors, gt), expected)

    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(500, 2, generator=generator, dtype=torch.float64) * 500
    anchors = torch.cat([corner, corner + 10 + torch.rand(500, 2, generator=generator, dtype=torch.float64) * 200], 1)
    # Ground truths within the coder's 62.5x size range of their anchor.
    sizes = (anchors[:, 2:] - anchors[:, :2]) * torch.exp(torch.rand(500, 2, generator=generator) * 6 - 3)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2 + torch.randn(
        500, 2, generator=generator, dtype=torch.float64
    ) * 50
    gt = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    torch.testing.assert_close(decode_boxes(anchors, encode_boxes(anchors, gt)), gt)
    with pytest.raises(ValueError, match="gt_boxes"):
        encode_boxes(anchors, gt[:3])


def test_means_and_stds_normalise_the_deltas():
    anchors = boxes_tensor([[0, 0, 10, 20], [5, 5, 25, 15]])
    gt = boxes_tensor([[2, 4, 22, 14], [4, 6, 20, 30]])
    means, stds = (0.1, -0.2, 0.0, 0.3), (0.1, 0.1, 0.2, 0.2)
    plain = encode_boxes(anchors, gt)
    # The defaults are the plain deltas, bit for bit, whether given or left out.
    assert torch.equal(encode_boxes(anchors, gt, means=(0, 0, 0, 0), stds=(1, 1, 1, 1)), plain)
    normalised = encode_boxes(anchors, gt, means=means, stds=stds)
    torch.testing.assert_close(normalised, (plain - torch.tensor(means)) / torch.tensor(stds))
    # Decoding undoes it (MMDetection's `deltas * stds + means`), and a Mask R-CNN box-head delta of 1 moves the
    # centre by a tenth of the width.
    torch.testing.assert_close(decode_boxes(anchors, normalised, means=means, stds=stds), gt)
    moved = decode_boxes(anchors[:1], boxes_tensor([[1, 0, 0, 0]]), stds=stds)
    torch.testing.assert_close(moved, boxes_tensor([[1, 0, 11, 20]]))
    deltas = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(decode_boxes(anchors, deltas, means=[0.0] * 4, stds=[1.0] * 4), decode_boxes(anchors, deltas))
    for bad, message in (
        ({"stds": (1, 1, 1)}, "`stds` must be four finite numbers"),
        ({"means": (0, 0, float("nan"), 0)}, "`means` must be four finite numbers"),
        ({"stds": (0.1, 0.1, 0.0, 0.2)}, "`stds` must be positive"),
    ):
        with pytest.raises(ValueError, match=message):
            encode_boxes(anchors, gt, **bad)
        with pytest.raises(ValueError, match=message):
            decode_boxes(anchors, deltas, **bad)


# ----------------------------------------------------------------------------------------------------------------
# Assignment


def test_assign_thresholds():
    gt = boxes_tensor([[0, 0, 10, 10]])
    anchors = boxes_tensor(
        [
            [0, 0, 10, 10],  # IoU 1: positive
            [0, 0, 10, 20],  # IoU 0.5 = pos_iou_thr: positive
            [0, 0, 10, 22],  # IoU 0.4545: ignored
            [0, 0, 10, 26],  # IoU 0.3846 < 0.4: negative
            [50, 50, 60, 60],  # IoU 0: negative
        ]
    )
    assert assign_max_iou(anchors, gt, 0.5, 0.4).tolist() == [1, 1, -1, 0, 0]
    # neg_iou_thr is exclusive: IoU 100 / 400 = 0.25 exactly is ignored with neg_iou_thr=0.25.
    anchors = boxes_tensor([[0, 0, 10, 10], [0, 0, 10, 40], [0, 0, 10, 41]])
    assert assign_max_iou(anchors, gt, 0.5, 0.25).tolist() == [1, -1, 0]


def test_assign_best_gt_and_low_quality_matches():
    gts = boxes_tensor([[0, 0, 10, 10], [100, 100, 130, 130]])
    anchors = boxes_tensor(
        [
            [0, 0, 10, 11],  # IoU 0.909 with gt 0
            [100, 100, 110, 110],  # IoU 1/9 with gt 1, its best: a low-quality positive
            [100, 100, 110, 110],  # tied best anchor of gt 1: also assigned (gt_max_assign_all)
            [120, 120, 130, 125],  # IoU 50/900 with gt 1: negative
        ]
    )
    assert assign_max_iou(anchors, gts, 0.5, 0.4).tolist() == [1, 2, 2, 0]
    # Below min_pos_iou the low-quality match is skipped and the anchors fall back to negatives.
    assert assign_max_iou(anchors, gts, 0.5, 0.4, min_pos_iou=0.2).tolist() == [1, 0, 0, 0]


def test_assign_low_quality_overwrites_in_gt_order():
    # Anchor 0 is gt 0's best (IoU 1) and gt 1's best (IoU 0.833): mmdet's loop over gts lets gt 1 win, even though
    # gt 0 overlaps it more.
    gts = boxes_tensor([[0, 0, 10, 10], [0, 0, 10, 12]])
    anchors = boxes_tensor([[0, 0, 10, 10], [50, 50, 60, 60]])
    assert assign_max_iou(anchors, gts, 0.5, 0.4).tolist() == [2, 0]
    # An anchor with equal IoU (0.833) to two gts that both have better anchors elsewhere takes the first gt.
    gts = boxes_tensor([[0, 0, 10, 12], [0, -2, 10, 10]])
    anchors = boxes_tensor([[0, 0, 10, 10], [0, 0, 10, 12], [0, -2, 10, 10]])
    assert assign_max_iou(anchors, gts, 0.5, 0.4).tolist() == [1, 1, 2]


def test_assign_without_gt_and_with_zero_size_gt():
    anchors = boxes_tensor([[0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 15, 15]])
    assert assign_max_iou(anchors, boxes_tensor([])).tolist() == [0, 0, 0]
    assert assign_max_iou(boxes_tensor([]), boxes_tensor([[0, 0, 1, 1]])).shape == (0,)
    # mmdet's quirk with min_pos_iou=0: a zero-size gt has best IoU 0 and claims every anchor it has IoU 0 with.
    assert assign_max_iou(anchors, boxes_tensor([[5, 5, 5, 5]])).tolist() == [1, 1, 1]
    # A later real gt overwrites its own best anchors only.
    gts = boxes_tensor([[5, 5, 5, 5], [20, 20, 30, 30]])
    assert assign_max_iou(anchors, gts).tolist() == [1, 2, 1]


# ----------------------------------------------------------------------------------------------------------------
# Losses


def test_sigmoid_focal_loss_matches_the_formula_and_its_gradient():
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 5, generator=generator, dtype=torch.float64) * 4).requires_grad_()
    targets = (torch.rand(6, 5, generator=generator) < 0.3).double()
    alpha, gamma = 0.25, 2.0
    p = logits.sigmoid()
    direct = -alpha * (1 - p) ** gamma * torch.log(p) * targets - (1 - alpha) * p**gamma * torch.log(1 - p) * (
        1 - targets
    )
    loss = sigmoid_focal_loss(logits, targets, alpha, gamma)
    torch.testing.assert_close(loss, direct)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    (grad_direct,) = torch.autograd.grad(direct.sum(), logits)
    torch.testing.assert_close(grad, grad_direct)
    # Zero logits: p = 1/2, so alpha / 4 * ln 2 for a positive and (1 - alpha) / 4 * ln 2 for a negative.
    zero = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(zero, torch.tensor([0.0625 * LN2, 0.1875 * LN2]))


def small_retinanet_inputs():
    """One level, stride 8, 2x2 locations, one 8x8 anchor each, 2 classes, 2 images."""
    anchors = generate_anchors([(2, 2)], [8], octave_base_scale=1, scales_per_octave=1, ratios=[1.0])
    # Anchors: [-4, -4, 4, 4], [4, -4, 12, 4], [-4, 4, 4, 12], [4, 4, 12, 12].
    logits = [torch.zeros(2, 2, 2, 2)]
    deltas = [torch.full((2, 4, 2, 2), 0.1)]
    targets = [
        {"boxes": boxes_tensor([[5, 4, 13, 12]]), "class_labels": torch.tensor([1])},
        {"boxes": boxes_tensor([]), "class_labels": torch.zeros(0, dtype=torch.long)},
    ]
    return logits, deltas, anchors, targets


def test_retinanet_loss_hand_case():
    logits, deltas, anchors, targets = small_retinanet_inputs()
    # Image 0 (pad 16x16, all anchors valid): the gt has IoU 56/72 with anchor 3 (positive, class 1) and touches the
    # others (IoU 0: negatives). Image 1 (pad 8x8): only anchor 0 is valid, a negative; no gt but it counts 1.
    losses = retinanet_loss(logits, deltas, anchors, targets, [(16, 16), (8, 8)], num_classes=2, strides=[8])
    avg_factor = 1 + 1
    positive, negative = 0.0625 * LN2, 0.1875 * LN2  # per (anchor, class) at logit 0
    loss_cls = (positive + negative) + 3 * 2 * negative + 2 * negative
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(loss_cls / avg_factor))
    # Target deltas of anchor 3: dx = (9 - 8) / 8 = 0.125, the rest 0; predictions all 0.1.
    loss_bbox = abs(0.1 - 0.125) + 3 * 0.1
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(loss_bbox / avg_factor))

    # Degenerate boxes are dropped (mmdet's loader never lets one through), so they change nothing.
    targets[1] = {"boxes": boxes_tensor([[3, 3, 3, 9]]), "class_labels": torch.tensor([0])}
    again = retinanet_loss(logits, deltas, anchors, targets, [(16, 16), (8, 8)], num_classes=2, strides=[8])
    torch.testing.assert_close(again, losses)


def test_retinanet_loss_multi_level_gradients_and_errors():
    generator = torch.Generator().manual_seed(0)
    feature_sizes, strides = [(8, 10), (4, 5), (2, 3)], [8, 16, 32]
    anchors = generate_anchors(feature_sizes, strides)
    logits = [torch.randn(2, 9 * 3, h, w, generator=generator).requires_grad_() for h, w in feature_sizes]
    deltas = [torch.randn(2, 9 * 4, h, w, generator=generator).requires_grad_() for h, w in feature_sizes]
    targets = [
        {
            "boxes": boxes_tensor([[10, 12, 40, 50], [30, 5, 75, 60], [0, 0, 64, 64]]),
            "class_labels": torch.tensor([0, 2, 1]),
        },
        {"boxes": boxes_tensor([[4, 4, 20, 12]]), "class_labels": torch.tensor([2])},
    ]
    losses = retinanet_loss(logits, deltas, anchors, targets, [(64, 80), (32, 40)], 3, strides=strides)
    assert set(losses) == {"loss_cls", "loss_bbox"}
    assert losses["loss_cls"] > 0 and losses["loss_bbox"] > 0
    (losses["loss_cls"] + losses["loss_bbox"]).backward()
    for tensor in logits + deltas:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
    # Image 1's padding (beyond 32x40) gets no gradient: its anchors are invalid.
    assert (logits[0].grad[1, :, 4:] == 0).all() and (logits[0].grad[1, :, :, 5:] == 0).all()
    assert logits[0].grad[1, :, :4, :5].abs().sum() > 0

    with pytest.raises(ValueError, match="class_labels"):
        bad = [{"boxes": boxes_tensor([[0, 0, 5, 5]]), "class_labels": torch.tensor([3])}, targets[1]]
        retinanet_loss(logits, deltas, anchors, bad, [(64, 80), (32, 40)], 3, strides=strides)
    with pytest.raises(ValueError, match="num_classes"):
        retinanet_loss(logits, deltas, anchors, targets, [(64, 80), (32, 40)], 4, strides=strides)
    with pytest.raises(ValueError, match="pad_shapes"):
        retinanet_loss(logits, deltas, anchors, targets, [(64, 80)], 3, strides=strides)


# ----------------------------------------------------------------------------------------------------------------
# NMS


def greedy_nms_reference(boxes, scores, class_ids, iou_threshold):
    """Plain greedy NMS: walk the boxes by score (ties: lower index), keep a box unless a kept box of its class
    overlaps it with IoU > iou_threshold."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    boxes = boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()
    suppressed = [False] * len(order)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        overlapping = (box_iou(boxes[i : i + 1], boxes)[0] > iou_threshold) & (class_ids == class_ids[i])
        for j in torch.nonzero(overlapping).flatten().tolist():
            suppressed[j] = True
    return keep


def random_detections(num_boxes, num_classes, seed, num_clusters=20, score_levels=0):
    """Boxes jittered around a few objects, like a detector's raw output; score_levels > 0 makes many ties."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(num_clusters, 2, generator=generator) * 400
    sizes = torch.rand(num_clusters, 2, generator=generator) * 80 + 5
    cluster = torch.randint(0, num_clusters, (num_boxes,), generator=generator)
    centre = centres[cluster] + torch.randn(num_boxes, 2, generator=generator) * sizes[cluster] * 0.15
    size = sizes[cluster] * torch.exp(torch.randn(num_boxes, 2, generator=generator) * 0.2)
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    scores = torch.rand(num_boxes, generator=generator)
    if score_levels:
        scores = (scores * score_levels).floor() / score_levels
    return boxes, scores, torch.randint(0, num_classes, (num_boxes,), generator=generator)


@pytest.mark.parametrize(
    "num_boxes, num_classes, iou_threshold, score_levels, block_size",
    [
        (300, 1, 0.5, 0, 256),
        (300, 5, 0.3, 0, 16),
        (500, 3, 0.7, 4, 7),  # heavy score ties, many small blocks
        (400, 80, 0.5, 0, 256),
        (200, 2, 0.5, 0, 1),
        (3000, 4, 0.5, 10, 256),  # thousands, with ties
    ],
)
def test_batched_nms_equals_greedy_on_random_boxes(num_boxes, num_classes, iou_threshold, score_levels, block_size):
    for seed in range(2):
        boxes, scores, class_ids = random_detections(num_boxes, num_classes, seed, score_levels=score_levels)
        keep = batched_nms(boxes, scores, class_ids, iou_threshold, block_size=block_size)
        assert keep.dtype == torch.long
        assert keep.tolist() == greedy_nms_reference(boxes, scores, class_ids, iou_threshold)


def test_batched_nms_adversarial_cases():
    empty = batched_nms(boxes_tensor([]), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.long
    one = batched_nms(boxes_tensor([[0, 0, 1, 1]]), torch.tensor([0.3]), torch.tensor([4]), 0.5)
    assert one.tolist() == [0]

    # Identical boxes with identical scores: only the lowest index survives, per class.
    boxes = boxes_tensor([[0, 0, 10, 10]] * 6)
    classes = torch.tensor([1, 0, 1, 0, 1, 2])
    assert batched_nms(boxes, torch.full((6,), 0.5), classes, 0.5).tolist() == [0, 1, 5]
    assert batched_nms(boxes, torch.full((6,), 0.5), torch.arange(6), 0.5).tolist() == [0, 1, 2, 3, 4, 5]
    # Zero-area boxes overlap nothing (IoU 0), not even their copies.
    points = boxes_tensor([[3, 3, 3, 3]] * 3)
    assert batched_nms(points, torch.tensor([0.1, 0.3, 0.2]), torch.zeros(3, dtype=torch.long), 0.5).tolist() == [
        1,
        2,
        0,
    ]
    # IoU exactly at the threshold does not suppress (strictly greater does).
    pair = boxes_tensor([[0, 0, 2, 1], [0, 0, 1, 1]])
    same = torch.zeros(2, dtype=torch.long)
    assert batched_nms(pair, torch.tensor([0.9, 0.8]), same, 0.5).tolist() == [0, 1]
    assert batched_nms(pair, torch.tensor([0.9, 0.8]), same, 0.49).tolist() == [0]
    # Far-apart coordinates and overlapping boxes of different classes: no interference between classes.
    boxes = boxes_tensor([[1e4, 1e4, 1e4 + 5, 1e4 + 5], [0, 0, 5, 5], [0, 0, 5, 5], [1e4, 1e4, 1e4 + 5, 1e4 + 4]])
    kept = batched_nms(boxes, torch.tensor([0.1, 0.9, 0.8, 0.7]), torch.tensor([0, 1, 0, 0]), 0.5)
    assert kept.tolist() == [1, 2, 3]  # box 0 (0.1) loses to box 3 (0.7, IoU 0.8) of its class


def test_batched_nms_suppression_chains_across_blocks():
    # Box k overlaps box k + 1 only (IoU 0.538 > 0.5): greedy keeps every other box, and each decision depends on
    # the previous one, through every block boundary.
    n = 600
    x = torch.arange(n, dtype=torch.float32) * 0.3
    boxes = torch.stack([x, torch.zeros(n), x + 1, torch.ones(n)], dim=1)
    scores = torch.linspace(1, 0, n)
    class_ids = torch.zeros(n, dtype=torch.long)
    expected = greedy_nms_reference(boxes, scores, class_ids, 0.5)
    assert expected == list(range(0, n, 2))
    for block_size in (7, 64, 256, 1024):
        assert batched_nms(boxes, scores, class_ids, 0.5, block_size=block_size).tolist() == expected
    # Reversed scores walk the chain from the other end.
    assert batched_nms(boxes, scores.flip(0), class_ids, 0.5).tolist() == greedy_nms_reference(
        boxes, scores.flip(0), class_ids, 0.5
    )


def test_block_resolution_rounds_and_sweep_agree_with_a_sequential_pass():
    generator = torch.Generator().manual_seed(0)
    for density in (0.02, 0.1, 0.5):
        suppresses = (torch.rand(64, 64, generator=generator) < density).triu(diagonal=1)
        alive = torch.rand(64, generator=generator) < 0.9
        expected = alive.clone()
        for i in range(64):
            if expected[i]:
                expected[i + 1 :] &= ~suppresses[i, i + 1 :]
        for max_rounds in (0, 1, 3, 1000):  # sweep only, mixed, rounds only
            assert torch.equal(_greedy_within_block(alive, suppresses, max_rounds), expected)


def test_batched_nms_dtypes_and_errors():
    boxes, scores, class_ids = random_detections(200, 3, seed=5)
    expected = greedy_nms_reference(boxes.double(), scores, class_ids, 0.5)
    assert batched_nms(boxes.double(), scores, class_ids, 0.5).tolist() == expected
    half = boxes.half()
    assert batched_nms(half, scores, class_ids, 0.5).tolist() == greedy_nms_reference(half, scores, class_ids, 0.5)
    with pytest.raises(ValueError, match="scores"):
        batched_nms(boxes, scores[:-1], class_ids, 0.5)
    with pytest.raises(ValueError, match="block_size"):
        batched_nms(boxes, scores, class_ids, 0.5, block_size=0)


@pytest.mark.parametrize("max_kept", [1, 7, 100, 1000])
def test_batched_nms_max_kept_equals_truncated_full_nms(max_kept):
    cases = [random_detections(3000, 4, seed, score_levels=10 * seed) for seed in range(3)]
    n = 600  # a suppression chain through every block: each decision depends on the previous one
    x = torch.arange(n, dtype=torch.float32) * 0.3
    cases.append((torch.stack([x, torch.zeros(n), x + 1, torch.ones(n)], 1), torch.linspace(1, 0, n), torch.zeros(n)))
    for boxes, scores, class_ids in cases:
        expected = batched_nms(boxes, scores, class_ids.long(), 0.5)[:max_kept]
        for block_size in (5, 256):
            kept = batched_nms(boxes, scores, class_ids.long(), 0.5, max_kept=max_kept, block_size=block_size)
            assert kept.tolist() == expected.tolist()


def test_batched_nms_max_kept_is_fast_with_a_low_score_threshold():
    # A RetinaNet image at score threshold 0.001: 5 levels x 1000 anchors x 80 classes, nearly all pairs candidates.
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(5000, 2, generator=generator) * 800
    anchor_boxes = torch.cat((corners, corners + torch.rand(5000, 2, generator=generator) * 200 + 2), dim=1)
    scores = (torch.randn(5000, 80, generator=generator) - 4).sigmoid()
    anchor_index, class_ids = torch.nonzero(scores > 0.001, as_tuple=True)
    boxes, scores = anchor_boxes[anchor_index], scores[anchor_index, class_ids]
    assert boxes.shape[0] > 350_000
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        kept = batched_nms(boxes, scores, class_ids, 0.5, max_kept=100)
        elapsed = time.process_time() - start
    finally:
        torch.set_num_threads(threads)
    assert kept.shape == (100,)
    assert elapsed < 0.5, elapsed  # the full NMS of these pairs takes 8-15 s


def test_batched_nms_speed():
    boxes, scores, class_ids = random_detections(5000, 80, seed=0, num_clusters=100)
    # CPU time of one thread, best of three: the test machine's cores are shared, which wall time would measure.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timings = []
        for _ in range(3):
            start = time.process_time()
            batched_nms(boxes, scores, class_ids, 0.5)
            timings.append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    assert min(timings) < 1.0, timings


# ----------------------------------------------------------------------------------------------------------------
# Post-processing


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def postprocess_scene():
    """Level 0: stride 8, 2x2 locations, one 16x16 anchor each, 2 classes; image 12x14 (h, w).

    Clipped boxes b0 [0, 0, 8, 8], b1 [0, 0, 14, 8], b2 [0, 0, 8, 12], b3 [0, 0, 14, 12]; IoU(b0, b1) = 0.571,
    IoU(b0, b3) = 0.381, IoU(b1, b3) = 0.667.
    """
    anchors = generate_anchors([(2, 2)], [8], octave_base_scale=2, scales_per_octave=1, ratios=[1.0])
    probs = torch.tensor([[0.9, 0.04], [0.8, 0.7], [0.02, 0.01], [0.5, 0.6]])  # (location, class)
    logits = torch.logit(probs).T.reshape(2, 2, 2)  # (A * C, H, W) with A = 1
    deltas = torch.zeros(4, 2, 2)
    return [logits], [deltas], anchors


def test_postprocess_threshold_nms_order_and_clipping():
    logits, deltas, anchors = postprocess_scene()
    result = retinanet_postprocess(logits, deltas, anchors, (12, 14), score_threshold=0.05, iou_threshold=0.5)
    # Class 0: b0 (0.9) kept, b1 (0.8) suppressed by b0, b3 (0.5) kept. Class 1: b1 (0.7) kept, b3 (0.6) suppressed.
    torch.testing.assert_close(result["boxes"], boxes_tensor([[0, 0, 8, 8], [0, 0, 14, 8], [0, 0, 14, 12]]))
    torch.testing.assert_close(result["scores"], torch.tensor([0.9, 0.7, 0.5]))
    assert result["labels"].tolist() == [0, 1, 0] and result["labels"].dtype == torch.long

    top = retinanet_postprocess(logits, deltas, anchors, (12, 14), max_per_image=2)
    torch.testing.assert_close(top["scores"], torch.tensor([0.9, 0.7]))
    # The threshold is exclusive: at exactly b3's class-0 score (logit 0, so exactly 0.5), that detection goes.
    at_threshold = retinanet_postprocess(logits, deltas, anchors, (12, 14), score_threshold=0.5)
    assert at_threshold["labels"].tolist() == [0, 1]


def test_postprocess_nms_pre_is_per_level_by_best_class_score():
    logits, deltas, anchors = postprocess_scene()
    # Best-class scores per anchor: 0.9, 0.8, 0.02, 0.6 -> the top 2 anchors are b0 and b1.
    result = retinanet_postprocess(logits, deltas, anchors, (12, 14), nms_pre=2)
    torch.testing.assert_close(result["scores"], torch.tensor([0.9, 0.7]))
    assert result["labels"].tolist() == [0, 1]

    # A second level (stride 16, one location) keeps its own top anchor; its box is decoded with the deltas.
    anchors2 = generate_anchors([(1, 1)], [16], octave_base_scale=1, scales_per_octave=1, ratios=[1.0])
    logits2 = torch.tensor([logit(0.95), logit(0.01)]).reshape(2, 1, 1)
    deltas2 = torch.tensor([0.25, 0.0, 0.0, 0.0]).reshape(4, 1, 1)  # shift right by 16 * 0.25 = 4
    result = retinanet_postprocess(
        logits + [logits2], deltas + [deltas2], anchors + anchors2, (12, 14), nms_pre=2, iou_threshold=0.9
    )
    torch.testing.assert_close(result["scores"], torch.tensor([0.95, 0.9, 0.8, 0.7]))
    torch.testing.assert_close(result["boxes"][0], torch.tensor([0.0, 0.0, 12.0, 8.0]))  # [-4, -8, 12, 8] clipped


def test_postprocess_empty_and_low_precision():
    logits, deltas, anchors = postprocess_scene()
    empty = retinanet_postprocess([torch.full_like(logits[0], -10.0)], deltas, anchors, (12, 14))
    assert empty["boxes"].shape == (0, 4) and empty["boxes"].dtype == torch.float32
    assert empty["scores"].shape == (0,) and empty["scores"].dtype == torch.float32
    assert empty["labels"].shape == (0,) and empty["labels"].dtype == torch.long

    low = retinanet_postprocess([logits[0].bfloat16()], [deltas[0].bfloat16()], anchors, torch.tensor([12, 14]))
    assert low["scores"].dtype == torch.float32 and low["labels"].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="one image"):
        retinanet_postprocess([logits[0][None]], [deltas[0][None]], anchors, (12, 14))

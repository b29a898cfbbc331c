"""HfPvtForInstanceSegmentation: the papers' Mask R-CNN on every family member, its inputs, losses, sampling,
post-processing and loading contracts, and its loss/detection functions on hand-made values.

Parity with MMDetection v2.13 lives in test_mask_rcnn_parity.py (against an independent reference).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from hf_pvt import HfPvtConfig, HfPvtForImageClassification
from hf_pvt.mask_rcnn_hf_pvt import (
    HfPvtForInstanceSegmentation,
    HfPvtInstanceSegmentationOutput,
    detect_boxes,
    mask_loss,
    mask_rcnn_postprocess,
    rcnn_loss,
    rpn_loss,
    rpn_proposals,
    sample_indices,
    sample_proposals,
)

# A small but complete Mask R-CNN: five levels, two shared fcs, a two-conv mask head, three classes.
HEAD = {
    "decoder_hidden_size": 32,
    "rcnn_fc_channels": 64,
    "mask_head_channels": 16,
    "mask_head_num_convs": 2,
    "num_labels": 3,
}
LOSSES = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"}


def segmenter(member: str = "v2", seed: int = 0, **overrides) -> HfPvtForInstanceSegmentation:
    torch.manual_seed(seed)
    return HfPvtForInstanceSegmentation(tiny_config(member, **{**HEAD, **overrides}))


def instance_labels(height: int, width: int, *boxes: tuple[int, int, int, int], classes: list[int]) -> dict:
    """DETR-style labels of rectangles given as pixel (x1, y1, x2, y2), each filled in its mask."""
    masks = torch.zeros(len(boxes), height, width)
    normalised = []
    for mask, (x1, y1, x2, y2) in zip(masks, boxes):
        mask[y1:y2, x1:x2] = 1
        normalised.append([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height])
    return {
        "boxes": torch.tensor(normalised, dtype=torch.float32).reshape(-1, 4),
        "class_labels": torch.tensor(classes, dtype=torch.long),
        "masks": masks,
    }


def two_image_labels(height: int = 64, width: int = 96) -> list[dict]:
    return [
        instance_labels(height, width, (20, 10, 60, 40), (5, 30, 30, 60), classes=[0, 2]),
        instance_labels(height, width, (40, 8, 90, 50), classes=[1]),
    ]


# ----------------------------------------------------------------------------------------------------------------
# Structure


def test_module_names_follow_mmdetection():
    model = segmenter()
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    expected = {
        "neck.lateral_convs.0.weight": (32, 16, 1, 1),  # stage 1: start level 0
        "neck.lateral_convs.3.weight": (32, 64, 1, 1),
        "neck.fpn_convs.3.weight": (32, 32, 3, 3),
        "rpn_head.rpn_conv.weight": (32, 32, 3, 3),
        "rpn_head.rpn_cls.weight": (3, 32, 1, 1),  # 3 anchors, one sigmoid logit each
        "rpn_head.rpn_reg.weight": (12, 32, 1, 1),
        "roi_head.bbox_head.shared_fcs.0.weight": (64, 32 * 7 * 7),
        "roi_head.bbox_head.shared_fcs.1.weight": (64, 64),
        "roi_head.bbox_head.fc_cls.weight": (4, 64),  # num_labels + background
        "roi_head.bbox_head.fc_reg.weight": (12, 64),  # class-specific deltas
        "roi_head.mask_head.convs.0.conv.weight": (16, 32, 3, 3),
        "roi_head.mask_head.convs.1.conv.bias": (16,),
        "roi_head.mask_head.upsample.weight": (16, 16, 2, 2),
        "roi_head.mask_head.conv_logits.weight": (3, 16, 1, 1),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    # No extra convs: the fifth level is a max pool, so there are no neck.fpn_convs.4 or extra convs on the input.
    assert not any(key.startswith("neck.fpn_convs.4") for key in shapes)
    assert {key.split(".")[0] for key in shapes} == {"pvt", "neck", "rpn_head", "roi_head"}
    assert isinstance(model.roi_head.mask_head.upsample, torch.nn.ConvTranspose2d)
    assert model.roi_head.mask_head.upsample.stride == (2, 2)


@pytest.mark.parametrize("preset, millions", [("pvt-tiny", 32.9), ("pvt-v2-b2", 45.0), ("pvt-v2-b2-li", 42.2)])
def test_parameter_counts_match_the_papers(preset, millions):
    # The Mask R-CNN parameter counts of the PVT (arXiv 2102.12122) and PVTv2 (arXiv 2106.13797) papers.
    with torch.device("meta"):
        model = HfPvtForInstanceSegmentation(HfPvtConfig.from_preset(preset, num_labels=80))
    assert round(sum(parameter.numel() for parameter in model.parameters()) / 1e6, 1) == millions


def test_initialisation_follows_mmdetection_v2_13():
    model = segmenter(rcnn_fc_channels=256, mask_head_channels=64)
    for conv in (model.rpn_head.rpn_conv, model.rpn_head.rpn_cls, model.rpn_head.rpn_reg):
        assert abs(conv.weight.std().item() - 0.01) < 0.003 and not conv.bias.any()
    lateral = model.neck.lateral_convs[3].weight  # Xavier uniform: bound sqrt(6 / (fan_in + fan_out))
    assert lateral.abs().max() <= math.sqrt(6 / (64 + 32)) + 1e-6
    fc = model.roi_head.bbox_head.shared_fcs[1].weight  # Xavier normal: std sqrt(2 / (fan_in + fan_out))
    assert abs(fc.std().item() - math.sqrt(2 / 512)) < 0.1 * math.sqrt(2 / 512)
    conv = model.roi_head.mask_head.convs[1].conv.weight  # Kaiming normal, fan_out, ReLU
    assert abs(conv.std().item() - math.sqrt(2 / (64 * 9))) < 0.1 * math.sqrt(2 / (64 * 9))
    biases = [model.roi_head.bbox_head.fc_cls.bias, model.roi_head.mask_head.upsample.bias]
    assert not any(bias.any() for bias in biases)


@pytest.mark.parametrize("size", [(64, 64), (77, 101), (32, 45)])
def test_inference_outputs_at_any_size(member, size):
    model = segmenter(member).eval()
    height, width = size
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, height, width))
    assert isinstance(outputs, HfPvtInstanceSegmentationOutput)
    assert outputs.loss is None and outputs.loss_dict is None and outputs.sampling is None
    assert outputs.image_sizes.tolist() == [[height, width]] * 2
    for image in range(2):
        proposals, scores = outputs.proposals[image], outputs.proposal_scores[image]
        assert proposals.dtype == torch.float32 and 0 < len(proposals) <= 1000 and scores.shape == proposals.shape[:1]
        assert torch.all(scores[:-1] >= scores[1:]), "proposals come by objectness descending"
        assert proposals[:, 0::2].min() >= 0 and proposals[:, 0::2].max() <= width
        assert proposals[:, 1::2].min() >= 0 and proposals[:, 1::2].max() <= height
        assert outputs.logits[image].shape == (len(proposals), 4)
        assert outputs.pred_box_deltas[image].shape == (len(proposals), 12)
        boxes, scores = outputs.pred_boxes[image], outputs.pred_scores[image]
        count = len(boxes)
        assert 0 < count <= 100 and boxes.dtype == torch.float32
        assert torch.all(scores > 0.05) and torch.all(scores[:-1] >= scores[1:])
        assert outputs.pred_labels[image].shape == (count,) and outputs.pred_labels[image].max() < 3
        assert outputs.pred_mask_logits[image].shape == (count, 28, 28)
        assert boxes[:, 2].max() <= width and boxes[:, 3].max() <= height and boxes.min() >= 0


def test_pixel_mask_gives_each_images_own_size():
    model = segmenter().eval()
    pixel_mask = torch.zeros(2, 96, 128, dtype=torch.long)
    pixel_mask[0] = 1
    pixel_mask[1, :70, :90] = 1
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 96, 128), pixel_mask=pixel_mask)
    assert outputs.image_sizes.tolist() == [[96, 128], [70, 90]]
    for boxes in (outputs.proposals[1], outputs.pred_boxes[1]):
        assert boxes[:, 0::2].max() <= 90 and boxes[:, 1::2].max() <= 70
    with pytest.raises(ValueError, match="pixel_mask must be a \\(batch, height, width\\)"):
        model(torch.randn(2, 3, 96, 128), pixel_mask=pixel_mask[:, :10])
    with pytest.raises(ValueError, match="no valid pixel"):
        model(torch.randn(2, 3, 96, 128), pixel_mask=torch.zeros(2, 96, 128))


def test_bfloat16_model_keeps_boxes_in_float32():
    model = segmenter().to(torch.bfloat16).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 70, 90))
    assert outputs.proposals[0].dtype == outputs.pred_boxes[0].dtype == torch.float32
    assert outputs.pred_mask_logits[0].dtype == torch.bfloat16
    instances = mask_rcnn_postprocess(outputs, 0, (140, 180))
    assert instances["masks"].shape[1:] == (140, 180)


# ----------------------------------------------------------------------------------------------------------------
# Training


def test_training_step_reaches_every_head(member):
    model = segmenter(member).train()
    outputs = model(torch.randn(2, 3, 64, 96), labels=two_image_labels())
    assert set(outputs.loss_dict) == LOSSES
    assert all(torch.isfinite(value) and value > 0 for value in outputs.loss_dict.values())
    torch.testing.assert_close(outputs.loss, sum(outputs.loss_dict.values()))
    assert outputs.pred_boxes is None, "training mode computes losses only"
    outputs.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    for head in (model.neck, model.rpn_head, model.roi_head.bbox_head, model.roi_head.mask_head, model.pvt):
        assert any(parameter.grad.abs().sum() > 0 for parameter in head.parameters())


def test_sampling_is_seedable_and_within_its_budget():
    model = segmenter().train()
    pixel_values, labels = torch.randn(2, 3, 64, 96), two_image_labels()

    def run(seed: int) -> HfPvtInstanceSegmentationOutput:
        with torch.no_grad():
            return model(pixel_values, labels=labels, generator=torch.Generator().manual_seed(seed))

    first, again, other = run(0), run(0), run(1)
    for a, b in zip(first.sampling, again.sampling):
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert all(torch.equal(first.loss_dict[key], again.loss_dict[key]) for key in LOSSES)
    assert any(not torch.equal(a["rpn_negative"], b["rpn_negative"]) for a, b in zip(first.sampling, other.sampling))
    # The global RNG serves when no generator is given.
    torch.manual_seed(5)
    global_first = model(pixel_values, labels=labels).sampling
    torch.manual_seed(5)
    global_again = model(pixel_values, labels=labels).sampling
    assert all(torch.equal(a["rcnn_negative"], b["rcnn_negative"]) for a, b in zip(global_first, global_again))

    for image, sample in enumerate(first.sampling):
        assert sample["rpn_positive"].numel() <= 128 and sample["rpn_positive"].numel() > 0
        assert sample["rpn_positive"].numel() + sample["rpn_negative"].numel() == 256
        assert sample["rcnn_positive"].numel() <= 128
        assert sample["rcnn_positive"].numel() + sample["rcnn_negative"].numel() <= 512
        # Ground-truth boxes lead the candidates and are always positive.
        num_gts = len(labels[image]["class_labels"])
        assert set(range(num_gts)) <= set(sample["rcnn_positive"].tolist())
        for indices in sample.values():
            assert torch.all(indices[1:] > indices[:-1]), "samples are sorted and unique"


def test_images_without_objects_are_negatives():
    model = segmenter().train()
    empty = instance_labels(64, 96, classes=[])
    outputs = model(torch.randn(2, 3, 64, 96), labels=[empty, empty])
    assert outputs.loss_dict["loss_rpn_bbox"] == 0 and outputs.loss_dict["loss_bbox"] == 0
    assert outputs.loss_dict["loss_mask"] == 0
    assert outputs.loss_dict["loss_rpn_cls"] > 0 and outputs.loss_dict["loss_cls"] > 0
    assert all(
        sample["rpn_positive"].numel() == 0 and sample["rcnn_positive"].numel() == 0 for sample in outputs.sampling
    )
    outputs.loss.backward()
    # One image with objects and one without share a batch.
    mixed = model(torch.randn(2, 3, 64, 96), labels=[two_image_labels()[0], empty])
    assert all(torch.isfinite(value) for value in mixed.loss_dict.values()) and mixed.loss_dict["loss_mask"] > 0


def test_empty_batch():
    model = segmenter().eval()
    with torch.no_grad():
        outputs = model(torch.randn(0, 3, 64, 64))
    assert outputs.proposals == [] and outputs.pred_boxes == [] and outputs.pred_mask_logits == []
    assert outputs.image_sizes.shape == (0, 2)
    training = model.train()(torch.randn(0, 3, 64, 64), labels=[])
    assert training.loss == 0 and set(training.loss_dict) == LOSSES


def test_no_detections_give_empty_instances():
    model = segmenter().eval()
    with torch.no_grad():
        model.roi_head.bbox_head.fc_cls.bias[-1] = 100.0  # everything is background
        outputs = model(torch.randn(1, 3, 64, 80))
    assert outputs.pred_boxes[0].shape == (0, 4) and outputs.pred_mask_logits[0].shape == (0, 28, 28)
    instances = mask_rcnn_postprocess(outputs, 0, target_size=(128, 160))
    assert instances["masks"].shape == (0, 128, 160) and instances["boxes"].shape == (0, 4)


def test_a_few_steps_fit_one_image():
    model = segmenter("v2", depths=[1, 1, 1, 1]).train()
    pixel_values = torch.randn(1, 3, 64, 64)
    labels = [instance_labels(64, 64, (16, 16, 48, 48), classes=[1])]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(12):
        loss = model(pixel_values, labels=labels, generator=torch.Generator().manual_seed(step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"boxes": torch.zeros(0, 4)}, "one dict per image"),
        ([{"boxes": torch.zeros(1, 4), "class_labels": torch.zeros(1, dtype=torch.long)}] * 2, "'masks'"),
        ([instance_labels(64, 64, (0, 0, 8, 8), classes=[3])] * 2, r"class_labels must be integer ids in \[0, 3\)"),
        (
            [{**instance_labels(64, 64, (0, 0, 8, 8), classes=[0]), "masks": torch.zeros(1, 32, 64)}] * 2,
            "masks must be",
        ),
        (
            [{**instance_labels(64, 64, (0, 0, 8, 8), classes=[0]), "masks": torch.full((1, 64, 64), 0.5)}] * 2,
            "binary",
        ),
        (
            [{**instance_labels(64, 64, (0, 0, 8, 8), classes=[0]), "boxes": torch.zeros(1, 3)}] * 2,
            r"must be \(n, 4\)",
        ),
        (
            [{**instance_labels(64, 64, (0, 0, 8, 8), classes=[0]), "boxes": torch.tensor([[0.5, 0.5, -0.1, 0.1]])}]
            * 2,
            "non-negative",
        ),
    ],
)
def test_bad_labels_raise_clear_errors(labels, message):
    with pytest.raises(ValueError, match=message):
        segmenter().train()(torch.randn(2, 3, 64, 64), labels=labels)


def test_zero_size_boxes_are_dropped_with_their_masks():
    model = segmenter().train()
    labels = instance_labels(64, 96, (20, 10, 60, 40), (30, 30, 30, 50), classes=[0, 1])
    outputs = model(torch.randn(1, 3, 64, 96), labels=[labels], generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(value) for value in outputs.loss_dict.values())
    assert 0 in outputs.sampling[0]["rcnn_positive"].tolist()  # the real box leads the candidates, alone


# ----------------------------------------------------------------------------------------------------------------
# Post-processing and loading


def test_postprocess_scales_to_the_original_image_and_takes_pipeline_slices():
    model = segmenter().eval()
    pixel_mask = torch.zeros(2, 64, 96, dtype=torch.long)
    pixel_mask[0] = 1
    pixel_mask[1, :48, :64] = 1
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 64, 96), pixel_mask=pixel_mask)
    instances = mask_rcnn_postprocess(outputs, 1, target_size=(96, 128), threshold=0.0)
    boxes = outputs.pred_boxes[1]
    torch.testing.assert_close(instances["boxes"], boxes * torch.tensor([2.0, 2.0, 2.0, 2.0]))
    assert instances["masks"].shape == (len(boxes), 96, 128) and instances["masks"].dtype == torch.bool
    assert torch.equal(instances["labels"], outputs.pred_labels[1])
    # Foreground only inside (a pixel or so around) each box.
    for mask, (x1, y1, x2, y2) in zip(instances["masks"], instances["boxes"].tolist()):
        rows, cols = torch.nonzero(mask, as_tuple=True)
        if rows.numel():
            assert cols.min() >= math.floor(x1) - 1 and cols.max() <= math.ceil(x2) + 1
            assert rows.min() >= math.floor(y1) - 1 and rows.max() <= math.ceil(y2) + 1
    # A pipeline splits the batch into (1, ...) tensors per image; index 0 of that slice is the image.
    sliced = {
        key: (value[1].unsqueeze(0) if isinstance(value, (list, torch.Tensor)) else value)
        for key, value in outputs.items()
    }
    again = mask_rcnn_postprocess(sliced, 0, target_size=(96, 128), threshold=0.0)
    assert all(torch.equal(again[key], instances[key]) for key in instances)
    # threshold drops low scores; without target_size the boxes stay in input pixels at the image's own size.
    high = mask_rcnn_postprocess(outputs, 1, threshold=float(outputs.pred_scores[1].median()))
    assert len(high["scores"]) < len(boxes) and high["masks"].shape[1:] == (48, 64)
    with pytest.raises(ValueError, match="evaluation mode"):
        mask_rcnn_postprocess(HfPvtInstanceSegmentationOutput(image_sizes=outputs.image_sizes), 0)


def test_save_load_round_trip(tmp_path):
    model = segmenter("v1").eval()
    model.save_pretrained(tmp_path)
    loaded = HfPvtForInstanceSegmentation.from_pretrained(tmp_path).eval()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first, second = model(pixel_values), loaded(pixel_values)
    for key in ("proposals", "pred_boxes", "pred_scores", "pred_mask_logits"):
        torch.testing.assert_close(first[key][0], second[key][0], atol=1e-5, rtol=0)
    assert loaded.config.rcnn_max_per_image == 100 and loaded.config.rpn_anchor_ratios == [0.5, 1.0, 2.0]


def test_classifier_checkpoints_initialise_the_encoder(tmp_path):
    classifier = HfPvtForImageClassification(tiny_config("v1"))
    classifier.save_pretrained(tmp_path)
    model, info = HfPvtForInstanceSegmentation.from_pretrained(
        tmp_path, output_loading_info=True, **HEAD, ignore_mismatched_sizes=True
    )
    encoder = {k: v for k, v in classifier.state_dict().items() if k in model.state_dict()}
    assert encoder and all(torch.equal(model.state_dict()[k], v) for k, v in encoder.items())
    assert all(key.startswith(("neck.", "rpn_head.", "roi_head.")) for key in info["missing_keys"])
    # The heads that were missing got MMDetection's init, not the encoder's.
    assert abs(model.rpn_head.rpn_cls.weight.std().item() - 0.01) < 0.005


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rpn_neg_iou_threshold": 0.8}, "rpn_neg_iou_threshold <= rpn_pos_iou_threshold"),
        ({"rcnn_pos_iou_threshold": 1.5}, "rcnn_neg_iou_threshold <= rcnn_pos_iou_threshold <= 1"),
        ({"rpn_num_samples": 0}, "rpn_num_samples must be a positive integer"),
        ({"rcnn_positive_fraction": 1.25}, r"rcnn_positive_fraction must be in \[0, 1\]"),
        ({"rcnn_score_threshold": 1.0}, r"rcnn_score_threshold must be in \[0, 1\)"),
        ({"mask_threshold": 0.0}, r"mask_threshold must be in \(0, 1\]"),
        ({"rpn_anchor_ratios": []}, "rpn_anchor_ratios must be a non-empty list"),
        ({"rpn_anchor_scale": -8}, "rpn_anchor_scale must be a positive"),
        ({"mask_head_num_convs": -1}, "mask_head_num_convs must be 0 or more"),
    ],
)
def test_config_checks_the_mask_rcnn_fields(overrides, message):
    with pytest.raises(ValueError, match=message):
        HfPvtConfig(**overrides)


def test_other_encoders_and_label_counts_are_refused():
    with pytest.raises(ValueError, match="num_labels >= 1"):
        HfPvtForInstanceSegmentation(tiny_config("v2", **{**HEAD, "num_labels": 0}))
    three_stages = {"hidden_sizes": [16, 32, 48], "num_attention_heads": [1, 2, 3], "mlp_ratios": [2, 2, 2]}
    geometry = {"patch_sizes": [7, 3, 3], "strides": [4, 2, 2]}
    config = HfPvtConfig(**three_stages, **geometry, depths=[1, 1, 1], sr_ratios=[4, 2, 1], num_labels=3)
    with pytest.raises(ValueError, match="4-stage encoder"):
        HfPvtForInstanceSegmentation(config)


# ----------------------------------------------------------------------------------------------------------------
# The loss and detection functions on hand-made values


def test_sample_indices_keeps_all_when_few_and_draws_sorted_subsets():
    assigned = torch.tensor([0, 2, -1, 0, 1, 0])
    positive, negative = sample_indices(assigned, num_samples=8, positive_fraction=0.5)
    assert positive.tolist() == [1, 4] and negative.tolist() == [0, 3, 5]
    many = torch.cat([torch.ones(50, dtype=torch.long), torch.zeros(50, dtype=torch.long)])
    positive, negative = sample_indices(many, 10, 0.25, torch.Generator().manual_seed(0))
    assert positive.numel() == 2 and negative.numel() == 8
    assert positive.max() < 50 and negative.min() >= 50 and torch.all(negative[1:] > negative[:-1])


def test_rpn_loss_hand_values():
    # One 1x2 level, one anchor per location: anchors [0, 0, 10, 10] and [10, 0, 20, 10].
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]])]
    objectness = [torch.tensor([[[[2.0, -1.0]]]])]
    deltas = [torch.zeros(1, 4, 1, 2)]
    deltas[0][0, :, 0, 0] = torch.tensor([0.1, 0.0, 0.0, 0.2])
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 12.0]])}  # IoU 10/12 with the first anchor, 0 with the second
    losses, samples = rpn_loss(objectness, deltas, anchors, [target], [(32, 32)], strides=[16])
    assert samples[0]["rpn_positive"].tolist() == [0] and samples[0]["rpn_negative"].tolist() == [1]
    bce = F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(-1.0))
    torch.testing.assert_close(losses["loss_rpn_cls"], bce / 2)
    # Target (0, 0.1, 0, log 1.2); predicted (0.1, 0, 0, 0.2).
    expected_l1 = 0.1 + 0.1 + 0.0 + abs(0.2 - math.log(1.2))
    torch.testing.assert_close(losses["loss_rpn_bbox"], torch.tensor(expected_l1 / 2))
    # Given samples are used as they are; an anchor the assigner did not make positive is refused.
    again, _ = rpn_loss(objectness, deltas, anchors, [target], [(32, 32)], strides=[16], samples=samples)
    torch.testing.assert_close(again["loss_rpn_cls"], losses["loss_rpn_cls"])
    wrong = [{"rpn_positive": torch.tensor([1]), "rpn_negative": torch.tensor([], dtype=torch.long)}]
    with pytest.raises(ValueError, match="did not make positive"):
        rpn_loss(objectness, deltas, anchors, [target], [(32, 32)], strides=[16], samples=wrong)


def test_rpn_proposals_nms_within_levels_clipping_and_limits():
    # Two levels of one location each; identical anchors on both, so only a level-wise NMS keeps both.
    anchors = [torch.tensor([[-4.0, -4.0, 12.0, 12.0]]), torch.tensor([[-4.0, -4.0, 12.0, 12.0]])]
    objectness = [torch.tensor([[[[1.0]]]]), torch.tensor([[[[3.0]]]])]
    deltas = [torch.zeros(1, 4, 1, 1), torch.zeros(1, 4, 1, 1)]
    boxes, scores = rpn_proposals(objectness, deltas, anchors, [(10, 20)])
    assert boxes[0].tolist() == [[0.0, 0.0, 12.0, 10.0]] * 2  # clipped to width 20, height 10
    torch.testing.assert_close(scores[0], torch.sigmoid(torch.tensor([3.0, 1.0])))
    one, _ = rpn_proposals(objectness, deltas, anchors, [(10, 20)], max_proposals=1)
    assert len(one[0]) == 1
    # nms_pre keeps each level's best anchors only.
    level = [torch.tensor([[[[0.0, 2.0, 1.0]]]])]
    level_anchors = [torch.tensor([[0.0, 0.0, 4.0, 4.0], [10.0, 0.0, 14.0, 4.0], [20.0, 0.0, 24.0, 4.0]])]
    boxes, _ = rpn_proposals(level, [torch.zeros(1, 4, 1, 3)], level_anchors, [(50, 50)], nms_pre=2)
    assert boxes[0][:, 0].tolist() == [10.0, 20.0]
    # An anchor beyond the image (its padding) clips to zero width and is dropped, as in MMDetection v2.13.
    boxes, scores = rpn_proposals(level, [torch.zeros(1, 4, 1, 3)], level_anchors, [(50, 18)])
    assert boxes[0][:, 0].tolist() == [10.0, 0.0] and len(scores[0]) == 2


def test_sample_proposals_adds_ground_truth_first():
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [30.0, 30.0, 40.0, 40.0]])
    gt_boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    sample = sample_proposals(proposals, gt_boxes, torch.tensor([2, 0]), num_classes=3)
    # Candidates: gt 0, gt 1, then proposals 0 (IoU 1), 1 (IoU 0.9), 2 (IoU 0 -> negative).
    assert sample["rcnn_positive"].tolist() == [0, 1, 2, 3] and sample["rcnn_negative"].tolist() == [4]
    assert sample["matched_gt"].tolist() == [0, 1, 0, 0]
    assert sample["labels"].tolist() == [2, 0, 2, 2, 3]  # background is num_classes
    expected = torch.tensor([0.0, 0.5 / 9 / 0.1, 0.0, math.log(10 / 9) / 0.2])  # proposal 1 -> gt 0, over stds
    torch.testing.assert_close(sample["box_targets"][3], expected)
    assert not sample["box_targets"][[0, 1, 2, 4]].any()
    # Without ground truth every proposal is a negative.
    empty = sample_proposals(proposals, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), num_classes=3)
    assert empty["rcnn_positive"].numel() == 0 and empty["labels"].tolist() == [3, 3, 3]


def test_rcnn_and_mask_losses_hand_values():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 3.0, 0.0, 0.0]])
    deltas = torch.zeros(3, 12)
    deltas[0, 0:4] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # class 0 deltas of sample 0
    labels = torch.tensor([0, 3, 1])
    targets = torch.zeros(3, 4)
    targets[2] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    losses = rcnn_loss(logits, deltas, labels, targets)
    torch.testing.assert_close(losses["loss_cls"], F.cross_entropy(logits, labels))
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor((0.5 + 1.0) / 3))  # divided by all samples
    none_positive = rcnn_loss(logits[1:2], deltas[1:2], labels[1:2], targets[1:2])
    assert none_positive["loss_bbox"] == 0

    mask_logits = torch.randn(2, 3, 28, 28)
    mask_targets = (torch.rand(2, 28, 28) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(torch.stack([mask_logits[0, 2], mask_logits[1, 0]]), mask_targets)
    torch.testing.assert_close(mask_loss(mask_logits, mask_targets, torch.tensor([2, 0])), expected)
    assert mask_loss(torch.zeros(0, 3, 28, 28), torch.zeros(0, 28, 28), torch.zeros(0, dtype=torch.long)) == 0


def test_detect_boxes_decodes_each_class_and_drops_the_background():
    proposals = torch.tensor([[10.0, 10.0, 30.0, 30.0], [100.0, 100.0, 120.0, 120.0]])
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 9.0]])  # 2 classes + background
    deltas = torch.zeros(2, 8)
    deltas[0, 0:4] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # class 0 moves by 0.1 * 20 = 2 px
    result = detect_boxes(proposals, logits, deltas, (200, 200))
    assert result["labels"].tolist() == [0]  # the second proposal is background
    torch.testing.assert_close(result["boxes"], torch.tensor([[12.0, 10.0, 32.0, 30.0]]))
    torch.testing.assert_close(result["scores"], torch.softmax(logits[0], 0)[:1])
    # Both classes of one proposal above the threshold survive class-wise NMS; max_per_image caps them.
    even = detect_boxes(proposals[:1], torch.tensor([[3.0, 3.0, 0.0]]), torch.zeros(1, 8), (200, 200))
    assert sorted(even["labels"].tolist()) == [0, 1]
    assert (
        len(
            detect_boxes(
                proposals[:1], torch.tensor([[3.0, 3.0, 0.0]]), torch.zeros(1, 8), (200, 200), max_per_image=1
            )["labels"]
        )
        == 1
    )
    # Clipped to the image.
    clipped = detect_boxes(proposals[:1], logits[:1], deltas[:1], (25, 25))
    assert clipped["boxes"].tolist() == [[12.0, 10.0, 25.0, 25.0]]

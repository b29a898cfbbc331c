"""HfPvtForInstanceSegmentation against an independent MMDetection v2.13 Mask R-CNN (tests/reference_mask_rcnn.py).

The reference holds random weights in MMDetection's key layout (the authors' `mask_rcnn_pvt_*_fpn_1x_coco.py`
checkpoints); the converter's `MMDET_MASK_RCNN_TO_HF_PVT` renames them into hf_pvt's model. On a padded batch of
two non-square images, for v1, v2 and the linear variant, both give the same RPN proposals, the same detections
(boxes, scores, labels) and the same pasted masks, in input pixels and rescaled to original sizes; and, for the
samples the model drew, the same five training losses and gradients.
"""

from __future__ import annotations

import pytest
import torch
from reference_mask_rcnn import (
    anchors_for,
    build_reference_mask_rcnn,
    losses,
    predict,
    random_mask_rcnn_,
    training_proposals,
)

from hf_pvt import HfPvtConfig
from hf_pvt.box_ops_hf_pvt import generate_anchors
from hf_pvt.conversion.layouts import MMDET_MASK_RCNN_TO_HF_PVT, ORIGINAL_TO_HF_PVT, rename_key
from hf_pvt.mask_rcnn_hf_pvt import RPN_STRIDES, HfPvtForInstanceSegmentation, mask_rcnn_postprocess
from hf_pvt.roi_ops_hf_pvt import paste_masks

BACKBONE = {
    "embed_dims": [16, 32, 48, 64],
    "num_heads": [1, 2, 3, 4],
    "depths": [1, 2, 1, 1],
    "mlp_ratios": [2, 2, 2, 2],
    "sr_ratios": [8, 4, 2, 1],
    "img_size": 64,
}
KINDS = {"v1": {"version": 1}, "v2": {"version": 2}, "v2-linear": {"version": 2, "linear": True}}
NUM_CLASSES = 5
HEADS = {"fpn_channels": 32, "rpn_feat_channels": 32, "fc_channels": 64, "mask_channels": 24, "mask_num_convs": 2}
# Two non-square images padded into one (96, 128) batch, bottom/right, as the image processor pads.
IMAGE_SIZES = [(70, 100), (96, 60)]
INPUT_SIZE = (96, 128)
# Box coordinates are pixels (up to ~200 here): float32 rounding of differently ordered sums.
BOX_ATOL = 1e-3
SCORE_ATOL = 1e-5
# A pasted pixel may differ only where its interpolated probability is this close to the mask threshold.
MASK_TIE = 1e-4


def to_hf_pvt_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            key = rename_key(key.removeprefix("backbone."), ORIGINAL_TO_HF_PVT)
        else:
            # The converter's table: the FPN's ConvModules lose their `.conv`, rpn_head.* and roi_head.* keep names.
            key = rename_key(key, MMDET_MASK_RCNN_TO_HF_PVT)
        converted[key] = value
    return converted


def reference_and_model(kind: str, seed: int = 0, **overrides):
    reference = build_reference_mask_rcnn({**BACKBONE, **KINDS[kind]}, num_classes=NUM_CLASSES, **HEADS)
    reference = random_mask_rcnn_(reference, seed)
    config = HfPvtConfig(
        pvt_version=KINDS[kind]["version"],
        linear_attention=KINDS[kind].get("linear", False),
        hidden_sizes=BACKBONE["embed_dims"],
        num_attention_heads=BACKBONE["num_heads"],
        depths=BACKBONE["depths"],
        mlp_ratios=BACKBONE["mlp_ratios"],
        sr_ratios=BACKBONE["sr_ratios"],
        image_size=BACKBONE["img_size"],
        num_labels=NUM_CLASSES,
        decoder_hidden_size=HEADS["fpn_channels"],
        rcnn_fc_channels=HEADS["fc_channels"],
        mask_head_channels=HEADS["mask_channels"],
        mask_head_num_convs=HEADS["mask_num_convs"],
        **overrides,
    )
    model = HfPvtForInstanceSegmentation(config)
    model.load_state_dict(to_hf_pvt_state_dict(reference.state_dict()))
    return reference, model.eval()


def padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.zeros(len(IMAGE_SIZES), 3, *INPUT_SIZE)
    pixel_mask = torch.zeros(len(IMAGE_SIZES), *INPUT_SIZE, dtype=torch.long)
    for index, (height, width) in enumerate(IMAGE_SIZES):
        pixel_values[index, :, :height, :width] = torch.randn(3, height, width, generator=generator)
        pixel_mask[index, :height, :width] = 1
    return pixel_values, pixel_mask


def ellipse_masks(boxes: torch.Tensor) -> torch.Tensor:
    """(n, H, W) masks of the ellipses inscribed in pixel boxes, at the batch's input size."""
    rows = torch.arange(INPUT_SIZE[0]).float()[:, None] + 0.5
    cols = torch.arange(INPUT_SIZE[1]).float()[None, :] + 0.5
    masks = [
        (((cols - (x1 + x2) / 2) / ((x2 - x1) / 2)) ** 2 + ((rows - (y1 + y2) / 2) / ((y2 - y1) / 2)) ** 2 <= 1)
        for x1, y1, x2, y2 in boxes.tolist()
    ]
    return torch.stack(masks).float() if masks else torch.zeros(0, *INPUT_SIZE)


def detr_labels(boxes: torch.Tensor, classes: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    height, width = INPUT_SIZE
    centres, sizes = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    normalised = torch.cat([centres, sizes], dim=1) / torch.tensor([width, height, width, height])
    return {"boxes": normalised, "class_labels": classes, "masks": masks}


def assert_masks_match(expected: torch.Tensor, pasted: torch.Tensor, probabilities, boxes, size) -> None:
    mismatched = expected != pasted
    if mismatched.any():
        low = paste_masks(probabilities, boxes, size, 0.5 - MASK_TIE)
        high = paste_masks(probabilities, boxes, size, 0.5 + MASK_TIE)
        ties = low != high
        assert not (mismatched & ~ties).any(), f"{int((mismatched & ~ties).sum())} mask pixels differ"


# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_checkpoint_keys_rename_onto_every_parameter(kind):
    reference = build_reference_mask_rcnn({**BACKBONE, **KINDS[kind]}, num_classes=NUM_CLASSES, **HEADS)
    converted = to_hf_pvt_state_dict(reference.state_dict())
    _, model = reference_and_model(kind)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected


def test_rpn_anchors_are_mmdetections():
    sizes = [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
    ours = generate_anchors(sizes, RPN_STRIDES, octave_base_scale=8, scales_per_octave=1, ratios=(0.5, 1.0, 2.0))
    assert all(torch.equal(a, b) for a, b in zip(ours, anchors_for(sizes)))


@pytest.mark.parametrize("kind", list(KINDS))
def test_inference_matches_mmdetection(kind):
    reference, model = reference_and_model(kind)
    pixel_values, pixel_mask = padded_batch()
    expected = predict(reference, pixel_values, IMAGE_SIZES)
    with torch.no_grad():
        outputs = model(pixel_values, pixel_mask=pixel_mask)
    for image, (wanted, size) in enumerate(zip(expected, IMAGE_SIZES)):
        assert len(outputs.proposals[image]) == len(wanted["proposals"])
        torch.testing.assert_close(outputs.proposals[image], wanted["proposals"], atol=BOX_ATOL, rtol=0)
        torch.testing.assert_close(outputs.proposal_scores[image], wanted["proposal_scores"], atol=SCORE_ATOL, rtol=0)
        instances = mask_rcnn_postprocess(outputs, image, threshold=0.0)
        assert len(instances["boxes"]) == len(wanted["boxes"]) == 100
        torch.testing.assert_close(instances["boxes"], wanted["boxes"], atol=BOX_ATOL, rtol=0)
        torch.testing.assert_close(instances["scores"], wanted["scores"], atol=SCORE_ATOL, rtol=0)
        assert torch.equal(instances["labels"], wanted["labels"])
        assert instances["masks"].shape == wanted["masks"].shape == (100, *size)
        probabilities = outputs.pred_mask_logits[image].sigmoid()
        assert_masks_match(wanted["masks"], instances["masks"], probabilities, instances["boxes"], size)


def test_rescaled_inference_matches_mmdetection():
    reference, model = reference_and_model("v2", seed=1)
    pixel_values, pixel_mask = padded_batch(seed=1)
    original_sizes = [(140, 200), (144, 90)]
    expected = predict(reference, pixel_values, IMAGE_SIZES, original_sizes=original_sizes)
    with torch.no_grad():
        outputs = model(pixel_values, pixel_mask=pixel_mask)
    for image, (wanted, size) in enumerate(zip(expected, original_sizes)):
        instances = mask_rcnn_postprocess(outputs, image, target_size=size, threshold=0.0)
        torch.testing.assert_close(instances["boxes"], wanted["boxes"], atol=BOX_ATOL, rtol=0)
        torch.testing.assert_close(instances["scores"], wanted["scores"], atol=SCORE_ATOL, rtol=0)
        assert torch.equal(instances["labels"], wanted["labels"]) and instances["masks"].shape[1:] == size
        probabilities = outputs.pred_mask_logits[image].sigmoid()
        assert_masks_match(wanted["masks"], instances["masks"], probabilities, instances["boxes"], size)


GT_BOXES = [
    torch.tensor([[10.0, 8.0, 60.0, 50.0], [50.0, 30.0, 95.0, 66.0], [30.0, 40.0, 45.0, 62.0]]),
    torch.tensor([[5.0, 10.0, 55.0, 90.0], [20.0, 60.0, 40.0, 80.0]]),
]
GT_CLASSES = [torch.tensor([0, 3, 4]), torch.tensor([2, 2])]


@pytest.mark.parametrize(
    "kind, empty_second_image", [("v1", False), ("v2", False), ("v2-linear", False), ("v2", True)]
)
def test_losses_match_mmdetection_for_the_same_samples(kind, empty_second_image):
    # Fewer R-CNN samples than the papers' 512 keep the reference's one-RoI-at-a-time loops short; the reference
    # takes whichever samples it is given.
    reference, model = reference_and_model(kind, rcnn_num_samples=128)
    pixel_values, pixel_mask = padded_batch()
    gt_boxes, gt_classes = list(GT_BOXES), list(GT_CLASSES)
    if empty_second_image:
        gt_boxes[1], gt_classes[1] = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    gt_masks = [ellipse_masks(boxes) for boxes in gt_boxes]
    labels = [detr_labels(*target) for target in zip(gt_boxes, gt_classes, gt_masks)]

    model.train()
    outputs = model(pixel_values, pixel_mask=pixel_mask, labels=labels, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, objectness, deltas = reference(pixel_values)
    for ours, theirs in zip(outputs.proposals, training_proposals(objectness, deltas, IMAGE_SIZES)):
        assert len(ours) == len(theirs)
        torch.testing.assert_close(ours, theirs, atol=BOX_ATOL, rtol=0)

    rpn_samples = [(sample["rpn_positive"], sample["rpn_negative"]) for sample in outputs.sampling]
    rcnn_samples = [(sample["rcnn_positive"], sample["rcnn_negative"]) for sample in outputs.sampling]
    assert all(len(positive) > 0 for positive, _ in rpn_samples[: 1 if empty_second_image else 2])
    expected = losses(reference, pixel_values, IMAGE_SIZES, gt_boxes, gt_classes, gt_masks, rpn_samples, rcnn_samples)
    for name, value in outputs.loss_dict.items():
        torch.testing.assert_close(value, expected[name], atol=1e-5, rtol=1e-5, msg=name)

    # The same objective gives the same gradients: exactly in each head's last layer; through the network, up to the
    # odd ReLU whose input lies within float rounding of 0 (so its gate differs between the two).
    outputs.loss.backward()
    sum(value for name, value in expected.items() if name.startswith("loss")).backward()
    parameters = dict(model.named_parameters())
    last_layers = {
        "rpn_head.rpn_cls.weight": reference.rpn_head.rpn_cls,
        "rpn_head.rpn_reg.weight": reference.rpn_head.rpn_reg,
        "roi_head.bbox_head.fc_cls.weight": reference.roi_head.bbox_head.fc_cls,
        "roi_head.bbox_head.fc_reg.weight": reference.roi_head.bbox_head.fc_reg,
        "roi_head.mask_head.conv_logits.weight": reference.roi_head.mask_head.conv_logits,
    }
    for name, layer in last_layers.items():
        torch.testing.assert_close(parameters[name].grad, layer.weight.grad, atol=1e-5, rtol=1e-4, msg=name)
    deep = {
        "neck.lateral_convs.0.weight": reference.neck.lateral_convs[0].conv.weight,
        "pvt.stages.0.patch_embed.proj.weight": reference.backbone.patch_embed1.proj.weight,
    }
    for name, theirs in deep.items():
        difference = (parameters[name].grad - theirs.grad).norm() / theirs.grad.norm()
        assert difference < 1e-2, f"{name}: relative gradient difference {difference:.2e}"

"""The detectors' shared input reader (hf_pvt/dense_inputs_hf_pvt.py): DETR-style labels become float32 pixel
boxes whatever the pixels' dtype, instance masks are checked once and travel with their boxes, zero-size boxes are
dropped; and RetinaNet and Mask R-CNN both take their targets from it."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

import hf_pvt.mask_rcnn_hf_pvt as mask_rcnn_module
import hf_pvt.retinanet_hf_pvt as retinanet_module
from hf_pvt import HfPvtForInstanceSegmentation, HfPvtForObjectDetection
from hf_pvt.dense_inputs_hf_pvt import detection_targets

# Corners that bfloat16 cannot hold once scaled to a 1000-pixel-wide input (its spacing there is 4 px).
FINE_BOXES = torch.tensor([[0.5003, 0.2501, 0.3337, 0.1999], [0.9001, 0.7003, 0.0123, 0.0457]], dtype=torch.float64)


def fine_labels(batch_size: int) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": FINE_BOXES.clone(), "class_labels": torch.tensor([0, 2])} for _ in range(batch_size)]


def expected_corners(height: int, width: int) -> torch.Tensor:
    centres, sizes = FINE_BOXES[:, :2], FINE_BOXES[:, 2:]
    corners = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    return (corners * torch.tensor([width, height, width, height], dtype=torch.float64)).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_boxes_are_float32_pixels_whatever_the_pixels_dtype(dtype):
    pixel_values = torch.zeros(1, 3, 600, 1000, dtype=dtype)
    (target,) = detection_targets(fine_labels(1), pixel_values, num_labels=3)
    assert target["boxes"].dtype == torch.float32 and target["class_labels"].dtype == torch.long
    torch.testing.assert_close(target["boxes"], expected_corners(600, 1000), atol=1e-4, rtol=0)
    assert set(target) == {"boxes", "class_labels"}


def test_masks_travel_with_their_boxes_and_zero_size_boxes_are_dropped():
    pixel_values = torch.zeros(1, 3, 8, 10, dtype=torch.bfloat16)
    masks = torch.zeros(3, 8, 10, dtype=torch.uint8)
    masks[0, 1:4, 2:6] = 1
    masks[2, 5:8, 0:3] = 1
    labels = [
        {
            # The middle box has zero width: dropped with its mask, the others keep theirs, in order.
            "boxes": torch.tensor([[0.4, 0.3125, 0.4, 0.375], [0.5, 0.5, 0.0, 0.25], [0.15, 0.8125, 0.3, 0.375]]),
            "class_labels": torch.tensor([1, 0, 2]),
            "masks": masks.numpy(),
        }
    ]
    (target,) = detection_targets(labels, pixel_values, num_labels=3, masks=True)
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 1.0, 6.0, 4.0], [0.0, 5.0, 3.0, 8.0]]))
    assert target["class_labels"].tolist() == [1, 2]
    assert target["masks"].dtype == torch.bool and torch.equal(target["masks"], masks[[0, 2]].bool())
    # Without masks=True, masks given are not read (RetinaNet ignores them).
    assert "masks" not in detection_targets(labels, pixel_values, num_labels=3)[0]
    # An image without objects.
    empty = [
        {"boxes": torch.zeros(0, 4), "class_labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 10)}
    ]
    (target,) = detection_targets(empty, pixel_values, num_labels=3, masks=True)
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 8, 10)


@pytest.mark.parametrize(
    "masks, message",
    [
        (None, "needs 'masks'"),
        (torch.zeros(1, 4, 10), r"masks must be \(n, height, width\) = \(1, 8, 10\)"),
        (torch.zeros(2, 8, 10), r"masks must be \(n, height, width\)"),
        (torch.full((1, 8, 10), 0.5), "binary"),
    ],
)
def test_bad_masks_are_clear_errors(masks, message):
    label = {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "class_labels": torch.tensor([0])}
    if masks is not None:
        label["masks"] = masks
    with pytest.raises(ValueError, match=message):
        detection_targets([label], torch.zeros(1, 3, 8, 10), num_labels=3, masks=True)


@pytest.fixture
def seen_targets(monkeypatch):
    """The targets each detector's forward builds, recorded on their way in."""
    seen = []

    def recording(*args, **kwargs):
        targets = detection_targets(*args, **kwargs)
        seen.append(targets)
        return targets

    monkeypatch.setattr(retinanet_module, "detection_targets", recording)
    monkeypatch.setattr(mask_rcnn_module, "detection_targets", recording)
    return seen


def test_bfloat16_detectors_train_on_float32_targets(seen_targets):
    # A 1000-pixel-wide input would be slow here; bfloat16 rounding of these boxes still moves their corners by up to
    # 0.2 px at 96 pixels, far beyond the tolerance.
    height, width = 64, 96
    pixel_values = torch.randn(2, 3, height, width).to(torch.bfloat16)
    labels = fine_labels(2)
    for label in labels:
        label["masks"] = torch.zeros(2, height, width)
        label["masks"][:, 10:30, 20:50] = 1
    torch.manual_seed(0)
    retinanet = HfPvtForObjectDetection(
        tiny_config("v2", num_labels=3, decoder_hidden_size=16, detection_feat_channels=16, detection_num_convs=1)
    )
    mask_rcnn = HfPvtForInstanceSegmentation(
        tiny_config(
            "v2",
            num_labels=3,
            decoder_hidden_size=16,
            rcnn_fc_channels=32,
            mask_head_channels=8,
            mask_head_num_convs=1,
        )
    )
    for model in (retinanet, mask_rcnn):
        outputs = model.to(torch.bfloat16).train()(pixel_values, labels=labels)
        assert torch.isfinite(outputs.loss.float())
    assert len(seen_targets) == 2
    expected = expected_corners(height, width)
    for targets in seen_targets:
        for target in targets:
            assert target["boxes"].dtype == torch.float32
            torch.testing.assert_close(target["boxes"], expected, atol=1e-4, rtol=0)
    assert torch.equal(seen_targets[1][0]["masks"], labels[0]["masks"].bool())

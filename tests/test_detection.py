"""HfPvtForObjectDetection: the papers' RetinaNet on every family member, its inputs, losses and loading contracts.

Box-level parity with MMDetection lives in test_detection_conversion.py (against an independent reference), the
ops (anchors, assignment, NMS...) in test_detection_ops.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from transformers import AutoModelForObjectDetection

from hf_pvt import HfPvtForImageClassification, HfPvtForObjectDetection, HfPvtObjectDetectionOutput

# A small but complete RetinaNet: every level, the two branches, 9 anchors.
HEAD = {"decoder_hidden_size": 32, "detection_feat_channels": 32, "detection_num_convs": 2, "num_labels": 3}


def detector(member: str = "v2", seed: int = 0, **overrides) -> HfPvtForObjectDetection:
    torch.manual_seed(seed)
    return HfPvtForObjectDetection(tiny_config(member, **{**HEAD, **overrides}))


def boxes_label(*boxes: tuple[float, float, float, float], classes: list[int]) -> dict[str, torch.Tensor]:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": boxes, "class_labels": torch.tensor(classes, dtype=torch.long)}


def test_module_names_follow_mmdetection():
    keys = set(detector().state_dict())
    for key in (
        "neck.lateral_convs.0.weight",  # stage 2 (start_level=1)
        "neck.lateral_convs.2.weight",
        "neck.fpn_convs.3.weight",  # P6 on the input C5
        "neck.fpn_convs.4.weight",  # P7 on P6
        "bbox_head.cls_convs.1.weight",
        "bbox_head.reg_convs.1.bias",
        "bbox_head.retina_cls.weight",
        "bbox_head.retina_reg.bias",
    ):
        assert key in keys
    model = detector()
    assert model.neck.fpn_convs[3].in_channels == 64 and model.neck.fpn_convs[3].stride == (2, 2)
    assert model.bbox_head.retina_cls.out_channels == 9 * 3
    # A class prior of 0.01, as MMDetection's bias_init_with_prob(0.01).
    torch.testing.assert_close(torch.sigmoid(model.bbox_head.retina_cls.bias), torch.full((27,), 0.01))


@pytest.mark.parametrize("size", [(64, 64), (77, 101)])
def test_outputs_at_any_size(member, size):
    model = detector(member).eval()
    height, width = size
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, height, width))
    assert isinstance(outputs, HfPvtObjectDetectionOutput) and outputs.loss is None
    # Batch-first, one row per anchor of every level; level_maps() gives MMDetection's per-level maps back.
    num_anchors = outputs.logits.shape[1]
    assert outputs.logits.shape == (2, num_anchors, 3) and outputs.pred_box_deltas.shape == (2, num_anchors, 4)
    assert outputs.anchors.shape == (2, num_anchors, 4) and torch.equal(outputs.anchors[0], outputs.anchors[1])
    assert outputs.spatial_shapes.shape == (2, 5, 2)
    assert num_anchors == 9 * sum(h * w for h, w in outputs.spatial_shapes[0].tolist())
    maps = outputs.level_maps()
    assert len(maps[0]) == len(maps[1]) == len(maps[2]) == 5
    for level, (logits, deltas, anchors) in enumerate(zip(*maps)):
        assert tuple(logits.shape[-2:]) == tuple(outputs.spatial_shapes[0, level].tolist())
        map_height, map_width = logits.shape[-2:]
        assert logits.shape[:2] == (2, 27) and deltas.shape == (2, 36, map_height, map_width)
        assert anchors.shape == (map_height * map_width * 9, 4)
        # Anchor centres sit on the level's stride grid, starting at 0 (MMDetection v2's centre offset 0).
        stride = 8 * 2**level
        centres = (anchors[:9, :2] + anchors[:9, 2:]) / 2
        assert torch.equal(centres, torch.zeros_like(centres))
        if map_width > 1:
            assert torch.equal((anchors[9, :2] + anchors[9, 2:]) / 2, torch.tensor([float(stride), 0.0]))
    assert outputs.image_sizes.tolist() == [[height, width]] * 2


def test_pixel_mask_gives_each_images_own_size():
    model = detector().eval()
    pixel_mask = torch.zeros(2, 96, 128, dtype=torch.long)
    pixel_mask[0, :96, :128] = 1
    pixel_mask[1, :70, :90] = 1
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 96, 128), pixel_mask=pixel_mask)
    assert outputs.image_sizes.tolist() == [[96, 128], [70, 90]]
    with pytest.raises(ValueError, match="pixel_mask must be a \\(batch, height, width\\)"):
        model(torch.randn(2, 3, 96, 128), pixel_mask=pixel_mask[:, :10])
    with pytest.raises(ValueError, match="no valid pixel"):
        model(torch.randn(2, 3, 96, 128), pixel_mask=torch.zeros(2, 96, 128))


def test_loss_trains_and_empty_images_are_negatives(member):
    model = detector(member).train()
    pixel_values = torch.randn(2, 3, 64, 96)
    labels = [boxes_label((0.5, 0.5, 0.4, 0.5), (0.2, 0.3, 0.2, 0.2), classes=[0, 2]), boxes_label(classes=[])]
    outputs = model(pixel_values, labels=labels)
    assert set(outputs.loss_dict) == {"loss_cls", "loss_bbox"}
    assert torch.isfinite(outputs.loss) and outputs.loss > 0
    torch.testing.assert_close(outputs.loss, outputs.loss_dict["loss_cls"] + outputs.loss_dict["loss_bbox"])
    outputs.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # Only negatives: the box loss is exactly 0 and the classification loss still pushes scores down.
    model.zero_grad()
    empty = model(pixel_values, labels=[boxes_label(classes=[]), boxes_label(classes=[])])
    assert empty.loss_dict["loss_bbox"] == 0 and empty.loss_dict["loss_cls"] > 0


def test_a_few_steps_fit_one_image():
    model = detector("v2", depths=[1, 1, 1, 1]).train()
    pixel_values = torch.randn(1, 3, 64, 64)
    labels = [boxes_label((0.5, 0.5, 0.5, 0.5), classes=[1])]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = model(pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"boxes": torch.zeros(0, 4), "class_labels": torch.zeros(0)}, "one dict per image"),
        ([{"boxes": torch.zeros(1, 4)}, {"boxes": torch.zeros(1, 4)}], "'class_labels'"),
        ([boxes_label((0.5, 0.5, 0.1, 0.1), classes=[3])] * 2, r"class_labels must be integer ids in \[0, 3\)"),
        ([{"boxes": torch.zeros(2, 3), "class_labels": torch.zeros(2, dtype=torch.long)}] * 2, r"must be \(n, 4\)"),
        ([boxes_label((0.5, 0.5, float("nan"), 0.1), classes=[0])] * 2, "finite"),
        ([boxes_label((0.5, 0.5, -0.1, 0.1), classes=[0])] * 2, "non-negative width"),
    ],
)
def test_bad_labels_raise_clear_errors(labels, message):
    with pytest.raises(ValueError, match=message):
        detector()(torch.randn(2, 3, 64, 64), labels=labels)


def test_save_load_round_trip_and_auto_class(tmp_path):
    model = detector("v1").eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert type(loaded) is HfPvtForObjectDetection
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(pixel_values).logits, loaded(pixel_values).logits):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_classifier_checkpoints_initialise_the_encoder(tmp_path, member):
    classifier = HfPvtForImageClassification(tiny_config(member))
    classifier.save_pretrained(tmp_path)
    model, info = HfPvtForObjectDetection.from_pretrained(
        tmp_path, output_loading_info=True, **HEAD, ignore_mismatched_sizes=True
    )
    encoder = {k: v for k, v in classifier.state_dict().items() if k in model.state_dict()}
    assert encoder and all(torch.equal(model.state_dict()[k], v) for k, v in encoder.items())
    assert all(key.startswith(("neck.", "bbox_head.")) for key in info["missing_keys"])

"""HfPvtImageProcessor for RetinaNet: mmdet's keep-ratio resize, padding and pixel_mask, COCO box targets through
resize and flip, annotation errors, and post-processing back to the original image (see detection_design.md)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DetrImageProcessorPil

from hf_pvt import HfPvtImageProcessor, HfPvtObjectDetectionOutput

COCO = Path(__file__).parent / "fixtures" / "coco_000000039769.png"


@pytest.fixture(scope="module")
def coco() -> Image.Image:
    return Image.open(COCO).convert("RGB")


@pytest.fixture(scope="module")
def detection() -> HfPvtImageProcessor:
    return HfPvtImageProcessor.for_object_detection()


def mmcv_rescale_size(height: int, width: int, scale: tuple[int, int] = (1333, 800)) -> tuple[int, int]:
    """mmcv.rescale_size((w, h), scale) of mmcv 1.x, as mmdet v2's Resize(keep_ratio=True) calls it; (h, w) out."""
    max_long_edge, max_short_edge = max(scale), min(scale)
    factor = min(max_long_edge / max(height, width), max_short_edge / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def coco_annotation(image_id: int, *objects: tuple[list[float], int], **extra) -> dict:
    return {
        "image_id": image_id,
        "annotations": [
            {"bbox": bbox, "category_id": category, "area": bbox[2] * bbox[3], **extra} for bbox, category in objects
        ],
    }


def to_xyxy_pixels(boxes: torch.Tensor, canvas: tuple[int, int]) -> torch.Tensor:
    """Normalized (cx, cy, w, h) on the canvas -> absolute (x1, y1, x2, y2)."""
    height, width = canvas
    cx, cy, w, h = (boxes * torch.tensor([width, height, width, height])).unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


# ------------------------------------------------------------------------------------ preset and resize


def test_object_detection_preset_and_defaults(tmp_path):
    processor = HfPvtImageProcessor.for_object_detection()
    assert dict(processor.size) == {"shortest_edge": 800, "longest_edge": 1333}
    assert processor.resample == Image.BILINEAR and not processor.do_center_crop
    assert processor.do_pad and processor.pad_size_divisor == 32
    assert processor.do_rescale and processor.do_normalize and not processor.do_horizontal_flip
    assert tuple(processor.image_mean) == (0.485, 0.456, 0.406)  # mmdet's mean/std x 255 on RGB
    # Classification defaults are unchanged; keyword arguments override the preset.
    default = HfPvtImageProcessor()
    assert not default.do_pad and default.pad_size_divisor == 32 and not default.do_horizontal_flip
    assert HfPvtImageProcessor.for_object_detection(pad_size_divisor=64).pad_size_divisor == 64
    processor.save_pretrained(tmp_path)
    assert HfPvtImageProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()


@pytest.mark.parametrize(
    "height, width, expected",
    [
        (480, 640, (800, 1067)),  # COCO landscape: the short side binds; 1066.7 rounds up (mmcv rounds half up)
        (427, 640, (800, 1199)),
        (640, 480, (1067, 800)),
        (200, 1000, (267, 1333)),  # the long side binds
        (1000, 100, (1333, 133)),
        (800, 1333, (800, 1333)),  # already in place
        (1600, 1200, (1067, 800)),  # downscaling
        (17, 31, (731, 1333)),  # upscaling by 43
    ],
)
def test_keep_ratio_resize_follows_mmcv(detection, height, width, expected):
    assert mmcv_rescale_size(height, width) == expected
    out = detection(np.zeros((height, width, 3), np.uint8), do_pad=False, return_tensors="np")
    assert out["pixel_values"].shape == (1, 3, *expected) and "pixel_mask" not in out


def test_extreme_aspect_ratio_keeps_one_pixel(detection):
    # mmcv would round the short side to 0 (and cv2 would fail); one pixel is the nearest valid image.
    out = detection(Image.new("RGB", (3000, 1)), do_pad=False, return_tensors="np")
    assert out["pixel_values"].shape == (1, 3, 1, 1333)


def test_size_validation_knows_longest_edge(coco):
    with pytest.raises(ValueError, match="longest_edge.*at least.*shortest_edge"):
        HfPvtImageProcessor(size={"shortest_edge": 800, "longest_edge": 600})
    with pytest.raises(ValueError, match='"shortest_edge": n, "longest_edge": m'):
        HfPvtImageProcessor(size={"longest_edge": 600})
    with pytest.raises(ValueError, match="size must hold positive integers"):
        HfPvtImageProcessor.for_object_detection()(coco, size={"shortest_edge": 0, "longest_edge": 600})


# ------------------------------------------------------------------------------------ padding and mask


def test_real_photo_is_resized_normalized_and_padded(detection, coco):
    out = detection(coco, return_tensors="pt")
    # The preset's canvas: the largest size it gives (1333) rounded up to 32, so that single images stack (pipelines).
    assert out["pixel_values"].shape == (1, 3, 1344, 1344) and out["pixel_values"].dtype == torch.float32
    mask = out["pixel_mask"][0]
    assert mask.dtype == torch.int64 and mask[:800, :1067].all() and mask.sum() == 800 * 1067
    assert out["pixel_values"][0, :, :, 1067:].abs().sum() == 0  # zeros after normalization, as mmdet's Pad
    assert out["pixel_values"][0, :, 800:].abs().sum() == 0
    mmdet = detection(coco, pad_size=None, return_tensors="pt")  # padded to a multiple of 32 only, as mmdet
    assert mmdet["pixel_values"].shape == (1, 3, 800, 1088)
    assert torch.equal(mmdet["pixel_values"], out["pixel_values"][..., :800, :1088])
    # The valid region is exactly the unpadded, resized and normalized image.
    resized = coco.resize((1067, 800), Image.BILINEAR)
    expected = (np.asarray(resized, np.float32) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(out["pixel_values"][0, :, :800, :1067].numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_batch_is_padded_to_the_largest_image_rounded_to_the_divisor(detection):
    images = [np.full((480, 640, 3), 100, np.uint8), np.full((500, 300, 3), 200, np.uint8)]
    assert detection(images, return_tensors="pt")["pixel_values"].shape == (2, 3, 1344, 1344)  # the preset's canvas
    out = detection(images, pad_size=None, return_tensors="pt")
    # (800, 1067) and (1333, 800): canvas (1333, 1067) rounded up to multiples of 32.
    assert out["pixel_values"].shape == (2, 3, 1344, 1088)
    assert out["pixel_mask"][0].sum() == 800 * 1067 and out["pixel_mask"][1].sum() == 1333 * 800
    assert out["pixel_mask"][1, :1333, :800].all() and out["pixel_mask"][1, 1333:].sum() == 0
    for index, image in enumerate(images):
        alone = detection(image, do_pad=False, return_tensors="pt")["pixel_values"][0]
        height, width = alone.shape[-2:]
        assert torch.equal(out["pixel_values"][index, :, :height, :width], alone)

    exact = detection(images, pad_size_divisor=1, pad_size=None, return_tensors="pt")
    assert exact["pixel_values"].shape == (2, 3, 1333, 1067)
    fixed = detection(images, pad_size={"height": 1400, "width": 1100}, return_tensors="pt")
    assert fixed["pixel_values"].shape == (2, 3, 1400, 1100) and fixed["pixel_mask"][0].sum() == 800 * 1067
    with pytest.raises(
        ValueError, match="pad_size .* is smaller than the batch's largest processed height and width \\(1333, 1067\\)"
    ):
        detection(images, pad_size={"height": 1000, "width": 1100})
    with pytest.raises(ValueError, match="pad_size_divisor must be a positive integer"):
        detection(images, pad_size_divisor=0)
    with pytest.raises(ValueError, match="pad_size_divisor must be a positive integer"):
        HfPvtImageProcessor(pad_size_divisor=-32)


def test_padding_works_for_segmentation_maps_too():
    processor = HfPvtImageProcessor(do_resize=False, do_center_crop=False, do_pad=True)
    images = [np.zeros((40, 50, 3), np.uint8), np.zeros((20, 70, 3), np.uint8)]
    maps = [np.full((40, 50), 3, np.uint8), np.full((20, 70), 4, np.uint8)]
    out = processor(images, segmentation_maps=maps, return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, 64, 96) and out["labels"].shape == (2, 64, 96)
    assert (out["labels"][0, :40, :50] == 3).all() and (out["labels"][0, 40:] == 255).all()
    assert (out["labels"][1, :20, :70] == 4).all() and (out["labels"][1, :, 70:] == 255).all()
    assert torch.equal(out["pixel_mask"].bool(), out["labels"] != 255)


# ------------------------------------------------------------------------------------ boxes


def test_boxes_follow_resize_and_flip_by_hand(detection, coco):
    # 640x480 -> 1067x800 (x * 1067/640, y * 800/480), padded to 1088x800; then the flip x -> 1067 - x.
    annotation = coco_annotation(39769, ([10.0, 20.0, 100.0, 50.0], 3), ([600.0, 300.0, 40.0, 180.0], 0))
    out = detection(coco, annotations=annotation, pad_size=None, return_tensors="pt")
    labels = out["labels"][0]
    assert set(labels.keys()) == {"class_labels", "boxes", "image_id", "orig_size", "size"}
    assert labels["class_labels"].tolist() == [3, 0] and labels["class_labels"].dtype == torch.int64
    assert labels["image_id"].tolist() == [39769] and labels["orig_size"].tolist() == [480, 640]
    assert labels["size"].tolist() == [800, 1088]
    sx, sy = 1067 / 640, 800 / 480
    x1, y1, x2, y2 = 10 * sx, 20 * sy, 110 * sx, 70 * sy
    first = [(x1 + x2) / 2 / 1088, (y1 + y2) / 2 / 800, (x2 - x1) / 1088, (y2 - y1) / 800]
    # The second box runs past the right edge (600 + 40 > 640): clipped to x2 = 640 first.
    x1, y1, x2, y2 = 600 * sx, 300 * sy, 640 * sx, 480 * sy
    second = [(x1 + x2) / 2 / 1088, (y1 + y2) / 2 / 800, (x2 - x1) / 1088, (y2 - y1) / 800]
    torch.testing.assert_close(labels["boxes"], torch.tensor([first, second]), rtol=0, atol=1e-6)
    assert labels["boxes"].dtype == torch.float32

    flipped = detection(coco, annotations=annotation, do_horizontal_flip=True, pad_size=None, return_tensors="pt")
    x1, x2 = 1067 - 110 * sx, 1067 - 10 * sx
    flipped_first = [(x1 + x2) / 2 / 1088, first[1], first[2], first[3]]
    torch.testing.assert_close(flipped["labels"][0]["boxes"][0], torch.tensor(flipped_first), rtol=0, atol=1e-6)
    # The image is mirrored within its valid region, the padding stays on the right.
    unflipped = out["pixel_values"][0, :, :, :1067]
    assert torch.equal(flipped["pixel_values"][0, :, :, :1067], unflipped.flip(-1))
    assert torch.equal(flipped["pixel_mask"], out["pixel_mask"])


@pytest.mark.parametrize("flip", [False, True])
def test_boxes_land_on_the_drawn_object(flip):
    # A white rectangle on black: after resize (x2) and flip, the labelled box must frame the bright pixels.
    image = np.zeros((120, 200, 3), np.uint8)
    image[20:50, 30:80] = 255  # bbox [30, 20, 50, 30]
    processor = HfPvtImageProcessor.for_object_detection(
        size={"shortest_edge": 240, "longest_edge": 1000}, do_rescale=False, do_normalize=False
    )
    out = processor(
        image, annotations=coco_annotation(1, ([30, 20, 50, 30], 5)), do_horizontal_flip=flip, return_tensors="pt"
    )
    canvas = tuple(out["pixel_values"].shape[-2:])
    # The preset's canvas: the largest size {"shortest_edge": 240, "longest_edge": 1000} gives, rounded up to 32.
    assert canvas == (1024, 1024) and out["labels"][0]["size"].tolist() == list(canvas)
    bright = torch.nonzero(out["pixel_values"][0, 0] >= 128)
    drawn = [bright[:, 1].min(), bright[:, 0].min(), bright[:, 1].max() + 1, bright[:, 0].max() + 1]
    labelled = to_xyxy_pixels(out["labels"][0]["boxes"], canvas)[0]
    torch.testing.assert_close(labelled, torch.tensor(drawn, dtype=torch.float32), rtol=0, atol=1e-3)
    assert labelled.tolist() == ([240.0, 40.0, 340.0, 100.0] if flip else [60.0, 40.0, 160.0, 100.0])


def test_flip_moves_segmentation_maps_with_their_image():
    processor = HfPvtImageProcessor(do_resize=False, do_center_crop=False, do_normalize=False, do_rescale=False)
    image = np.zeros((5, 6, 3), np.uint8)
    image[:, 0] = 255
    seg_map = np.zeros((5, 6), np.uint8)
    seg_map[:, 0] = 7
    out = processor(image, segmentation_maps=seg_map, do_horizontal_flip=True, return_tensors="pt")
    assert (out["pixel_values"][0, :, :, 5] == 255).all() and out["pixel_values"][0, :, :, :5].sum() == 0
    assert (out["labels"][0, :, 5] == 7).all() and out["labels"][0, :, :5].sum() == 0


def test_crowd_degenerate_and_outside_boxes_are_dropped_like_detr(detection):
    image = np.zeros((100, 200, 3), np.uint8)
    annotation = {
        "image_id": 7,
        "annotations": [
            {"bbox": [10, 10, 20, 20], "category_id": 1},
            {"bbox": [10, 10, 20, 20], "category_id": 2, "iscrowd": 1},  # a crowd region: not an instance
            {"bbox": [50, 50, 0, 10], "category_id": 3},  # no width
            {"bbox": [250, 10, 20, 20], "category_id": 4},  # entirely right of the image
            {"bbox": [-10, -10, 30, 40], "category_id": 5, "iscrowd": False},  # clipped to [0, 0, 20, 30]
        ],
    }
    labels = detection(image, annotations=annotation, do_pad=False, return_tensors="pt")["labels"][0]
    assert labels["class_labels"].tolist() == [1, 5]
    # 200x100 -> 1333x667 (scale 6.665); boxes in pixels of that image.
    boxes = to_xyxy_pixels(labels["boxes"], (667, 1333))
    scale_x, scale_y = 1333 / 200, 667 / 100
    expected = [[10 * scale_x, 10 * scale_y, 30 * scale_x, 30 * scale_y], [0, 0, 20 * scale_x, 30 * scale_y]]
    torch.testing.assert_close(boxes, torch.tensor(expected), rtol=0, atol=1e-3)

    empty = detection(image, annotations={"image_id": 8, "annotations": []}, return_tensors="pt")["labels"][0]
    assert empty["boxes"].shape == (0, 4) and empty["class_labels"].shape == (0,)
    assert empty["class_labels"].dtype == torch.int64 and empty["boxes"].dtype == torch.float32


@pytest.mark.parametrize("do_resize", [False, True])
def test_labels_match_transformers_detr(coco, do_resize):
    # Where the two resize rules agree (no resize, or a fixed size), our targets are DETR's targets.
    images = [coco, coco.resize((300, 500))]
    annotations = [
        coco_annotation(39769, ([10.0, 20.0, 100.0, 50.0], 3), ([330.0, 50.0, 200.0, 300.0], 1)),
        coco_annotation(2, ([5.0, 400.0, 250.0, 99.0], 0)),
    ]
    size = {"height": 320, "width": 416}
    ours = HfPvtImageProcessor(
        do_resize=do_resize, size=size, resample=Image.BILINEAR, do_center_crop=False, do_pad=True, pad_size_divisor=1
    )(images, annotations=annotations, return_tensors="pt")
    theirs = DetrImageProcessorPil(do_resize=do_resize, size=size)(
        images=images, annotations=annotations, return_tensors="pt"
    )
    assert torch.equal(ours["pixel_mask"], theirs["pixel_mask"])
    torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"], rtol=0, atol=1e-5)
    for a, b in zip(ours["labels"], theirs["labels"]):
        for key in ("class_labels", "image_id", "orig_size", "size"):
            assert torch.equal(a[key], b[key]), key
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ annotation errors


def box(**fields) -> dict:
    return {"image_id": 1, "annotations": [{"bbox": [1, 2, 3, 4], "category_id": 0, **fields}]}


@pytest.mark.parametrize(
    "annotations, error, message",
    [
        ("boxes", TypeError, "annotations must be one dict per image in COCO detection format"),
        ([box(), box()], ValueError, "Got 1 images but 2 annotations"),
        (
            {"annotations": []},
            ValueError,
            r"annotations\[0\] must be a dict in COCO detection format .* \['annotations'\]",
        ),
        (
            {"image_id": 1, "annotations": None},
            ValueError,
            r"annotations\[0\] must be a dict in COCO detection format",
        ),
        ({"image_id": "a", "annotations": []}, TypeError, r"annotations\[0\]\['image_id'\] must be an integer"),
        (
            {"image_id": 1, "annotations": [[1, 2, 3, 4]]},
            ValueError,
            r"\['annotations'\]\[0\] must be a dict with 'bbox'",
        ),
        ({"image_id": 1, "annotations": [{"bbox": [1, 2, 3, 4]}]}, ValueError, "'category_id', got \\['bbox'\\]"),
        (
            box(bbox=[1, 2, 3]),
            ValueError,
            r"\['bbox'\] must be 4 finite numbers \[x, y, width, height\], got \[1, 2, 3\]",
        ),
        (box(bbox=[1, 2, "3", None]), ValueError, r"must be 4 finite numbers"),
        (box(bbox=[1, 2, float("nan"), 4]), ValueError, r"must be 4 finite numbers"),
        (box(bbox=[[1, 2], [3, 4]]), ValueError, r"must be 4 finite numbers"),
        (box(bbox=[10, 20, -5, 4]), ValueError, r"has a negative width or height.*convert corner boxes"),
        (box(category_id=1.0), ValueError, r"\['category_id'\] must be a non-negative integer, got 1.0"),
        (box(category_id=-1), ValueError, r"\['category_id'\] must be a non-negative integer, got -1"),
        (box(category_id=True), ValueError, r"\['category_id'\] must be a non-negative integer, got True"),
        (box(iscrowd=2), ValueError, r"\['iscrowd'\] must be 0 or 1, got 2"),
    ],
)
def test_malformed_annotations_raise_clear_errors(detection, annotations, error, message):
    with pytest.raises(error, match=message):
        detection(np.zeros((20, 30, 3), np.uint8), annotations=annotations)


def test_annotations_need_the_whole_image_and_one_kind_of_labels(coco):
    with pytest.raises(ValueError, match="do_center_crop=False"):
        HfPvtImageProcessor()(coco, annotations=box())
    with pytest.raises(ValueError, match="both segmentation_maps and annotations"):
        HfPvtImageProcessor.for_object_detection()(coco, segmentation_maps=np.zeros((480, 640)), annotations=box())


# ------------------------------------------------------------------------------------ post-processing


def fake_outputs(batch_size: int = 2, num_labels: int = 3, image_sizes=((64, 96), (50, 80))) -> dict:
    """Two levels of RetinaNet-shaped outputs (2 anchors per location) on a 64x96 input."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(8, 12), (4, 6)]
    return HfPvtObjectDetectionOutput(
        logits=tuple(torch.randn(batch_size, 2 * num_labels, h, w, generator=generator) for h, w in shapes),
        pred_box_deltas=tuple(torch.randn(batch_size, 2 * 4, h, w, generator=generator) for h, w in shapes),
        anchors=tuple(torch.rand(h * w * 2, 4, generator=generator) * 40 for h, w in shapes),
        image_sizes=torch.tensor(image_sizes[:batch_size]),
    )


@pytest.fixture
def stub_postprocess(monkeypatch):
    """retinanet_hf_pvt.retinanet_postprocess replaced by a recorder returning fixed boxes in the valid region."""
    calls = []

    def retinanet_postprocess(cls_logits, box_deltas, anchors, image_size, **kwargs):
        calls.append({"cls_logits": cls_logits, "box_deltas": box_deltas, "anchors": anchors, "size": image_size})
        calls[-1].update(kwargs)
        height, width = image_size
        boxes = torch.tensor([[0.0, 0.0, width, height], [width / 4, height / 4, width / 2, height / 2]])
        return {"boxes": boxes, "scores": torch.tensor([0.9, 0.3]), "labels": torch.tensor([2, 0])}

    module = types.ModuleType("hf_pvt.retinanet_hf_pvt")
    module.retinanet_postprocess = retinanet_postprocess
    monkeypatch.setitem(sys.modules, "hf_pvt.retinanet_hf_pvt", module)
    return calls


def test_post_process_passes_each_image_and_scales_to_the_target(detection, stub_postprocess):
    outputs = fake_outputs()
    results = detection.post_process_object_detection(
        outputs, threshold=0.3, target_sizes=[(480, 640), (100, 100)], nms_pre=50, iou_threshold=0.6, max_per_image=7
    )
    assert len(results) == len(stub_postprocess) == 2
    for index, call in enumerate(stub_postprocess):
        assert call["size"] == tuple(outputs.image_sizes[index].tolist())
        assert all(torch.equal(a, b[index]) for a, b in zip(call["cls_logits"], outputs.logits))
        assert all(torch.equal(a, b[index]) for a, b in zip(call["box_deltas"], outputs.pred_box_deltas))
        assert all(a is b for a, b in zip(call["anchors"], outputs.anchors))
        assert call["score_threshold"] == 0.3 and call["nms_pre"] == 50
        assert call["iou_threshold"] == 0.6 and call["max_per_image"] == 7
    # The valid region (64x96, 50x80) maps onto the whole target: x * W_t / w_valid, y * H_t / h_valid.
    assert results[0]["boxes"].tolist() == [[0, 0, 640, 480], [160, 120, 320, 240]]
    assert results[1]["boxes"].tolist() == [[0, 0, 100, 100], [25, 25, 50, 50]]
    assert results[0]["scores"].tolist() == pytest.approx([0.9, 0.3]) and results[0]["labels"].tolist() == [2, 0]
    as_tensor = detection.post_process_object_detection(outputs, 0.3, torch.tensor([[480, 640], [100, 100]]))
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(results, as_tensor))
    unscaled = detection.post_process_object_detection(outputs)
    assert unscaled[1]["boxes"].tolist() == [[0, 0, 80, 50], [20, 12.5, 40, 25]]
    assert stub_postprocess[-1]["score_threshold"] == 0.05 and stub_postprocess[-1]["nms_pre"] == 1000
    assert stub_postprocess[-1]["iou_threshold"] == 0.5 and stub_postprocess[-1]["max_per_image"] == 100


def test_post_process_accepts_dicts_and_tuples(detection, stub_postprocess):
    outputs = fake_outputs()
    expected = detection.post_process_object_detection(outputs, target_sizes=[(48, 64)] * 2)
    fields = (outputs.logits, outputs.pred_box_deltas, outputs.anchors, outputs.image_sizes)
    loss_dict = {"loss_cls": torch.tensor(1.0), "loss_bbox": torch.tensor(2.0)}
    for variant in (dict(outputs), fields, (torch.tensor(3.0), loss_dict, *fields), [*fields, (torch.zeros(1),)]):
        results = detection.post_process_object_detection(variant, target_sizes=[(48, 64)] * 2)
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(results, expected))


def test_post_process_clips_to_the_target(detection, monkeypatch):
    # A box reaching past the valid region (decoding clips to it; a foreign ops result may not) stays in the image.
    module = types.ModuleType("hf_pvt.retinanet_hf_pvt")
    module.retinanet_postprocess = lambda *args, **kwargs: {
        "boxes": torch.tensor([[-4.0, -2.0, 120.0, 70.0]]),
        "scores": torch.tensor([0.5]),
        "labels": torch.tensor([1]),
    }
    monkeypatch.setitem(sys.modules, "hf_pvt.retinanet_hf_pvt", module)
    (result,) = detection.post_process_object_detection(fake_outputs(1), target_sizes=[(128, 192)])
    assert result["boxes"].tolist() == [[0, 0, 192, 128]]


def test_post_process_errors(detection, stub_postprocess):
    outputs = fake_outputs()
    with pytest.raises(ValueError, match="Got 1 target sizes for a batch of 2 detections"):
        detection.post_process_object_detection(outputs, target_sizes=[(10, 10)])
    with pytest.raises(ValueError, match="target_sizes must be a \\(height, width\\) pair of positive integers"):
        detection.post_process_object_detection(outputs, target_sizes=[(10, 10), (10, -1)])
    with pytest.raises(TypeError, match="missing \\['image_sizes'\\]"):
        detection.post_process_object_detection({k: v for k, v in outputs.items() if k != "image_sizes"})
    with pytest.raises(TypeError, match="HfPvtForObjectDetection's output"):
        detection.post_process_object_detection({"logits": torch.zeros(2, 3, 4, 4)})
    with pytest.raises(ValueError, match="2 levels of logits, 1 of pred_box_deltas"):
        detection.post_process_object_detection({**outputs, "pred_box_deltas": outputs.pred_box_deltas[:1]})
    with pytest.raises(ValueError, match="image_sizes must be \\(batch, 2\\) = \\(2, 2\\), got \\(1, 2\\)"):
        detection.post_process_object_detection({**outputs, "image_sizes": outputs.image_sizes[:1]})
    with pytest.raises(ValueError, match="threshold must be a number in \\[0, 1\\], got 1.5"):
        detection.post_process_object_detection(outputs, threshold=1.5)
    with pytest.raises(TypeError, match="nms_pre must be an integer"):
        detection.post_process_object_detection(outputs, nms_pre=10.5)
    assert not stub_postprocess  # every error before any work


def test_post_process_with_the_real_ops_keeps_the_best_of_overlapping_anchors(detection):
    # One level, 3 anchors on a 100x200 input, zero deltas (boxes = anchors): anchors 0 and 1 overlap (IoU 0.82)
    # and both say class 1, so NMS keeps the better; anchor 2 says class 0; everything else is below threshold.
    anchors = torch.tensor([[10.0, 10.0, 50.0, 50.0], [12.0, 12.0, 52.0, 52.0], [100.0, 20.0, 180.0, 90.0]])
    logits = torch.full((1, 3 * 2, 1, 1), -10.0)  # (batch, anchors * classes, h, w), class-minor per anchor
    logits[0, 0 * 2 + 1], logits[0, 1 * 2 + 1], logits[0, 2 * 2 + 0] = 2.0, 1.0, 0.0
    outputs = {
        "logits": (logits,),
        "pred_box_deltas": (torch.zeros(1, 3 * 4, 1, 1),),
        "anchors": (anchors,),
        "image_sizes": torch.tensor([[100, 200]]),
    }
    (result,) = detection.post_process_object_detection(outputs, threshold=0.3, target_sizes=[(50, 400)])
    assert result["labels"].tolist() == [1, 0]
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([2.0, 0.0])))
    torch.testing.assert_close(result["boxes"], torch.tensor([[20.0, 5.0, 100.0, 25.0], [200.0, 10.0, 360.0, 45.0]]))
    (strict,) = detection.post_process_object_detection(outputs, threshold=0.6)
    assert strict["labels"].tolist() == [1] and strict["boxes"].tolist() == [[10.0, 10.0, 50.0, 50.0]]


def test_object_detection_pipeline_from_a_saved_folder(tmp_path, coco):
    # The real pipeline: our processor in, a tiny random RetinaNet, our post-processing out, boxes in the photo.
    from conftest import tiny_config
    from transformers import pipeline

    from hf_pvt import HfPvtForObjectDetection

    torch.manual_seed(0)
    config = tiny_config(decoder_hidden_size=16, detection_feat_channels=16, detection_num_convs=1, num_labels=3)
    model = HfPvtForObjectDetection(config).eval()
    model.save_pretrained(tmp_path)
    HfPvtImageProcessor.for_object_detection(size={"shortest_edge": 96, "longest_edge": 160}).save_pretrained(tmp_path)
    detector = pipeline("object-detection", model=str(tmp_path))
    results = detector(coco, threshold=0.0)
    assert results and len(results) <= 100
    assert {r["label"] for r in results} <= set(config.id2label.values())
    for r in results:
        assert 0 <= r["box"]["xmin"] <= r["box"]["xmax"] <= 640 and 0 <= r["box"]["ymin"] <= r["box"]["ymax"] <= 480
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_processor_labels_train_the_detector(coco):
    # The processor's output goes straight into the model (BatchFeature labels, as Transformers' DETR gives them).
    from conftest import tiny_config

    from hf_pvt import HfPvtForObjectDetection

    torch.manual_seed(0)
    model = HfPvtForObjectDetection(
        tiny_config(decoder_hidden_size=16, detection_feat_channels=16, detection_num_convs=1, num_labels=4)
    )
    processor = HfPvtImageProcessor.for_object_detection(size={"shortest_edge": 96, "longest_edge": 160})
    annotations = [
        coco_annotation(39769, ([10.0, 20.0, 300.0, 400.0], 3), ([330.0, 50.0, 300.0, 300.0], 1)),
        coco_annotation(2, ([5.0, 300.0, 250.0, 190.0], 0)),
    ]
    inputs = processor([coco, coco.resize((320, 400))], annotations=annotations, return_tensors="pt")
    outputs = model(**inputs)
    assert outputs.loss.isfinite() and outputs.loss > 0
    outputs.loss.backward()
    assert outputs.image_sizes.tolist() == [[96, 128], [120, 96]]  # from pixel_mask, inside the 128x128 canvas

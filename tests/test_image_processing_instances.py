"""Instance segmentation in the image processor: COCO masks in (polygons, RLE, crowd regions), through resize, flip
and padding; Mask R-CNN results out (Transformers' map format, every instance's own mask, COCO RLE); and
pipeline("image-segmentation") on Mask R-CNN and Semantic FPN folders."""

from __future__ import annotations

import json
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import FIXTURES
from PIL import ImageDraw

from hf_pvt import HfPvtConfig, HfPvtForSemanticSegmentation, HfPvtImageProcessor
from hf_pvt.instance_masks_hf_pvt import decode_segmentation, encode_rle, mask_box, resize_masks
from hf_pvt.mask_rcnn_hf_pvt import HfPvtForInstanceSegmentation, HfPvtInstanceSegmentationOutput

mask_api = pytest.importorskip("pycocotools.mask")

COCO128_FIXTURE = FIXTURES / "coco128_instances"
ENCODER = {
    "hidden_sizes": [16, 32, 48, 64],
    "num_attention_heads": [1, 2, 3, 4],
    "mlp_ratios": [2, 2, 2, 2],
    "depths": [1, 1, 1, 1],
    "sr_ratios": [8, 4, 2, 1],
    "decoder_hidden_size": 32,
}
TINY_MASK_RCNN = {**ENCODER, "rcnn_fc_channels": 64, "mask_head_channels": 32, "mask_head_num_convs": 2}


def tiny_mask_rcnn(num_labels: int = 2) -> HfPvtForInstanceSegmentation:
    torch.manual_seed(0)
    config = HfPvtConfig.from_preset("pvt-v2-b0", num_labels=num_labels, **TINY_MASK_RCNN)
    return HfPvtForInstanceSegmentation(config).eval()


def coco128_fixture() -> tuple[list[PIL.Image.Image], list[dict], dict]:
    instances = json.loads((COCO128_FIXTURE / "instances.json").read_text())
    images, annotations = [], []
    for info in sorted(instances["images"], key=lambda info: info["id"]):
        images.append(PIL.Image.open(COCO128_FIXTURE / "images" / info["file_name"]).convert("RGB"))
        objects = [a for a in instances["annotations"] if a["image_id"] == info["id"]]
        annotations.append({"image_id": info["id"], "annotations": objects})
    return images, annotations, instances


# ------------------------------------------------------------------------------------------------ COCO -> masks


def test_polygons_and_rle_decode_as_pycocotools_does():
    height, width = 37, 53
    rng = np.random.default_rng(0)
    mask = rng.random((height, width)) < 0.4
    compressed = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    uncompressed = {"size": [height, width], "counts": ([0] if flat[0] else []) + runs}
    for segmentation in (compressed, {**compressed, "counts": compressed["counts"].decode()}, uncompressed):
        assert np.array_equal(decode_segmentation(segmentation, height, width), mask)
    polygons = [[3.5, 2.0, 30.2, 4.0, 20.0, 30.7], [40, 5, 50, 5, 50, 20, 40, 20]]
    expected = mask_api.decode(mask_api.merge(mask_api.frPyObjects(polygons, height, width))).astype(bool)
    assert np.array_equal(decode_segmentation(polygons, height, width), expected)
    assert decode_segmentation([], height, width).sum() == 0


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ([[1, 2, 3, 4]], r"at least three points"),
        ([[1, 2, 3, 4, 5]], r"at least three points"),
        ([[1, 2, 3, float("nan"), 5, 6]], r"finite"),
        ({"size": [5, 5], "counts": [25]}, r"RLE of size \[5, 5\] but its image is"),
        ({"size": [8, 10], "counts": [3, 4]}, r"covers 7 pixels"),
        ({"counts": [80]}, r"must be COCO RLE"),
        ({"size": [8, 10], "counts": 1.5}, r"list of run lengths or an RLE string"),
        ("polygon", r"polygons .* or RLE"),
    ],
)
def test_malformed_segmentations_raise_naming_the_entry(segmentation, message):
    processor = HfPvtImageProcessor.for_instance_segmentation(size={"shortest_edge": 32, "longest_edge": 64})
    image = np.zeros((8, 10, 3), dtype=np.uint8)
    annotation = {
        "image_id": 1,
        "annotations": [{"bbox": [1, 1, 4, 4], "category_id": 0, "segmentation": segmentation}],
    }
    with pytest.raises(ValueError, match=message) as error:
        processor(image, annotations=annotation)
    assert "annotations[0]['annotations'][0]['segmentation']" in str(error.value)


def test_missing_segmentation_points_to_the_detection_processor():
    processor = HfPvtImageProcessor.for_instance_segmentation()
    annotation = {"image_id": 1, "annotations": [{"bbox": [1, 1, 4, 4], "category_id": 0}]}
    with pytest.raises(ValueError, match=r"has no 'segmentation'.*for_object_detection"):
        processor(np.zeros((8, 10, 3), dtype=np.uint8), annotations=annotation)
    # Boxes alone stay what the detection processor gives.
    detection = HfPvtImageProcessor.for_object_detection()
    assert "masks" not in detection(np.zeros((8, 10, 3), np.uint8), annotations=annotation)["labels"][0]


def test_without_pycocotools_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    processor = HfPvtImageProcessor.for_instance_segmentation()
    annotation = {"image_id": 1, "annotations": [{"bbox": [1, 1, 4, 4], "category_id": 0, "segmentation": [[1] * 6]}]}
    with pytest.raises(ImportError, match=r"pip install pycocotools"):
        processor(np.zeros((8, 10, 3), dtype=np.uint8), annotations=annotation)
    # Inference needs no pycocotools.
    assert processor(np.zeros((8, 10, 3), dtype=np.uint8), return_tensors="pt")["pixel_values"].shape[0] == 1


def test_masks_follow_the_image_through_resize_flip_and_padding():
    """A drawn shape's mask, given as polygon and as RLE, lands where the processed image has the shape."""
    height, width = 60, 90
    image = PIL.Image.new("RGB", (width, height))
    ImageDraw.Draw(image).rectangle([10, 20, 39, 44], fill=(255, 255, 255))  # pixels x 10..39, y 20..44
    canvas = PIL.Image.new("L", (width, height))
    ImageDraw.Draw(canvas).ellipse([50, 5, 79, 34], fill=1)
    ellipse = np.asarray(canvas).astype(bool)
    objects = [
        {"bbox": [10, 20, 30, 25], "category_id": 1, "segmentation": [[10, 20, 40, 20, 40, 45, 10, 45]]},
        {"bbox": [50, 5, 30, 30], "category_id": 0, "segmentation": encode_rle(ellipse)},
    ]
    processor = HfPvtImageProcessor.for_instance_segmentation(size={"shortest_edge": 100, "longest_edge": 200})
    for flip in (False, True):
        inputs = processor(image, annotations={"image_id": 7, "annotations": objects}, do_horizontal_flip=flip,
                           return_tensors="pt")  # fmt: skip
        labels = inputs["labels"][0]
        new_height, new_width = 100, 150  # keep-ratio: 60x90 -> 100x150; padded to 128x160
        assert inputs["pixel_values"].shape[-2:] == (128, 160)
        masks = labels["masks"]
        assert masks.shape == (2, 128, 160) and masks.dtype == torch.bool
        assert not masks[:, new_height:].any() and not masks[:, :, new_width:].any()
        expected = resize_masks(np.stack([np.zeros_like(ellipse), ellipse]), new_height, new_width)
        rectangle = np.zeros((height, width), dtype=bool)
        rectangle[20:45, 10:40] = True
        expected[0] = resize_masks(rectangle[None], new_height, new_width)[0]
        if flip:
            expected = expected[..., ::-1]
        assert np.array_equal(masks[:, :new_height, :new_width].numpy(), expected)
        # The masks agree with the processed image and with the boxes.
        bright = inputs["pixel_values"][0].mean(0)[:new_height, :new_width] > 1.0
        assert (bright.numpy() == masks[0, :new_height, :new_width].numpy()).mean() > 0.99
        for mask, box in zip(masks, labels["boxes"]):
            x, y, w, h = mask_box(mask.numpy())
            cx, cy, bw, bh = (box * torch.tensor([160, 128, 160, 128])).tolist()
            assert abs(x - (cx - bw / 2)) <= 1 and abs(x + w - (cx + bw / 2)) <= 1
            assert abs(y - (cy - bh / 2)) <= 1 and abs(y + h - (cy + bh / 2)) <= 1


def test_crowd_regions_and_empty_boxes_are_left_out_with_their_masks():
    """Real COCO annotations (coco128: polygons and a crowd RLE): one mask per kept box, in the kept boxes' order."""
    images, annotations, _ = coco128_fixture()
    processor = HfPvtImageProcessor.for_instance_segmentation(size={"shortest_edge": 200, "longest_edge": 320})
    inputs = processor(images, annotations=annotations, return_tensors="pt")
    for annotation, labels in zip(annotations, inputs["labels"]):
        kept = [a for a in annotation["annotations"] if not a["iscrowd"]]
        assert len(labels["masks"]) == len(labels["boxes"]) == len(kept)
        height, width = labels["size"].tolist()
        assert labels["masks"].shape[-2:] == (height, width) == inputs["pixel_values"].shape[-2:]
        assert labels["class_labels"].tolist() == [a["category_id"] for a in kept]
        # Each mask sits in its own box (nearest resizing moves edges by at most a pixel).
        for mask, box in zip(labels["masks"], labels["boxes"]):
            if mask.any():
                x, y, w, h = mask_box(mask.numpy())
                cx, cy, bw, bh = (box * torch.tensor([width, height, width, height])).tolist()
                assert x >= cx - bw / 2 - 1.5 and x + w <= cx + bw / 2 + 1.5
                assert y >= cy - bh / 2 - 1.5 and y + h <= cy + bh / 2 + 1.5
    assert any(a["iscrowd"] for annotation in annotations for a in annotation["annotations"])

    # An object whose box has no area is dropped together with its own mask, not another one's.
    objects = [
        {"bbox": [5, 5, 0, 4], "category_id": 1, "segmentation": [[5, 5, 6, 5, 6, 9]]},
        {"bbox": [0, 0, 4, 4], "category_id": 0, "iscrowd": 1, "segmentation": encode_rle(np.ones((10, 12), bool))},
        {"bbox": [2, 2, 4, 3], "category_id": 2, "segmentation": [[2, 2, 6, 2, 6, 5, 2, 5]]},
    ]
    plain = HfPvtImageProcessor.for_instance_segmentation(do_resize=False, pad_size_divisor=1)
    labels = plain(np.zeros((10, 12, 3), np.uint8), annotations={"image_id": 1, "annotations": objects})["labels"][0]
    assert labels["class_labels"].tolist() == [2]
    expected = np.zeros((1, 10, 12), dtype=bool)
    expected[0, 2:5, 2:6] = True
    assert np.array_equal(labels["masks"], expected)


def test_the_flag_is_saved_with_the_processor(tmp_path):
    processor = HfPvtImageProcessor.for_instance_segmentation()
    assert processor.return_segmentation_masks and processor.do_pad and not processor.do_center_crop
    assert processor.size == {"shortest_edge": 800, "longest_edge": 1333}
    processor.save_pretrained(tmp_path)
    assert HfPvtImageProcessor.from_pretrained(tmp_path).return_segmentation_masks
    assert not HfPvtImageProcessor.for_object_detection().return_segmentation_masks
    assert (tmp_path / "preprocessor_config.json").is_file()


def test_training_labels_feed_the_model():
    images, annotations, _ = coco128_fixture()
    processor = HfPvtImageProcessor.for_instance_segmentation(size={"shortest_edge": 96, "longest_edge": 128})
    inputs = processor(images[:2], annotations=annotations[:2], return_tensors="pt")
    model = tiny_mask_rcnn(num_labels=91).train()
    labels = [{k: t[k] for k in ("class_labels", "boxes", "masks")} for t in inputs["labels"]]
    outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"], labels=labels)
    assert set(outputs.loss_dict) >= {"loss_mask"} and torch.isfinite(outputs.loss)


# ------------------------------------------------------------------------------------------------ masks -> COCO


def test_rle_encoding_is_cocos():
    rng = np.random.default_rng(1)
    for trial in range(200):
        height, width = (int(v) for v in rng.integers(1, 30, 2))
        mask = rng.random((height, width)) < rng.random()
        if trial % 7 == 0:
            mask[:] = trial % 2 == 0
        rle = encode_rle(torch.from_numpy(mask) if trial % 2 else mask)
        expected = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert rle == {"size": [height, width], "counts": expected["counts"].decode()}
        assert mask_box(mask) == mask_api.toBbox(expected).tolist()
    with pytest.raises(ValueError, match="one \\(height, width\\) mask"):
        encode_rle(np.zeros((2, 3, 4)))


# ------------------------------------------------------------------------------------------------ post-processing


def fake_outputs(boxes, scores, labels, image_size=(40, 60)) -> HfPvtInstanceSegmentationOutput:
    """One image's detections whose masks fill their boxes (mask logits +20)."""
    count = len(boxes)
    return HfPvtInstanceSegmentationOutput(
        pred_boxes=[torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)],
        pred_scores=[torch.tensor(scores, dtype=torch.float32)],
        pred_labels=[torch.tensor(labels, dtype=torch.long)],
        pred_mask_logits=[torch.full((count, 28, 28), 20.0)],
        image_sizes=torch.tensor([image_size]),
    )


def test_the_map_gives_each_pixel_to_the_best_instance_and_drops_hidden_ones():
    processor = HfPvtImageProcessor.for_instance_segmentation()
    # A (0.9) covers x 0..30; B (0.8) x 20..40 keeps 10 of 20 columns; C (0.7) inside A is hidden; D (0.6) apart.
    outputs = fake_outputs(
        [[0, 0, 30, 20], [20, 0, 40, 20], [5, 5, 15, 15], [45, 25, 55, 35]], [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]
    )
    instances = processor.post_process_instances(outputs, threshold=0.5)[0]
    masks = instances["masks"]
    assert masks.shape == (4, 40, 60) and masks[0].sum() == 600 and masks[2].sum() == 100

    result = processor.post_process_instance_segmentation(outputs, threshold=0.5, overlap_mask_area_threshold=0.4)[0]
    segmentation = result["segmentation"]
    assert segmentation.dtype == torch.int64 and segmentation.shape == (40, 60)
    assert [(s["id"], s["label_id"], s["score"]) for s in result["segments_info"]] == [
        (0, 1, pytest.approx(0.9)),
        (1, 0, pytest.approx(0.8)),
        (2, 0, pytest.approx(0.6)),
    ]
    assert all(s["was_fused"] is False for s in result["segments_info"])
    assert torch.equal(segmentation == 0, masks[0])
    assert torch.equal(segmentation == 1, masks[1] & ~masks[0])
    assert torch.equal(segmentation == 2, masks[3])
    assert torch.equal(segmentation == -1, ~(masks[0] | masks[1] | masks[3]))
    # Above half hidden: B drops out too (the pipeline's default 0.5; Transformers' default 0.8).
    strict = processor.post_process_instance_segmentation(outputs, threshold=0.5, overlap_mask_area_threshold=0.5)[0]
    assert [s["label_id"] for s in strict["segments_info"]] == [1, 0] and (strict["segmentation"] == 1).sum() == 100
    # threshold keeps the better instances only.
    best = processor.post_process_instance_segmentation(outputs, threshold=0.85)[0]
    assert len(best["segments_info"]) == 1

    rles = processor.post_process_instance_segmentation(outputs, 0.5, 0.5, 0.4, return_coco_annotation=True)[0]
    assert len(rles["segmentation"]) == 3
    for rle, info in zip(rles["segmentation"], rles["segments_info"]):
        decoded = mask_api.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert np.array_equal(decoded, (segmentation == info["id"]).numpy())
    binary = processor.post_process_instance_segmentation(outputs, 0.5, 0.5, 0.4, return_binary_maps=True)[0]
    assert torch.equal(binary["segmentation"], masks[[0, 1, 3]])  # whole masks, overlaps kept
    with pytest.raises(ValueError, match="cannot both be True"):
        processor.post_process_instance_segmentation(outputs, return_coco_annotation=True, return_binary_maps=True)


def test_every_instance_keeps_its_whole_mask_and_its_rle():
    processor = HfPvtImageProcessor.for_instance_segmentation()
    outputs = fake_outputs([[0, 0, 30, 20], [20, 0, 40, 20]], [0.9, 0.8], [1, 0])
    found = processor.post_process_instances(outputs, return_rle=True, target_sizes=[(80, 120)])[0]
    torch.testing.assert_close(found["boxes"], torch.tensor([[0.0, 0, 60, 40], [40, 0, 80, 40]]))
    assert found["masks"].shape == (2, 80, 120) and found["masks"][0].sum() == 60 * 40
    assert (found["masks"][0] & found["masks"][1]).sum() == 20 * 40  # the overlap belongs to both
    for mask, rle in zip(found["masks"], found["rles"]):
        assert np.array_equal(mask_api.decode({**rle, "counts": rle["counts"].encode()}), mask.numpy())
    # One (height, width) pair for a one-image output: how a batched pipeline hands each image its size.
    again = processor.post_process_instances(outputs, target_sizes=(80, 120))[0]
    assert torch.equal(again["masks"], found["masks"])
    with pytest.raises(ValueError, match="target sizes for a batch of 1"):
        processor.post_process_instances(outputs, target_sizes=[(80, 120), (80, 120)])
    with pytest.raises(ValueError, match="threshold must be a number in \\[0, 1\\]"):
        processor.post_process_instances(outputs, threshold=1.5)
    with pytest.raises(ValueError, match="mask_threshold"):
        processor.post_process_instance_segmentation(outputs, mask_threshold=-0.1)


def test_a_real_model_through_both_post_processings():
    model = tiny_mask_rcnn()
    processor = HfPvtImageProcessor.for_instance_segmentation(size={"shortest_edge": 96, "longest_edge": 128})
    images, _, _ = coco128_fixture()
    inputs = processor(images[:2], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    sizes = [image.size[::-1] for image in images[:2]]
    instances = processor.post_process_instances(outputs, threshold=0.0, target_sizes=sizes)
    maps = processor.post_process_instance_segmentation(
        outputs, threshold=0.0, overlap_mask_area_threshold=0.0, target_sizes=sizes
    )
    for image, found, result in zip(images, instances, maps):
        assert found["masks"].shape[1:] == result["segmentation"].shape == image.size[::-1]
        assert torch.all(found["scores"][:-1] >= found["scores"][1:])
        # Every placed segment is part of its instance's own mask, and the map covers the union of the masks.
        union = found["masks"].any(0) if len(found["masks"]) else torch.zeros(image.size[::-1], dtype=torch.bool)
        assert torch.equal(result["segmentation"] >= 0, union)
        for info in result["segments_info"]:
            assert info["label_id"] in found["labels"].tolist()
    with pytest.raises(ValueError, match="evaluation mode"):
        model.train()
        processor.post_process_instances(model(**inputs))


def test_semantic_outputs_come_back_as_the_semantic_map():
    """The image-segmentation pipeline calls post_process_instance_segmentation first for any model whose processor
    has it: Semantic FPN outputs must come back as the class map, one segment per class."""
    processor = HfPvtImageProcessor.for_dense_prediction(64, 64)
    logits = torch.randn(2, 5, 16, 16)
    outputs = {"logits": logits}
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[(30, 40), (50, 20)])
    results = processor.post_process_instance_segmentation(outputs, target_sizes=[(30, 40), (50, 20)])
    for semantic, result in zip(maps, results):
        assert torch.equal(result["segmentation"], semantic)
        classes = torch.unique(semantic).tolist()
        assert result["segments_info"] == [
            {"id": c, "label_id": c, "was_fused": False, "score": None} for c in classes
        ]
    one = processor.post_process_instance_segmentation({"logits": logits[:1]}, target_sizes=(30, 40))[0]
    assert torch.equal(one["segmentation"], maps[0])


# ------------------------------------------------------------------------------------------------ pipelines


def save_folder(model, processor, folder):
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_pipeline_on_a_mask_rcnn_folder(tmp_path):
    from transformers import pipeline

    model = tiny_mask_rcnn()
    processor = HfPvtImageProcessor.for_instance_segmentation(size={"shortest_edge": 96, "longest_edge": 128})
    folder = save_folder(model, processor, tmp_path / "mask_rcnn")
    assert (tmp_path / "mask_rcnn" / "instance_masks_hf_pvt.py").is_file()  # the processor's code travels along
    images, _, _ = coco128_fixture()
    for subtask in ("instance", None):
        segmenter = pipeline("image-segmentation", model=folder, subtask=subtask)
        assert type(segmenter.model).__name__ == "HfPvtForInstanceSegmentation"
        for image in images[:2]:
            with torch.no_grad():
                outputs = model(**processor(image, return_tensors="pt"))
            expected = processor.post_process_instance_segmentation(
                outputs, threshold=0.3, overlap_mask_area_threshold=0.5, target_sizes=[image.size[::-1]]
            )[0]
            segments = segmenter(image, threshold=0.3)
            assert len(segments) == len(expected["segments_info"]) > 0
            for segment, info in zip(segments, expected["segments_info"]):
                assert segment["label"] == model.config.id2label[info["label_id"]]
                assert segment["score"] == info["score"]
                assert segment["mask"].size == image.size
                drawn = np.asarray(segment["mask"]) > 0
                assert np.array_equal(drawn, (expected["segmentation"] == info["id"]).numpy())


def test_batched_pipeline_matches_one_image_at_a_time(tmp_path):
    """batch_size=2 over images of different sizes: the pipeline stacks each image's pixel_values as they are, so the
    processor pads every image to one fixed `pad_size`; the results equal batch_size=1's."""
    from transformers import pipeline

    model = tiny_mask_rcnn()
    processor = HfPvtImageProcessor.for_instance_segmentation(
        size={"shortest_edge": 96, "longest_edge": 128}, pad_size={"height": 128, "width": 128}
    )
    folder = save_folder(model, processor, tmp_path / "mask_rcnn")
    images, _, _ = coco128_fixture()  # landscape and portrait photos
    assert len({image.size for image in images}) == 3
    one = pipeline("image-segmentation", model=folder, subtask="instance", batch_size=1)(images, threshold=0.3)
    two = pipeline("image-segmentation", model=folder, subtask="instance", batch_size=2)(images, threshold=0.3)
    assert [len(r) for r in one] == [len(r) for r in two] and sum(len(r) for r in one) > 0
    for a, b in zip(one, two):
        assert [s["label"] for s in a] == [s["label"] for s in b]
        assert [s["score"] for s in a] == pytest.approx([s["score"] for s in b], abs=1e-5)
        for sa, sb in zip(a, b):
            mask_a, mask_b = np.asarray(sa["mask"]), np.asarray(sb["mask"])
            assert np.count_nonzero(mask_a != mask_b) <= 0.001 * mask_a.size


def test_pipeline_on_a_semantic_fpn_folder_still_gives_class_masks(tmp_path):
    from transformers import pipeline

    torch.manual_seed(0)
    model = HfPvtForSemanticSegmentation(HfPvtConfig.from_preset("pvt-v2-b0", num_labels=4, **ENCODER)).eval()
    processor = HfPvtImageProcessor.for_dense_prediction(64, 64)
    folder = save_folder(model, processor, tmp_path / "semantic_fpn")
    image = PIL.Image.open(FIXTURES / "ade20k_val_00000001.jpg").convert("RGB")
    with torch.no_grad():
        outputs = model(**processor(image, return_tensors="pt"))
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
    segmenter = pipeline("image-segmentation", model=folder)
    assert type(segmenter.model).__name__ == "HfPvtForSemanticSegmentation"
    by_default, semantic = segmenter(image), segmenter(image, subtask="semantic")
    classes = torch.unique(expected).tolist()
    for result in (by_default, semantic):
        assert [s["label"] for s in result] == [model.config.id2label[c] for c in classes]
        assert all(s["score"] is None for s in result)
        for segment, c in zip(result, classes):
            assert np.array_equal(np.asarray(segment["mask"]) > 0, (expected == c).numpy())

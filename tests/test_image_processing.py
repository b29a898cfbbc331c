"""Tests of HfPvtImageProcessor against an independent PIL + numpy version of the original eval transform."""

import ast
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessorPil,
    pipeline,
)
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from transformers.modeling_outputs import SemanticSegmenterOutput

import hf_pvt.image_processing_hf_pvt as image_processing_module
from hf_pvt.image_processing_hf_pvt import HfPvtImageProcessor

FIXTURES = Path(__file__).parent / "fixtures"
COCO = FIXTURES / "coco_000000039769.png"
ADE20K = [FIXTURES / f"ade20k_val_0000000{i}.jpg" for i in (1, 2, 3)]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Float pixels are resized in float precision, 8-bit pixels in PIL's 8-bit arithmetic (rounded and
# clipped after each of its two passes): the two agree to a few grey levels, in normalized units:
FLOAT_VS_UINT8_MAX, FLOAT_VS_UINT8_MEAN = 0.06, 0.01


def reference_transform(image: Image.Image, resize: int = 256, crop: int = 224) -> np.ndarray:
    """The authors' eval transform, as torchvision runs it on PIL images, written out with PIL + numpy:
    Resize(256, BICUBIC) -> CenterCrop(224) -> ToTensor -> Normalize(ImageNet)."""
    image = image.convert("RGB")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(long * resize / short)  # torchvision truncates the long side
    new_size = (resize, new_long) if width <= height else (new_long, resize)  # PIL sizes are (width, height)
    image = image.resize(new_size, Image.BICUBIC)
    top = int(round((image.height - crop) / 2.0))  # torchvision's CenterCrop
    left = int(round((image.width - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def processor() -> HfPvtImageProcessor:
    return HfPvtImageProcessor()


@pytest.fixture(scope="module")
def coco() -> Image.Image:
    return Image.open(COCO).convert("RGB")


def pixels(processor: HfPvtImageProcessor, images, **kwargs) -> np.ndarray:
    return processor(images, return_tensors="np", **kwargs)["pixel_values"]


# ------------------------------------------------------------------------------------ defaults and parity


def test_defaults_are_the_original_eval_transform(processor):
    assert dict(processor.size) == {"shortest_edge": 256}
    assert dict(processor.crop_size) == {"height": 224, "width": 224}
    assert processor.resample == Image.BICUBIC
    assert processor.do_resize and processor.do_center_crop and processor.do_rescale and processor.do_normalize
    assert processor.do_convert_rgb and not processor.do_reduce_labels
    assert tuple(processor.image_mean) == (0.485, 0.456, 0.406)
    assert tuple(processor.image_std) == (0.229, 0.224, 0.225)
    assert processor.model_input_names == ["pixel_values"]


def test_parity_with_reference_on_coco_photo(processor, coco):
    out = processor(coco, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), reference_transform(coco), rtol=0, atol=1e-5)


@pytest.mark.parametrize("path", ADE20K, ids=lambda p: p.stem)
def test_parity_with_reference_on_ade20k_photos(processor, path):
    # 00000002 is 500x364 -> 351x256: (351 - 224) / 2 = 63.5, where torchvision's round() (64) and
    # a floor division (63) disagree.
    image = Image.open(path)
    np.testing.assert_allclose(pixels(processor, image)[0], reference_transform(image), rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(97, 300), (300, 97), (257, 256), (224, 224), (130, 131)])
def test_parity_on_non_square_and_small_inputs(processor, coco, size):
    image = coco.resize(size, Image.BILINEAR)  # portrait, landscape, odd remainders, upscaling
    np.testing.assert_allclose(pixels(processor, image)[0], reference_transform(image), rtol=0, atol=1e-5)


def test_shortest_edge_truncates_the_long_side_like_torchvision(processor):
    image = np.zeros((3, 300, 451), dtype=np.uint8)
    out = processor(image, do_center_crop=False, do_normalize=False, return_tensors="np")["pixel_values"]
    assert out.shape == (1, 3, 256, 384)  # int(256 * 451 / 300) = int(384.85)


@pytest.mark.parametrize("extent, expected_start", [(227, 2), (229, 2), (225, 0), (226, 1), (231, 4)])
def test_center_crop_offsets_follow_torchvision(processor, extent, expected_start):
    # torchvision: start = int(round((extent - 224) / 2)) -- Python rounds halves to even.
    image = np.tile(np.arange(extent, dtype=np.uint8), (3, 224, 1))
    out = processor(image, do_resize=False, do_rescale=False, do_normalize=False, return_tensors="np")
    assert out["pixel_values"][0, 0, 0, 0] == expected_start


def test_center_crop_pads_small_images_with_zeros(processor):
    image = np.full((3, 220, 221), 200, dtype=np.uint8)
    out = processor(image, do_resize=False, do_rescale=False, do_normalize=False, return_tensors="np")
    plane = out["pixel_values"][0, 0]
    assert plane.shape == (224, 224)
    # torchvision pads (left, top, right, bottom) = (1, 2, 2, 2)
    assert (plane[2:222, 1:222] == 200).all()
    assert plane[:2].sum() == 0 and plane[222:].sum() == 0 and plane[:, :1].sum() == 0 and plane[:, 222:].sum() == 0


# ------------------------------------------------------------------------------------ input types


def test_numpy_and_torch_uint8_inputs_match_pil(processor, coco):
    expected = pixels(processor, coco)
    hwc = np.asarray(coco)
    chw = hwc.transpose(2, 0, 1).copy()
    for image in (hwc, chw, torch.from_numpy(chw), torch.from_numpy(hwc.copy()), hwc.astype(np.int64)):
        np.testing.assert_array_equal(pixels(processor, image), expected)


def test_size_shorthands(coco):
    assert dict(HfPvtImageProcessor(size=288).size) == {"shortest_edge": 288}  # torchvision.Resize(288)
    assert dict(HfPvtImageProcessor(size=(320, 480)).size) == {"height": 320, "width": 480}
    out = pixels(HfPvtImageProcessor(size={"height": 320, "width": 480}, do_center_crop=False), coco)
    assert out.shape == (1, 3, 320, 480)


def test_float_inputs_in_unit_range(processor, coco):
    expected = pixels(processor, coco)
    hwc = np.asarray(coco).astype(np.float32) / 255.0
    tensor = torch.from_numpy(hwc).permute(2, 0, 1)
    for image in (hwc, hwc.transpose(2, 0, 1), tensor, tensor.half(), tensor.bfloat16(), hwc.astype(np.float64)):
        diff = np.abs(pixels(processor, image) - expected)
        assert diff.max() < FLOAT_VS_UINT8_MAX and diff.mean() < FLOAT_VS_UINT8_MEAN
    # Without a resize nothing is quantized: float and 8-bit inputs agree to float precision.
    crop_only = {"do_resize": False}
    np.testing.assert_allclose(pixels(processor, hwc, **crop_only), pixels(processor, coco, **crop_only), atol=1e-5)


def test_grayscale_inputs(processor, coco):
    gray = coco.convert("L")
    expected = reference_transform(gray.convert("RGB"))
    array = np.asarray(gray)
    for image in (gray, array, array[..., None], array[None], torch.from_numpy(array.copy())):
        out = pixels(processor, image)
        assert out.shape == (1, 3, 224, 224)
        np.testing.assert_allclose(out[0], expected, rtol=0, atol=1e-5)


def test_rgba_inputs_are_composited_on_white(processor, coco):
    opaque = coco.copy()
    opaque.putalpha(255)
    np.testing.assert_allclose(pixels(processor, opaque)[0], reference_transform(coco), rtol=0, atol=1e-5)

    rgba = np.asarray(opaque).copy()
    rgba[..., 3] = np.linspace(0, 255, rgba.shape[1], dtype=np.uint8)[None]  # a horizontal alpha ramp
    alpha = rgba[..., 3:].astype(np.float64) / 255.0
    on_white = np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    expected = reference_transform(Image.fromarray(on_white))
    for image in (Image.fromarray(rgba, mode="RGBA"), rgba, rgba.transpose(2, 0, 1)):
        # PIL's alpha_composite and numpy's blend may round one grey level apart.
        np.testing.assert_allclose(pixels(processor, image)[0], expected, rtol=0, atol=2 / 255 / 0.224 + 1e-5)


def test_batches(processor):
    images = [Image.open(p) for p in ADE20K]
    out = processor(images, return_tensors="pt")["pixel_values"]
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32
    for row, image in zip(out, images):
        np.testing.assert_allclose(row.numpy(), reference_transform(image), rtol=0, atol=1e-5)

    stacked = np.stack([np.asarray(im.resize((64, 48))) for im in images])  # (B, H, W, C)
    as_list = pixels(processor, list(stacked))
    np.testing.assert_array_equal(pixels(processor, stacked), as_list)
    np.testing.assert_array_equal(pixels(processor, torch.from_numpy(stacked).permute(0, 3, 1, 2)), as_list)
    np.testing.assert_array_equal(pixels(processor, [[stacked[0]], [stacked[1], stacked[2]]]), as_list)


def test_return_types(processor, coco):
    unbatched = processor(coco)["pixel_values"]
    assert isinstance(unbatched, list) and unbatched[0].shape == (3, 224, 224) and unbatched[0].dtype == np.float32
    assert processor(coco, return_tensors="np")["pixel_values"].shape == (1, 3, 224, 224)


def test_image_path_input(processor, coco):
    np.testing.assert_array_equal(pixels(processor, str(COCO)), pixels(processor, coco))


def gray_16_bit(coco: Image.Image) -> np.ndarray:
    """The photo's 8-bit grey levels v as 16-bit values 257 * v, so that v / 255 == (257 * v) / 65535 exactly."""
    return np.asarray(coco.convert("L")).astype(np.uint16) * 257


def test_16_bit_pil_images_are_scaled_not_saturated(processor, coco, tmp_path):
    # PIL's convert("RGB") clips 16-bit values at 255: nearly every pixel would come out white.
    gray = np.asarray(coco.convert("L"))
    expected = pixels(processor, gray.astype(np.float32) / 255.0)
    pixels16 = gray_16_bit(coco)
    path = tmp_path / "gray16.png"
    Image.fromarray(pixels16).save(path)
    assert Image.open(path).mode == "I;16"
    big_endian = Image.fromarray(pixels16.astype(">u2"))
    assert big_endian.mode == "I;16B"
    for image in (Image.fromarray(pixels16), big_endian, str(path)):
        np.testing.assert_allclose(pixels(processor, image), expected, rtol=0, atol=1e-5)
    # ... and agrees with the 8-bit image to within float-vs-8-bit resizing.
    diff = np.abs(pixels(processor, Image.fromarray(pixels16)) - pixels(processor, coco.convert("L")))
    assert diff.max() < FLOAT_VS_UINT8_MAX and diff.mean() < FLOAT_VS_UINT8_MEAN


def test_float_pil_images_are_float_pixels(processor, coco):
    unit = np.asarray(coco.convert("L")).astype(np.float32) / 255.0
    np.testing.assert_array_equal(pixels(processor, Image.fromarray(unit, mode="F")), pixels(processor, unit))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got \[0, \d+\] \(a PIL image in mode 'F'\)"):
        processor(Image.fromarray(unit * 255, mode="F"))
    with pytest.raises(ValueError, match=r"finite.*mode 'F'"):
        processor(Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F"))


def test_32_bit_integer_pil_images_are_rejected(processor, coco):
    image = Image.fromarray(gray_16_bit(coco).astype(np.int32))
    assert image.mode == "I"
    with pytest.raises(ValueError, match=r"mode 'I' .* no defined pixel range.*np.asarray\(image\) / max_value"):
        processor(image)


def test_image_sources_keep_their_mode_until_processed(processor, coco, tmp_path):
    # Paths are opened in their stored mode: an RGBA file is composited on white like the PIL image.
    rgba = coco.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(coco.size))
    rgba.save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(pixels(processor, str(tmp_path / "rgba.png")), pixels(processor, rgba))
    with pytest.raises(ValueError, match="not an existing file, an http\\(s\\) URL or a base64"):
        processor(str(tmp_path / "missing.png"))


def test_dense_prediction_preset(coco):
    processor = HfPvtImageProcessor.for_dense_prediction(512, 640)
    assert not processor.do_center_crop and dict(processor.size) == {"height": 512, "width": 640}
    assert pixels(processor, [coco, coco.resize((100, 300))]).shape == (2, 3, 512, 640)


# ------------------------------------------------------------------------------------ segmentation


def load_label(index: int) -> np.ndarray:
    return np.asarray(Image.open(FIXTURES / f"ade20k_val_0000000{index}_label.png"))


def test_ade20k_labels_are_objectinfo150_class_ids():
    with open(FIXTURES / "ade20k_objectInfo150.csv", newline="") as f:
        names = {int(row["Idx"]): row["Name"] for row in csv.DictReader(f)}
    assert sorted(names) == list(range(1, 151))
    for index in (1, 2, 3):
        label = load_label(index)
        assert label.dtype == np.uint8 and label.ndim == 2
        assert set(np.unique(label)) <= set(range(151))  # 0 is "other", 1..150 index objectInfo150


@pytest.mark.parametrize("index", [1, 2, 3])
def test_reduce_labels_on_real_ade20k_map(index):
    label = load_label(index)
    image = Image.open(FIXTURES / f"ade20k_val_0000000{index}.jpg")
    processor = HfPvtImageProcessor(do_resize=False, do_center_crop=False, do_reduce_labels=True)
    out = processor(image, segmentation_maps=Image.fromarray(label), return_tensors="pt")
    labels = out["labels"]
    assert labels.dtype == torch.int64 and labels.shape == (1, *label.shape)
    expected = np.where(label == 0, 255, label.astype(np.int64) - 1)
    np.testing.assert_array_equal(labels[0].numpy(), expected)
    assert 255 in labels and labels[labels != 255].max() <= 149
    np.testing.assert_array_equal(
        HfPvtImageProcessor.reduce_label(np.array([0, 1, 150, 255], np.uint8)), [255, 0, 149, 255]
    )
    assert processor.reduce_label(label).dtype == label.dtype and load_label(index).min() == 0  # input untouched


@pytest.mark.parametrize("index", [1, 2, 3])
def test_segmentation_maps_follow_the_image_geometry(processor, index):
    label = load_label(index)
    image = Image.open(FIXTURES / f"ade20k_val_0000000{index}.jpg")
    out = processor(image, segmentation_maps=label, return_tensors="pt")
    np.testing.assert_allclose(out["pixel_values"][0].numpy(), reference_transform(image), rtol=0, atol=1e-5)
    assert out["labels"].shape == (1, 224, 224) and out["labels"].dtype == torch.int64
    assert set(out["labels"].unique().tolist()) <= set(np.unique(label).tolist())  # nearest: no new ids
    # Push the map itself through the image path with nearest resampling: identical crop window.
    as_image = processor(label, resample=Image.NEAREST, do_rescale=False, do_normalize=False, return_tensors="np")
    np.testing.assert_array_equal(as_image["pixel_values"][0, 0], out["labels"][0].numpy())


def test_segmentation_map_types_and_large_ids(processor):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 1000, size=(60, 80)).astype(np.int64)  # ids beyond 8 bits
    image = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    dense = HfPvtImageProcessor.for_dense_prediction(96, 128)
    expected = dense(image, segmentation_maps=label, return_tensors="pt")["labels"]
    assert set(expected.unique().tolist()) <= set(np.unique(label).tolist())
    for seg_map in (torch.from_numpy(label), label[None], label[..., None], label.astype(np.float32), [label]):
        np.testing.assert_array_equal(dense(image, segmentation_maps=seg_map, return_tensors="pt")["labels"], expected)
    small = (label % 150).astype(np.uint8)
    from_pil = dense(image, segmentation_maps=Image.fromarray(small), return_tensors="pt")["labels"]
    np.testing.assert_array_equal(from_pil, dense(image, segmentation_maps=small.astype(np.int32))["labels"][0][None])
    # A map padded by the crop is marked ignore (255), never a class.
    tiny = processor(image[:50, :50], segmentation_maps=small[:50, :50], do_resize=False, return_tensors="pt")
    assert tiny["labels"].shape == (1, 224, 224) and tiny["labels"][0, 0, 0] == 255


def test_reduce_labels_rejects_ids_that_would_become_the_ignore_index():
    image = np.zeros((2, 4, 3), np.uint8)
    seg_map = np.array([[0, 1, 255, 256]] * 2)
    processor = HfPvtImageProcessor(do_resize=False, do_center_crop=False, do_reduce_labels=True)
    with pytest.raises(ValueError, match="do_reduce_labels .* ids up to 255; this map holds ids up to 256"):
        processor(image, segmentation_maps=seg_map)
    with pytest.raises(ValueError, match="set do_reduce_labels=False"):
        HfPvtImageProcessor.reduce_label(seg_map)
    # Without the reduction every id survives, 256 included (no collision with the ignore index).
    labels = processor(image, segmentation_maps=seg_map, do_reduce_labels=False, return_tensors="pt")["labels"]
    assert labels[0, 0].tolist() == [0, 1, 255, 256]


def test_segmentation_maps_from_files_are_class_ids(tmp_path):
    # Files are read as class-id maps in their stored mode (L, P, I;16), not converted to RGB.
    processor = HfPvtImageProcessor.for_dense_prediction(32, 48)
    image = Image.open(ADE20K[0])
    label = load_label(1)
    expected = processor(image, segmentation_maps=label, return_tensors="pt")["labels"]
    path = FIXTURES / "ade20k_val_00000001_label.png"
    assert torch.equal(processor(image, segmentation_maps=str(path), return_tensors="pt")["labels"], expected)

    palette = Image.fromarray(label).convert("P")  # a palette PNG, as VOC-style datasets store masks
    palette.save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    np.testing.assert_array_equal(np.asarray(palette), label)
    from_palette = processor(image, segmentation_maps=str(tmp_path / "palette.png"), return_tensors="pt")["labels"]
    assert torch.equal(from_palette, expected)

    wide = label.astype(np.uint16) * 7 + 300  # ids beyond 8 bits, stored as a 16-bit PNG
    Image.fromarray(wide).save(tmp_path / "wide.png")
    from_file = processor(image, segmentation_maps=str(tmp_path / "wide.png"), return_tensors="pt")["labels"]
    from_array = processor(image, segmentation_maps=wide.astype(np.int64), return_tensors="pt")["labels"]
    assert torch.equal(from_file, from_array)
    assert from_file.min() >= 300

    Image.fromarray(np.asarray(image)).save(tmp_path / "colour.png")  # a colour-coded mask is still refused
    with pytest.raises(ValueError, match="2-D \\(height, width\\) array of class ids"):
        processor(image, segmentation_maps=str(tmp_path / "colour.png"))


def test_batched_segmentation_maps(processor):
    images = [Image.open(p) for p in ADE20K]
    labels = [load_label(i) for i in (1, 2, 3)]
    out = processor(images, segmentation_maps=labels, do_reduce_labels=True, return_tensors="pt")
    assert out["pixel_values"].shape == (3, 3, 224, 224) and out["labels"].shape == (3, 224, 224)
    for row, label in zip(out["labels"], labels):
        reduced = set(np.where(label == 0, 255, label.astype(np.int64) - 1).ravel().tolist())
        assert set(row.unique().tolist()) <= reduced


# ------------------------------------------------------------------------------------ post-processing


class _Outputs(dict):
    """Stands in for a model output: a mapping that also exposes `.logits`."""

    @property
    def logits(self) -> torch.Tensor:
        return self["logits"]


def test_post_process_semantic_segmentation(processor):
    logits = torch.randn(2, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    sizes = [(100, 150), (37, 61)]
    maps = processor.post_process_semantic_segmentation(_Outputs(logits=logits), target_sizes=sizes)
    assert [tuple(m.shape) for m in maps] == sizes
    assert all(m.dtype == torch.int64 for m in maps)
    manual = torch.nn.functional.interpolate(logits[1:], size=sizes[1], mode="bilinear", align_corners=False)
    assert torch.equal(maps[1], manual[0].argmax(0))
    from_tensor = processor.post_process_semantic_segmentation(_Outputs(logits=logits), torch.tensor(sizes))
    assert all(torch.equal(a, b) for a, b in zip(maps, from_tensor))
    native = processor.post_process_semantic_segmentation({"logits": logits})
    assert len(native) == 2 and native[0].shape == (16, 16) and torch.equal(native[0], logits[0].argmax(0))


def test_post_process_semantic_segmentation_accepts_tuples(processor):
    # return_dict=False gives (logits, ...) or, with labels, (loss, logits, ...).
    logits = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=logits), [(16, 12)] * 2)
    for outputs in ((logits,), (logits, (torch.zeros(1),)), (torch.tensor(0.7), logits), [logits], logits):
        maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[(16, 12)] * 2)
        assert all(torch.equal(a, b) for a, b in zip(maps, expected))
    for outputs in ({"loss": torch.tensor(1.0)}, (torch.tensor(1.0),), "logits", torch.zeros(2, 4, 8)):
        with pytest.raises(TypeError, match="logits of shape \\(batch, num_labels, height, width\\)"):
            processor.post_process_semantic_segmentation(outputs)


@pytest.mark.parametrize(
    "target_sizes",
    [None, [(5, 7), (9, 3)], torch.tensor([[5, 7], [9, 3]]), np.array([[5, 7], [9, 3]]), [torch.Size([5, 7])] * 2],
    ids=["none", "list", "tensor", "array", "torch-size"],
)
@pytest.mark.parametrize("return_segmentation_scores", [False, True])
def test_post_process_semantic_segmentation_matches_segformer(processor, target_sizes, return_segmentation_scores):
    # Code written for Transformers' segmentation processors runs unchanged and gets the same answers.
    outputs = SemanticSegmenterOutput(logits=torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(2)))
    kwargs = {"target_sizes": target_sizes, "return_segmentation_scores": return_segmentation_scores}
    ours = processor.post_process_semantic_segmentation(outputs, **kwargs)
    # (Segformer's own processor fails on a tensor or an array of target sizes in interpolate: give it lists.)
    listed = None if target_sizes is None else [tuple(int(v) for v in size) for size in target_sizes]
    theirs = SegformerImageProcessorPil().post_process_semantic_segmentation(
        outputs, target_sizes=listed, return_segmentation_scores=return_segmentation_scores
    )
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        if return_segmentation_scores:
            assert type(a) is type(b) and set(a.keys()) == {"segmentation", "segmentation_scores"}
            assert torch.equal(a.segmentation, b.segmentation) and a.segmentation.dtype == torch.int64
            torch.testing.assert_close(a.segmentation_scores, b.segmentation_scores, rtol=0, atol=1e-6)
        else:
            assert torch.equal(a, b) and a.dtype == torch.int64


def test_post_process_semantic_segmentation_transformers_common_test_patterns(processor):
    # The calls of Transformers' PostProcessSemanticSegmentationTestMixin (tests/test_image_processing_common.py).
    batch_size, num_labels, height, width = 7, 3, 18, 18
    inputs = {"outputs": SemanticSegmenterOutput(logits=torch.randn(batch_size, num_labels, height, width))}
    segmentation = processor.post_process_semantic_segmentation(**inputs)
    assert len(segmentation) == batch_size and segmentation[0].shape == (height, width)
    scored = processor.post_process_semantic_segmentation(**inputs, return_segmentation_scores=True)
    assert len(scored) == batch_size and torch.equal(scored[0].segmentation, segmentation[0])
    assert scored[0].segmentation_scores.shape == (num_labels, height, width)

    target_sizes = [(1, 4) for _ in range(batch_size)]
    resized = processor.post_process_semantic_segmentation(**inputs, target_sizes=target_sizes)
    assert resized[0].shape == target_sizes[0]
    scored = processor.post_process_semantic_segmentation(
        **inputs, target_sizes=target_sizes, return_segmentation_scores=True
    )
    assert torch.equal(scored[0].segmentation, resized[0])
    assert scored[0].segmentation_scores.shape == (num_labels,) + target_sizes[0]
    with pytest.raises(ValueError):
        processor.post_process_semantic_segmentation(**inputs, target_sizes=target_sizes + [(1, 4)])


def test_image_segmentation_pipeline(coco):
    # The real pipeline around a tiny random Segformer, with our processor doing the pre/post-processing.
    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 1],
        patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=16, num_labels=3,
    )  # fmt: skip
    model = SegformerForSemanticSegmentation(config).eval()
    segmenter = pipeline(
        "image-segmentation", model=model, image_processor=HfPvtImageProcessor.for_dense_prediction(64, 64)
    )
    results = segmenter(coco, subtask="semantic")
    assert results and all(r["mask"].size == coco.size for r in results)
    assert {r["label"] for r in results} <= set(config.id2label.values())


# ------------------------------------------------------------------------------------ serialization


def test_save_and_load_round_trip(tmp_path, coco):
    processor = HfPvtImageProcessor.for_dense_prediction(96, 128, do_reduce_labels=True, image_mean=[0.5] * 3)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": 96, "width": 128} and saved["do_center_crop"] is False
    assert saved["image_processor_type"] == "HfPvtImageProcessor" and saved["resample"] == Image.BICUBIC
    loaded = HfPvtImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    label = load_label(1)
    image = Image.open(ADE20K[0])
    a = processor(image, segmentation_maps=label, return_tensors="pt")
    b = loaded(image, segmentation_maps=label, return_tensors="pt")
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])

    default_dir = tmp_path / "default"
    HfPvtImageProcessor().save_pretrained(default_dir)
    np.testing.assert_array_equal(
        pixels(HfPvtImageProcessor.from_pretrained(default_dir), coco), pixels(HfPvtImageProcessor(), coco)
    )


def test_file_is_self_contained_for_remote_code(tmp_path, coco):
    # The standard library and Transformers' own dependencies, plus its input checks and the heads' post-processing
    # beside their models (relative imports, which save_pretrained and trust_remote_code carry along).
    allowed = {"transformers", "huggingface_hub", "numpy", "PIL", "torch", "typing", "io", "os", "urllib", "base64"}
    allowed.add("binascii")
    source = Path(image_processing_module.__file__).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.level == 1 and node.module in (
                    "image_checks_hf_pvt", "retinanet_hf_pvt", "instance_masks_hf_pvt", "semantic_fpn_hf_pvt"
                )  # fmt: skip
            else:
                assert node.module.split(".")[0] in allowed
        elif isinstance(node, ast.Import):
            assert all(alias.name.split(".")[0] in allowed for alias in node.names)

    # A Hub-style folder as save_pretrained writes it: import it the way trust_remote_code does. (Auto
    # classes would pick the registered local class here, since importing hf_pvt registers it.)
    folder = tmp_path / "hub_folder"
    HfPvtImageProcessor.for_object_detection().save_pretrained(folder)
    assert {"image_processing_hf_pvt.py", "retinanet_hf_pvt.py"} <= {f.name for f in folder.iterdir()}
    remote_class = get_class_from_dynamic_module("image_processing_hf_pvt.HfPvtImageProcessor", folder)
    assert remote_class is not HfPvtImageProcessor and not remote_class.__module__.startswith("hf_pvt")
    remote = remote_class.from_pretrained(folder)
    local = HfPvtImageProcessor.for_object_detection()
    np.testing.assert_array_equal(pixels(remote, coco), pixels(local, coco))
    np.testing.assert_array_equal(pixels(remote, coco, do_center_crop=True), pixels(local, coco, do_center_crop=True))
    # Post-processing runs on the folder's copy of the detection ops.
    generator = torch.Generator().manual_seed(0)
    outputs = {
        "logits": (torch.randn(1, 2 * 3, 4, 4, generator=generator),),
        "pred_box_deltas": (torch.randn(1, 2 * 4, 4, 4, generator=generator) / 10,),
        "anchors": (torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 16.0, 8.0]]).repeat(16, 1) + 4,),
        "image_sizes": torch.tensor([[32, 32]]),
    }
    (a,) = remote.post_process_object_detection(outputs, 0.3, target_sizes=[(64, 48)])
    (b,) = local.post_process_object_detection(outputs, 0.3, target_sizes=[(64, 48)])
    assert len(a["scores"]) > 0 and all(torch.equal(a[key], b[key]) for key in ("scores", "labels", "boxes"))


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "images, error, message",
    [
        ([], ValueError, "empty list"),
        (42, TypeError, "Unsupported image type int"),
        ({"pixel_values": 1}, TypeError, "Unsupported image type dict"),
        (np.zeros((32, 32, 2), np.uint8), ValueError, r"1 \(grayscale\), 3 \(RGB\) or 4 \(RGBA\) channels"),
        (np.zeros((5, 32, 32), np.uint8), ValueError, "got shape \\(5, 32, 32\\)"),
        (np.zeros((2, 2, 3, 32, 32), np.uint8), ValueError, "2-D .* or 3-D"),
        (
            np.full((32, 32, 3), 255.0, np.float32),
            ValueError,
            r"Float pixel values must lie in \[0, 1\].*divide by 255",
        ),
        (np.full((32, 32, 3), -1.0, np.float32), ValueError, "must not be normalized already"),
        (np.full((32, 32, 3), 300, np.int32), ValueError, r"Integer pixel values must lie in \[0, 255\]"),
        (np.zeros((32, 32, 3), bool), ValueError, "Unsupported pixel dtype bool"),
        (np.full((32, 32, 3), np.nan, np.float32), ValueError, "must be finite, got NaN or infinity"),
        (torch.full((3, 32, 32), float("inf")), ValueError, "must be finite, got NaN or infinity"),
        (np.where(np.eye(32)[..., None] > 0, np.nan, 0.5).repeat(3, -1), ValueError, "must be finite"),
        (np.zeros((0, 32, 3), np.uint8), ValueError, r"size \(0, 32\) \(height, width\).*at least one pixel"),
        (np.zeros((32, 0), np.float32), ValueError, r"size \(32, 0\) \(height, width\)"),
        (Image.new("RGB", (0, 7)), ValueError, r"size \(7, 0\) \(height, width\)"),
        (np.full((32, 32), 1000, np.uint16), ValueError, r"pixels / 65535"),
    ],
)
def test_bad_images_raise_clear_errors(processor, images, error, message):
    with pytest.raises(error, match=message):
        processor(images)


def test_bad_arguments_raise_clear_errors(processor, coco):
    with pytest.raises(ValueError, match="shortest_edge.*height.*width"):
        HfPvtImageProcessor(size={"longest_edge": 300})
    with pytest.raises(ValueError, match="shortest_edge.*height.*width"):
        processor(coco, size={"max_height": 100, "max_width": 100})
    with pytest.raises(ValueError, match="different sizes .* cannot be stacked"):
        processor([coco, coco.resize((200, 300))], do_center_crop=False, return_tensors="pt")
    with pytest.raises(ValueError, match="2 images but 1 segmentation maps"):
        processor([coco, coco], segmentation_maps=[np.zeros((480, 640), np.uint8)])
    with pytest.raises(ValueError, match="does not match its image"):
        processor(coco, segmentation_maps=np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match="2-D \\(height, width\\) array of class ids"):
        processor(coco, segmentation_maps=np.zeros((480, 640, 3), np.uint8))
    with pytest.raises(ValueError, match="integer class ids"):
        processor(coco, segmentation_maps=np.full((480, 640), 0.5))
    with pytest.raises(ValueError, match="one \\(height, width\\) per image"):
        processor.post_process_semantic_segmentation({"logits": torch.zeros(2, 3, 4, 4)}, target_sizes=[(8, 8)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 0}, r"size must hold positive integers, got \{'shortest_edge': 0\}"),
        ({"size": -3}, r"size must hold positive integers, got \{'shortest_edge': -3\}"),
        ({"size": {"height": 0, "width": 64}}, "size must hold positive integers"),
        ({"crop_size": 0}, r"crop_size must be \{\"height\": h, \"width\": w\} with positive integers"),
        ({"crop_size": {"height": -1, "width": 8}}, "crop_size must be .* positive integers"),
    ],
)
def test_non_positive_sizes_raise_at_construction_and_call(coco, kwargs, message):
    with pytest.raises(ValueError, match=message):
        HfPvtImageProcessor(**kwargs)
    with pytest.raises(ValueError, match=message):
        HfPvtImageProcessor()(coco, **kwargs)


def test_mistyped_arguments_raise_type_errors(processor, coco):
    with pytest.raises(TypeError, match="size"):
        processor(coco, size={"shortest_edge": 2.5})
    with pytest.raises(TypeError, match="size"):
        processor(coco, size={"shortest_edge": True})
    with pytest.raises(TypeError, match="do_reduce_labels"):
        processor(coco, do_reduce_labels="yes")
    with pytest.raises(ValueError, match="target_sizes must be a \\(height, width\\) pair of positive integers"):
        processor.post_process_semantic_segmentation({"logits": torch.zeros(1, 3, 4, 4)}, target_sizes=[(0, 8)])
    with pytest.raises(ValueError, match="target_sizes must be a \\(height, width\\) pair"):
        processor.post_process_semantic_segmentation({"logits": torch.zeros(1, 3, 4, 4)}, target_sizes=[(8.5, 8)])

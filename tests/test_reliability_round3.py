"""Issue 20 (reliability, round three): each reported failure, as a test of the behaviour that replaces it.

Every bad input gets a ValueError/TypeError naming the problem and the fix; nothing is half-written; sources are
never touched; no silent wrong result. The converter's class names, the detector's labels and empty batches, the
detection processor's ids, post-processing inputs, `min_input_size` on every model, and batched pipelines.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config
from reference_retinanet import RetinaNetReference, mmdet_checkpoint, random_retinanet_
from transformers import pipeline

from hf_pvt import (
    HfPvtBackbone,
    HfPvtConfig,
    HfPvtForImageClassification,
    HfPvtForObjectDetection,
    HfPvtForSemanticSegmentation,
    HfPvtImageProcessor,
    HfPvtModel,
)
from hf_pvt.conversion.cli import main as convert_main

HEAD = {"decoder_hidden_size": 32, "decoder_head_size": 32, "detection_feat_channels": 32, "detection_num_convs": 1,
        "num_labels": 3, "depths": [1, 1, 1, 1]}


@pytest.fixture(scope="module")
def detector() -> HfPvtForObjectDetection:
    torch.manual_seed(0)
    return HfPvtForObjectDetection(tiny_config("v2", **HEAD)).eval()


def boxes(count: int = 1) -> dict:
    return {"boxes": torch.tensor([[0.5, 0.5, 0.25, 0.25]] * count), "class_labels": torch.tensor([1] * count)}


# ------------------------------------------------------------------------------------ item 2: class names


def tiny_mmdet_retinanet(num_classes: int, seed: int = 0) -> RetinaNetReference:
    backbone = {"embed_dims": [16, 32, 48, 64], "num_heads": [1, 2, 3, 4], "depths": [1, 1, 1, 1],
                "mlp_ratios": [2, 2, 2, 2], "sr_ratios": [8, 4, 2, 1], "img_size": 64, "version": 2}
    reference = RetinaNetReference(backbone, num_classes=num_classes, fpn_channels=16, feat_channels=16,
                                   stacked_convs=1)
    return random_retinanet_(reference, seed)


def run_converter(*args: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = convert_main([str(a) for a in args])
    return code, stdout.getvalue(), stderr.getvalue()


def save_detector(path: Path, num_classes: int, class_names=None, edit=None) -> Path:
    checkpoint = mmdet_checkpoint(tiny_mmdet_retinanet(num_classes))
    if class_names is not None:
        checkpoint["meta"]["CLASSES"] = class_names
    if edit is not None:
        edit(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    "names, problem",
    [
        ([f"c{i}" for i in range(2)], "lists 2 names but the head predicts 3 classes"),
        ([f"c{i}" for i in range(4)], "lists 4 names"),
        ([0, 1, 2], "not strings"),
        ("c0", "is a str, not a list"),
        ({"a": 1}, "is a dict"),
        (["cat", "cat", "dog"], "'cat' more than once"),  # duplicates: id2label and label2id would disagree
        (["cat", " ", "dog"], "empty class name"),
    ],
)
def test_class_names_that_do_not_fit_are_not_used(tmp_path, names, problem):
    """Decision for item 2: names that do not fit the head are not used (a printed note says why), no dataset's names
    are assumed instead, the maps are one to one and the card claims nothing."""
    checkpoint = save_detector(tmp_path / "retinanet.pth", 3, names)
    before = checkpoint.read_bytes()
    code, out, err = run_converter(checkpoint, tmp_path / "out", "--num-heads", "1,2,3,4")
    assert code == 0, err
    notes = [line for line in out.splitlines() if line.startswith("note:") and "CLASSES" in line]
    assert len(notes) == 1 and problem in notes[0] and "LABEL_0..LABEL_2" in notes[0], out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {str(i): f"LABEL_{i}" for i in range(3)}
    assert config["label2id"] == {f"LABEL_{i}": i for i in range(3)}
    assert "box AP" not in (tmp_path / "out" / "README.md").read_text()
    assert checkpoint.read_bytes() == before


def test_eighty_classes_with_seventy_nine_names_claim_nothing(tmp_path):
    """The issue's case: an 80-class detector whose meta lists 79 names gets neither COCO's names nor its box AP."""
    from hf_pvt.conversion.coco_labels import COCO_DETECTION_LABELS
    from hf_pvt.conversion.convert import convert

    checkpoint = save_detector(tmp_path / "retinanet.pth", 80, list(COCO_DETECTION_LABELS[:79]))
    conversion = convert(checkpoint, num_heads=[1, 2, 3, 4])
    assert any("lists 79 names but the head predicts 80 classes" in note for note in conversion.notes)
    assert conversion.model.config.id2label[15] == "LABEL_15" and not conversion.authors_weights
    code, out, _ = run_converter(checkpoint, tmp_path / "out", "--num-heads", "1,2,3,4")
    assert code == 0 and "claims no published results" in out
    card = (tmp_path / "out" / "README.md").read_text()
    assert "box AP" not in card and "COCO 2017" not in card


def test_names_with_spaces_are_trimmed_and_the_maps_agree(tmp_path):
    names = ["square ", "circle", " triangle"]
    code, out, err = run_converter(save_detector(tmp_path / "r.pth", 3, tuple(names)), tmp_path / "out",
                                   "--num-heads", "1,2,3,4")
    assert code == 0, err
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "square", "1": "circle", "2": "triangle"}
    assert config["label2id"] == {"square": 0, "circle": 1, "triangle": 2}
    assert "CLASSES" not in out


def test_transformers_folder_with_repeated_names_gets_one_to_one_maps(tmp_path):
    """A classifier's config.json whose id2label repeats a name: the maps would disagree, so the names are not used."""
    from transformers import PvtV2Config, PvtV2ForImageClassification

    config = PvtV2Config(hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 3, 4], depths=[1, 1, 1, 1],
                         mlp_ratios=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1], num_labels=3,
                         id2label={0: "crane", 1: "crane", 2: "dog"}, label2id={"crane": 1, "dog": 2})
    PvtV2ForImageClassification(config).save_pretrained(tmp_path / "source")
    code, out, err = run_converter(tmp_path / "source", tmp_path / "out")
    assert code == 0, err
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["id2label"] == {str(i): f"LABEL_{i}" for i in range(3)}
    assert {v: int(k) for k, v in saved["id2label"].items()} == saved["label2id"]
    assert "'crane' repeated" in out


# ------------------------------------------------------------------------- item 10c: automatic detection


@pytest.mark.parametrize("missing", ["bbox_head.retina_reg.weight", "bbox_head.retina_cls.weight"])
def test_retinanet_missing_one_head_tensor_is_an_error_not_a_backbone(tmp_path, missing):
    checkpoint = save_detector(tmp_path / "r.pth", 3, edit=lambda c: c["state_dict"].pop(missing))
    code, _, err = run_converter(checkpoint, tmp_path / "out", "--num-heads", "1,2,3,4")
    assert code == 1 and missing in err, err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- item 5: empty batches


def test_detector_empty_batch_with_empty_labels(detector):
    outputs = detector(pixel_values=torch.randn(0, 3, 64, 64), labels=[])
    assert outputs.logits.shape[0] == 0 and outputs.image_sizes.shape == (0, 2)
    assert outputs.loss is not None and outputs.loss.item() == 0.0
    assert HfPvtImageProcessor.for_object_detection().post_process_object_detection(outputs) == []


def test_detector_empty_batch_loss_backpropagates():
    torch.manual_seed(0)
    model = HfPvtForObjectDetection(tiny_config("v2", **HEAD)).train()
    model(pixel_values=torch.randn(0, 3, 64, 64), labels=[]).loss.backward()


# ---------------------------------------------------------------------------------- item 8: detector labels


@pytest.mark.parametrize(
    "target, words",
    [
        ({"boxes": torch.rand(1, 4), "class_labels": None}, ("class_labels",)),
        ({"boxes": None, "class_labels": torch.tensor([1])}, ("boxes",)),
        ({"boxes": torch.rand(1, 4), "class_labels": torch.tensor([1 + 0j])}, ("class_labels", "complex")),
        ({"boxes": torch.rand(1, 4), "class_labels": torch.tensor([2**63 + 1], dtype=torch.uint64)},
         ("class_labels", "9223372036854775809")),
        ({"boxes": torch.rand(1, 4), "class_labels": torch.tensor([True])}, ("class_labels", "bool")),
        ({"boxes": torch.rand(1, 4), "class_labels": ["cat"]}, ("class_labels",)),
        ({"boxes": torch.rand(1, 4).to(torch.complex64), "class_labels": torch.tensor([1])}, ("boxes", "complex")),
        ({"boxes": [["a", "b", "c", "d"]], "class_labels": torch.tensor([1])}, ("boxes",)),
        ({"boxes": torch.tensor([[0.5, 0.5, 3e38, 3e38]]), "class_labels": torch.tensor([1])},
         ("boxes", "normalised")),
        ({"boxes": torch.tensor([[100.0, 80.0, 40.0, 30.0]]), "class_labels": torch.tensor([1])}, ("boxes", "pixel")),
    ],
)
def test_bad_detection_labels_are_named(detector, target, words):
    with pytest.raises((ValueError, TypeError)) as error:
        detector(torch.randn(1, 3, 64, 64), labels=[target])
    message = str(error.value)
    assert all(word in message for word in words), message


def test_uint64_class_ids_in_range_are_accepted(detector):
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]]), "class_labels": torch.tensor([2], dtype=torch.uint64)}
    loss = detector(torch.randn(1, 3, 64, 64), labels=[target]).loss
    assert torch.isfinite(loss)


def test_numpy_and_three_d_pixel_values_with_labels(detector):
    """The encoder's own check comes first, whatever the labels: a clear error naming pixel_values."""
    pixels = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    for wrong in (pixels, pixels[0], torch.from_numpy(pixels[0])):
        with pytest.raises((ValueError, TypeError), match="pixel_values"):
            detector(wrong, labels=[boxes()])
    assert torch.isfinite(detector(torch.from_numpy(pixels), labels=[boxes()]).loss)


# ----------------------------------------------------------------------------- item 9: processor ids


@pytest.mark.parametrize("field", ["category_id", "image_id"])
@pytest.mark.parametrize("value", [2**63, 2**64, np.uint64(2**63), -(2**63) - 1])
def test_processor_ids_beyond_int64_are_value_errors(field, value):
    processor = HfPvtImageProcessor.for_object_detection(size={"shortest_edge": 64, "longest_edge": 96})
    annotation = {"bbox": [1, 1, 5, 5], "category_id": 1}
    target = {"image_id": 1, "annotations": [annotation]}
    (annotation if field == "category_id" else target)[field] = value
    with pytest.raises(ValueError, match=field):
        processor(np.zeros((60, 80, 3), np.uint8), annotations=target, return_tensors="pt")


def test_processor_largest_int64_ids_are_kept():
    processor = HfPvtImageProcessor.for_object_detection(size={"shortest_edge": 64, "longest_edge": 96})
    target = {"image_id": 2**63 - 1, "annotations": [{"bbox": [1, 1, 5, 5], "category_id": 2**62}]}
    labels = processor(np.zeros((60, 80, 3), np.uint8), annotations=target, return_tensors="pt")["labels"][0]
    assert int(labels["image_id"][0]) == 2**63 - 1 and int(labels["class_labels"][0]) == 2**62


# ----------------------------------------------------------------------- item 10b, 10d: wrong inputs


def test_post_processing_refuses_logits_of_the_wrong_width(detector):
    processor = HfPvtImageProcessor.for_object_detection()
    outputs = detector(torch.randn(1, 3, 64, 64))
    for name in ("logits", "pred_box_deltas", "anchors"):
        with pytest.raises(ValueError, match=name):
            processor.post_process_object_detection({**outputs, name: outputs[name][:, :-1]})
    with pytest.raises(ValueError, match="logits"):
        processor.post_process_object_detection({**outputs, "logits": outputs.logits[..., :0]})
    with pytest.raises(ValueError, match="pred_box_deltas"):
        processor.post_process_object_detection({**outputs, "pred_box_deltas": outputs.pred_box_deltas[..., :3]})


@pytest.mark.parametrize("name", [None, 2, b"pvt-v2-b0", ["pvt-v2-b0"]])
def test_from_preset_with_a_non_string_name(name):
    with pytest.raises(TypeError, match="preset"):
        HfPvtConfig.from_preset(name)


# ------------------------------------------------------------------------------- item 13: min_input_size


@pytest.mark.parametrize("member", ["v1", "v2", "v2-linear"])
def test_every_model_has_min_input_size(member):
    config = tiny_config(member, **HEAD)
    encoder = HfPvtModel(config, dense_prediction=True).min_input_size
    for model_class in (HfPvtModel, HfPvtBackbone, HfPvtForImageClassification, HfPvtForSemanticSegmentation,
                        HfPvtForObjectDetection):
        with torch.device("meta"):
            model = model_class(config)
        assert model.min_input_size == HfPvtModel(config).min_input_size == encoder, model_class.__name__


# ------------------------------------------------------------------------ items 12 and 15: pipelines


def random_image(height: int, width: int, seed: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@contextlib.contextmanager
def transformers_errors():
    """The ERROR records Transformers logs meanwhile."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler, logger = Collect(level=logging.ERROR), logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def same_detections(first: list, second: list) -> bool:
    if [d["label"] for d in first] != [d["label"] for d in second] or len(first) != len(second):
        return False
    return all(abs(a["score"] - b["score"]) < 1e-5 and a["box"] == b["box"] for a, b in zip(first, second))


@pytest.fixture(scope="module")
def detector_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("detector")
    torch.manual_seed(0)
    model = HfPvtForObjectDetection(tiny_config("v2", **HEAD))
    with torch.no_grad():
        model.bbox_head.retina_cls.bias.fill_(0.0)  # scores near 0.5, so that many detections pass the threshold
    model.save_pretrained(folder)
    HfPvtImageProcessor.for_object_detection(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    return folder


def test_object_detection_pipeline_batches_images_of_different_sizes(detector_folder):
    with transformers_errors() as errors:
        detect = pipeline("object-detection", model=str(detector_folder))
    assert not [r for r in errors if "not supported" in r.getMessage()], [r.getMessage()[:200] for r in errors]
    images = [random_image(60, 80, 0), random_image(90, 50, 1), random_image(60, 80, 2), random_image(33, 97, 3),
              random_image(70, 70, 4)]
    one_by_one = detect(images, threshold=0.3)
    assert all(one_by_one) and len(one_by_one) == len(images)
    for batch_size in (2, 3, 5):
        batched = detect(images, threshold=0.3, batch_size=batch_size)
        assert all(same_detections(a, b) for a, b in zip(one_by_one, batched, strict=True)), batch_size
    # Same-size images too (the per-level outputs used to be split by level instead of by image).
    same = [random_image(60, 80, 5), random_image(60, 80, 6)]
    assert all(same_detections(a, b) for a, b in zip(detect(same, threshold=0.3),
                                                     detect(same, threshold=0.3, batch_size=2), strict=True))


def test_detector_results_do_not_depend_on_the_batch(detector_folder):
    """In evaluation, each image is computed at its own padded size: batch padding changes nothing."""
    model = HfPvtForObjectDetection.from_pretrained(detector_folder).eval()
    processor = HfPvtImageProcessor.from_pretrained(detector_folder)
    images = [random_image(60, 80, 0), random_image(90, 50, 1)]
    with torch.no_grad():
        alone = [processor.post_process_object_detection(model(**processor(image, return_tensors="pt")),
                                                         threshold=0.3)[0] for image in images]
        together = processor.post_process_object_detection(model(**processor(images, return_tensors="pt")),
                                                           threshold=0.3)
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["scores"], b["scores"], atol=1e-5)
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3)


@pytest.fixture(scope="module")
def segmenter_folder(tmp_path_factory):
    """A Semantic FPN folder with the authors' test transform, scaled down, padding every image to one canvas."""
    folder = tmp_path_factory.mktemp("segmenter")
    torch.manual_seed(0)
    HfPvtForSemanticSegmentation(tiny_config("v2", **{**HEAD, "num_labels": 5})).eval().save_pretrained(folder)
    processor = HfPvtImageProcessor.for_semantic_segmentation(
        size={"shortest_edge": 64, "longest_edge": 128}, do_pad=True
    )
    assert dict(processor.pad_size) == {"height": 128, "width": 128}
    processor.save_pretrained(folder)
    return folder


def test_image_segmentation_pipeline_batches_images_of_different_sizes(segmenter_folder):
    with transformers_errors() as errors:
        segment = pipeline("image-segmentation", model=str(segmenter_folder))
    assert not [r for r in errors if "not supported" in r.getMessage()], [r.getMessage()[:200] for r in errors]
    images = [random_image(60, 80, 0), random_image(90, 50, 1), random_image(33, 97, 2), random_image(70, 70, 3)]
    one_by_one = segment(images)
    for batch_size in (2, 4):
        batched = segment(images, batch_size=batch_size)
        for alone, together in zip(one_by_one, batched, strict=True):
            assert [s["label"] for s in alone] == [s["label"] for s in together]
            for a, b in zip(alone, together):
                assert np.array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))


def test_semantic_maps_do_not_depend_on_the_batch(segmenter_folder):
    model = HfPvtForSemanticSegmentation.from_pretrained(segmenter_folder).eval()
    processor = HfPvtImageProcessor.from_pretrained(segmenter_folder)
    images = [random_image(60, 80, 0), random_image(90, 50, 1)]
    sizes = [image.size[::-1] for image in images]
    with torch.no_grad():
        alone = [processor.post_process_semantic_segmentation(model(**processor(image, return_tensors="pt")),
                                                              target_sizes=[size])[0]
                 for image, size in zip(images, sizes)]
        outputs = model(**processor(images, return_tensors="pt"))
        together = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
        unpadded = model(**HfPvtImageProcessor.from_pretrained(segmenter_folder, do_pad=False)(images[0],
                                                                                              return_tensors="pt"))
    assert outputs.logits_sizes.tolist() == [[16, 24], [32, 16]]  # 64x96 and 128x64 inputs, stride 4
    assert unpadded.logits_sizes is None and unpadded.logits.shape[-2:] == (16, 24)
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b)


def test_semantic_loss_over_padding_counts_each_images_own_pixels(segmenter_folder):
    """In evaluation a padded batch's loss is the mean over each image's own labelled pixels, as one batch alone."""
    model = HfPvtForSemanticSegmentation.from_pretrained(segmenter_folder).eval()
    processor = HfPvtImageProcessor.from_pretrained(segmenter_folder)
    images = [random_image(60, 80, 0), random_image(90, 50, 1)]
    maps = [np.random.default_rng(i).integers(1, 6, im.size[::-1]).astype(np.uint8) for i, im in enumerate(images)]
    with torch.no_grad():
        together = model(**processor(images, segmentation_maps=maps, return_tensors="pt")).loss
        terms = []
        for image, seg in zip(images, maps):
            inputs = processor(image, segmentation_maps=seg, return_tensors="pt")
            terms.append((model(**inputs).loss, int((inputs["labels"] != 255).sum())))
    expected = sum(loss * count for loss, count in terms) / sum(count for _, count in terms)
    assert torch.allclose(together, expected, atol=1e-5)


# ----------------------------------------------------------------- item 14: advice for hf_pvt state dicts


def test_a_bare_hf_pvt_state_dict_gets_advice_that_works(tmp_path):
    """The converter used to say "load it with from_pretrained", which cannot read a bare .pth. Its advice now
    works as written: build the model, load the state dict, save the folder."""
    torch.manual_seed(0)
    config = tiny_config("v2", depths=[1, 1, 1, 1])
    model = HfPvtForImageClassification(config)
    torch.save(model.state_dict(), tmp_path / "hf_pvt_layout.pth")
    code, _, err = run_converter(tmp_path / "hf_pvt_layout.pth", tmp_path / "out")
    assert code == 1 and err.count("error:") == 1 and "load_state_dict" in err and "save_pretrained" in err, err
    assert not (tmp_path / "out").exists()
    # Following it.
    rebuilt = HfPvtForImageClassification(config)
    rebuilt.load_state_dict(torch.load(tmp_path / "hf_pvt_layout.pth", weights_only=True))
    rebuilt.save_pretrained(tmp_path / "folder")
    loaded = HfPvtForImageClassification.from_pretrained(tmp_path / "folder")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_detector_refuses_hidden_states_across_sizes_and_trains_batched():
    """Evaluation runs each padded size on its own, so hidden states of mixed sizes cannot stack: a clear error.
    Training runs the padded batch as one (MMDetection's training), where they can."""
    torch.manual_seed(0)
    model = HfPvtForObjectDetection(tiny_config("v2", **HEAD)).eval()
    pixel_mask = torch.zeros(2, 96, 96, dtype=torch.long)
    pixel_mask[0, :64, :96] = 1
    pixel_mask[1, :96, :40] = 1
    pixel_values = torch.randn(2, 3, 96, 96)
    with torch.no_grad(), pytest.raises(ValueError, match="output_hidden_states"):
        model(pixel_values, pixel_mask=pixel_mask, output_hidden_states=True)
    with torch.no_grad():
        assert model(pixel_values[:1], pixel_mask=pixel_mask[:1], output_hidden_states=True).hidden_states
    model.train()
    outputs = model(pixel_values, pixel_mask=pixel_mask, labels=[boxes(), boxes(2)], output_hidden_states=True)
    assert outputs.hidden_states and torch.isfinite(outputs.loss)
    assert outputs.spatial_shapes[0, 0].tolist() == [12, 12]  # the canvas cropped to the largest padded image: 96x96


def test_detr_outputs_get_pointed_to_detrs_processor():
    """Item 14: a DETR folder saved with HfPvtImageProcessor broke its pipeline deep inside; the error now says why."""
    detr_like = {"logits": torch.randn(1, 10, 4), "pred_boxes": torch.rand(1, 10, 4)}
    with pytest.raises(TypeError, match="DetrImageProcessorPil"):
        HfPvtImageProcessor.for_object_detection().post_process_object_detection(detr_like)


REMOTE_PIPELINE = """
import importlib.abc, sys


class NoHfPvt(importlib.abc.MetaPathFinder):  # a Python where hf_pvt is not installed
    def find_spec(self, name, path=None, target=None):
        if name == "hf_pvt" or name.startswith("hf_pvt."):
            raise ModuleNotFoundError(name)


sys.meta_path.insert(0, NoHfPvt())
import numpy as np, PIL.Image
from transformers import pipeline

images = [PIL.Image.fromarray(np.full(shape, 90, np.uint8)) for shape in [(60, 80, 3), (90, 50, 3)]]
detect = pipeline("object-detection", model=sys.argv[1], trust_remote_code=True)
print(len(detect(images, threshold=0.3, batch_size=2)), "hf_pvt" in sys.modules)
"""


def test_pipeline_log_is_clean_where_hf_pvt_is_not_installed(detector_folder, tmp_path):
    """Item 15 with trust_remote_code: the folder's own configuration module names its heads for the pipeline."""
    import subprocess
    import sys

    script = tmp_path / "remote.py"
    script.write_text(REMOTE_PIPELINE)
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, str(script), str(detector_folder)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["2", "False"]
    assert "is not supported" not in result.stderr, result.stderr[-3000:]

"""HfPvtForSemanticSegmentation (Semantic FPN) on real ADE20K validation samples: head structure against a plain
functional re-computation, label handling, fitting, post-processing sizes, the pipeline, remote code and the
fine-tuning example."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES, tiny_config
from PIL import Image
from sklearn.metrics import jaccard_score
from transformers import AutoModelForSemanticSegmentation, pipeline

from hf_pvt import HfPvtForImageClassification, HfPvtForSemanticSegmentation, HfPvtImageProcessor

REPO = FIXTURES.parent.parent
IMAGES = [FIXTURES / f"ade20k_val_0000000{i}.jpg" for i in (1, 2, 3)]
LABELS = [FIXTURES / f"ade20k_val_0000000{i}_label.png" for i in (1, 2, 3)]
HEAD = {"decoder_hidden_size": 32, "decoder_head_size": 32}


def ade_names() -> dict[int, str]:
    """Reduced ADE20K ids (0..149) -> class names from objectInfo150.csv, as the example script reads them."""
    return load_example().read_label_names(FIXTURES / "ade20k_objectInfo150.csv", 150, reduce_labels=True)


def seg_model(member: str = "v2", **overrides) -> HfPvtForSemanticSegmentation:
    names = ade_names()
    torch.manual_seed(0)
    config = tiny_config(
        member, depths=[1, 1, 1, 1], num_labels=150, id2label=names, label2id={v: k for k, v in names.items()}
    )
    for key, value in {**HEAD, **overrides}.items():
        setattr(config, key, value)
    return HfPvtForSemanticSegmentation(config)


def load_example():
    path = REPO / "examples" / "run_semantic_segmentation.py"
    spec = importlib.util.spec_from_file_location("run_semantic_segmentation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def semantic_fpn_by_hand(model: HfPvtForSemanticSegmentation, feature_maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The Semantic FPN written out with functional ops on the model's weights (eval mode: no dropout)."""
    neck, head = model.neck, model.decode_head
    laterals = [F.conv2d(x, conv.weight, conv.bias) for x, conv in zip(feature_maps, neck.lateral_convs)]
    for i in (3, 2, 1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
    pyramid = [F.conv2d(x, conv.weight, conv.bias, padding=1) for x, conv in zip(laterals, neck.fpn_convs)]
    total = 0
    for level, (x, scale_head) in enumerate(zip(pyramid, head.scale_heads)):
        assert len(scale_head) == [1, 1, 2, 3][level]
        for layer in scale_head:
            x = F.conv2d(x, layer.conv.weight, None, padding=1)
            x = F.relu(F.group_norm(x, 32, layer.norm.weight, layer.norm.bias, layer.norm.eps))
            if level > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        total = x if level == 0 else total + F.interpolate(x, size=total.shape[-2:], mode="bilinear")
    return F.conv2d(total, head.classifier.weight, head.classifier.bias)


@pytest.mark.parametrize("member", ["v1", "v2"])
@pytest.mark.parametrize("size", [(128, 96), (100, 75)])
def test_semantic_fpn_matches_functional_computation(member, size):
    # The GroupNorm head; the BatchNorm head is checked against MMSegmentation's in test_semantic_fpn_parity.py.
    model = seg_model(member, semantic_head_norm="group_norm").eval()
    with torch.no_grad():
        for parameter in model.parameters():  # GroupNorm 1/0 and zero biases would hide mix-ups
            parameter.add_(torch.randn_like(parameter) * 0.05)
        pixel_values = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
        logits = model(pixel_values).logits
        feature_maps = model.pvt(pixel_values).feature_maps
        expected = semantic_fpn_by_hand(model, feature_maps)
    # Logits at stride 4: the size of the first feature map.
    assert logits.shape == (1, 150, *feature_maps[0].shape[-2:])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("member", ["v1", "v2"])
def test_classification_checkpoint_loads_into_segmentation(member, tmp_path):
    classifier = HfPvtForImageClassification(tiny_config(member, depths=[1, 1, 1, 1]))
    classifier.save_pretrained(tmp_path)
    model, info = HfPvtForSemanticSegmentation.from_pretrained(
        tmp_path, num_labels=150, output_loading_info=True, **HEAD
    )
    assert not any(key.startswith("pvt.") for key in info["missing_keys"])
    assert all(key.startswith(("neck.", "decode_head.")) for key in info["missing_keys"])
    encoder = model.pvt.state_dict()
    for key, value in classifier.pvt.state_dict().items():
        if key in encoder:
            assert torch.equal(encoder[key], value), key
    # v1's classification-only tensors are the only encoder weights left behind.
    left_out = set(classifier.pvt.state_dict()) - set(encoder)
    v1_only = {"stages.3.cls_token", "stages.3.norm.weight", "stages.3.norm.bias"}
    assert left_out == (v1_only if member == "v1" else set())


@pytest.mark.parametrize("index", [0, 1, 2])
def test_reduce_labels_on_real_labels(index):
    label = np.asarray(Image.open(LABELS[index]))
    processor = HfPvtImageProcessor.for_dense_prediction(*label.shape, do_reduce_labels=True)
    reduced = processor(Image.open(IMAGES[index]), segmentation_maps=Image.open(LABELS[index]))["labels"][0]
    assert reduced.shape == label.shape
    assert np.array_equal(reduced == 255, label == 0)
    assert np.array_equal(reduced[label > 0], label[label > 0].astype(np.int64) - 1)
    # Reduced ids index the 150 objectInfo150 classes; e.g. every sample shows "wall" (Idx 1 -> 0) or "sky".
    names = ade_names()
    present = {names[i] for i in np.unique(reduced[reduced != 255])}
    assert present & {"wall", "sky", "building"}


def test_output_sizes_after_post_processing():
    model = seg_model("v2").eval()
    processor = HfPvtImageProcessor(size={"shortest_edge": 64}, do_center_crop=False)
    sizes = set()
    for path in IMAGES:
        image = Image.open(path)
        inputs = processor(image, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        assert outputs.logits.shape[-2:] == tuple(-(-s // 4) for s in inputs["pixel_values"].shape[-2:])
        (segmentation,) = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])
        assert segmentation.shape == (image.height, image.width)
        sizes.add(segmentation.shape)
    assert len(sizes) == 3


def fit_three_samples(member: str, steps: int) -> tuple[HfPvtForSemanticSegmentation, dict, list[float]]:
    processor = HfPvtImageProcessor.for_dense_prediction(96, 96, do_reduce_labels=True)
    batch = processor(
        [Image.open(p) for p in IMAGES], segmentation_maps=[Image.open(p) for p in LABELS], return_tensors="pt"
    )
    model = seg_model(member).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return model.eval(), batch, losses


def test_loss_falls_when_fitting_three_real_samples():
    model, batch, losses = fit_three_samples("v2", steps=20)
    # Near-uniform start (small classifier init): about log(150) = 5.01.
    assert abs(losses[0] - np.log(150)) < 0.3
    assert losses[-1] < 0.7 * losses[0], losses
    example = load_example()
    with torch.no_grad():
        prediction = model(batch["pixel_values"]).logits
    processor = HfPvtImageProcessor()
    maps = processor.post_process_semantic_segmentation({"logits": prediction}, target_sizes=[(96, 96)] * 3)
    confusion = sum(example.confusion_matrix(m.numpy(), y.numpy(), 150) for m, y in zip(maps, batch["labels"]))
    metrics = example.segmentation_metrics(confusion, model.config.id2label)
    assert metrics["pixel_accuracy"] > 0.5, metrics  # the majority classes (wall, sky, floor...) are learned
    assert 0 < metrics["mean_iou"] <= 1


def test_miou_matches_sklearn_on_real_labels():
    example = load_example()
    rng = np.random.default_rng(0)
    confusion, labels_all, predictions_all = 0, [], []
    for path in LABELS:
        label = HfPvtImageProcessor.reduce_label(np.asarray(Image.open(path)))
        # A prediction that is right on about 70% of pixels, wrong (random class) elsewhere.
        prediction = np.where(rng.random(label.shape) < 0.7, label, rng.integers(0, 20, label.shape)) % 150
        confusion = confusion + example.confusion_matrix(prediction, label, 150)
        valid = label != 255
        labels_all.append(label[valid])
        predictions_all.append(prediction[valid])
    metrics = example.segmentation_metrics(confusion, {i: str(i) for i in range(150)})
    y_true, y_pred = np.concatenate(labels_all), np.concatenate(predictions_all)
    present = np.union1d(y_true, y_pred)
    expected = jaccard_score(y_true, y_pred, labels=present, average=None)
    assert metrics["mean_iou"] == pytest.approx(expected.mean(), abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx((y_true == y_pred).mean(), abs=1e-12)
    with pytest.raises(ValueError, match="--reduce_labels"):
        example.confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 150), 150)


@pytest.mark.parametrize("member", ["v1", "v2"])
def test_pipeline_from_saved_folder(member, tmp_path):
    model = seg_model(member).eval()
    processor = HfPvtImageProcessor(size={"shortest_edge": 64}, do_center_crop=False)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    for path in IMAGES:
        image = Image.open(path)
        results = segmenter(image)
        with torch.no_grad():
            logits = model(**processor(image, return_tensors="pt")).logits
        expected = F.interpolate(logits, size=(image.height, image.width), mode="bilinear")[0].argmax(0).numpy()
        masks = np.stack([np.asarray(result["mask"]) for result in results])
        assert masks.shape[1:] == (image.height, image.width)
        assert (masks.sum(0) == 255).all()  # the masks partition the image
        for result, mask in zip(results, masks):
            class_id = model.config.label2id[result["label"]]
            assert np.array_equal(mask == 255, expected == class_id), result["label"]


def test_trust_remote_code_without_hf_pvt(tmp_path):
    model = seg_model("v1").eval()
    model.save_pretrained(tmp_path / "model")
    pixel_values = torch.randn(1, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.save({"pixel_values": pixel_values, "logits": model(pixel_values).logits}, tmp_path / "io.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForSemanticSegmentation\n"
        "m = AutoModelForSemanticSegmentation.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "assert 'hf_pvt' not in sys.modules and type(m).__name__ == 'HfPvtForSemanticSegmentation'\n"
        "io = torch.load(sys.argv[2])\n"
        "with torch.no_grad(): assert torch.equal(m(io['pixel_values']).logits, io['logits'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model"), str(tmp_path / "io.pt")],
        cwd=tmp_path,
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_example_script_on_fixture_folder(tmp_path):
    data = tmp_path / "ade"
    (data / "images").mkdir(parents=True)
    (data / "annotations").mkdir()
    for image, label in zip(IMAGES, LABELS):
        shutil.copy(image, data / "images" / image.name)
        shutil.copy(label, data / "annotations" / f"{image.stem}.png")
    seg_model("v2").save_pretrained(tmp_path / "start")
    output_dir = tmp_path / "out"
    results = load_example().main(
        [
            "--data_dir", str(data), "--model", str(tmp_path / "start"), "--output_dir", str(output_dir),
            "--max_steps", "3", "--batch_size", "2", "--crop_size", "64", "--reduce_labels", "--num_workers", "0",
            "--labels_csv", str(FIXTURES / "ade20k_objectInfo150.csv"),
        ]
    )  # fmt: skip
    assert results["steps"] == 3 and len(results["train_losses"]) == 3
    assert 0 <= results["mean_iou"] <= 1
    assert json.loads((output_dir / "eval_results.json").read_text())["mean_iou"] == results["mean_iou"]
    model = AutoModelForSemanticSegmentation.from_pretrained(output_dir)
    assert isinstance(model, HfPvtForSemanticSegmentation) and model.config.id2label[0] == "wall"
    segmenter = pipeline("image-segmentation", model=str(output_dir))
    image = Image.open(IMAGES[1])
    assert all(r["mask"].size == image.size for r in segmenter(image))
    with pytest.raises(ValueError, match="neither a local folder nor a preset"):
        load_example().main(["--data_dir", str(data), "--model", "pvt-v9", "--output_dir", str(output_dir)])


def test_clear_errors():
    model = seg_model("v2")
    pixel_values = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"labels must be a \(batch, height, width\)"):
        model(pixel_values, labels=torch.zeros(2, 1, 64, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size of pixel_values"):
        model(pixel_values, labels=torch.zeros(3, 64, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class ids"):
        model(pixel_values, labels=torch.zeros(2, 64, 64))
    unreduced = torch.full((2, 64, 64), 150)
    with pytest.raises(ValueError, match="do_reduce_labels=True"):
        model(pixel_values, labels=unreduced)
    unreduced[:, :10] = 255  # ignored pixels are fine, the check is on the others
    with pytest.raises(ValueError, match=r"class ids in \[150, 150\]"):
        model(pixel_values, labels=unreduced)
    with pytest.raises(ValueError, match="multiple of 32"):
        seg_model("v2", decoder_head_size=48, semantic_head_norm="group_norm")
    with pytest.raises(ValueError, match="num_labels >= 2"):
        HfPvtForSemanticSegmentation(tiny_config("v2", num_labels=1))
    with pytest.raises(ValueError, match="hold no pixels"):
        model(pixel_values, labels=torch.zeros(2, 0, 0, dtype=torch.long))
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        model(pixel_values, labels=[[0]])


def test_numpy_labels_give_the_same_loss_as_tensors():
    model = seg_model("v2").eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = np.random.default_rng(0).integers(0, model.config.num_labels, size=(2, 64, 64)).astype(np.int32)
    with torch.no_grad():
        from_numpy = model(pixel_values, labels=labels).loss
        from_tensor = model(pixel_values, labels=torch.from_numpy(labels).long()).loss
    assert torch.equal(from_numpy, from_tensor)

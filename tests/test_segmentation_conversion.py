"""The authors' Semantic FPN checkpoints (MMSegmentation v0.13, `fpn_pvt_*_ade20k_40k.py`, `fpn_pvtv2_*_ade20k_40k.py`)
convert into segmentation folders that segment exactly what MMSegmentation's EncoderDecoder segments.

Ground truth: tests/reference_semantic_fpn.py, an independent plain-torch Semantic FPN in MMSegmentation's key naming
with random weights and random BatchNorm running statistics, and the authors' test preprocessing written out in
numpy. Its state dict is saved as an MMSegmentation checkpoint (meta with the 150 ADE20K class names, optimizer
state), converted with `hf-pvt-convert`, loaded with the Auto classes and run through the saved image processor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import FIXTURES
from conftest import TINY_CHECKPOINT as TINY_BACKBONE
from conftest import TINY_HEADS as HEADS
from PIL import Image
from reference_pvt import VARIANTS
from reference_semantic_fpn import (
    ADE20K_CLASSES,
    SemanticFpnReference,
    mmseg_checkpoint,
    random_semantic_fpn_,
    test_pipeline,
)
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

import hf_pvt  # noqa: F401  (registers the Auto classes)
from hf_pvt import model_cards
from hf_pvt.conversion.ade20k_labels import ADE20K_LABELS
from hf_pvt.conversion.cli import main
from hf_pvt.conversion.convert import convert
from hf_pvt.variants_hf_pvt import PRESETS

REPO = Path(__file__).resolve().parent.parent
KINDS = {"v1": {"version": 1}, "v2": {"version": 2}, "v2-linear": {"version": 2, "linear": True}}
PHOTO = FIXTURES / "ade20k_val_00000002.jpg"  # 364x500: enlarged to 512x704 by the authors' test transform
LOGIT_ATOL = 1e-4


def tiny_segmenter(kind: str, seed: int = 0) -> SemanticFpnReference:
    reference = SemanticFpnReference({**TINY_BACKBONE, **KINDS[kind]}, num_classes=150, fpn_channels=32, channels=16)
    return random_semantic_fpn_(reference, seed)


def save_checkpoint(reference: SemanticFpnReference, path: Path, class_names=ADE20K_CLASSES, edit=None) -> Path:
    checkpoint = mmseg_checkpoint(reference, class_names)
    if edit is not None:
        edit(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("kind", list(KINDS))
def test_converted_segmenter_segments_what_the_reference_segments(tmp_path, kind):
    reference = tiny_segmenter(kind, seed=3)
    checkpoint = save_checkpoint(reference, tmp_path / "fpn.pth")
    assert main([str(checkpoint), str(tmp_path / "out"), "--num-heads", HEADS]) == 0
    folder = tmp_path / "out"
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["HfPvtForSemanticSegmentation"]
    assert config["semantic_head_norm"] == "batch_norm" and len(config["id2label"]) == 150
    assert config["id2label"]["0"] == "wall" and config["id2label"]["7"] == "bed"  # mmseg's "bed " trimmed
    assert config["id2label"]["149"] == "flag"

    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert processor.align_to_multiple_of == 32 and processor.resize_backend == "opencv"
    pixel_values = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(pixel_values).logits - reference(pixel_values)).abs().max().item() < LOGIT_ATOL

    image = Image.open(PHOTO)
    expected_pixels, original_size = test_pipeline(image)
    with torch.no_grad():
        expected = reference.simple_test(expected_pixels, original_size)[0]
        outputs = model(**processor(image, return_tensors="pt"))
    (segmentation,) = processor.post_process_semantic_segmentation(outputs, target_sizes=[original_size])
    assert torch.equal(segmentation, expected)


def test_every_tensor_is_placed_running_statistics_included(tmp_path):
    reference = tiny_segmenter("v2", seed=5)
    state_dict = reference.state_dict()
    conversion = convert(save_checkpoint(reference, tmp_path / "fpn.pth"), num_heads=[1, 2, 3, 4])
    assert conversion.task == "semantic-segmentation" and conversion.num_source_tensors == len(state_dict)
    converted = conversion.model.state_dict()
    statistics = [key for key in state_dict if key.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(statistics) == 3 * 7
    for key in statistics:
        target = key  # the head keeps MMSegmentation's names
        assert torch.equal(converted[target], state_dict[key]), key
        assert converted[target].dtype == state_dict[key].dtype
    assert torch.equal(converted["decode_head.classifier.weight"], state_dict["decode_head.conv_seg.weight"])
    assert torch.equal(converted["neck.lateral_convs.2.bias"], state_dict["neck.lateral_convs.2.conv.bias"])


def _fails(tmp_path, capsys, checkpoint, *extra) -> str:
    assert main([str(checkpoint), str(tmp_path / "out"), "--num-heads", HEADS, *extra]) == 1
    assert not (tmp_path / "out").exists()
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "case",
    ["missing running_var", "unexpected auxiliary head", "group norm head", "float num_batches_tracked"],
)
def test_nothing_is_written_unless_every_tensor_fits(tmp_path, capsys, case):
    def edit(checkpoint):
        state_dict = checkpoint["state_dict"]
        if case == "missing running_var":
            del state_dict["decode_head.scale_heads.3.4.bn.running_var"]
        elif case == "unexpected auxiliary head":
            state_dict["auxiliary_head.conv_seg.weight"] = torch.zeros(150, 16, 1, 1)
        elif case == "group norm head":
            for key in [k for k in state_dict if ".bn." in k]:
                value = state_dict.pop(key)
                if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                    state_dict[key.replace(".bn.", ".gn.")] = value
        else:
            state_dict["decode_head.scale_heads.0.0.bn.num_batches_tracked"] = torch.tensor(3.5)

    checkpoint = save_checkpoint(tiny_segmenter("v1"), tmp_path / "fpn.pth", edit=edit)
    error = _fails(tmp_path, capsys, checkpoint)
    expected = {
        "missing running_var": "decode_head.scale_heads.3.4.bn.running_var",
        "unexpected auxiliary head": "auxiliary_head.conv_seg.weight",
        "group norm head": "BatchNorm",
        "float num_batches_tracked": "num_batches_tracked",
    }[case]
    assert expected in error


@pytest.mark.parametrize(
    ("classes", "note"),
    [
        (None, "no class names"),
        (ADE20K_CLASSES[:149], "149 class names"),
        ((*ADE20K_CLASSES[:149], "wall"), "more than once"),
        ((*ADE20K_CLASSES[:149], 7), "not all strings"),
    ],
)
def test_class_names_from_meta_are_checked(tmp_path, classes, note):
    """Without usable names in meta["CLASSES"], a 150-class head gets ADE20K's names, and the conversion says why."""
    checkpoint = save_checkpoint(tiny_segmenter("v2"), tmp_path / "fpn.pth", class_names=classes)
    conversion = convert(checkpoint, num_heads=[1, 2, 3, 4])
    assert any(note in line for line in conversion.notes), conversion.notes
    assert [conversion.model.config.id2label[i] for i in range(150)] == list(ADE20K_LABELS)


def test_other_datasets_keep_their_own_class_names(tmp_path):
    reference = random_semantic_fpn_(
        SemanticFpnReference({**TINY_BACKBONE, "version": 2}, num_classes=5, fpn_channels=32, channels=16)
    )
    names = ["sky", "road", "car", "person", "tree"]
    conversion = convert(save_checkpoint(reference, tmp_path / "fpn.pth", class_names=names), num_heads=[1, 2, 3, 4])
    assert [conversion.model.config.id2label[i] for i in range(5)] == names
    assert not conversion.authors_weights


def test_task_choice(tmp_path, capsys):
    checkpoint = save_checkpoint(tiny_segmenter("v1"), tmp_path / "fpn.pth")
    assert main([str(checkpoint), str(tmp_path / "backbone"), "--num-heads", HEADS, "--task", "backbone"]) == 0
    assert json.loads((tmp_path / "backbone" / "config.json").read_text())["architectures"] == ["HfPvtBackbone"]
    error = _fails(tmp_path, capsys, checkpoint, "--task", "detection")
    assert "RetinaNet" in error


# ---------------------------------------------------------------------------------------- released segmenters


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_released_segmenter_is_recognised(name):
    """The tensor shapes of each of the 11 released Semantic FPN segmenters (built on the meta device) give exactly
    the released configuration: the variant, FPN 256 and head 128 channels, 150 classes, BatchNorm."""
    from hf_pvt.conversion.convert import build_config
    from hf_pvt.conversion.sources import Source

    with torch.device("meta"):
        reference = SemanticFpnReference(VARIANTS[name])
    state_dict = reference.state_dict()
    backbone = {key[len("backbone.") :]: value for key, value in state_dict.items() if key.startswith("backbone.")}
    others = {key: value for key, value in state_dict.items() if not key.startswith("backbone.")}
    source = Source(
        tensors=backbone,
        origins={key: [key] for key in backbone},
        layout="original",
        detector=others,
        meta_classes=list(ADE20K_CLASSES),
    )
    config, variant, task = build_config(source, None, None, "auto")
    assert variant == name.replace("_", "-") and task == "semantic-segmentation"
    assert (config.decoder_hidden_size, config.decoder_head_size, config.num_labels) == (256, 128, 150)
    assert config.semantic_head_norm == "batch_norm"


def test_released_segmenter_converts_with_the_authors_card(tmp_path):
    """Full-size pvt_v2_b0 Semantic FPN (ADE20K, 150 classes): detected as the release, card states its mIoU."""
    reference = random_semantic_fpn_(SemanticFpnReference(VARIANTS["pvt_v2_b0"]), seed=11)
    torch.save(mmseg_checkpoint(reference), tmp_path / "fpn_pvtv2_b0_ade20k_40k.pth")
    conversion = convert(tmp_path / "fpn_pvtv2_b0_ade20k_40k.pth")
    assert conversion.variant == "pvt-v2-b0" and conversion.authors_weights
    assert sum(p.numel() for p in conversion.model.parameters()) == sum(p.numel() for p in reference.parameters())
    assert main([str(tmp_path / "fpn_pvtv2_b0_ade20k_40k.pth"), str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "37.2" in card and "mIoU" in card
    assert card == (REPO / "model_cards" / "semantic-fpn-pvt-v2-b0.md").read_text()


def test_segmenter_cards_are_up_to_date_and_state_the_published_miou():
    code_miou = {  # the released code's ADE20K mIoU (the authors' READMEs)
        "pvt-tiny": 36.6,
        "pvt-small": 41.9,
        "pvt-medium": 43.5,
        "pvt-large": 43.5,
        "pvt-v2-b0": 37.2,
        "pvt-v2-b1": 42.5,
        "pvt-v2-b2": 45.2,
        "pvt-v2-b3": 47.3,
        "pvt-v2-b4": 47.9,
        "pvt-v2-b5": 48.7,
    }
    rendered = model_cards.render_segmenter_cards()
    assert sorted(rendered) == sorted(f"semantic-fpn-{variant}.md" for variant in PRESETS)
    for name, card in rendered.items():
        committed = REPO / "model_cards" / name
        assert committed.is_file() and committed.read_text() == card, f"{committed}: run python -m hf_pvt.model_cards"
        front_matter = yaml.safe_load(card.split("---\n")[1])
        assert front_matter["pipeline_tag"] == "image-segmentation"
        variant = name[len("semantic-fpn-") : -len(".md")]
        results = front_matter.get("model-index", [{}])[0].get("results", [])
        if variant in code_miou:
            assert results[0]["dataset"]["type"] == "scene_parse_150"
            assert results[0]["metrics"][0]["value"] == code_miou[variant]
        else:  # b2-li: no published ADE20K number
            assert not results


# ------------------------------------------------------------------------------------------------- sharing

WITHOUT_HF_PVT = """
import importlib.abc, json, sys

import numpy as np
from PIL import Image
import transformers


class NoHfPvt(importlib.abc.MetaPathFinder):
    # Stands in for a Python where hf_pvt is not installed.
    def find_spec(self, name, path=None, target=None):
        if name == "hf_pvt" or name.startswith("hf_pvt."):
            raise ModuleNotFoundError(f"No module named {name!r}")


sys.meta_path.insert(0, NoHfPvt())
sys.path = [p for p in sys.path if p not in ("", ".")]
try:
    import hf_pvt  # noqa: F401
    raise SystemExit("hf_pvt should not be importable here")
except ModuleNotFoundError:
    pass
segment = transformers.pipeline("image-segmentation", model=sys.argv[1], trust_remote_code=True)
found = [[s["label"], np.asarray(s["mask"]).tolist()] for s in segment(Image.open(sys.argv[2]))]
assert not any(name.startswith("hf_pvt") for name in sys.modules)
print(json.dumps(found))
"""


@pytest.mark.slow
def test_pipeline_on_a_converted_folder_with_and_without_hf_pvt(tmp_path):
    """One mask per class present in the class map at the original size, the same with hf_pvt installed and in a
    Python that cannot import it (the folder's own code, trust_remote_code=True)."""
    reference = tiny_segmenter("v2", seed=7)
    folder = tmp_path / "out"
    assert main([str(save_checkpoint(reference, tmp_path / "fpn.pth")), str(folder), "--num-heads", HEADS]) == 0
    image = Image.open(PHOTO)
    expected_pixels, original_size = test_pipeline(image)
    with torch.no_grad():
        class_map = reference.simple_test(expected_pixels, original_size)[0].numpy()
    present = sorted(np.unique(class_map).tolist())
    expected = {ADE20K_LABELS[index]: class_map == index for index in present}
    assert len(expected) > 3

    found = {s["label"]: np.asarray(s["mask"]) > 0 for s in pipeline("image-segmentation", model=str(folder))(image)}
    assert sorted(found) == sorted(expected)
    for label, mask in found.items():
        assert mask.shape == original_size and np.array_equal(mask, expected[label]), label

    (tmp_path / "script.py").write_text(textwrap.dedent(WITHOUT_HF_PVT))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, str(tmp_path / "script.py"), str(folder), str(PHOTO)],
        cwd=tmp_path, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    remote = {label: np.asarray(mask) > 0 for label, mask in json.loads(result.stdout.strip().splitlines()[-1])}
    assert sorted(remote) == sorted(expected)
    for label, mask in remote.items():
        assert np.array_equal(mask, expected[label]), label


@pytest.mark.slow
def test_example_evaluates_a_converted_segmenter_as_the_authors_test_does(tmp_path):
    """`run_semantic_segmentation.py --eval_only` on the three real ADE20K validation images: the mIoU of the
    reference's class maps (authors' preprocessing, whole-image inference), computed here independently over the
    set with label 0 ("other") ignored."""
    import importlib.util
    import shutil

    reference = tiny_segmenter("v1", seed=9)
    folder = tmp_path / "converted"
    assert main([str(save_checkpoint(reference, tmp_path / "fpn.pth")), str(folder), "--num-heads", HEADS]) == 0
    data = tmp_path / "ade"
    (data / "images" / "validation").mkdir(parents=True)
    (data / "annotations" / "validation").mkdir(parents=True)
    intersection, union = np.zeros(150), np.zeros(150)
    for index in (1, 2, 3):
        image_path = FIXTURES / f"ade20k_val_0000000{index}.jpg"
        label_path = FIXTURES / f"ade20k_val_0000000{index}_label.png"
        shutil.copy(image_path, data / "images" / "validation" / image_path.name)
        shutil.copy(label_path, data / "annotations" / "validation" / f"{image_path.stem}.png")
        pixels, original_size = test_pipeline(Image.open(image_path))
        with torch.no_grad():
            prediction = reference.simple_test(pixels, original_size)[0].numpy()
        label = np.asarray(Image.open(label_path)).astype(np.int64) - 1  # ADE20K id k is class k - 1; 0 -> -1
        valid = label >= 0
        for cls in range(150):
            predicted, labelled = (prediction == cls) & valid, label == cls
            intersection[cls] += (predicted & labelled).sum()
            union[cls] += (predicted | labelled).sum()
    expected_miou = float(np.mean(intersection[union > 0] / union[union > 0]))

    spec = importlib.util.spec_from_file_location(
        "run_semantic_segmentation", REPO / "examples" / "run_semantic_segmentation.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    arguments = ["--data_dir", str(data), "--model", str(folder), "--eval_only", "--reduce_labels"]
    metrics = example.main([*arguments, "--output_dir", str(tmp_path / "eval")])
    assert abs(metrics["mean_iou"] - expected_miou) < 1e-12
    assert json.loads((tmp_path / "eval" / "eval_results.json").read_text())["mean_iou"] == metrics["mean_iou"]

"""The authors' RetinaNet checkpoints (mmdet v2.13, `retinanet_pvt_*_fpn_1x_coco.py`) convert into detector folders
that detect exactly what mmdet's RetinaNet detects.

Ground truth: tests/reference_retinanet.py, an independent plain-torch RetinaNet in mmdet's key naming (FPN,
head, anchors, delta decoding, per-level top-k, score threshold, class-wise greedy NMS, per-image cap). Its
random weights are saved as an mmdet checkpoint, converted with `hf-pvt-convert`, loaded with the Auto classes
and run through the image processor's post-processing: same boxes, labels and scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CHECKPOINT as TINY_BACKBONE
from conftest import TINY_HEADS as HEADS
from reference_retinanet import RetinaNetReference, anchors_for, mmdet_checkpoint, random_retinanet_
from transformers import AutoImageProcessor, AutoModelForObjectDetection

import hf_pvt  # noqa: F401  (registers the Auto classes)
from hf_pvt import HfPvtBackbone
from hf_pvt import model_cards as model_card
from hf_pvt.conversion.cli import main
from hf_pvt.conversion.coco_labels import COCO_CATEGORY_IDS, COCO_DETECTION_LABELS
from hf_pvt.conversion.convert import build_config, convert
from hf_pvt.conversion.detect import is_authors_retinanet
from hf_pvt.conversion.sources import Source
from hf_pvt.variants_hf_pvt import PRESETS
from tests.reference_pvt import VARIANTS

REPO = Path(__file__).resolve().parent.parent
# v1 with its own class names in the checkpoint's meta; v2 with COCO's 80 classes; the linear variant.
KINDS = {
    "v1": ({"version": 1}, 7, [f"thing{i}" for i in range(7)]),
    "v2": ({"version": 2}, 80, None),
    "v2-linear": ({"version": 2, "linear": True}, 5, None),
}
# Box coordinates are input pixels (up to ~100 here): float32 rounding of differently ordered sums.
BOX_ATOL = 1e-3
SCORE_ATOL = 1e-5


def tiny_retinanet(kind: str, seed: int = 0) -> RetinaNetReference:
    backbone, num_classes, _ = KINDS[kind]
    reference = RetinaNetReference(
        {**TINY_BACKBONE, **backbone}, num_classes=num_classes, fpn_channels=32, feat_channels=24, stacked_convs=2
    )
    return random_retinanet_(reference, seed)


def save_checkpoint(reference: RetinaNetReference, path: Path, class_names=None, edit=None) -> Path:
    checkpoint = mmdet_checkpoint(reference, class_names)
    if edit is not None:
        edit(checkpoint["state_dict"])
    torch.save(checkpoint, path)
    return path


def assert_same_detections(ours: dict, theirs: dict) -> None:
    """Same detections: a one-to-one match with equal labels, boxes within BOX_ATOL and scores within SCORE_ATOL.

    Matched as sets, not rank by rank: two detections whose scores differ by less than float noise may swap
    places between two correct implementations (and boxes clipped to the same border can be exact duplicates)."""
    assert len(ours["scores"]) == len(theirs["scores"]) > 0
    assert bool((ours["scores"][:-1] >= ours["scores"][1:]).all()), "detections must come best first"
    assert sorted(ours["labels"].tolist()) == sorted(theirs["labels"].tolist())
    for label in ours["labels"].unique().tolist():
        mine, other = ours["labels"] == label, theirs["labels"] == label
        box_distance = (ours["boxes"][mine][:, None, :] - theirs["boxes"][other][None, :, :]).abs().amax(dim=-1)
        score_distance = (ours["scores"][mine][:, None] - theirs["scores"][other][None, :]).abs()
        cost = torch.where(score_distance <= SCORE_ATOL, box_distance, torch.inf)
        used = torch.zeros(cost.shape[1], dtype=torch.bool)
        for row in cost:
            best = int(torch.where(used, torch.inf, row).argmin())
            assert row[best] <= BOX_ATOL and not used[best], f"a detection of class {label} has no counterpart"
            used[best] = True


def reference_detections(reference: RetinaNetReference, pixel_values, image_sizes=None, max_per_image=100):
    """The reference's detections (`max_per_image` 0: all of them), after checking that the per-image cap does not
    cut between near-equal scores (where float noise could legitimately pick either detection)."""
    everything = reference.detect(pixel_values, image_sizes, max_per_image=0)
    results = []
    for detections in everything:
        scores = detections["scores"]
        if 0 < max_per_image < len(scores):
            assert scores[max_per_image - 1] - scores[max_per_image] > 10 * SCORE_ATOL, "near tie at the cap"
        results.append({key: value[: max_per_image or None] for key, value in detections.items()})
    return results, everything


@pytest.mark.parametrize("kind", list(KINDS))
def test_converted_detector_detects_what_the_reference_detects(tmp_path, kind):
    reference = tiny_retinanet(kind, seed=list(KINDS).index(kind))
    _, num_classes, class_names = KINDS[kind]
    checkpoint = save_checkpoint(reference, tmp_path / "retinanet.pth", class_names)
    assert main([str(checkpoint), str(tmp_path / "out"), "--num-heads", HEADS]) == 0

    model = AutoModelForObjectDetection.from_pretrained(tmp_path / "out").eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert type(model).__name__ == "HfPvtForObjectDetection"
    assert processor.size["shortest_edge"] == 800 and processor.size["longest_edge"] == 1333 and processor.do_pad
    expected_labels = class_names or (list(COCO_DETECTION_LABELS) if num_classes == 80 else None)
    if expected_labels is not None:
        assert [model.config.id2label[i] for i in range(num_classes)] == expected_labels

    # 72x100 is no multiple of 32 (odd FPN sizes), and its stride-8 level has 1053 anchors > nms_pre = 1000.
    # (Seed 9 puts no two scores within float noise of each other at the cap of 100, see reference_detections.)
    pixel_values = torch.randn(2, 3, 72, 100, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values)
        cls_scores, bbox_preds = reference(pixel_values)
    level_logits, level_deltas, level_anchors = outputs.level_maps()  # MMDetection's per-level layout
    for ours, theirs in zip((*level_logits, *level_deltas), (*cls_scores, *bbox_preds)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(level_anchors, anchors_for([tuple(level.shape[-2:]) for level in cls_scores])):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)

    detections = processor.post_process_object_detection(outputs)
    expected, everything = reference_detections(reference, pixel_values)
    for ours, theirs, uncapped in zip(detections, expected, everything):
        assert_same_detections(ours, theirs)
        assert len(uncapped["scores"]) > 100  # the cap of 100 per image did cut
    # NMS had work to do: fewer detections than candidate (anchor, class) pairs above the threshold.
    candidates = sum(int((level[0].sigmoid() > 0.05).sum()) for level in cls_scores)
    assert len(everything[0]["scores"]) < candidates


def test_padded_batch_through_the_image_processor(tmp_path):
    """Two images of different sizes: resized, padded with a pixel_mask, detected, boxes scaled back to the original
    sizes. Each image's detections are those of MMDetection's test of that image alone (the papers' batch of 1): the
    reference sees the image padded to a multiple of 32 and clips to its own size."""
    reference = tiny_retinanet("v2-linear", seed=5)
    checkpoint = save_checkpoint(reference, tmp_path / "retinanet.pth")
    assert main([str(checkpoint), str(tmp_path / "out"), "--num-heads", HEADS]) == 0
    model = AutoModelForObjectDetection.from_pretrained(tmp_path / "out").eval()
    processor = AutoImageProcessor.from_pretrained(
        tmp_path / "out", size={"shortest_edge": 72, "longest_edge": 120}, pad_size=None
    )
    generator = torch.Generator().manual_seed(3)
    images = [
        torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8) for h, w in ((90, 150), (130, 95))
    ]
    inputs = processor(images=images, return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape[-2:]) == (128, 128)  # 72x120 and 99x72, padded to 32
    with torch.no_grad():
        outputs = model(**inputs)
    original_sizes = [tuple(image.shape[-2:]) for image in images]
    # The zero padding gives identical scores at many locations, so no cap here (ties may fall either side of it);
    # the cap is checked above.
    detections = processor.post_process_object_detection(outputs, target_sizes=original_sizes, max_per_image=0)

    valid_sizes = [tuple(size) for size in outputs.image_sizes.tolist()]
    assert valid_sizes == [(72, 120), (99, 72)]
    expected = []
    for index, (size, (padded_height, padded_width)) in enumerate(zip(valid_sizes, [(96, 128), (128, 96)])):
        alone = inputs["pixel_values"][[index], :, :padded_height, :padded_width]
        expected.append(reference_detections(reference, alone, [size], max_per_image=0)[0][0])
    for ours, theirs, (height, width), (valid_height, valid_width) in zip(
        detections, expected, original_sizes, valid_sizes
    ):
        scale = torch.tensor([width / valid_width, height / valid_height] * 2)
        theirs = {**theirs, "boxes": torch.minimum(theirs["boxes"] * scale, torch.tensor([width, height] * 2))}
        assert_same_detections(ours, theirs)


# ------------------------------------------------------------------------------------------ strictness


def _fails(tmp_path: Path, capsys, checkpoint: Path, *extra: str) -> str:
    assert main([str(checkpoint), str(tmp_path / "out"), "--num-heads", HEADS, *extra]) == 1
    assert not any(p.name == "out" or p.name.startswith(".out.") for p in tmp_path.iterdir()), "something written"
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def _rename(old: str, new: str):
    def edit(state_dict):
        state_dict[new] = state_dict.pop(old)

    return edit


STRICTNESS = {
    "extra key": (
        lambda sd: sd.__setitem__("neck.fpn_convs.5.conv.weight", torch.zeros(32, 32, 3, 3)),
        "1 unknown keys: neck.fpn_convs.5.conv.weight (-> neck.fpn_convs.5.weight)",
    ),
    "missing key": (
        lambda sd: sd.pop("bbox_head.reg_convs.1.conv.bias"),
        "1 missing keys: bbox_head.reg_convs.1.bias",
    ),
    "misshaped key": (
        lambda sd: sd.__setitem__("neck.lateral_convs.1.conv.weight", torch.zeros(32, 40, 1, 1)),
        "neck.lateral_convs.1.conv.weight: checkpoint (32, 40, 1, 1), model (32, 48, 1, 1)",
    ),
    "v1 classifier leftovers": (
        lambda sd: sd.__setitem__("backbone.cls_token", torch.zeros(1, 1, 64)),
        "unknown keys: backbone.cls_token",
    ),
    "three anchors per location": (
        lambda sd: sd.__setitem__("bbox_head.retina_reg.weight", torch.zeros(12, 24, 3, 3)),
        "not 4 and C values for each of the 9 anchors per location",
    ),
    "NaN in the head": (
        lambda sd: sd["bbox_head.retina_cls.bias"].__setitem__(0, float("nan")),
        "bbox_head.retina_cls.bias (1 of 45 values)",
    ),
}


@pytest.mark.parametrize("case", list(STRICTNESS))
def test_every_tensor_placed_or_nothing_written(tmp_path, capsys, case):
    edit, message = STRICTNESS[case]
    kind = "v1" if "v1" in case else "v2-linear"
    checkpoint = save_checkpoint(tiny_retinanet(kind), tmp_path / "retinanet.pth", edit=edit)
    assert message in _fails(tmp_path, capsys, checkpoint)


def test_task_choice(tmp_path, capsys):
    reference = tiny_retinanet("v2-linear")
    checkpoint = save_checkpoint(reference, tmp_path / "retinanet.pth")
    # A RetinaNet's backbone alone, on request: the detector's layers are left out and said so.
    assert main([str(checkpoint), str(tmp_path / "backbone"), "--num-heads", HEADS, "--task", "backbone"]) == 0
    out = capsys.readouterr().out
    assert "left out 28 tensors of the detector/segmenter around the backbone (bbox_head., neck.)" in out
    backbone = HfPvtBackbone.from_pretrained(tmp_path / "backbone", out_indices=[0, 1, 2, 3]).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(backbone(pixel_values=x).feature_maps, reference.backbone.forward_dense(x)):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    capsys.readouterr()

    # A checkpoint without a RetinaNet cannot become a detector.
    state_dict = {k: v for k, v in mmdet_checkpoint(reference)["state_dict"].items() if not k.startswith("bbox_head")}
    torch.save({"state_dict": state_dict}, tmp_path / "fpn_only.pth")
    err = _fails(tmp_path, capsys, tmp_path / "fpn_only.pth", "--task", "detection")
    assert "other layers around its backbone (neck.)" in err and "--task backbone" in err
    coco = REPO / "tests" / "fixtures" / "coco_000000039769.png"
    assert "--verify compares classifier logits" in _fails(tmp_path, capsys, checkpoint, "--verify", str(coco))


def test_released_detector_converts_with_the_authors_card(tmp_path):
    """Full-size pvt_v2_b0 RetinaNet (COCO, 80 classes): detected as the release, card states its box AP."""
    reference = random_retinanet_(RetinaNetReference(VARIANTS["pvt_v2_b0"], num_classes=80), seed=11)
    state_dict = mmdet_checkpoint(reference)["state_dict"]
    assert sum(key.startswith("neck.") for key in state_dict) == 16  # 3 lateral + 3 output + 2 extra convs
    assert sum(key.startswith("bbox_head.") for key in state_dict) == 20  # 4 + 4 stacked convs, retina_cls/reg
    torch.save(mmdet_checkpoint(reference, list(COCO_DETECTION_LABELS)), tmp_path / "retinanet_pvt_v2_b0.pth")
    conversion = convert(tmp_path / "retinanet_pvt_v2_b0.pth")
    assert conversion.variant == "pvt-v2-b0" and conversion.task == "detection" and conversion.authors_weights
    assert conversion.num_source_tensors == len(state_dict)
    assert sum(p.numel() for p in conversion.model.parameters()) == sum(p.numel() for p in reference.parameters())

    assert main([str(tmp_path / "retinanet_pvt_v2_b0.pth"), str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "**37.2 box AP**" in card and "the weights are the authors' own" in card
    assert card == (REPO / "model_cards" / "retinanet-pvt-v2-b0.md").read_text()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["HfPvtForObjectDetection"] and config["id2label"]["15"] == "cat"
    assert (tmp_path / "out" / "retinanet_hf_pvt.py").is_file()


# ------------------------------------------------------------------------------------------------ cards


def test_detector_cards_are_up_to_date_and_state_the_published_box_ap():
    spec_box_ap = {  # the authors' COCO val2017 box AP, 1x schedule
        "pvt-tiny": 36.7,
        "pvt-small": 40.4,
        "pvt-medium": 41.9,
        "pvt-large": 42.6,
        "pvt-v2-b0": 37.2,
        "pvt-v2-b1": 41.2,
        "pvt-v2-b2-li": 43.6,
        "pvt-v2-b2": 44.6,
        "pvt-v2-b3": 45.9,
        "pvt-v2-b4": 46.1,
        "pvt-v2-b5": 46.2,
    }
    rendered = model_card.render_detector_cards()
    assert sorted(rendered) == sorted(f"retinanet-{variant}.md" for variant in PRESETS)
    for name, card in rendered.items():
        committed = REPO / "model_cards" / name
        assert committed.is_file(), f"run `python -m hf_pvt.conversion.model_card` to create {committed}"
        assert committed.read_text() == card, f"{committed} is stale: run `python -m hf_pvt.conversion.model_card`"
        front_matter = yaml.safe_load(card.split("---\n")[1])
        assert front_matter["pipeline_tag"] == "object-detection" and front_matter["datasets"] == ["coco"]
        result = front_matter["model-index"][0]["results"][0]
        assert result["task"]["type"] == "object-detection" and result["dataset"]["type"] == "coco"
        assert result["metrics"][0]["value"] == spec_box_ap[name[len("retinanet-") : -len(".md")]]
        assert "AutoModelForObjectDetection" in card and "trust_remote_code=True" in card


def test_coco_labels():
    assert len(COCO_DETECTION_LABELS) == len(set(COCO_DETECTION_LABELS)) == 80
    assert len(COCO_CATEGORY_IDS) == len(set(COCO_CATEGORY_IDS)) == 80 and max(COCO_CATEGORY_IDS) == 90
    named = dict(zip(COCO_CATEGORY_IDS, COCO_DETECTION_LABELS))
    assert named[1] == "person" and named[17] == "cat" and named[18] == "dog" and named[90] == "toothbrush"


def test_detector_folder_runs_with_remote_code_alone(tmp_path):
    """Without hf_pvt installed, the folder's own code (modeling, image processing and the detection ops) loads
    through the Auto classes with trust_remote_code and detects what hf_pvt detects."""
    reference = tiny_retinanet("v2-linear", seed=4)
    checkpoint = save_checkpoint(reference, tmp_path / "r.pth")
    folder = tmp_path / "out"
    assert main([str(checkpoint), str(folder), "--num-heads", HEADS]) == 0
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    torch.save(pixel_values, tmp_path / "x.pt")
    model = AutoModelForObjectDetection.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = AutoImageProcessor.from_pretrained(folder).post_process_object_detection(model(pixel_values))[0]
    script = (
        "import sys, torch\n"
        "from transformers import AutoImageProcessor, AutoModelForObjectDetection\n"
        f"model = AutoModelForObjectDetection.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()\n"
        f"processor = AutoImageProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        "assert 'hf_pvt' not in sys.modules\n"
        "with torch.no_grad():\n"
        f"    outputs = model(torch.load({str(tmp_path / 'x.pt')!r}))\n"
        f"torch.save(processor.post_process_object_detection(outputs)[0], {str(tmp_path / 'remote.pt')!r})\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    remote = torch.load(tmp_path / "remote.pt")
    assert len(remote["scores"]) == len(expected["scores"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(remote[key], expected[key], atol=0, rtol=0)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_released_detector_is_recognised(name):
    """The tensor shapes of each of the 11 released RetinaNets (built on the meta device, no memory) give exactly
    the released configuration, so their cards may state the published box AP."""
    with torch.device("meta"):
        reference = RetinaNetReference(VARIANTS[name], num_classes=80)
    state_dict = reference.state_dict()
    backbone = {key[len("backbone.") :]: value for key, value in state_dict.items() if key.startswith("backbone.")}
    source = Source(
        tensors=backbone,
        origins={key: [key] for key in backbone},
        layout="original",
        detector={key: value for key, value in state_dict.items() if not key.startswith("backbone.")},
    )
    config, variant, task = build_config(source, variant=None, num_heads=None, task="auto")
    assert (variant, task) == (name.replace("_", "-"), "detection")
    assert is_authors_retinanet(config)
    released = model_card.released_detector_config(variant)
    assert config.to_diff_dict() == released.to_diff_dict()


def test_mmdet_metadata_with_numpy_numbers_loads(tmp_path):
    """mmcv records seeds and scores in `meta` as numpy scalars; weights-only loading allows exactly those."""
    import numpy as np

    checkpoint = mmdet_checkpoint(tiny_retinanet("v2-linear"))
    checkpoint["meta"].update(seed=np.int64(42), hook_msgs={"best_score": np.float64(0.37)})
    torch.save(checkpoint, tmp_path / "r.pth")
    assert main([str(tmp_path / "r.pth"), str(tmp_path / "out"), "--num-heads", HEADS]) == 0

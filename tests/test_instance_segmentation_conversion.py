"""The authors' Mask R-CNN checkpoints (MMDetection v2.13, `mask_rcnn_pvt_*_fpn_1x_coco.py`) convert into instance
segmentation folders that find what MMDetection's Mask R-CNN finds.

Ground truth: tests/reference_mask_rcnn.py, an independent plain-torch Mask R-CNN in MMDetection's key naming. Its
random weights are saved as an MMDetection checkpoint (`{'meta', 'state_dict'}`), converted with `hf-pvt-convert`,
loaded with the Auto classes and post-processed by the image processor: the same proposals, detections and pasted
masks, on a padded batch too. Every tensor is placed by the renaming table or the conversion fails, naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CHECKPOINT as TINY_BACKBONE
from conftest import TINY_HEADS as HEADS
from reference_mask_rcnn import build_reference_mask_rcnn, mmdet_checkpoint, predict, random_mask_rcnn_
from test_mask_rcnn_parity import BOX_ATOL, IMAGE_SIZES, SCORE_ATOL, assert_masks_match, padded_batch
from transformers import AutoImageProcessor, AutoModelForInstanceSegmentation

import hf_pvt  # noqa: F401  (registers the Auto classes)
from hf_pvt import HfPvtBackbone, HfPvtForInstanceSegmentation
from hf_pvt import model_cards as model_card
from hf_pvt.conversion.cli import main
from hf_pvt.conversion.coco_labels import COCO_DETECTION_LABELS
from hf_pvt.conversion.convert import build_config, convert
from hf_pvt.conversion.detect import is_authors_mask_rcnn
from hf_pvt.conversion.sources import Source
from hf_pvt.variants_hf_pvt import PRESETS
from tests.reference_pvt import VARIANTS

REPO = Path(__file__).resolve().parent.parent
# Small heads around the tiny backbone: every layer of the released model, narrower.
HEAD_WIDTHS = {
    "fpn_channels": 32,
    "rpn_feat_channels": 32,
    "fc_channels": 64,
    "mask_channels": 24,
    "mask_num_convs": 2,
}
# (backbone, classes, meta CLASSES): v1 with its own class names; v2 with COCO's 80 and names in the meta; the linear
# variant without names.
KINDS = {
    "v1": ({"version": 1}, 7, [f"thing{i}" for i in range(7)]),
    "v2": ({"version": 2}, 80, list(COCO_DETECTION_LABELS)),
    "v2-linear": ({"version": 2, "linear": True}, 5, None),
}
# The authors' COCO val2017 (box AP, mask AP), Mask R-CNN 1x; the others have no published numbers to state.
PUBLISHED = {
    "pvt-tiny": (36.7, 35.1),
    "pvt-small": (40.4, 37.8),
    "pvt-v2-b0": (38.2, 36.2),
    "pvt-v2-b1": (41.8, 38.8),
    "pvt-v2-b2": (45.3, 41.2),
    "pvt-v2-b3": (47.0, 42.5),
    "pvt-v2-b4": (47.5, 42.7),
    "pvt-v2-b5": (47.4, 42.5),
}


def tiny_mask_rcnn(kind: str, seed: int = 0):
    backbone, num_classes, _ = KINDS[kind]
    reference = build_reference_mask_rcnn({**TINY_BACKBONE, **backbone}, num_classes=num_classes, **HEAD_WIDTHS)
    return random_mask_rcnn_(reference, seed)


def save_checkpoint(reference, path: Path, class_names=None, edit=None) -> Path:
    checkpoint = mmdet_checkpoint(reference, class_names)
    if edit is not None:
        edit(checkpoint["state_dict"])
    torch.save(checkpoint, path)
    return path


def assert_same_proposals(boxes, scores, theirs: dict) -> None:
    """The same proposals, matched one to one: two whose objectness differs by float noise may swap ranks between two
    correct implementations, so each of ours is paired with an unused one of theirs of equal score and box."""
    assert len(boxes) == len(theirs["proposals"]) > 0
    torch.testing.assert_close(scores, theirs["proposal_scores"], atol=SCORE_ATOL, rtol=0)
    box_distance = (boxes[:, None, :] - theirs["proposals"][None, :, :]).abs().amax(dim=-1)
    score_distance = (scores[:, None] - theirs["proposal_scores"][None, :]).abs()
    cost = torch.where(score_distance <= SCORE_ATOL, box_distance, torch.inf)
    used = torch.zeros(cost.shape[1], dtype=torch.bool)
    for row in cost:
        best = int(torch.where(used, torch.inf, row).argmin())
        assert row[best] <= BOX_ATOL, "a proposal has no counterpart"
        used[best] = True


def assert_same_instances(ours: dict, theirs: dict, probabilities: torch.Tensor, size) -> None:
    """Same detections rank by rank (boxes within BOX_ATOL px, scores within SCORE_ATOL, equal labels) and the same
    pasted masks, except pixels whose interpolated probability lies within float noise of the threshold."""
    assert len(ours["scores"]) == len(theirs["scores"]) > 0
    torch.testing.assert_close(ours["boxes"], theirs["boxes"], atol=BOX_ATOL, rtol=0)
    torch.testing.assert_close(ours["scores"], theirs["scores"], atol=SCORE_ATOL, rtol=0)
    assert torch.equal(ours["labels"], theirs["labels"])
    assert ours["masks"].shape == theirs["masks"].shape == (len(ours["scores"]), *size)
    assert_masks_match(theirs["masks"], ours["masks"], probabilities, ours["boxes"], size)


@pytest.mark.parametrize("kind", list(KINDS))
def test_converted_mask_rcnn_finds_what_the_reference_finds(tmp_path, capsys, kind):
    reference = tiny_mask_rcnn(kind, seed=list(KINDS).index(kind))
    _, num_classes, class_names = KINDS[kind]
    checkpoint = save_checkpoint(reference, tmp_path / "mask_rcnn.pth", class_names)
    # Chosen from the keys; asked for explicitly once.
    task = ["--task", "instance-segmentation"] if kind == "v2-linear" else []
    assert main([str(checkpoint), str(tmp_path / "out"), "--num-heads", HEADS, *task]) == 0
    assert "custom instance-segmentation" in capsys.readouterr().out

    model = AutoModelForInstanceSegmentation.from_pretrained(tmp_path / "out").eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert type(model) is HfPvtForInstanceSegmentation
    assert processor.size["shortest_edge"] == 800 and processor.size["longest_edge"] == 1333 and processor.do_pad
    labels = [model.config.id2label[i] for i in range(num_classes)]
    assert labels == (class_names or [f"LABEL_{i}" for i in range(num_classes)])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["HfPvtForInstanceSegmentation"]
    assert config["auto_map"]["AutoModelForInstanceSegmentation"] == "mask_rcnn_hf_pvt.HfPvtForInstanceSegmentation"
    assert (tmp_path / "out" / "mask_rcnn_hf_pvt.py").is_file() and (tmp_path / "out" / "roi_ops_hf_pvt.py").is_file()

    # Two non-square images padded into one batch, each with its own valid region.
    pixel_values, pixel_mask = padded_batch(seed=list(KINDS).index(kind))
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    expected = predict(reference, pixel_values, IMAGE_SIZES)
    instances = processor.post_process_instances(outputs, threshold=0.0)
    for image, (ours, theirs, size) in enumerate(zip(instances, expected, IMAGE_SIZES)):
        assert_same_proposals(outputs.proposals[image], outputs.proposal_scores[image], theirs)
        probabilities = outputs.pred_mask_logits[image].sigmoid()
        assert_same_instances(ours, theirs, probabilities, size)


def test_padded_batch_through_the_image_processor(tmp_path):
    """Two photos of different sizes: resized, padded to a multiple of 32 with a pixel_mask, segmented, boxes and
    masks brought back to the original sizes; the reference sees the same padded tensor (MMDetection's rescale)."""
    reference = tiny_mask_rcnn("v2", seed=5)
    checkpoint = save_checkpoint(reference, tmp_path / "mask_rcnn.pth")
    assert main([str(checkpoint), str(tmp_path / "out"), "--num-heads", HEADS]) == 0
    model = AutoModelForInstanceSegmentation.from_pretrained(tmp_path / "out").eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out", size={"shortest_edge": 72, "longest_edge": 120})
    generator = torch.Generator().manual_seed(3)
    images = [
        torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8) for h, w in ((90, 150), (130, 95))
    ]
    inputs = processor(images=images, return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape[-2:]) == (128, 128)  # 72x120 and 99x72, padded to 32
    with torch.no_grad():
        outputs = model(**inputs)
    valid_sizes = [tuple(size) for size in outputs.image_sizes.tolist()]
    assert valid_sizes == [(72, 120), (99, 72)]
    original_sizes = [tuple(image.shape[-2:]) for image in images]
    instances = processor.post_process_instances(outputs, threshold=0.0, target_sizes=original_sizes)
    expected = predict(reference, inputs["pixel_values"], valid_sizes, original_sizes=original_sizes)
    for image, (ours, theirs, size) in enumerate(zip(instances, expected, original_sizes)):
        probabilities = outputs.pred_mask_logits[image].sigmoid()
        assert_same_instances(ours, theirs, probabilities, size)


# ------------------------------------------------------------------------------------------ strictness


def _fails(tmp_path: Path, capsys, checkpoint: Path, *extra: str) -> str:
    assert main([str(checkpoint), str(tmp_path / "out"), "--num-heads", HEADS, *extra]) == 1
    assert not any(p.name == "out" or p.name.startswith(".out.") for p in tmp_path.iterdir()), "something written"
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


STRICTNESS = {
    # The mask head's last layer missing is an error naming it, not a detector or a backbone without it.
    "missing mask logits": (
        lambda sd: sd.pop("roi_head.mask_head.conv_logits.weight"),
        "1 missing keys: roi_head.mask_head.conv_logits.weight",
    ),
    "missing rpn objectness": (lambda sd: sd.pop("rpn_head.rpn_cls.weight"), "rpn_head.rpn_cls.weight"),
    "extra key": (
        lambda sd: sd.__setitem__("roi_head.bbox_head.shared_fcs.2.weight", torch.zeros(64, 64)),
        "1 unknown keys: roi_head.bbox_head.shared_fcs.2.weight",
    ),
    "extra FPN level": (
        lambda sd: sd.__setitem__("neck.fpn_convs.4.conv.weight", torch.zeros(32, 32, 3, 3)),
        "1 unknown keys: neck.fpn_convs.4.conv.weight (-> neck.fpn_convs.4.weight)",
    ),
    "misshaped key": (
        lambda sd: sd.__setitem__("roi_head.mask_head.convs.1.conv.weight", torch.zeros(24, 20, 3, 3)),
        "roi_head.mask_head.convs.1.conv.weight: checkpoint (24, 20, 3, 3), model (24, 24, 3, 3)",
    ),
    "class-agnostic box regression": (
        lambda sd: sd.__setitem__("roi_head.bbox_head.fc_reg.weight", torch.zeros(4, 64)),
        "roi_head.bbox_head.fc_reg.weight: checkpoint (4, 64), model (20, 64)",
    ),
    "v1 classifier leftovers": (
        lambda sd: sd.__setitem__("backbone.cls_token", torch.zeros(1, 1, 64)),
        "unknown keys: backbone.cls_token",
    ),
    "NaN in the mask head": (
        lambda sd: sd["roi_head.mask_head.conv_logits.bias"].__setitem__(0, float("nan")),
        "roi_head.mask_head.conv_logits.bias (1 of 5 values)",
    ),
}


@pytest.mark.parametrize("case", list(STRICTNESS))
def test_every_tensor_placed_or_nothing_written(tmp_path, capsys, case):
    edit, message = STRICTNESS[case]
    kind = "v1" if "v1" in case else "v2-linear"
    checkpoint = save_checkpoint(tiny_mask_rcnn(kind), tmp_path / "mask_rcnn.pth", edit=edit)
    err = _fails(tmp_path, capsys, checkpoint)
    assert message in err, err


def test_task_choice(tmp_path, capsys):
    reference = tiny_mask_rcnn("v2-linear")
    checkpoint = save_checkpoint(reference, tmp_path / "mask_rcnn.pth")
    # The backbone alone, on request: the other layers are left out and said so.
    assert main([str(checkpoint), str(tmp_path / "backbone"), "--num-heads", HEADS, "--task", "backbone"]) == 0
    assert "around the backbone (neck., roi_head., rpn_head.)" in capsys.readouterr().out
    backbone = HfPvtBackbone.from_pretrained(tmp_path / "backbone", out_indices=[0, 1, 2, 3]).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(backbone(pixel_values=x).feature_maps, reference.backbone.forward_dense(x)):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    capsys.readouterr()

    # A Mask R-CNN is no RetinaNet, and a RetinaNet no Mask R-CNN.
    err = _fails(tmp_path, capsys, checkpoint, "--task", "detection")
    assert "--task instance-segmentation" in err
    state_dict = {
        k: v for k, v in mmdet_checkpoint(reference)["state_dict"].items() if k.startswith(("backbone.", "neck."))
    }
    torch.save({"state_dict": state_dict}, tmp_path / "fpn_only.pth")
    err = _fails(tmp_path, capsys, tmp_path / "fpn_only.pth", "--task", "instance-segmentation")
    assert "rpn_head.rpn_cls.weight" in err and "--task backbone" in err
    # Meta CLASSES that are not one name per class are not used.
    conversion = convert(save_checkpoint(reference, tmp_path / "m.pth", ["a", "b"]), num_heads=[1, 2, 3, 4])
    assert conversion.model.config.id2label[0] == "LABEL_0"


def test_released_mask_rcnn_converts_with_the_authors_card(tmp_path):
    """Full-size pvt_v2_b0 Mask R-CNN (COCO, 80 classes): detected as the release, card states its box and mask AP."""
    reference = random_mask_rcnn_(build_reference_mask_rcnn(VARIANTS["pvt_v2_b0"], num_classes=80), seed=11)
    torch.save(mmdet_checkpoint(reference, list(COCO_DETECTION_LABELS)), tmp_path / "mask_rcnn_pvt_v2_b0.pth")
    conversion = convert(tmp_path / "mask_rcnn_pvt_v2_b0.pth")
    assert conversion.variant == "pvt-v2-b0" and conversion.task == "instance-segmentation"
    assert conversion.authors_weights and conversion.layout == "mmdet-mask-rcnn"
    state_dict = reference.state_dict()
    assert conversion.num_source_tensors == len(state_dict)
    assert sum(p.numel() for p in conversion.model.parameters()) == sum(p.numel() for p in reference.parameters())

    assert main([str(tmp_path / "mask_rcnn_pvt_v2_b0.pth"), str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "**38.2 box AP, 36.2 mask AP**" in card and "the weights are the authors' own" in card
    assert card == (REPO / "model_cards" / "mask-rcnn-pvt-v2-b0.md").read_text()
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["return_segmentation_masks"] is True


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_released_mask_rcnn_is_recognised(name):
    """The tensor shapes of each of the 11 released Mask R-CNNs (built on the meta device, no memory) give exactly
    the released configuration, so their cards may state the published results."""
    with torch.device("meta"):
        reference = build_reference_mask_rcnn(VARIANTS[name], num_classes=80)
    state_dict = reference.state_dict()
    backbone = {key[len("backbone.") :]: value for key, value in state_dict.items() if key.startswith("backbone.")}
    source = Source(
        tensors=backbone,
        origins={key: [key] for key in backbone},
        layout="original",
        detector={key: value for key, value in state_dict.items() if not key.startswith("backbone.")},
    )
    config, variant, task = build_config(source, variant=None, num_heads=None, task="auto")
    assert (variant, task) == (name.replace("_", "-"), "instance-segmentation")
    assert is_authors_mask_rcnn(config)
    assert config.to_diff_dict() == model_card.released_mask_rcnn_config(variant).to_diff_dict()
    with torch.device("meta"):
        model = HfPvtForInstanceSegmentation(config)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())


def test_mask_rcnn_cards_are_up_to_date_and_state_the_published_results():
    rendered = model_card.render_mask_rcnn_cards()
    assert sorted(rendered) == sorted(f"mask-rcnn-{variant}.md" for variant in PRESETS)
    for name, card in rendered.items():
        committed = REPO / "model_cards" / name
        assert committed.is_file(), f"run `python -m hf_pvt.conversion.model_card` to create {committed}"
        assert committed.read_text() == card, f"{committed} is stale: run `python -m hf_pvt.conversion.model_card`"
        variant = name[len("mask-rcnn-") : -len(".md")]
        front_matter = yaml.safe_load(card.split("---\n")[1])
        assert front_matter["pipeline_tag"] == "image-segmentation" and front_matter["datasets"] == ["coco"]
        assert "AutoModelForInstanceSegmentation" in card and "trust_remote_code=True" in card
        if variant in PUBLISHED:
            metrics = front_matter["model-index"][0]["results"][0]["metrics"]
            assert [(m["name"], m["value"]) for m in metrics] == list(zip(("box AP", "mask AP"), PUBLISHED[variant]))
            assert f"**{PUBLISHED[variant][0]} box AP, {PUBLISHED[variant][1]} mask AP**" in card
        else:
            # b2-li and v1 Medium/Large: no number to state, and the card says so.
            assert "model-index" not in front_matter and "records no published box or mask AP" in card

"""Model cards (README.md with Hub metadata) for converted PVT folders.

`render_card` fills `model_card_template.md` for one converted classifier or backbone, and
`model_card_detection_template.md` for a RetinaNet detector. Run this module to regenerate the committed cards
of the 11 released classifiers and the 11 released RetinaNet detectors in `model_cards/` (a test checks they
are up to date):

    python -m conversion.model_card [--output-dir model_cards]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from string import Template
from typing import Any

import torch
import yaml

from hf_pvt import HfPvtConfig, HfPvtForObjectDetection
from hf_pvt.configuration_hf_pvt import PRESETS

from .coco_labels import COCO_DETECTION_LABELS

TEMPLATE_PATH = Path(__file__).with_name("model_card_template.md")
DETECTION_TEMPLATE_PATH = Path(__file__).with_name("model_card_detection_template.md")
REPO_ROOT_CARDS = Path(__file__).resolve().parent.parent / "model_cards"
REPO_PLACEHOLDER = "<your-namespace>/{variant}"

_PVT_PAPER = ("PVT paper (arXiv 2102.12122)", "https://arxiv.org/abs/2102.12122")
_PVTV2_PAPER = ("PVTv2 paper (arXiv 2106.13797)", "https://arxiv.org/abs/2106.13797")

# SPEC §2: parameters (M), GMACs and ImageNet-1k top-1 at 224; RetinaNet 1x COCO box AP; Semantic FPN
# ADE20K mIoU (paper; the authors' repository code reports the second number).
RESULTS: dict[str, dict[str, Any]] = {
    "pvt-tiny": {"params": 13.2, "gmacs": 1.9, "top1": 75.1, "box_ap": 36.7, "miou": (35.7, 36.6)},
    "pvt-small": {"params": 24.5, "gmacs": 3.8, "top1": 79.8, "box_ap": 40.4, "miou": (39.8, 41.9)},
    "pvt-medium": {"params": 44.2, "gmacs": 6.7, "top1": 81.2, "box_ap": 41.9, "miou": (41.6, 43.5)},
    "pvt-large": {"params": 61.4, "gmacs": 9.8, "top1": 81.7, "box_ap": 42.6, "miou": (42.1, 43.5)},
    "pvt-v2-b0": {"params": 3.7, "gmacs": 0.6, "top1": 70.5, "box_ap": 37.2},
    "pvt-v2-b1": {"params": 14.0, "gmacs": 2.1, "top1": 78.7, "box_ap": 41.2},
    "pvt-v2-b2": {"params": 25.4, "gmacs": 4.0, "top1": 82.0, "box_ap": 44.6},
    "pvt-v2-b2-li": {"params": 22.6, "gmacs": 3.9, "top1": 82.1, "box_ap": 43.6},
    "pvt-v2-b3": {"params": 45.2, "gmacs": 6.9, "top1": 83.2, "box_ap": 45.9},
    "pvt-v2-b4": {"params": 62.6, "gmacs": 10.1, "top1": 83.6, "box_ap": 46.1},
    "pvt-v2-b5": {"params": 82.0, "gmacs": 11.8, "top1": 83.8, "box_ap": 46.2},
}

_CITATIONS = {
    1: """@inproceedings{wang2021pvt,
  title     = {Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without Convolutions},
  author    = {Wang, Wenhai and Xie, Enze and Li, Xiang and Fan, Deng-Ping and Song, Kaitao and Liang, Ding
               and Lu, Tong and Luo, Ping and Shao, Ling},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2021}
}""",
    2: """@article{wang2022pvtv2,
  title   = {PVT v2: Improved Baselines with Pyramid Vision Transformer},
  author  = {Wang, Wenhai and Xie, Enze and Li, Xiang and Fan, Deng-Ping and Song, Kaitao and Liang, Ding
             and Lu, Tong and Luo, Ping and Shao, Ling},
  journal = {Computational Visual Media},
  year    = {2022}
}""",
}


def display_name(variant: str) -> str:
    """`pvt-v2-b2-li` -> `PVTv2-B2-Li`, `pvt-tiny` -> `PVT-Tiny`."""
    if variant.startswith("pvt-v2-"):
        return "PVTv2-" + "-".join(part.capitalize() for part in variant[len("pvt-v2-") :].split("-"))
    return "PVT-" + variant[len("pvt-") :].capitalize()


_AUTHORS_PROVENANCE = (
    "This folder was converted from the [authors' checkpoint](https://github.com/whai362/PVT) by hf_pvt's\n"
    "converter (`hf-pvt-convert`): the weights are the authors' own, renamed key for key into hf_pvt's layout\n"
    "and stored as safetensors."
)


def _provenance_paragraph(claims: bool, provenance: str | None) -> str:
    if claims:
        return _AUTHORS_PROVENANCE
    provenance = provenance or "a checkpoint"
    return (
        f"The weights were converted from {provenance} by hf_pvt's converter (`hf-pvt-convert`), renamed key for\n"
        "key into hf_pvt's layout and stored as safetensors. Nothing shows that they are the authors' released\n"
        "weights, so this card reports no results: evaluate the model before relying on it."
    )


def _metadata(variant: str | None, config: HfPvtConfig, classification: bool, claims: bool = True) -> dict[str, Any]:
    version_tag = "pvt-v2" if config.pvt_version == 2 else "pvt-v1"
    tags = ["vision", "image-classification" if classification else "image-feature-extraction", "pvt", version_tag]
    tags += ["hf_pvt", "pyramid-vision-transformer", "backbone"]
    metadata: dict[str, Any] = {
        "license": "apache-2.0",
        "library_name": "transformers",
        "pipeline_tag": "image-classification" if classification else "image-feature-extraction",
        "tags": tags,
    }
    if claims:
        metadata["datasets"] = ["imagenet-1k"]
    if claims and variant in RESULTS and classification:
        paper_name, paper_url = _PVTV2_PAPER if config.pvt_version == 2 else _PVT_PAPER
        metadata["model-index"] = [
            {
                "name": variant,
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": {"type": "imagenet-1k", "name": "ImageNet-1k", "split": "validation"},
                        "metrics": [{"type": "accuracy", "name": "Top-1 accuracy", "value": RESULTS[variant]["top1"]}],
                        "source": {"name": paper_name, "url": paper_url},
                    }
                ],
            }
        ]
    return metadata


def _dense_section(variant: str | None, config: HfPvtConfig) -> str:
    if variant not in RESULTS:
        return ""
    row = RESULTS[variant]
    name = display_name(variant)
    lines = [
        "## Dense prediction (reported by the authors)\n",
        f"{name} is also a backbone for detection and segmentation (`AutoBackbone`, strides 4/8/16/32):\n",
        f"- COCO val2017, RetinaNet 1x schedule: **{row['box_ap']} box AP**.",
    ]
    if "miou" in row:
        paper, code = row["miou"]
        lines.append(
            f"- ADE20K, Semantic FPN (512x512, 40k iterations): **{paper} mIoU** in the paper, {code} with the "
            "authors' released segmentation code."
        )
    return "\n".join(lines) + "\n"


def detector_name(variant: str) -> str:
    """The folder / card name of a released RetinaNet detector: `retinanet-pvt-v2-b2`."""
    return f"retinanet-{variant}"


def _detector_metadata(variant: str | None, config: HfPvtConfig, claims: bool) -> dict[str, Any]:
    version_tag = "pvt-v2" if config.pvt_version == 2 else "pvt-v1"
    metadata: dict[str, Any] = {
        "license": "apache-2.0",
        "library_name": "transformers",
        "pipeline_tag": "object-detection",
        "tags": [
            "vision",
            "object-detection",
            "retinanet",
            "pvt",
            version_tag,
            "hf_pvt",
            "pyramid-vision-transformer",
        ],
    }
    if claims:
        metadata["datasets"] = ["coco"]
    if claims and variant in RESULTS:
        paper_name, paper_url = _PVTV2_PAPER if config.pvt_version == 2 else _PVT_PAPER
        metadata["model-index"] = [
            {
                "name": detector_name(variant),
                "results": [
                    {
                        "task": {"type": "object-detection", "name": "Object Detection"},
                        "dataset": {"type": "coco", "name": "COCO 2017", "split": "validation"},
                        "metrics": [{"type": "mAP", "name": "box AP", "value": RESULTS[variant]["box_ap"]}],
                        "source": {"name": paper_name, "url": paper_url},
                    }
                ],
            }
        ]
    return metadata


def render_detector_card(
    variant: str | None,
    config: HfPvtConfig,
    repo_id: str | None = None,
    provenance: str | None = None,
    num_parameters: int | None = None,
) -> str:
    """The README.md of a converted RetinaNet folder; `variant` and `provenance` as in `render_card`."""
    claims = provenance is None and variant is not None
    backbone = display_name(variant) if variant else "custom PVT"
    if claims:
        title = f"RetinaNet {display_name(variant)} (COCO)"
    else:
        title = f"RetinaNet with a {backbone} backbone"
    repo_id = repo_id or REPO_PLACEHOLDER.format(variant=detector_name(variant or "pvt-custom"))
    kind = "PVTv2" if config.pvt_version == 2 else "PVT"
    trained = "trained on COCO 2017 (80 classes, 1x schedule)" if claims else f"with {config.num_labels} classes"
    summary = (
        f"{title}: the RetinaNet object detector of the {kind} paper, {trained}. A Pyramid Vision Transformer "
        "backbone feeds an FPN (strides 8 to 128) and RetinaNet's shared classification and box-regression head."
    )
    if claims and variant in RESULTS:
        results_section = (
            "\n## Results\n\nCOCO val2017, RetinaNet 1x schedule (12 epochs), single scale 1333x800 (authors' "
            f"numbers): **{RESULTS[variant]['box_ap']} box AP**.\n"
        )
    else:
        results_section = ""
    labels = [config.id2label.get(i) for i in range(config.num_labels)]
    per_octave = config.anchor_scales_per_octave
    fields = {
        "metadata": yaml.safe_dump(_detector_metadata(variant, config, claims), sort_keys=False, width=1000).strip(),
        "title": title,
        "summary": summary,
        "provenance": _provenance_paragraph(claims, provenance),
        "backbone": f"{backbone}{' (linear SRA)' if config.linear_attention else ''}",
        "hidden_sizes": ", ".join(map(str, config.hidden_sizes)),
        "depths": ", ".join(map(str, config.depths)),
        "num_attention_heads": ", ".join(map(str, config.num_attention_heads)),
        "sr_ratios": "7x7 pooling + 1x1 conv in every stage"
        if config.linear_attention
        else ", ".join(map(str, config.sr_ratios)),
        "fpn_width": config.decoder_hidden_size,
        "num_convs": config.detection_num_convs,
        "feat_width": config.detection_feat_channels,
        "anchors": len(config.anchor_ratios) * config.anchor_scales_per_octave,
        "anchor_scales": f"sides {config.anchor_octave_base_scale:g} x stride x 2^(k/{per_octave}), k < {per_octave}",
        "anchor_ratios": ", ".join(f"{r:g}" for r in config.anchor_ratios),
        "num_labels": config.num_labels,
        "class_source": " (COCO)" if labels == list(COCO_DETECTION_LABELS) else "",
        "parameters": f"{num_parameters / 1e6:.1f}M" if num_parameters is not None else "see config.json",
        "results_section": results_section,
        "repo_id": repo_id,
        "citation": _CITATIONS[config.pvt_version],
    }
    return Template(DETECTION_TEMPLATE_PATH.read_text()).substitute(fields)


def render_card(
    variant: str | None,
    config: HfPvtConfig,
    repo_id: str | None = None,
    provenance: str | None = None,
    num_parameters: int | None = None,
) -> str:
    """The README.md of a converted folder: Hub metadata, model facts, results, usage, citation.

    `variant` is the released model whose architecture `config` equals exactly (None for a custom one).
    `provenance` None means the weights are the authors' release of `variant`, and the card states its
    published results; otherwise it names where the weights came from, and the card claims no results.
    """
    architectures = config.architectures or ["HfPvtForImageClassification"]
    if architectures[0] == "HfPvtForObjectDetection":
        return render_detector_card(variant, config, repo_id, provenance, num_parameters)
    classification = architectures[0] == "HfPvtForImageClassification"
    claims = provenance is None and variant is not None
    if variant is None:
        name = "PVT (custom configuration)"
    elif claims:
        name = display_name(variant)
    else:
        name = f"PVT with the {display_name(variant)} architecture"
    repo_id = repo_id or REPO_PLACEHOLDER.format(variant=variant or "pvt-custom")
    kind = "PVTv2" if config.pvt_version == 2 else "PVT"
    attention = (
        "linear spatial-reduction attention (7x7 pooling)"
        if config.linear_attention
        else ("spatial-reduction attention")
    )
    if not classification:
        role = "backbone"
    elif claims:
        role = "image classifier trained on ImageNet-1k"
    else:
        role = f"image classifier ({config.num_labels} classes)"
    summary = (
        f"{name}: a Pyramid Vision Transformer ({kind}{', linear variant' if config.linear_attention else ''}) "
        f"{role}, with {attention}. "
        "Four stages produce feature maps at strides 4, 8, 16 and 32, so the same weights serve classification "
        "and dense prediction."
    )
    if variant in RESULTS:
        row = RESULTS[variant]
        params = f"{row['params']}M (paper); {row['gmacs']} GMACs at 224x224"
    elif num_parameters is not None:
        params = f"{num_parameters / 1e6:.1f}M"
    else:
        params = "see config.json"
    if claims and variant in RESULTS:
        results_table = (
            f"\n## Results\n\nImageNet-1k validation, 224x224, single crop (authors' numbers): "
            f"**{row['top1']}% top-1**.\n"
        )
    else:
        results_table = ""
    if classification:
        usage_tail = "predicted = outputs.logits.argmax(-1).item()\nprint(model.config.id2label[predicted])"
        auto_class = "AutoModelForImageClassification"
    else:
        usage_tail = "feature_maps = outputs.feature_maps  # strides 4, 8, 16, 32"
        auto_class = "AutoBackbone"
    if config.pvt_version == 1:
        input_sizes = (
            f"Any input size works: the position embeddings, stored for {config.image_size}x{config.image_size}, "
            "are resized bilinearly (the cls slot kept out of the resize)."
        )
    else:
        input_sizes = "Any input size works (PVTv2 has no position embeddings)."
    metadata = yaml.safe_dump(_metadata(variant, config, classification, claims), sort_keys=False, width=1000).strip()
    fields = {
        "metadata": metadata,
        "title": name,
        "provenance": _provenance_paragraph(claims, provenance),
        "summary": summary,
        "architecture": f"{kind}{' (linear SRA)' if config.linear_attention else ''}, `{architectures[0]}`",
        "hidden_sizes": ", ".join(map(str, config.hidden_sizes)),
        "depths": ", ".join(map(str, config.depths)),
        "mlp_ratios": ", ".join(map(str, config.mlp_ratios)),
        "num_attention_heads": ", ".join(map(str, config.num_attention_heads)),
        "sr_ratios": "7x7 pooling + 1x1 conv in every stage"
        if config.linear_attention
        else (", ".join(map(str, config.sr_ratios))),
        "parameters": params,
        "results_table": results_table,
        "dense_section": "\n" + _dense_section(variant, config) if claims and variant in RESULTS else "",
        "auto_class": auto_class,
        "repo_id": repo_id,
        "usage_tail": usage_tail,
        "input_sizes": input_sizes,
        "citation": _CITATIONS[config.pvt_version],
    }
    return Template(TEMPLATE_PATH.read_text()).substitute(fields)


def render_variant_cards() -> dict[str, str]:
    """`{file name: card}` for the classification folders of the 11 released variants."""
    cards = {}
    for variant in PRESETS:
        config = HfPvtConfig.from_preset(variant, architectures=["HfPvtForImageClassification"])
        cards[f"{variant}.md"] = render_card(variant, config)
    return cards


def released_detector_config(variant: str) -> HfPvtConfig:
    """The configuration of the authors' RetinaNet on `variant` (SPEC §6): COCO's 80 classes, hf_pvt's RetinaNet
    defaults (FPN and head of 256 channels, 4 convs per branch, 9 anchors)."""
    id2label = dict(enumerate(COCO_DETECTION_LABELS))
    return HfPvtConfig.from_preset(
        variant,
        architectures=["HfPvtForObjectDetection"],
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )


def render_detector_cards() -> dict[str, str]:
    """`{file name: card}` for the folders of the 11 released RetinaNet detectors."""
    cards = {}
    for variant in PRESETS:
        config = released_detector_config(variant)
        with torch.device("meta"):
            num_parameters = sum(p.numel() for p in HfPvtForObjectDetection(config).parameters())
        cards[f"{detector_name(variant)}.md"] = render_detector_card(variant, config, num_parameters=num_parameters)
    return cards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the model cards of the released variants.")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT_CARDS)
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    cards = {**render_variant_cards(), **render_detector_cards()}
    for name, card in cards.items():
        (args.output_dir / name).write_text(card)
    print(f"wrote {len(cards)} cards to {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

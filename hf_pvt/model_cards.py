"""Model cards (README.md with Hub metadata) for hf_pvt folders: every card hf_pvt writes comes from here, with the
papers, citations and published results of `variants_hf_pvt.py`.

- `render_conversion_card`: a folder of hf_pvt's converter, classifier, backbone, RetinaNet, Mask R-CNN or
  Semantic FPN, which knows where the weights came from. Only the authors' exact release gets their published
  results; any other source is named, and the card claims nothing. The committed `model_cards/` are these cards for
  the 44 releases (`render_variant_cards`, `render_detector_cards`, `render_mask_rcnn_cards`, `render_segmenter_cards`;
  `python -m hf_pvt.conversion.model_card` rewrites them).
- `render_folder_card`: any folder `hf_pvt.make_hub_ready` shares, hf_pvt's models or Transformers' heads on an
  hf_pvt backbone, written from the folder's files alone. It starts with `CARD_MARKER`, so that hf_pvt rewrites it
  (with the repository id, once known) and never touches a card it did not write that way.
"""

from __future__ import annotations

from pathlib import Path
from string import Template
from typing import Any

import torch
import yaml

from .configuration_hf_pvt import HfPvtConfig
from .conversion.ade20k_labels import ADE20K_LABELS
from .conversion.coco_labels import COCO_DETECTION_LABELS
from .mask_rcnn_hf_pvt import HfPvtForInstanceSegmentation
from .retinanet_hf_pvt import HfPvtForObjectDetection
from .semantic_fpn_hf_pvt import HfPvtForSemanticSegmentation
from .variants_hf_pvt import CITATIONS, PAPERS, PRESETS, RESULTS, preset_name

TEMPLATES = Path(__file__).resolve().parent / "model_card_templates"
REPO_PLACEHOLDER = "<your-namespace>/{variant}"
# Cards carrying this line were written by hf_pvt from the folder alone; push_to_hub rewrites them with the
# repository id. Any other README.md is the author's (or the converter's) and is never touched.
CARD_MARKER = (
    "<!-- Written by hf_pvt from the folder's files; hf_pvt.push_to_hub rewrites it while this line stays. -->"
)


def _yaml(metadata: dict[str, Any]) -> str:
    return yaml.safe_dump(metadata, sort_keys=False, width=1000).strip()


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
        paper_name, paper_url = PAPERS[config.pvt_version]
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
    paper, code = row.get("miou", (None, None))
    if paper is not None:
        lines.append(
            f"- ADE20K, Semantic FPN (512x512, 40k iterations): **{paper} mIoU** in the paper, {code} with the "
            "authors' released segmentation code."
        )
    return "\n".join(lines) + "\n"


def detector_name(variant: str) -> str:
    """The folder / card name of a released RetinaNet detector: `retinanet-pvt-v2-b2`."""
    return f"retinanet-{variant}"


def _dense_metadata(
    config: HfPvtConfig, pipeline_tag: str, head_tags: list[str], dataset: str, claims: bool
) -> dict[str, Any]:
    """The Hub metadata every dense head's card shares; `dataset` is named only where the card claims results."""
    version_tag = "pvt-v2" if config.pvt_version == 2 else "pvt-v1"
    tags = ["vision", pipeline_tag, *head_tags, "pvt", version_tag, "hf_pvt", "pyramid-vision-transformer"]
    metadata: dict[str, Any] = {
        "license": "apache-2.0",
        "library_name": "transformers",
        "pipeline_tag": pipeline_tag,
        "tags": tags,
    }
    if claims:
        metadata["datasets"] = [dataset]
    return metadata


def _model_index(
    name: str, task: tuple[str, str], dataset: dict[str, str], metrics: list[dict[str, Any]], source: tuple[str, str]
) -> list[dict[str, Any]]:
    """One published result in the Hub's `model-index` form."""
    result = {
        "task": {"type": task[0], "name": task[1]},
        "dataset": dataset,
        "metrics": metrics,
        "source": {"name": source[0], "url": source[1]},
    }
    return [{"name": name, "results": [result]}]


_COCO_VALIDATION = {"type": "coco", "name": "COCO 2017", "split": "validation"}


def _detector_metadata(variant: str | None, config: HfPvtConfig, claims: bool) -> dict[str, Any]:
    metadata = _dense_metadata(config, "object-detection", ["retinanet"], "coco", claims)
    if claims and variant in RESULTS:
        metadata["model-index"] = _model_index(
            detector_name(variant),
            ("object-detection", "Object Detection"),
            _COCO_VALIDATION,
            [{"type": "mAP", "name": "box AP", "value": RESULTS[variant]["box_ap"]}],
            PAPERS[config.pvt_version],
        )
    return metadata


def _detector_card(
    variant: str | None,
    config: HfPvtConfig,
    repo_id: str | None = None,
    provenance: str | None = None,
    num_parameters: int | None = None,
) -> str:
    """The README.md of a converted RetinaNet folder; `variant` and `provenance` as in `render_conversion_card`."""
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
        "metadata": _yaml(_detector_metadata(variant, config, claims)),
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
        "citation": CITATIONS[config.pvt_version],
    }
    return Template((TEMPLATES / "detection.md").read_text()).substitute(fields)


def mask_rcnn_name(variant: str) -> str:
    """The folder / card name of a released Mask R-CNN: `mask-rcnn-pvt-v2-b2`."""
    return f"mask-rcnn-{variant}"


def _mask_rcnn_metadata(variant: str | None, config: HfPvtConfig, claims: bool) -> dict[str, Any]:
    metadata = _dense_metadata(config, "image-segmentation", ["instance-segmentation", "mask-rcnn"], "coco", claims)
    if claims and "mask_rcnn" in RESULTS.get(variant, {}):
        box_ap, mask_ap = RESULTS[variant]["mask_rcnn"]
        metadata["model-index"] = _model_index(
            mask_rcnn_name(variant),
            ("image-segmentation", "Instance Segmentation"),
            _COCO_VALIDATION,
            [{"type": "mAP", "name": "box AP", "value": box_ap}, {"type": "mAP", "name": "mask AP", "value": mask_ap}],
            PAPERS[config.pvt_version],
        )
    return metadata


def _mask_rcnn_card(
    variant: str | None,
    config: HfPvtConfig,
    repo_id: str | None = None,
    provenance: str | None = None,
    num_parameters: int | None = None,
) -> str:
    """The README.md of a converted Mask R-CNN folder; `variant` and `provenance` as in `render_conversion_card`."""
    claims = provenance is None and variant is not None
    backbone = display_name(variant) if variant else "custom PVT"
    if claims:
        title = f"Mask R-CNN {display_name(variant)} (COCO)"
    else:
        title = f"Mask R-CNN with a {backbone} backbone"
    repo_id = repo_id or REPO_PLACEHOLDER.format(variant=mask_rcnn_name(variant or "pvt-custom"))
    kind = "PVTv2" if config.pvt_version == 2 else "PVT"
    trained = "trained on COCO 2017 (80 classes, 1x schedule)" if claims else f"with {config.num_labels} classes"
    summary = (
        f"{title}: the Mask R-CNN instance segmentation model of the {kind} paper, {trained}. A Pyramid Vision "
        "Transformer backbone feeds an FPN (strides 4 to 64), a region proposal network, and box and mask heads on "
        "RoIAlign features: each detected object gets a box, a class and a mask."
    )
    results_section = ""
    if claims and "mask_rcnn" in RESULTS.get(variant, {}):
        box_ap, mask_ap = RESULTS[variant]["mask_rcnn"]
        results_section = (
            "\n## Results\n\nCOCO val2017, Mask R-CNN 1x schedule (12 epochs), single scale 1333x800 (authors' "
            f"numbers): **{box_ap} box AP, {mask_ap} mask AP**.\n"
        )
    elif claims:
        results_section = (
            "\n## Results\n\nhf_pvt records no published box or mask AP for this model, so this card states none: "
            f"see the [{PAPERS[config.pvt_version][0]}]({PAPERS[config.pvt_version][1]}) and the authors' repository "
            "for their numbers, or evaluate the model on COCO val2017.\n"
        )
    labels = [config.id2label.get(i) for i in range(config.num_labels)]
    fields = {
        "metadata": _yaml(_mask_rcnn_metadata(variant, config, claims)),
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
        "anchors": len(config.rpn_anchor_ratios),
        "anchor_scale": f"{config.rpn_anchor_scale:g}",
        "anchor_ratios": ", ".join(f"{r:g}" for r in config.rpn_anchor_ratios),
        "fc_width": config.rcnn_fc_channels,
        "mask_convs": config.mask_head_num_convs,
        "mask_width": config.mask_head_channels,
        "num_labels": config.num_labels,
        "class_source": " (COCO)" if labels == list(COCO_DETECTION_LABELS) else "",
        "parameters": f"{num_parameters / 1e6:.1f}M" if num_parameters is not None else "see config.json",
        "results_section": results_section,
        "repo_id": repo_id,
        "citation": CITATIONS[config.pvt_version],
    }
    return Template((TEMPLATES / "instance_segmentation.md").read_text()).substitute(fields)


def segmenter_name(variant: str) -> str:
    """The folder / card name of a released Semantic FPN segmenter: `semantic-fpn-pvt-v2-b2`."""
    return f"semantic-fpn-{variant}"


def _segmenter_metadata(variant: str | None, config: HfPvtConfig, claims: bool) -> dict[str, Any]:
    metadata = _dense_metadata(
        config, "image-segmentation", ["semantic-segmentation", "semantic-fpn"], "scene_parse_150", claims
    )
    paper, code = RESULTS.get(variant, {}).get("miou", (None, None))
    if claims and code is not None:
        paper_name, paper_url = PAPERS[config.pvt_version]
        metadata["model-index"] = _model_index(
            segmenter_name(variant),
            ("image-segmentation", "Semantic Segmentation"),
            {"type": "scene_parse_150", "name": "ADE20K", "split": "validation"},
            [{"type": "mean_iou", "name": "mIoU", "value": code}],
            (f"{paper_name}, the authors' released segmentation code", paper_url),
        )
    return metadata


def _segmenter_card(
    variant: str | None,
    config: HfPvtConfig,
    repo_id: str | None = None,
    provenance: str | None = None,
    num_parameters: int | None = None,
) -> str:
    """The README.md of a converted Semantic FPN folder; `variant` and `provenance` as in `render_conversion_card`."""
    claims = provenance is None and variant is not None
    backbone = display_name(variant) if variant else "custom PVT"
    title = f"Semantic FPN {display_name(variant)} (ADE20K)" if claims else f"Semantic FPN with a {backbone} backbone"
    repo_id = repo_id or REPO_PLACEHOLDER.format(variant=segmenter_name(variant or "pvt-custom"))
    kind = "PVTv2" if config.pvt_version == 2 else "PVT"
    trained = "trained on ADE20K (150 classes, 40k iterations)" if claims else f"with {config.num_labels} classes"
    summary = (
        f"{title}: the semantic segmentation model of the {kind} paper, {trained}. A Pyramid Vision Transformer "
        "backbone feeds an FPN (strides 4 to 32) and a light convolutional head that brings every level to stride 4 "
        "and sums them: one class per pixel."
    )
    paper, code = RESULTS.get(variant, {}).get("miou", (None, None)) if variant else (None, None)
    results_section = ""
    if claims and code is not None:
        in_paper = f"; the paper reports {paper}" if paper is not None else ""
        results_section = (
            "\n## Results\n\nADE20K validation, single scale (the image resized into 2048x512), mIoU as measured with "
            f"the authors' released segmentation code: **{code} mIoU**{in_paper}.\n"
        )
    elif claims:
        results_section = (
            "\n## Results\n\nThe authors publish no ADE20K mIoU for this model, so this card states none: evaluate it "
            "with `examples/run_semantic_segmentation.py --eval_only` on ADE20K's validation set.\n"
        )
    labels = [config.id2label.get(i) for i in range(config.num_labels)]
    norm = "BatchNorm (running statistics)" if config.semantic_head_norm == "batch_norm" else "GroupNorm(32)"
    fields = {
        "metadata": _yaml(_segmenter_metadata(variant, config, claims)),
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
        "head_width": config.decoder_head_size,
        "norm": norm,
        "num_labels": config.num_labels,
        "class_source": " (ADE20K)" if labels == list(ADE20K_LABELS) else "",
        "parameters": f"{num_parameters / 1e6:.1f}M" if num_parameters is not None else "see config.json",
        "results_section": results_section,
        "repo_id": repo_id,
        "citation": CITATIONS[config.pvt_version],
    }
    return Template((TEMPLATES / "semantic_segmentation.md").read_text()).substitute(fields)


def render_conversion_card(
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
        return _detector_card(variant, config, repo_id, provenance, num_parameters)
    if architectures[0] == "HfPvtForInstanceSegmentation":
        return _mask_rcnn_card(variant, config, repo_id, provenance, num_parameters)
    if architectures[0] == "HfPvtForSemanticSegmentation":
        return _segmenter_card(variant, config, repo_id, provenance, num_parameters)
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
    metadata = _yaml(_metadata(variant, config, classification, claims))
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
        "citation": CITATIONS[config.pvt_version],
    }
    return Template((TEMPLATES / "classification.md").read_text()).substitute(fields)


def render_variant_cards() -> dict[str, str]:
    """`{file name: card}` for the classification folders of the 11 released variants."""
    cards = {}
    for variant in PRESETS:
        config = HfPvtConfig.from_preset(variant, architectures=["HfPvtForImageClassification"])
        cards[f"{variant}.md"] = render_conversion_card(variant, config)
    return cards


def released_detector_config(variant: str) -> HfPvtConfig:
    """The configuration of the authors' RetinaNet on `variant` (`retinanet_pvt_*_fpn_1x_coco.py`): COCO's 80
    classes, hf_pvt's RetinaNet defaults (FPN and head of 256 channels, 4 convs per branch, 9 anchors)."""
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
        cards[f"{detector_name(variant)}.md"] = render_conversion_card(variant, config, num_parameters=num_parameters)
    return cards


def released_mask_rcnn_config(variant: str) -> HfPvtConfig:
    """The configuration of the authors' Mask R-CNN on `variant` (`mask_rcnn_pvt_*_fpn_1x_coco.py`): COCO's 80
    classes, hf_pvt's Mask R-CNN defaults (MMDetection's `mask_rcnn_r50_fpn.py`: FPN of 256 channels, 3 anchors
    per location, box head of 1024, mask head of four 256-channel convs)."""
    id2label = dict(enumerate(COCO_DETECTION_LABELS))
    return HfPvtConfig.from_preset(
        variant,
        architectures=["HfPvtForInstanceSegmentation"],
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )


def render_mask_rcnn_cards() -> dict[str, str]:
    """`{file name: card}` for the folders of the 11 released Mask R-CNNs (those without published numbers in
    `variants_hf_pvt.RESULTS` say so)."""
    cards = {}
    for variant in PRESETS:
        config = released_mask_rcnn_config(variant)
        with torch.device("meta"):
            num_parameters = sum(p.numel() for p in HfPvtForInstanceSegmentation(config).parameters())
        cards[f"{mask_rcnn_name(variant)}.md"] = render_conversion_card(variant, config, num_parameters=num_parameters)
    return cards


def released_segmenter_config(variant: str) -> HfPvtConfig:
    """The configuration of the authors' Semantic FPN on `variant` (`fpn_pvt_*_ade20k_40k.py`,
    `fpn_pvtv2_*_ade20k_40k.py`): ADE20K's 150 classes, hf_pvt's Semantic FPN defaults (FPN of 256 and head of 128
    channels, BatchNorm)."""
    id2label = dict(enumerate(ADE20K_LABELS))
    return HfPvtConfig.from_preset(
        variant,
        architectures=["HfPvtForSemanticSegmentation"],
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )


def render_segmenter_cards() -> dict[str, str]:
    """`{file name: card}` for the folders of the 11 released Semantic FPN segmenters (b2-li, without a published
    mIoU, says so)."""
    cards = {}
    for variant in PRESETS:
        config = released_segmenter_config(variant)
        with torch.device("meta"):
            num_parameters = sum(p.numel() for p in HfPvtForSemanticSegmentation(config).parameters())
        cards[f"{segmenter_name(variant)}.md"] = render_conversion_card(variant, config, num_parameters=num_parameters)
    return cards


def render_folder_card(
    *,
    title: str,
    repo: str,
    architecture: str | None,
    model_type: str,
    backbone: dict[str, Any],
    auto_class: str,
    task: str,
    num_labels: int,
    num_parameters: int,
    has_processor: bool,
) -> str:
    """The card `hf_pvt.make_hub_ready` writes for a saved folder, from what its files say: the head (hf_pvt's own
    or Transformers'), the backbone (its preset if it is one), the Auto class and pipeline task, how to load it with
    and without hf_pvt. It says that it knows nothing of the training."""
    version = backbone.get("pvt_version", 2)
    family = "PVTv2" if version == 2 else "PVT v1"
    own_model = model_type == HfPvtConfig.model_type
    head = architecture or model_type
    preset = preset_name(backbone)
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": task,
        "tags": list(dict.fromkeys(["vision", task, "hf_pvt", "pvt", f"pvt-v{version}", model_type])),
    }
    backbone_row = (
        f"hf_pvt `{preset}`"
        if preset
        else f"hf_pvt {family}, custom: widths {backbone.get('hidden_sizes')}, depths {backbone.get('depths')}"
    )
    stages = backbone.get("out_features") or backbone.get("stage_names")
    rows = [("head", f"`{head}`" + ("" if own_model else " (Transformers)")), ("backbone", backbone_row)]
    if stages and not own_model:
        rows.append(("backbone stages used", ", ".join(stages)))
    if num_labels:
        rows.append(("labels", str(num_labels)))
    if num_parameters:
        rows.append(("parameters", f"{num_parameters / 1e6:.2f}M"))

    imports = f"from transformers import {auto_class}" + (", pipeline" if has_processor else "")
    load = f'model = {auto_class}.from_pretrained("{repo}")'
    run = f'predict = pipeline("{task}", model="{repo}")' if has_processor else None
    with_hf_pvt = ["import hf_pvt  # registers hf_pvt with the Auto classes", imports, "", load]
    without = [imports, "", load.replace('")', '", trust_remote_code=True)')]
    if run:
        with_hf_pvt.append(run)
        without.append(run.replace('")', '", trust_remote_code=True)'))
    subject = (
        f"hf_pvt's `{head}`"
        if own_model
        else f"Transformers' `{head}` on an hf_pvt {family} backbone ({preset or 'custom configuration'})"
    )
    lines = [
        "---",
        _yaml(metadata),
        "---",
        CARD_MARKER,
        "",
        f"# {title}",
        "",
        f"{subject}, saved with hf_pvt, the Pyramid Vision Transformer family ([PVT]({PAPERS[1][1]}), "
        f"[PVTv2]({PAPERS[2][1]})) for Transformers. This card was written from the folder's files alone: it does "
        "not know what the model was trained on or how well it does. Add the data, the training recipe and the "
        "results before relying on it.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "## How to use",
        "",
        "With the hf_pvt package installed:",
        "",
        "```python",
        *with_hf_pvt,
        "```",
        "",
        "Without hf_pvt: the repository carries hf_pvt's code, which Transformers runs with `trust_remote_code=True`:",
        "",
        "```python",
        *without,
        "```",
        "",
    ]
    if not has_processor:
        lines += ["No image processor was saved with the model: save one into the folder to use `pipeline()`.", ""]
    lines += ["## Citation", "", "```bibtex", CITATIONS[version], "```", ""]
    return "\n".join(lines)


def is_folder_card(card: str) -> bool:
    """Whether `card` is one hf_pvt wrote from a folder's files (and may rewrite)."""
    return CARD_MARKER in card


__all__ = [
    "CARD_MARKER",
    "detector_name",
    "display_name",
    "is_folder_card",
    "mask_rcnn_name",
    "released_detector_config",
    "released_mask_rcnn_config",
    "render_conversion_card",
    "render_detector_cards",
    "render_folder_card",
    "render_mask_rcnn_cards",
    "render_variant_cards",
]

"""Convert PVT / PVTv2 checkpoints into Hub-ready hf_pvt folders (safetensors, config, code, card).

    python -m conversion.convert pvt_v2_b2.pth out/pvt-v2-b2 [--variant pvt-v2-b2] [--verify cats.png]
    hf-pvt-convert pvt_v2_b2.pth out/pvt-v2-b2 --push-to-hub your-name/pvt-v2-b2
    hf-pvt-convert retinanet_pvt_v2_b2_fpn_1x_coco.pth out/retinanet-pvt-v2-b2

Sources: the authors' `.pth` files (legacy or zip torch format, raw or wrapped in `model` / `state_dict`,
with or without a `backbone.` prefix), their MMDetection RetinaNet detectors (`backbone.` + `neck.` +
`bbox_head.`, converted to `HfPvtForObjectDetection`), timm's pvt_v2 state dicts, `.safetensors` files, and
Transformers' `pvt` / `pvt_v2` folders. Checkpoints are read with `torch.load(weights_only=True)` only. The variant is
read off the tensors; a `--variant` that disagrees with them is an error. Every source tensor must land
in exactly one model parameter and every parameter must be filled, or nothing is written. Tensors must be
finite floating-point numbers. The folder appears atomically: it is assembled next to the target and
renamed into place at the end; the leftovers of killed runs are removed by the next run.

Every argument is checked before any work. Any failure prints one `error:` line (and exits 1); `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as transformers_logging

import hf_pvt
from hf_pvt import (
    HfPvtBackbone,
    HfPvtConfig,
    HfPvtForImageClassification,
    HfPvtForObjectDetection,
    HfPvtImageProcessor,
)
from hf_pvt.configuration_hf_pvt import PRESETS, normalize_preset_name

from .coco_labels import COCO_DETECTION_LABELS
from .imagenet_labels import IMAGENET_1K_LABELS
from .layouts import MMDET_RETINANET_TO_HF_PVT, ORIGINAL_TO_HF_PVT, RETINANET_MARKERS, rename_key
from .model_card import render_card
from .output_folder import OutputFolder, OutputFolderError, clean_stale_entries, describe_os_error
from .sources import ConversionError, Source, first_line, load_source
from .verify import VerifyResult, verify_classifier

# The files `trust_remote_code` needs next to the weights (register_for_auto_class copies them on save).
REMOTE_CODE_FILES = (
    "configuration_hf_pvt.py",
    "modeling_hf_pvt.py",
    "image_processing_hf_pvt.py",
    "detection_hf_pvt.py",
)
# Released models all use these head counts; heads leave no trace in the tensors' shapes.
DEFAULT_NUM_HEADS = [1, 2, 5, 8]
# Fields read off the tensors and compared with a preset; the others (heads) cannot be seen in shapes.
_COMPARED_FIELDS = (
    "pvt_version",
    "linear_attention",
    "num_channels",
    "hidden_sizes",
    "depths",
    "mlp_ratios",
    "sr_ratios",
    "patch_sizes",
    "image_size",
    "qkv_bias",
)
# A converted configuration states a released model only if all of these equal the preset's.
_ARCHITECTURE_FIELDS = (
    *_COMPARED_FIELDS,
    "num_attention_heads",
    "strides",
    "hidden_act",
    "layer_norm_eps",
    "embedding_layer_norm_eps",
)
TASKS = ("auto", "classification", "backbone", "detection")
MODEL_CLASSES = {
    "classification": HfPvtForImageClassification,
    "backbone": HfPvtBackbone,
    "detection": HfPvtForObjectDetection,
}
# RetinaNet fields read off a detector's tensors; with the anchor settings (not visible in shapes, the authors'
# are hf_pvt's defaults) they must equal the defaults for a card to state the authors' box AP.
_RETINANET_FIELDS = ("decoder_hidden_size", "detection_feat_channels", "detection_num_convs")
_ANCHOR_FIELDS = ("anchor_octave_base_scale", "anchor_scales_per_octave", "anchor_ratios")
# How a model card names where the weights came from, when they are not known to be the authors' release.
LAYOUT_DESCRIPTIONS = {
    "original": "a checkpoint in the authors' layout",
    "transformers-pvt": "a Transformers `pvt` folder",
    "transformers-pvt_v2": "a Transformers `pvt_v2` folder",
    "timm-pvt_v2": "a timm `pvt_v2` state dict",
    "mmdet-retinanet": "an MMDetection RetinaNet checkpoint",
}


# ----------------------------------------------------------------------------------- variant detection


def _as_ratio(hidden: int, width: int) -> int | float:
    ratio = hidden / width
    return int(ratio) if ratio.is_integer() else ratio


def detect_architecture(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Read the configuration fields the tensors determine (see `_COMPARED_FIELDS`) off an original-layout dict."""
    stages = sorted(int(m.group(1)) for key in tensors if (m := re.fullmatch(r"patch_embed(\d)\.proj\.weight", key)))
    if not stages or stages != list(range(1, len(stages) + 1)):
        raise ConversionError(
            f"Cannot read the architecture: expected patch_embed1..N.proj.weight, found stages {stages}. "
            "Is this a PVT checkpoint?"
        )
    embeds = [tensors[f"patch_embed{i}.proj.weight"] for i in stages]
    if any(embed.ndim != 4 for embed in embeds):
        raise ConversionError("patch_embed*.proj.weight must be 4-D convolution kernels; is this a PVT checkpoint?")
    widths = [int(w.shape[0]) for w in embeds]
    has_pos = any(key.startswith("pos_embed") for key in tensors)
    has_dwconv = any(".mlp.dwconv." in key for key in tensors)
    if has_pos and has_dwconv:
        raise ConversionError("The checkpoint mixes v1 position embeddings and v2 depthwise MLP convolutions.")
    if not has_pos and not has_dwconv:
        raise ConversionError(
            "Cannot tell PVT v1 from v2: the checkpoint has neither pos_embed* nor mlp.dwconv tensors."
        )
    version = 1 if has_pos else 2

    depths, mlp_ratios, sr_kernels = [], [], []
    for i, width in zip(stages, widths):
        blocks = {int(m.group(1)) for key in tensors if (m := re.match(rf"block{i}\.(\d+)\.", key))}
        depths.append(max(blocks) + 1 if blocks else 0)
        fc1 = tensors.get(f"block{i}.0.mlp.fc1.weight")
        mlp_ratios.append(_as_ratio(int(fc1.shape[0]), width) if fc1 is not None and fc1.ndim == 2 else 4)
        sr = tensors.get(f"block{i}.0.attn.sr.weight")
        sr_kernels.append(int(sr.shape[-1]) if sr is not None and sr.ndim == 4 else None)
    # Linear SRA reduces in every stage with a 1x1 convolution; strided SRA leaves the last stage unreduced.
    linear = version == 2 and all(k == 1 for k in sr_kernels)
    architecture: dict[str, Any] = {
        "pvt_version": version,
        "linear_attention": linear,
        "num_channels": int(embeds[0].shape[1]),
        "hidden_sizes": widths,
        "depths": depths,
        "mlp_ratios": mlp_ratios,
        "patch_sizes": [int(w.shape[-1]) for w in embeds],
        "qkv_bias": "block1.0.attn.q.bias" in tensors,
    }
    if not linear:
        architecture["sr_ratios"] = [k or 1 for k in sr_kernels]
    if version == 1:
        pos_embed1 = tensors.get("pos_embed1")
        tokens = int(pos_embed1.shape[1]) if pos_embed1 is not None and pos_embed1.ndim == 3 else 0
        side = math.isqrt(tokens)
        if tokens == 0 or side * side != tokens:
            raise ConversionError(f"pos_embed1 holds {tokens} positions, not a square grid; cannot infer image_size.")
        architecture["image_size"] = side * architecture["patch_sizes"][0]
    return architecture


def preset_disagreements(architecture: dict[str, Any], preset: str) -> list[str]:
    """`field: checkpoint X, preset Y` for every detected field on which `architecture` and `preset` differ."""
    reference = HfPvtConfig.from_preset(preset)
    problems = []
    for name in _COMPARED_FIELDS:
        if name not in architecture:
            continue
        expected = getattr(reference, name)
        if name == "image_size" and reference.pvt_version == 2:
            continue
        if architecture[name] != expected:
            problems.append(f"{name}: checkpoint {architecture[name]}, {preset} {expected}")
    return problems


def match_preset(architecture: dict[str, Any]) -> str | None:
    """The released variant whose configuration the tensors show, or None for a custom model."""
    return next((name for name in PRESETS if not preset_disagreements(architecture, name)), None)


def equals_preset(config: HfPvtConfig, variant: str) -> bool:
    """Whether `config` describes exactly the released `variant`: every architecture field, heads included."""
    reference = HfPvtConfig.from_preset(variant)
    return all(getattr(config, name) == getattr(reference, name) for name in _ARCHITECTURE_FIELDS)


def _labels_of(config: HfPvtConfig) -> list[str | None]:
    return [config.id2label.get(i) for i in range(config.num_labels)]


def has_imagenet_head(config: HfPvtConfig) -> bool:
    return _labels_of(config) == list(IMAGENET_1K_LABELS)


def is_authors_retinanet(config: HfPvtConfig) -> bool:
    """Whether a detector configuration is the authors' COCO RetinaNet head: 80 COCO classes, FPN and head of
    256 channels, 4 convs per branch, 9 anchors (SPEC §6)."""
    defaults = HfPvtConfig()
    return _labels_of(config) == list(COCO_DETECTION_LABELS) and all(
        getattr(config, name) == getattr(defaults, name) for name in (*_RETINANET_FIELDS, *_ANCHOR_FIELDS)
    )


def detect_retinanet(detector: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The RetinaNet configuration fields an mmdet checkpoint's neck and head tensors determine: FPN width, head
    width and depth, and the number of classes (retina_cls has anchors-per-location x classes outputs)."""

    def kernel(key: str) -> torch.Tensor:
        tensor = detector.get(key)
        if tensor is None or tensor.ndim != 4:
            found = "nothing" if tensor is None else f"shape {tuple(tensor.shape)}"
            raise ConversionError(
                f"The RetinaNet checkpoint has no convolution kernel {key!r} (found {found}); is it an mmdet "
                "RetinaNet with an FPN neck, like the authors' detectors?"
            )
        return tensor

    num_convs = len({int(m[1]) for key in detector if (m := re.match(r"bbox_head\.cls_convs\.(\d+)\.", key))})
    fpn_width = int(kernel("neck.lateral_convs.0.conv.weight").shape[0])
    defaults = HfPvtConfig()
    anchors = len(defaults.anchor_ratios) * defaults.anchor_scales_per_octave
    box_outputs = int(kernel("bbox_head.retina_reg.weight").shape[0])
    class_outputs = int(kernel("bbox_head.retina_cls.weight").shape[0])
    if box_outputs != 4 * anchors or class_outputs % anchors:
        raise ConversionError(
            f"bbox_head.retina_reg has {box_outputs} outputs and retina_cls {class_outputs}: that is not 4 and "
            f"C values for each of the {anchors} anchors per location ({len(defaults.anchor_ratios)} ratios x "
            f"{defaults.anchor_scales_per_octave} scales) of the authors' RetinaNet, the only anchor setting "
            "hf-pvt-convert reads."
        )
    head_width = int(kernel("bbox_head.cls_convs.0.conv.weight").shape[0]) if num_convs else fpn_width
    return {
        "decoder_hidden_size": fpn_width,
        "detection_feat_channels": head_width,
        "detection_num_convs": num_convs,
        "num_labels": class_outputs // anchors,
    }


# ------------------------------------------------------------------------------------------ conversion


@dataclass
class Conversion:
    """A converted model and what may be said about it.

    `variant` names the released model whose architecture the configuration equals exactly (heads included),
    else None. `authors_weights` says whether the model card may claim the authors' published results: only
    for that exact architecture, from the authors' own layout (or confirmed by `--verify`), with the
    published head (ImageNet-1k for a classifier).
    """

    model: HfPvtForImageClassification | HfPvtBackbone
    variant: str | None
    task: str
    layout: str
    notes: list[str]
    num_source_tensors: int
    source_name: str = ""
    authors_weights: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def provenance(self) -> str | None:
        """None when the card may present the weights as the authors'; else where they came from, honestly."""
        if self.authors_weights:
            return None
        return f"`{self.source_name}`, {LAYOUT_DESCRIPTIONS.get(self.layout, self.layout)}"


def _labels(num_labels: int, source_config: dict[str, Any] | None) -> dict[int, str]:
    given = (source_config or {}).get("id2label") or {}
    if (
        isinstance(given, dict)
        and len(given) == num_labels
        and not all(re.fullmatch(r"LABEL_\d+", str(v)) for v in given.values())
    ):
        try:
            return {int(k): str(v) for k, v in given.items()}
        except ValueError:
            pass
    if num_labels == len(IMAGENET_1K_LABELS):
        return dict(enumerate(IMAGENET_1K_LABELS))
    return {i: f"LABEL_{i}" for i in range(num_labels)}


def _detection_labels(num_labels: int, class_names: list[str] | None) -> dict[int, str]:
    if class_names is not None and len(class_names) == num_labels:
        return dict(enumerate(class_names))
    if num_labels == len(COCO_DETECTION_LABELS):
        return dict(enumerate(COCO_DETECTION_LABELS))
    return {i: f"LABEL_{i}" for i in range(num_labels)}


def _check_num_heads(num_heads: Any, origin: str) -> list[int]:
    if (
        not isinstance(num_heads, (list, tuple))
        or not num_heads
        or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in num_heads)
    ):
        raise ConversionError(f"{origin} must be positive integers, one per stage (e.g. 1,2,5,8); got {num_heads!r}.")
    return list(num_heads)


def build_config(
    source: Source, variant: str | None, num_heads: list[int] | None, task: str
) -> tuple[HfPvtConfig, str | None, str]:
    """The hf_pvt configuration for `source`, its variant name (None if custom) and the task it converts to.

    The variant is the released model whose configuration the result equals exactly: a checkpoint with the
    shapes of pvt-v2-b0 but other head counts is a custom model.
    """
    architecture = detect_architecture(source.tensors)
    requested = variant
    if requested is not None:
        requested = normalize_preset_name(requested)
        if requested not in PRESETS:
            raise ConversionError(f"Unknown variant {variant!r}; known: {', '.join(PRESETS)}.")
        problems = preset_disagreements(architecture, requested)
        if problems:
            raise ConversionError(
                f"The checkpoint is not {requested}: " + "; ".join(problems) + ". Drop --variant to convert what the "
                "tensors describe, or pick the right variant."
            )
        shapes_match = requested
    else:
        shapes_match = match_preset(architecture)

    has_head = "head.weight" in source.tensors
    is_retinanet = all(key in source.detector for key in RETINANET_MARKERS)
    if task == "auto":
        task = "detection" if is_retinanet else "classification" if has_head else "backbone"
    if task == "classification" and not has_head:
        raise ConversionError(
            "The checkpoint has no classification head (head.weight); convert it with --task backbone"
            + (" or --task detection." if is_retinanet else ".")
        )
    if task == "detection" and not is_retinanet:
        found = sorted({key.split(".")[0] + "." for key in source.detector})
        raise ConversionError(
            "--task detection converts an MMDetection RetinaNet checkpoint (backbone.*, neck.*, "
            f"{' and '.join(RETINANET_MARKERS)}); this one has "
            + (f"other layers around its backbone ({', '.join(found)})." if found else "no detector layers.")
            + " Convert its backbone with --task backbone."
        )

    source_config = source.config or {}
    if num_heads is not None:
        num_heads = _check_num_heads(num_heads, "--num-heads")
    elif source_config.get("num_attention_heads") is not None:
        num_heads = _check_num_heads(source_config["num_attention_heads"], "config.json's num_attention_heads")
    elif shapes_match is not None:
        num_heads = list(PRESETS[shapes_match].get("num_attention_heads", DEFAULT_NUM_HEADS))
    elif any(w % h for w, h in zip(architecture["hidden_sizes"], DEFAULT_NUM_HEADS)):
        raise ConversionError(
            f"Widths {architecture['hidden_sizes']} match no released variant and attention head counts "
            "cannot be read from the tensors: pass --num-heads, e.g. --num-heads 1,2,5,8."
        )
    else:
        num_heads = list(DEFAULT_NUM_HEADS)
    kwargs = dict(architecture, num_attention_heads=num_heads)
    if architecture["pvt_version"] == 1:
        kwargs["strides"] = list(architecture["patch_sizes"])
    if task == "classification":
        id2label = _labels(int(source.tensors["head.weight"].shape[0]), source.config)
    elif task == "detection":
        retinanet = detect_retinanet(source.detector)
        id2label = _detection_labels(retinanet.pop("num_labels"), source.class_names)
        kwargs.update(retinanet)
    if task in ("classification", "detection"):
        kwargs.update(id2label=id2label, label2id={label: i for i, label in id2label.items()})
    kwargs["architectures"] = [MODEL_CLASSES[task].__name__]
    try:
        config = HfPvtConfig(**kwargs)
    except (ValueError, TypeError) as error:
        raise ConversionError(f"The detected architecture is not a valid hf_pvt configuration: {error}") from error

    if shapes_match is not None and not equals_preset(config, shapes_match):
        preset_heads = HfPvtConfig.from_preset(shapes_match).num_attention_heads
        if requested is not None:
            raise ConversionError(
                f"--variant {requested} has attention heads {preset_heads}, but the conversion asks for "
                f"{config.num_attention_heads}. Drop --variant for a custom model, or drop --num-heads."
            )
        source.notes.append(
            f"the tensors have the shapes of {shapes_match}, but with attention heads {config.num_attention_heads} "
            f"(not {preset_heads}) this is a custom model"
        )
        shapes_match = None
    return config, shapes_match, task


def _finite_problems(tensors: dict[str, torch.Tensor], origins: dict[str, list[str]]) -> list[str]:
    problems = []
    for key, tensor in tensors.items():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            problems.append(f"{'+'.join(origins[key])} ({bad} of {tensor.numel()} values)")
    return problems


def convert(
    path: str | Path,
    variant: str | None = None,
    num_heads: list[int] | None = None,
    task: str = "auto",
    allow_non_finite: bool = False,
) -> Conversion:
    """Load `path` and return the hf_pvt model holding its weights, accounting for every tensor.

    NaN or infinite weights are refused (a corrupted or diverged checkpoint); `allow_non_finite=True` converts
    them anyway and records a warning.
    """
    if task not in TASKS:
        raise ConversionError(f"task must be one of {', '.join(TASKS)}; got {task!r}.")
    source = load_source(path)
    config, variant, task = build_config(source, variant, num_heads, task)
    tensors, origins, notes, warnings = dict(source.tensors), dict(source.origins), list(source.notes), []
    if task != "detection" and source.detector:
        around = sorted({key.split(".")[0] + "." for key in source.detector})
        notes.append(
            f"left out {len(source.detector)} tensors of the detector/segmenter around the backbone "
            f"({', '.join(around)})"
        )
    detector = source.detector if task == "detection" else {}
    non_finite = _finite_problems({**tensors, **detector}, {**origins, **{key: [key] for key in detector}})
    if non_finite:
        listed = ", ".join(non_finite[:10]) + (" ..." if len(non_finite) > 10 else "")
        if not allow_non_finite:
            raise ConversionError(
                f"{path}: {len(non_finite)} tensors hold NaN or infinite values: {listed}. The checkpoint is "
                "corrupted or its training diverged; nothing was written. Pass --allow-non-finite to convert it "
                "anyway."
            )
        warnings.append(f"converted {len(non_finite)} tensors holding NaN or infinite values: {listed}")
    if task == "backbone":
        # A backbone has no classifier, and v1's has no cls token or final norm (the authors' dense models).
        dropped = sorted(k for k in tensors if k.startswith("head.") or (config.pvt_version == 1 and _v1_cls_only(k)))
        if dropped:
            notes.append(f"left out the classification-only tensors {dropped}")
            for key in dropped:
                del tensors[key]

    renamed: dict[str, torch.Tensor] = {}
    renamed_origins: dict[str, list[str]] = {}
    for key, tensor in tensors.items():
        target = rename_key(key, ORIGINAL_TO_HF_PVT, num_stages=config.num_stages)
        if task == "backbone":
            target = target.removeprefix("pvt.")
        if target in renamed:
            raise ConversionError(
                f"Source tensors {renamed_origins[target]} and {origins[key]} both map to {target!r}."
            )
        # A private contiguous copy: safetensors refuses tensors that share storage.
        renamed[target] = tensor.detach().clone(memory_format=torch.contiguous_format)
        renamed_origins[target] = origins[key]
    for key, tensor in detector.items():
        target = rename_key(key, MMDET_RETINANET_TO_HF_PVT)
        if target in renamed:
            raise ConversionError(f"Source tensors {renamed_origins[target]} and {[key]} both map to {target!r}.")
        renamed[target] = tensor.detach().clone(memory_format=torch.contiguous_format)
        renamed_origins[target] = [key]

    model_class = MODEL_CLASSES[task]
    with torch.device("meta"):
        model = model_class(config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    unknown = sorted(f"{'+'.join(renamed_origins[k])} (-> {k})" for k in renamed if k not in expected)
    missing = sorted(k for k in expected if k not in renamed)
    misshaped = sorted(
        f"{'+'.join(renamed_origins[k])}: checkpoint {tuple(t.shape)}, model {expected[k]}"
        for k, t in renamed.items()
        if k in expected and tuple(t.shape) != expected[k]
    )
    if unknown or missing or misshaped:
        lines = [f"{path} does not fit {model_class.__name__} ({variant or 'custom'}):"]
        for title, items in (("unknown keys", unknown), ("missing keys", missing), ("mis-shaped keys", misshaped)):
            if items:
                lines.append(f"  {len(items)} {title}: " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        lines.append("Nothing was written. Check --variant/--num-heads/--task, or that the file is a PVT checkpoint.")
        raise ConversionError("\n".join(lines))
    model.load_state_dict(renamed, strict=True, assign=True)
    model.eval()
    # The card may present the weights as the authors' only for their exact release, read from their own files.
    head_is_authors = {
        "classification": has_imagenet_head,
        "detection": is_authors_retinanet,
    }.get(task, lambda config: True)
    authors_weights = variant is not None and source.layout == "original" and head_is_authors(config)
    return Conversion(
        model,
        variant,
        task,
        "mmdet-retinanet" if task == "detection" else source.layout,
        notes,
        num_source_tensors=len(source.origins) + len(detector),
        source_name=source.name,
        authors_weights=authors_weights,
        warnings=warnings,
    )


def _v1_cls_only(key: str) -> bool:
    return key == "cls_token" or key.startswith("norm.")


# ------------------------------------------------------------------------------------------- writing


def _write_card(conversion: Conversion, folder: Path, repo_id: str | None) -> None:
    card = render_card(
        conversion.variant,
        conversion.model.config,
        repo_id=repo_id,
        provenance=conversion.provenance,
        num_parameters=sum(p.numel() for p in conversion.model.parameters()),
    )
    (folder / "README.md").write_text(card, encoding="utf-8")


def write_folder(conversion: Conversion, folder: Path, repo_id: str | None = None) -> None:
    """Write the Hub files of `conversion` into the existing, empty `folder`."""
    conversion.model.save_pretrained(folder)
    if conversion.task == "classification":
        image_processor = HfPvtImageProcessor()
    elif conversion.task == "detection":
        image_processor = HfPvtImageProcessor.for_object_detection()
    else:
        image_processor = HfPvtImageProcessor.for_dense_prediction()
    image_processor.save_pretrained(folder)
    package_dir = Path(hf_pvt.__file__).parent
    for name in REMOTE_CODE_FILES:  # save_pretrained copies them; make sure, whatever the Transformers version
        if not (folder / name).is_file():
            shutil.copy2(package_dir / name, folder / name)
    _write_card(conversion, folder, repo_id)
    expected = {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", *REMOTE_CODE_FILES}
    absent = sorted(expected - {p.name for p in folder.iterdir()})
    if absent:
        raise ConversionError(f"The written folder lacks {absent}.")


def verify_folder(folder: Path, conversion: Conversion, image: str | Path, repo_id: str | None = None) -> VerifyResult:
    """Reload the written folder and compare its logits with the published ones; raise on a mismatch.

    A match proves the weights are the authors' release whatever layout they came in, so the card is then
    rewritten to present them as such."""
    if conversion.task != "classification":
        raise ConversionError(
            f"--verify compares classifier logits; this checkpoint converts to a {conversion.task} model. "
            "Drop --verify."
        )
    model = HfPvtForImageClassification.from_pretrained(folder)
    result = verify_classifier(model, image, conversion.variant)
    print(result.report())
    if result.matches is False:
        raise ConversionError(
            f"Verification failed for {conversion.variant}: the converted model does not reproduce the published "
            "logits (see above). Nothing was written."
        )
    if result.matches and not conversion.authors_weights and has_imagenet_head(conversion.model.config):
        conversion.authors_weights = True
        _write_card(conversion, folder, repo_id)
    return result


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload `folder` as one commit to the model repo `repo_id` (hf_pvt's shared push, which keeps the converter's
    card); offline or failing uploads raise a ConversionError and leave the folder in place."""
    from hf_pvt.sharing import HubUploadError
    from hf_pvt.sharing import push_to_hub as push_folder

    try:
        return push_folder(folder, repo_id, private=private, commit_message="Upload hf_pvt conversion")
    except (HubUploadError, ValueError, FileNotFoundError) as error:
        raise ConversionError(
            f"Upload to {repo_id} failed ({first_line(error)}). The converted folder is intact at {folder}; upload it "
            f"later with `hf upload {repo_id} {folder}`."
        ) from error


# ------------------------------------------------------------------------------------ argument checks


def check_output_dir(output_dir: str | Path, overwrite: bool, source: str | Path | None = None) -> Path:
    """The absolute output path, after refusing every destination that would lose data or cannot be written."""
    output = Path(output_dir).expanduser().resolve()
    if source is not None:
        source_path = Path(source).expanduser().resolve()
        if output == source_path or output in source_path.parents:
            raise ConversionError(
                f"The output {output} is the source or contains it: writing there would replace the checkpoint "
                "being converted. Choose another output folder."
            )
    if output.exists():
        if not overwrite:
            raise ConversionError(f"{output} already exists; pass --overwrite to replace it.")
        if not output.is_dir():
            raise ConversionError(
                f"{output} is a file, not a folder; --overwrite replaces only a folder. Remove it or choose another "
                "output path."
            )
        contents = {entry.name for entry in output.iterdir()}
        if contents and "config.json" not in contents:
            raise ConversionError(
                f"{output} is not empty and holds no config.json, so it is not a model folder that --overwrite "
                "may replace. Remove it yourself or choose another output path."
            )
    ancestor = output.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConversionError(f"Cannot create {output}: {ancestor} is a file, not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConversionError(f"Cannot create {output}: {ancestor} is not writable. Choose another output folder.")
    return output


def _check_image(path: str) -> None:
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            image.verify()
    except FileNotFoundError as error:
        raise ConversionError(f"--verify {path}: no such file.") from error
    except (OSError, SyntaxError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise ConversionError(f"--verify {path}: not a readable image ({first_line(error)}).") from error


def check_arguments(args: argparse.Namespace) -> Path:
    """Check every argument but the output folder before any work, so a typo costs nothing.

    Returns the absolute output path; `check_output_dir` checks it once the leftovers of killed runs (which
    may include an interrupted --overwrite's previous folder) are dealt with."""
    source = Path(args.source).expanduser()
    if not source.exists():
        raise ConversionError(f"{source} does not exist.")
    if not (source.is_file() or source.is_dir()):
        raise ConversionError(f"{source} is neither a file nor a folder.")
    if not os.access(source, os.R_OK):
        raise ConversionError(f"{source} is not readable.")
    if args.variant is not None and normalize_preset_name(args.variant) not in PRESETS:
        raise ConversionError(f"Unknown --variant {args.variant!r}; known: {', '.join(PRESETS)}.")
    if args.num_heads is not None:
        _check_num_heads(args.num_heads, "--num-heads")
    if args.verify is not None:
        if args.task not in ("auto", "classification"):
            raise ConversionError(f"--verify compares classifier logits; it cannot check a --task {args.task} model.")
        _check_image(args.verify)
    if args.push_to_hub is not None:
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(args.push_to_hub)
        except ValueError as error:  # HFValidationError
            raise ConversionError(f"--push-to-hub {args.push_to_hub!r} is not a valid Hub repo id: {error}") from error
    elif args.private:
        raise ConversionError("--private applies to the repo --push-to-hub creates; give --push-to-hub REPO_ID too.")
    return Path(args.output_dir).expanduser().resolve()


# ----------------------------------------------------------------------------------------------- CLI


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-pvt-convert", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("source", help="checkpoint (.pth/.pt/.bin/.safetensors) or Transformers pvt/pvt_v2 folder")
    parser.add_argument("output_dir", help="folder to create (must not exist, unless --overwrite)")
    parser.add_argument("--variant", help=f"expected variant, checked against the tensors: {', '.join(PRESETS)}")
    parser.add_argument("--num-heads", type=_int_list, help="attention heads per stage (default: the variant's)")
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="auto",
        help="classification (needs a head), backbone (drops head, and v1's cls token and final norm) or "
        "detection (an mmdet RetinaNet: backbone + neck + bbox_head); auto: detection for a RetinaNet, "
        "else classification when the checkpoint has a head, else backbone",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder (one holding a config.json)"
    )
    parser.add_argument("--verify", metavar="IMAGE", help="compare with the published logits (COCO two-cats image)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub repo in one commit")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument(
        "--allow-non-finite", action="store_true", help="convert a checkpoint holding NaN/Inf weights (with a warning)"
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


@contextmanager
def _sigterm_as_interrupt():
    """Let `kill <pid>` unwind like Ctrl-C, so the staging folder is removed (SIGKILL is handled by the next run)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    output = check_arguments(args)
    for note in clean_stale_entries(output.parent):
        print(f"note: {note}")
    check_output_dir(output, args.overwrite, args.source)
    # Creating the staging folder first finds an unwritable destination before the conversion's work.
    with OutputFolder(output, overwrite=args.overwrite) as staging:
        assert staging.path is not None
        conversion = convert(
            args.source,
            variant=args.variant,
            num_heads=args.num_heads,
            task=args.task,
            allow_non_finite=args.allow_non_finite,
        )
        for note in conversion.notes:
            print(f"note: {note}")
        for warning in conversion.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        write_folder(conversion, staging.path, repo_id=args.push_to_hub)
        if args.verify is not None:
            verify_folder(staging.path, conversion, args.verify, repo_id=args.push_to_hub)
        folder = staging.commit()
    parameters = sum(p.numel() for p in conversion.model.parameters())
    print(
        f"converted {conversion.num_source_tensors} tensors ({conversion.layout} layout, "
        f"{conversion.variant or 'custom'} {conversion.task}, {parameters:,} parameters) "
        f"to {folder} in {time.perf_counter() - start:.1f}s"
    )
    if not conversion.authors_weights:
        print(f"note: the model card names the source, {conversion.provenance}, and claims no published results")
    if args.push_to_hub:
        print(f"uploaded: {push_to_hub(folder, args.push_to_hub, private=args.private)}")
    return 0


@contextmanager
def _quiet_progress_bars():
    """The command reports what it did in its own lines; Transformers' loading/saving bars only add noise."""
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """The `hf-pvt-convert` command: 0 on success; 1 after one `error:` line on stderr (130 when interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_as_interrupt(), _quiet_progress_bars():
            return _run(args)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        if isinstance(error, (ConversionError, OutputFolderError)):
            message = str(error)
        elif isinstance(error, OSError):
            message = f"{describe_os_error(error)}. Nothing was written."
        else:  # a failure no check anticipated: still one line, with the way to the details
            message = f"{first_line(error)}. Nothing was written; rerun with --debug for the traceback."
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

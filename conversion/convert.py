"""Build and write a converted folder: the hf_pvt configuration of a checkpoint, its tensors renamed into the model
with strict accounting (every source tensor in exactly one parameter, every parameter filled), and the Hub files
(safetensors, config, code, image processor, model card).

`detect.py` says what the checkpoint is; `cli.py` is the `hf-pvt-convert` command around `convert` and
`write_folder`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_pvt import (
    HfPvtBackbone,
    HfPvtConfig,
    HfPvtForImageClassification,
    HfPvtForInstanceSegmentation,
    HfPvtForObjectDetection,
    HfPvtForSemanticSegmentation,
    HfPvtImageProcessor,
)
from hf_pvt.configuration_hf_pvt import AUTO_MAP, auto_map_modules, copy_remote_code
from hf_pvt.model_cards import render_conversion_card
from hf_pvt.variants_hf_pvt import PRESETS, normalize_preset_name, preset_name

from .detect import (
    class_name_problem,
    detect_architecture,
    detect_mask_rcnn,
    detect_retinanet,
    detect_semantic_fpn,
    detect_task,
    detection_labels,
    has_imagenet_head,
    is_authors_mask_rcnn,
    is_authors_retinanet,
    is_authors_semantic_fpn,
    match_preset,
    preset_disagreements,
    semantic_labels,
)
from .imagenet_labels import IMAGENET_1K_LABELS
from .layouts import (
    MMDET_MASK_RCNN_TO_HF_PVT,
    MMDET_RETINANET_TO_HF_PVT,
    MMSEG_SEMANTIC_FPN_TO_HF_PVT,
    ORIGINAL_TO_HF_PVT,
    rename_key,
)
from .sources import ConversionError, Source, first_line, load_source
from .verify import VerifyResult, verify_classifier

# Released models all use these head counts; heads leave no trace in the tensors' shapes.
DEFAULT_NUM_HEADS = [1, 2, 5, 8]
TASKS = ("auto", "classification", "backbone", "detection", "instance-segmentation", "semantic-segmentation")
MODEL_CLASSES = {
    "classification": HfPvtForImageClassification,
    "backbone": HfPvtBackbone,
    "detection": HfPvtForObjectDetection,
    "instance-segmentation": HfPvtForInstanceSegmentation,
    "semantic-segmentation": HfPvtForSemanticSegmentation,
}
# The layers around the backbone that a task converts, and the table that renames them.
HEAD_TABLES = {
    "detection": MMDET_RETINANET_TO_HF_PVT,
    "instance-segmentation": MMDET_MASK_RCNN_TO_HF_PVT,
    "semantic-segmentation": MMSEG_SEMANTIC_FPN_TO_HF_PVT,
}
# The layout a task's checkpoint is in, as the model card names it.
HEAD_LAYOUTS = {
    "detection": "mmdet-retinanet",
    "instance-segmentation": "mmdet-mask-rcnn",
    "semantic-segmentation": "mmseg-semantic-fpn",
}
# How a model card names where the weights came from, when they are not known to be the authors' release.
LAYOUT_DESCRIPTIONS = {
    "original": "a checkpoint in the authors' layout",
    "transformers-pvt": "a Transformers `pvt` folder",
    "transformers-pvt_v2": "a Transformers `pvt_v2` folder",
    "timm-pvt_v2": "a timm `pvt_v2` state dict",
    "mmdet-retinanet": "an MMDetection RetinaNet checkpoint",
    "mmdet-mask-rcnn": "an MMDetection Mask R-CNN checkpoint",
    "mmseg-semantic-fpn": "an MMSegmentation Semantic FPN checkpoint",
}


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


def _labels(num_labels: int, source_config: dict[str, Any] | None) -> tuple[dict[int, str], list[str]]:
    """id2label for a classifier from a Transformers folder's config.json, and a note when its names are not used.

    Names are used when they label every class 0..num_labels-1 once and differently (label2id must be the exact
    inverse); otherwise ImageNet's for a 1000-class head, else LABEL_k."""
    given = (source_config or {}).get("id2label") or {}
    notes = []
    if (
        isinstance(given, dict)
        and len(given) == num_labels
        and not all(re.fullmatch(r"LABEL_\d+", str(v)) for v in given.values())
    ):
        try:
            names = {int(k): str(v) for k, v in given.items()}
        except ValueError:
            names = {}
        values = list(names.values())
        if sorted(names) == list(range(num_labels)) and len(set(values)) == len(values) and "" not in values:
            return names, notes
        repeated = sorted({v for v in values if values.count(v) > 1})
        notes.append(
            "config.json's id2label does not name each class once"
            + (f" ({', '.join(map(repr, repeated[:5]))} repeated)" if repeated else "")
            + "; its names are not used"
        )
    if num_labels == len(IMAGENET_1K_LABELS):
        return dict(enumerate(IMAGENET_1K_LABELS)), notes
    return {i: f"LABEL_{i}" for i in range(num_labels)}, notes


def check_num_heads(num_heads: Any, origin: str) -> list[int]:
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

    task = detect_task(source, task)

    source_config = source.config or {}
    if num_heads is not None:
        num_heads = check_num_heads(num_heads, "--num-heads")
    elif source_config.get("num_attention_heads") is not None:
        num_heads = check_num_heads(source_config["num_attention_heads"], "config.json's num_attention_heads")
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
        id2label, label_notes = _labels(int(source.tensors["head.weight"].shape[0]), source.config)
        source.notes.extend(label_notes)
    elif task == "detection":
        retinanet = detect_retinanet(source.detector)
        id2label, label_notes = detection_labels(retinanet.pop("num_labels"), source.meta_classes)
        source.notes.extend(label_notes)
        kwargs.update(retinanet)
    elif task == "instance-segmentation":
        mask_rcnn = detect_mask_rcnn(source.detector)
        id2label, label_notes = detection_labels(mask_rcnn.pop("num_labels"), source.meta_classes)
        source.notes.extend(label_notes)
        kwargs.update(mask_rcnn)
    elif task == "semantic-segmentation":
        semantic_fpn = detect_semantic_fpn(source.detector, len(architecture["hidden_sizes"]))
        id2label, label_notes = semantic_labels(semantic_fpn.pop("num_labels"), source.meta_classes)
        source.notes.extend(label_notes)
        kwargs.update(semantic_fpn)
    if task in ("classification", "detection", "instance-segmentation", "semantic-segmentation"):
        if len(set(id2label.values())) != len(id2label):  # the resolvers guarantee it; a repeat would split the maps
            raise ConversionError(f"The class names {sorted(id2label.values())[:10]} repeat; report this as a bug.")
        kwargs.update(id2label=id2label, label2id={label: i for i, label in id2label.items()})
    kwargs["architectures"] = [MODEL_CLASSES[task].__name__]
    try:
        config = HfPvtConfig(**kwargs)
    except (ValueError, TypeError) as error:
        raise ConversionError(f"The detected architecture is not a valid hf_pvt configuration: {error}") from error

    if shapes_match is not None and preset_name(config) != shapes_match:
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
    if task not in HEAD_TABLES and source.detector:
        around = sorted({key.split(".")[0] + "." for key in source.detector})
        notes.append(
            f"left out {len(source.detector)} tensors of the detector/segmenter around the backbone "
            f"({', '.join(around)})"
        )
    detector = source.detector if task in HEAD_TABLES else {}
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
        target = rename_key(key, HEAD_TABLES[task])
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
    # BatchNorm's step counter is the model's one integer tensor: a fractional count is no checkpoint's.
    expected_integer = {key for key, value in model.state_dict().items() if not value.dtype.is_floating_point}
    misshaped += sorted(
        f"{'+'.join(renamed_origins[k])}: checkpoint {t.dtype}, model an integer count"
        for k, t in renamed.items()
        if k in expected_integer and t.dtype.is_floating_point
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
        "instance-segmentation": is_authors_mask_rcnn,
        "semantic-segmentation": is_authors_semantic_fpn,
    }.get(task, lambda config: True)
    # Class names in the checkpoint that do not fit its head put in doubt that the head is the published one.
    names_refused = (
        task in ("detection", "instance-segmentation", "semantic-segmentation")
        and source.meta_classes is not None
        and class_name_problem(config.num_labels, source.meta_classes) is not None
    )
    authors_weights = (
        variant is not None and source.layout == "original" and head_is_authors(config) and not names_refused
    )
    return Conversion(
        model,
        variant,
        task,
        HEAD_LAYOUTS.get(task, source.layout),
        notes,
        num_source_tensors=len(source.origins) + len(detector),
        source_name=source.name,
        authors_weights=authors_weights,
        warnings=warnings,
    )


def _v1_cls_only(key: str) -> bool:
    return key == "cls_token" or key.startswith("norm.")


def _write_card(conversion: Conversion, folder: Path, repo_id: str | None) -> None:
    card = render_conversion_card(
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
    elif conversion.task == "instance-segmentation":
        image_processor = HfPvtImageProcessor.for_instance_segmentation()
    elif conversion.task == "semantic-segmentation":
        image_processor = HfPvtImageProcessor.for_semantic_segmentation()
    else:
        image_processor = HfPvtImageProcessor.for_dense_prediction()
    image_processor.save_pretrained(folder)
    # save_pretrained copies the code `trust_remote_code` needs; make sure, whatever the Transformers version.
    code = copy_remote_code(auto_map_modules(AUTO_MAP), folder)
    _write_card(conversion, folder, repo_id)
    expected = {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", *code}
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
